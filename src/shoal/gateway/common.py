"""What the gateways share of the data path (shoal.gateway.http, shoal.gateway.s3): the JSON
request log, one exchange's reply (`Exchange`), a request body taken with an idle timeout
(`receive_body`), a reply streamed in slices with the client watched (`stream_reply`), and
the errors for a client that goes away or stops sending."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator
from email.utils import formatdate
from typing import IO, Any

from shoal.asgi import Receive, Scope, Send
from shoal.errors import ShoalError

SLICE = 256 << 10  # bytes of a large reply handed to the server at a time


class ClientGone(ShoalError):
    """The client went away, or took nothing for too long, before the exchange was over:
    there is nobody to answer."""


class BodyTimeout(ShoalError):
    """The client stopped sending its body (408)."""


async def disconnected(receive: Receive) -> None:
    """Returns once the client has gone (or the reply is complete)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class RequestLog:
    """One JSON line per request: time, method, key, status, bytes (of the body, in or out),
    seconds, remote address, and any `extra` fields a gateway adds. To stderr, or appended to
    a file. Lines are written out in batches, at most FLUSH_AFTER seconds after they are
    made."""

    FLUSH_AFTER = 0.2

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.stream: IO[str] = (
            sys.stderr if path in (None, "-") else open(path, "a")  # noqa: SIM115
        )
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def write(
        self, method: str, key: str, status: int, nbytes: int, seconds: float, remote: str,
        extra: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        more = "".join(
            f", {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}"
            for k, v in (extra or {}).items()
        )
        self._lines.append(
            f'{{"time": {time.time():.3f}, "method": "{method}", "key": '
            f"{json.dumps(key, ensure_ascii=False)}, "
            f'"status": {status}, "bytes": {nbytes}, "seconds": {seconds:.6f}, '
            f'"remote": "{remote}"{more}}}\n'
        )
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.FLUSH_AFTER, self.flush)

    def flush(self) -> None:
        self._timer = None
        lines, self._lines = self._lines, []
        with contextlib.suppress(OSError, ValueError):  # (a full disk must not stop serving)
            self.stream.write("".join(lines))
            self.stream.flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        if self.stream is not sys.stderr:
            self.stream.close()


class Exchange:
    """One request's reply: wraps `send`, remembering the status and counting body bytes."""

    __slots__ = ("nbytes", "send", "started", "status", "unread")

    def __init__(self, send: Send) -> None:
        self.send, self.status, self.nbytes, self.started = send, 0, 0, False
        self.unread = False  # a request body not (wholly) read: the connection cannot go on

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status, self.started = status, True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes | memoryview, more: bool = False) -> None:
        self.nbytes += len(data)
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def whole(
        self, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        hdrs = list(headers or [])
        if status != 204:
            hdrs.append((b"content-length", str(len(body)).encode()))
        if body and not any(k == b"content-type" for k, _ in hdrs):
            hdrs.append((b"content-type", b"text/plain; charset=utf-8"))
        if self.unread:  # (a client that sent Expect: 100-continue never sends the body)
            hdrs.append((b"connection", b"close"))
        await self.start(status, hdrs)
        await self.body(body)


_dates: dict[int, bytes] = {}


def http_date(t: float) -> bytes:
    """An HTTP date (remembered: many objects share a second)."""
    s = int(t)
    d = _dates.get(s)
    if d is None:
        if len(_dates) > 4096:
            _dates.clear()
        d = _dates[s] = formatdate(s, usegmt=True).encode()
    return d


def header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


async def receive_body(
    x: Exchange, receive: Receive, size: int | None, idle: float
) -> AsyncIterator[bytes]:
    """The request body as it comes; ClientGone if the client leaves before its end,
    BodyTimeout if it sends nothing for `idle` seconds."""
    got = 0
    while True:
        try:
            async with asyncio.timeout(idle):
                msg = await receive()
        except TimeoutError:
            raise BodyTimeout(
                f"no byte of the body for {idle} s (after {got}): nothing stored"
            ) from None
        if msg["type"] == "http.disconnect":
            want = f" of {size}" if size is not None else ""
            raise ClientGone(f"the client went away after {got}{want} bytes")
        piece = msg.get("body", b"")
        if piece:
            got += len(piece)
            yield piece
        if not msg.get("more_body", False):
            break
    x.unread = False


async def stream_reply(
    x: Exchange,
    receive: Receive,
    pieces: AsyncGenerator[memoryview, None],
    status: int,
    headers: list[tuple[bytes, bytes]],
    idle: float,
) -> None:
    """Start the reply once the first piece is in (a failure before it still gets a status),
    then send the pieces in slices of SLICE bytes, each given `idle` seconds: a slow reader
    that keeps reading is not cut off, one that takes nothing is (ClientGone), and so is
    one that goes away (else the cluster would be read to the end for nobody)."""
    async with contextlib.aclosing(pieces):  # (its read-ahead stops with it)
        piece = await anext(pieces)
        await x.start(status, headers)
        nxt = await anext(pieces, None)
        if nxt is None:
            await x.body(piece)
            return
        gone = asyncio.ensure_future(disconnected(receive))
        try:
            while True:
                for at in range(0, len(piece), SLICE):
                    if gone.done():
                        raise ClientGone("the client went away during the reply")
                    last = at + SLICE >= len(piece) and nxt is None
                    try:
                        async with asyncio.timeout(idle):
                            await x.body(piece[at : at + SLICE], not last)
                    except TimeoutError:
                        raise ClientGone(f"the client took nothing for {idle} s") from None
                if nxt is None:
                    break
                piece, nxt = nxt, await anext(pieces, None)
        finally:
            gone.cancel()
