"""One client connection to a daemon: many requests in flight, replies matched by request id.

Frames out are written whole (a payload streams under the send lock, so frames never mix);
frames in are decoded by the sans-IO FrameReader and routed to the waiting request. A reply
payload is gathered in one buffer, or handed piece by piece to a `sink` (a GET streamed to a
file never sits whole in memory). A broken connection fails every request in flight with
ConnectionError; the pool above decides what to retry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from ssl import SSLContext
from typing import Any, cast

from shoal.proto.frames import (
    Event,
    FrameEnd,
    FrameReader,
    FrameStart,
    Payload,
    ProtocolError,
    Status,
    encode,
    error_of,
)

# takes each piece of a streamed payload as it comes; the piece is valid only during the call
# (the buffer under it is read into again): write it, hash it or copy it, do not keep it
Sink = Callable[[memoryview], None]


class _Pending:
    __slots__ = ("buf", "fill", "future", "meta", "sink", "status")

    def __init__(self, future: asyncio.Future[tuple[dict[str, Any], bytearray]], sink: Sink | None):
        self.future = future
        self.sink = sink
        self.meta: dict[str, Any] = {}
        self.status = 0
        self.buf = bytearray()
        self.fill = 0  # bytes of buf received (it is made to the payload's size at its start)


SCRATCH = 256 << 10  # bytes read at a time outside a large payload


class Connection(asyncio.BufferedProtocol):
    """A reply's payload is read from the socket straight into the buffer it is returned in
    (no copy in user space); the rest (headers, meta, small or streamed payloads) through a
    scratch buffer."""

    def __init__(self) -> None:
        self.reader = FrameReader()
        self._scratch = memoryview(bytearray(SCRATCH))
        self._direct: _Pending | None = None  # the reply read straight into its buffer
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, _Pending] = {}
        self.send_lock = asyncio.Lock()
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = False
        self.lost = asyncio.Event()
        self._next_id = 0

    @classmethod
    async def open(
        cls, host: str, port: int, timeout: float, ssl: SSLContext | None = None
    ) -> Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):  # (not wait_for: on 3.11 it can lose a cancel)
            _, conn = await loop.create_connection(cls, host, port, ssl=ssl)
        return conn

    @property
    def load(self) -> int:
        return len(self.pending) + (1 if self.send_lock.locked() else 0)

    # -- protocol callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost.set()
        self.writable.set()
        err = ConnectionError(f"connection lost{f': {exc}' if exc else ''}")
        for p in self.pending.values():
            if not p.future.done():
                p.future.set_exception(err)
        self.pending.clear()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        p = self._direct
        if p is not None:
            return memoryview(p.buf)[p.fill : p.fill + self.reader.payload_left]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        p = self._direct
        if p is not None:
            p.fill += nbytes
            try:
                events = self.reader.took(nbytes)
            except ProtocolError as exc:
                self._fail(exc)
                return
            if events:
                self._direct = None
                self._handle(events)
            return
        try:
            events = self.reader.feed(self._scratch[:nbytes])
        except ProtocolError as exc:
            self._fail(exc)
            return
        self._handle(events)
        rid = self.reader.payload_of  # a payload still coming: straight into its buffer?
        if rid is not None:
            p = self.pending.get(rid)
            if p is not None and len(p.buf) and (p.sink is None or p.status != Status.OK):
                self._direct = p

    def data_received(self, data: bytes) -> None:  # (a plain Protocol's way in, for tests)
        try:
            events = self.reader.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            return
        self._handle(events)

    def _handle(self, events: list[Event]) -> None:
        """Events decoded from the scratch buffer: their data is copied out, or handed to a
        sink (which uses it before it returns)."""
        for ev in events:
            if isinstance(ev, Payload):
                p = self.pending.get(ev.request_id)
                if p is not None:
                    if p.sink is not None and p.status == Status.OK:
                        p.sink(ev.data)
                    else:  # (into place: no copy as the buffer grows)
                        n = len(ev.data)
                        p.buf[p.fill : p.fill + n] = ev.data
                        p.fill += n
            elif isinstance(ev, FrameStart):
                h = ev.header
                if not h.response:
                    self._fail(ProtocolError("the daemon sent a request"))
                    return
                if h.request_id == 0 and h.status != Status.OK:  # the daemon hung up on us
                    self._fail(error_of(h.status, str(ev.meta.get("error", ""))))
                    return
                p = self.pending.get(h.request_id)
                if p is not None:
                    p.meta, p.status = ev.meta, h.status
                    if h.payload_len and (p.sink is None or h.status != Status.OK):
                        p.buf = bytearray(h.payload_len)
            elif isinstance(ev, FrameEnd):
                p = self.pending.pop(ev.request_id, None)
                if p is None or p.future.done():
                    continue
                if p.status != Status.OK:
                    p.future.set_exception(error_of(p.status, str(p.meta.get("error", "")), p.meta))
                else:
                    p.future.set_result((p.meta, p.buf))

    def _fail(self, exc: BaseException) -> None:
        for p in self.pending.values():
            if not p.future.done():
                p.future.set_exception(exc)
        self.pending.clear()
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self, timeout: float = 2.0) -> None:
        """After `close`: until the transport is gone (a TLS one says goodbye first)."""
        if self.transport is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lost.wait(), timeout)

    # -- requests ----------------------------------------------------------------------

    def _register(self, sink: Sink | None) -> tuple[int, _Pending]:
        if self.closed:
            raise ConnectionError("connection to the daemon is closed")
        self._next_id = self._next_id % 0xFFFFFFFF + 1
        fut: asyncio.Future[tuple[dict[str, Any], bytearray]] = (
            asyncio.get_running_loop().create_future()
        )
        p = _Pending(fut, sink)
        self.pending[self._next_id] = p
        return self._next_id, p

    async def request(
        self,
        op: int,
        meta: dict[str, Any],
        payload: bytes | bytearray | memoryview | None = None,
        *,
        sink: Sink | None = None,
        epoch: int = 0,
    ) -> tuple[dict[str, Any], bytearray]:
        """Send one request; return the reply's meta and payload (empty if `sink` took it)."""
        rid, p = self._register(sink)
        size = len(payload) if payload is not None else 0
        try:
            async with self.send_lock:
                if self.closed or self.transport is None or self.transport.is_closing():
                    raise ConnectionError("connection to the daemon is closed")
                head = encode(op, rid, meta, size, epoch=epoch)
                if size:
                    self.transport.writelines([head, payload])  # type: ignore[list-item]
                else:
                    self.transport.write(head)
                await self.writable.wait()
            return await p.future
        except BaseException:  # (a timeout, a cancel): no one will wait for the reply
            self._forget(rid, p)
            raise

    def _forget(self, rid: int, p: _Pending) -> None:
        self.pending.pop(rid, None)
        if not p.future.done():
            p.future.cancel()
        elif not p.future.cancelled():
            p.future.exception()  # (retrieved: not reported as never retrieved)

    async def request_stream(
        self,
        op: int,
        meta: dict[str, Any],
        size: int,
        chunks: AsyncIterator[bytes | memoryview],
        *,
        epoch: int = 0,
    ) -> tuple[dict[str, Any], bytearray]:
        """Send a request whose `size`-byte payload comes from `chunks`."""
        rid, p = self._register(None)
        async with self.send_lock:
            assert self.transport is not None
            self.transport.write(encode(op, rid, meta, size, epoch=epoch))
            sent = 0
            try:
                async for chunk in chunks:
                    if self.closed or p.future.done():
                        break
                    if sent + len(chunk) > size:
                        raise ValueError(f"the source gave more than the announced {size} bytes")
                    self.transport.write(chunk)
                    sent += len(chunk)
                    await self.writable.wait()
                if sent != size and not p.future.done():
                    raise ValueError(f"the source gave {sent} of the announced {size} bytes")
            except BaseException:
                # A frame cut short (a short source, a cancel) can only be abandoned: the
                # connection goes, or the next request's bytes would finish this payload.
                self.pending.pop(rid, None)
                self.close()
                raise
            if sent != size:  # answered early (refused): the frame is unfinished too
                self.close()
        return await p.future
