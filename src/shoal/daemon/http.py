"""The daemon's read-only HTTP endpoint: `GET|HEAD /<namespace>/<name>`, with Range.

So that the HTTP gateway can redirect a read to the daemon that holds the bytes, as
minikeyvalue redirects to its volume servers. A plain ASGI application (served by uvicorn with
httptools inside the daemon's event loop); the engine calls run in the daemon's thread pool and
large bodies stream in verified chunks.

In a cluster it serves only signed URLs (shoal.cluster.auth.sign_read: a ticket's body, an
expiry and an HMAC under a key derived from the ticket), checked with the ticket key the
daemon holds: the ticket must grant read on the namespace, as on the native port. Unsigned,
expired, tampered with, signed for another object, or signed with a ticket that may not
read: 403, and a one-line reason. A daemon without a master has no key to check signatures
with (nor does its native port check tickets): its endpoint is open when it listens on
loopback only, and answers 403 to everything on any other address.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

from shoal.asgi import Receive, Scope, Send
from shoal.cluster.auth import check_read
from shoal.engine import Record
from shoal.errors import (
    Forbidden,
    IntegrityError,
    InvalidArgument,
    NotAuthenticated,
    NotFound,
    ShoalError,
)
from shoal.proto.http import parse_range

SMALL = 1 << 20
PIECE = 4 << 20


def make_app(
    store: Any,
    run: Callable[..., Awaitable[Any]],
    current: Callable[[str, str], None] | None = None,
    *,
    ticket_key: Callable[[], bytes] | None = None,
    open_unsigned: bool = False,
) -> Callable[..., Awaitable[None]]:
    """The ASGI app over `store` (an ObjectStore), running engine calls with `run`. In a
    cluster, `current(namespace, name)` raises Unavailable for a copy this daemon may not
    serve (it is catching up, or the object is not its): 503, read another copy; and
    `ticket_key()` gives the cluster's ticket key (b"" until the daemon has registered: 503),
    which checks the signed URLs. Without `ticket_key` (no master), unsigned reads are served
    if `open_unsigned` (the endpoint listens on loopback), and none otherwise."""

    async def respond(
        send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await respond(send, 405, [(b"allow", b"GET, HEAD")], b"read-only endpoint\n")
            return
        path = unquote(scope.get("raw_path", b"").decode("latin-1").split("?")[0]) or scope["path"]
        ns, _, name = path.lstrip("/").partition("/")
        if not ns or not name:
            await respond(send, 400, [], b"GET /<namespace>/<name>\n")
            return
        if ticket_key is not None:
            key = ticket_key()
            if not key:
                msg = b"not yet registered with the master: retry\n"
                await respond(send, 503, [(b"retry-after", b"1")], msg)
                return
            try:
                check_read(key, ns, name, scope.get("query_string", b"").decode("latin-1"))
            except (NotAuthenticated, Forbidden) as exc:
                await respond(send, 403, [], f"{exc}\n".encode())
                return
        elif not open_unsigned:
            msg = (
                b"this daemon has no master, so no key to check signed URLs with: "
                b"its HTTP endpoint serves only on loopback\n"
            )
            await respond(send, 403, [], msg)
            return
        try:
            if current is not None:
                current(ns, name)
        except ShoalError as exc:
            await respond(send, 503, [(b"retry-after", b"1")], f"{exc}\n".encode())
            return
        try:
            rec: Record = await run(store.stat, name, namespace=ns)
        except (NotFound, InvalidArgument):
            await respond(send, 404, [], b"not found\n")
            return
        headers = [
            (b"accept-ranges", b"bytes"),
            (b"last-modified", formatdate(rec.mtime, usegmt=True).encode()),
            (b"content-type", b"application/octet-stream"),
        ]
        if rec.hash is not None:
            headers.append((b"etag", b'"' + rec.hash.hex().encode() + b'"'))
        first, last, status = 0, rec.size - 1, 200
        range_header = dict(scope["headers"]).get(b"range")
        if range_header is not None:
            try:
                rng = parse_range(range_header.decode("latin-1"), rec.size)
            except InvalidArgument:
                hdr = (b"content-range", f"bytes */{rec.size}".encode())
                await respond(send, 416, [hdr], b"range not satisfiable\n")
                return
            if rng is not None:
                first, last, status = rng[0], rng[1], 206
                cr = f"bytes {first}-{last}/{rec.size}".encode()
                headers.append((b"content-range", cr))
        length = last - first + 1
        headers.append((b"content-length", str(length).encode()))
        body_first: Any = b""
        if method == "GET" and 0 < length <= SMALL:
            try:
                body_first = await run(
                    store.get, rec.name, namespace=ns, offset=first, length=length
                )
            except IntegrityError:
                await respond(send, 500, [], b"stored data failed its checksum\n")
                return
            except ShoalError:
                await respond(send, 404, [], b"not found\n")
                return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if method == "HEAD" or length <= SMALL:
            await send({"type": "http.response.body", "body": bytes(body_first)})
            return
        chunks = store.iter_read(rec.name, namespace=ns, offset=first, length=length, chunk=PIECE)
        nxt = functools.partial(next, chunks, None)
        while (chunk := await run(nxt)) is not None:
            await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app
