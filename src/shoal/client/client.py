"""shoal's client: `AsyncClient` for asyncio code, `Client` (the same, blocking) for scripts.

Talks to one daemon for now (the cluster map arrives with the master). A small pool of
connections, opened on demand, each carrying many requests at once; every request has a
timeout. A request that cannot have taken effect twice (reads, and writes that leave the same
state when repeated: a named put from memory, a write-at-offset) is retried on a fresh
connection when its connection breaks; the others report the broken connection.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid as uuidlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any, BinaryIO, TypeVar

from shoal.client.connection import Connection, Sink
from shoal.engine.keys import ObjKey
from shoal.errors import InvalidArgument, OutcomeUnknown
from shoal.proto.frames import Op

T = TypeVar("T")
DEFAULT_PORT = 4148
_IO_CHUNK = 4 << 20


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    namespace: str
    name: str
    uuid: uuidlib.UUID
    size: int
    hash: bytes | None
    version: int
    permanent: bool
    refs: tuple[bytes, ...]
    ctime: float
    mtime: float
    meta: dict[str, str] = field(default_factory=dict)  # what its writer stored with it

    @classmethod
    def from_meta(cls, m: dict[str, Any]) -> ObjectInfo:
        return cls(
            m["namespace"], m["name"], uuidlib.UUID(bytes=m["uuid"]), m["size"], m["hash"],
            m["version"], m["permanent"], tuple(m["refs"]), m["ctime"], m["mtime"],
            dict(m.get("meta") or {}),
        )  # fmt: skip


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, DEFAULT_PORT
    if not port.isdigit():
        raise InvalidArgument(f"a daemon address is HOST[:PORT], not {text!r}")
    return host.strip("[]"), int(port)


_CHANGES = frozenset({Op.PUT, Op.WRITE_AT, Op.DELETE, Op.REFS})


def _with_meta(req: dict[str, Any], meta: Mapping[str, str] | None) -> dict[str, Any]:
    """A PUT's request with the object's metadata (sent only when there is some)."""
    if meta:
        req["meta"] = dict(meta)
    return req


def _key(meta: dict[str, Any]) -> ObjKey:
    return ObjKey(uuidlib.UUID(bytes=meta["uuid"]), meta["hash"], meta["size"], meta.get("version"))


class AsyncClient:
    def __init__(
        self,
        address: str,
        *,
        pool_size: int = 4,
        timeout: float = 60.0,
        retries: int = 3,
        ssl: SSLContext | None = None,
    ) -> None:
        self.ssl = ssl
        self.host, self.port = parse_address(address)
        self.pool_size = pool_size
        self.timeout = timeout
        self.retries = retries
        self._conns: list[Connection] = []
        self._opening: asyncio.Lock | None = None
        # In a cluster: the map epoch and the master's ticket every request carries.
        self.epoch = 0
        self.ticket: bytes | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        conns, self._conns = self._conns, []
        for c in conns:
            c.close()
        for c in conns:
            await c.wait_closed()

    async def _conn(self) -> Connection:
        best, best_load = None, 1 << 30
        for c in self._conns:
            if not c.closed and (load := c.load) < best_load:
                best, best_load = c, load
                if not load:
                    return c
        if best is not None and len(self._conns) >= self.pool_size:
            if any(c.closed for c in self._conns):
                self._conns = [c for c in self._conns if not c.closed]
            if len(self._conns) >= self.pool_size:
                return best
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            self._conns = [c for c in self._conns if not c.closed]
            if len(self._conns) >= self.pool_size:  # others opened while we waited
                return min(self._conns, key=lambda c: c.load)
            try:
                conn = await Connection.open(self.host, self.port, self.timeout, ssl=self.ssl)
            except OSError as exc:
                raise ConnectionError(
                    f"cannot reach the daemon at {self.host}:{self.port}: {exc}"
                ) from None
            self._conns.append(conn)
            return conn

    async def _call(
        self,
        op: int,
        meta: dict[str, Any],
        payload: bytes | bytearray | memoryview | None = None,
        *,
        idempotent: bool,
        sink: Sink | None = None,
        unknown: bool = False,
    ) -> tuple[dict[str, Any], bytearray]:
        """The reply to one request. `idempotent`: sent again on a new connection when the
        connection breaks. `unknown`: a request that was sent and got no answer raises
        OutcomeUnknown (not ConnectionError or TimeoutError, which callers retry)."""
        if op in _CHANGES:  # (a daemon does not start a change its client has given up on)
            meta.setdefault("timeout", self.timeout)
        attempt = 0
        while True:
            conn = await self._conn()
            try:
                async with asyncio.timeout(self.timeout):  # no task per request, unlike wait_for
                    return await conn.request(
                        op, self._signed(meta), payload, sink=sink, epoch=self.epoch
                    )
            except TimeoutError:  # (an OSError too: first)
                conn.close()
                what = f"no answer from {self.host}:{self.port} in {self.timeout} s"
                if unknown:
                    raise OutcomeUnknown(f"{what}: the change may or may not be made") from None
                raise TimeoutError(what) from None
            except (ConnectionError, OSError) as exc:
                conn.close()
                if unknown:
                    raise OutcomeUnknown(
                        f"{self.host}:{self.port}: {exc or 'connection lost'}: the change may "
                        "or may not be made"
                    ) from None
                attempt += 1
                if not idempotent or attempt > self.retries:
                    raise ConnectionError(str(exc) or "connection to the daemon lost") from None
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))

    def _signed(self, meta: dict[str, Any]) -> dict[str, Any]:
        if self.ticket is not None:
            meta["ticket"] = self.ticket
        return meta

    # -- operations ------------------------------------------------------------------------

    async def ping(self) -> bool:
        meta, _ = await self._call(Op.PING, {}, idempotent=True)
        return bool(meta.get("pong"))

    async def put(
        self,
        pool: str,
        name: str | None,
        data: bytes | bytearray | memoryview,
        *,
        refs: Iterable[bytes] = (),
        permanent: bool = False,
        meta: Mapping[str, str] | None = None,
    ) -> ObjKey:
        """Store `data` (with `meta`, the object's metadata: str -> str, 16 KiB at most)."""
        req = {"namespace": pool, "name": name, "refs": list(refs), "permanent": permanent}
        reply, _ = await self._call(
            Op.PUT, _with_meta(req, meta), data, idempotent=name is not None
        )
        return _key(reply)

    async def put_over(
        self, pool: str, name: str, data: bytes | bytearray | memoryview, *,
        refs: Iterable[bytes] = (), over_ref: bytes, resend: bool = True,
        meta: Mapping[str, str] | None = None,
    ) -> tuple[ObjKey, bytes | None]:  # fmt: skip
        """`put` in a cluster, and the bytes of the object it replaced if that one carried the
        reference `over_ref` (and is small: a striped object's head). With `resend` False, a
        lost answer is OutcomeUnknown, never a second try."""
        req = {"namespace": pool, "name": name, "refs": list(refs), "permanent": False,
               "prev_if_ref": over_ref}  # fmt: skip
        reply, _ = await self._call(Op.PUT, _with_meta(req, meta), data, idempotent=resend,
                                    unknown=not resend)  # fmt: skip
        return _key(reply), reply.get("prev")

    async def put_stream(
        self,
        pool: str,
        name: str | None,
        size: int,
        chunks: AsyncIterator[bytes | memoryview],
        *,
        permanent: bool = False,
        meta: Mapping[str, str] | None = None,
    ) -> ObjKey:
        """Store `size` bytes taken from `chunks` (never all in memory). Not retried. `meta`
        goes in the request's header, before the bytes: metadata known only once they have
        gone (their MD5) needs ClusterClient.put_stream, or a `put` of the whole."""
        req: dict[str, Any] = {"namespace": pool, "name": name, "refs": [], "permanent": permanent}
        conn = await self._conn()
        reply, _ = await conn.request_stream(
            Op.PUT, self._signed(_with_meta(req, meta)), size, chunks, epoch=self.epoch
        )
        return _key(reply)

    async def put_file(
        self,
        pool: str,
        name: str | None,
        f: BinaryIO,
        *,
        progress: Callable[[int], None] | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> ObjKey:
        size = os.fstat(f.fileno()).st_size - f.tell()

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await asyncio.to_thread(f.read, _IO_CHUNK):
                yield chunk
                if progress:
                    progress(len(chunk))

        return await self.put_stream(pool, name, size, chunks(), meta=meta)

    async def get(
        self, pool: str, name: str, *, offset: int = 0, length: int | None = None
    ) -> bytes:
        meta = {"namespace": pool, "name": name, "offset": offset, "length": length}
        _, payload = await self._call(Op.GET, meta, idempotent=True)
        return bytes(payload)

    async def get_with_info(
        self, pool: str, name: str, *, offset: int = 0, length: int | None = None
    ) -> tuple[ObjectInfo, bytearray]:
        """`get`, with the object's record (and the bytes as received: no copy)."""
        meta = {"namespace": pool, "name": name, "offset": offset, "length": length}
        reply, payload = await self._call(Op.GET, meta, idempotent=True)
        return ObjectInfo.from_meta(reply), payload

    async def get_to(
        self,
        pool: str,
        name: str,
        sink: Sink,
        *,
        offset: int = 0,
        length: int | None = None,
    ) -> ObjectInfo:
        """Stream the object (or a range) into `sink`, piece by piece. Not retried: the sink
        may have taken part of it."""
        meta = {"namespace": pool, "name": name, "offset": offset, "length": length}
        conn = await self._conn()
        try:
            async with asyncio.timeout(self.timeout):
                reply, _ = await conn.request(
                    Op.GET, self._signed(meta), sink=sink, epoch=self.epoch
                )
        except TimeoutError:
            conn.close()  # or the sink would be fed after we gave up
            raise
        return ObjectInfo.from_meta(reply)

    async def write_at(self, pool: str, name: str, offset: int, data: bytes) -> ObjKey:
        meta: dict[str, Any] = {"namespace": pool, "name": name, "offset": offset}
        reply, _ = await self._call(Op.WRITE_AT, meta, data, idempotent=True)
        return _key(reply)

    async def stat(self, pool: str, name: str) -> ObjectInfo:
        meta, _ = await self._call(Op.STAT, {"namespace": pool, "name": name}, idempotent=True)
        return ObjectInfo.from_meta(meta)

    async def delete(self, pool: str, name: str, *, discard: bool = False) -> int | None:
        """Delete; the version of the deletion (a tombstone's, in a cluster), else None."""
        return (await self.delete_over(pool, name, discard=discard))[0]

    async def delete_over(
        self, pool: str, name: str, *, discard: bool = False, over_ref: bytes | None = None
    ) -> tuple[int | None, bytes | None]:
        """`delete`, and (in a cluster) the bytes of the object deleted if it carried the
        reference `over_ref` (and is small: a striped object's head)."""
        meta = {"namespace": pool, "name": name, "discard": discard, "prev_if_ref": over_ref}
        reply, _ = await self._call(Op.DELETE, meta, idempotent=False)
        version = reply.get("version")
        return (int(version) if version is not None else None), reply.get("prev")

    async def list(
        self, pool: str, prefix: str = "", *, start_after: str = "", limit: int = 1000
    ) -> tuple[list[ObjectInfo], str | None]:
        """One page of names starting with `prefix`, and the marker of the next (or None)."""
        meta = {"namespace": pool, "prefix": prefix, "start_after": start_after, "limit": limit}
        reply, _ = await self._call(Op.LIST, meta, idempotent=True)
        return [ObjectInfo.from_meta(m) for m in reply["items"]], reply["next"]

    async def add_refs(self, pool: str, name: str, refs: Iterable[bytes]) -> tuple[bytes, ...]:
        meta = {"namespace": pool, "name": name, "add": list(refs)}
        reply, _ = await self._call(Op.REFS, meta, idempotent=True)
        return tuple(reply["refs"])

    async def remove_refs(self, pool: str, name: str, refs: Iterable[bytes]) -> tuple[bytes, ...]:
        meta = {"namespace": pool, "name": name, "remove": list(refs)}
        reply, _ = await self._call(Op.REFS, meta, idempotent=False)
        return tuple(reply["refs"])


class Client:
    """The blocking face of AsyncClient: same methods, for scripts. It runs its own event
    loop on a background thread."""

    def __init__(self, address: str, **kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client = AsyncClient(address, **kw)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        if not asyncio.iscoroutinefunction(method):
            raise AttributeError(name)

        def call(*args: Any, **kw: Any) -> Any:
            result: Awaitable[Any] = method(*args, **kw)
            return self._run(result)  # type: ignore[arg-type]

        return call
