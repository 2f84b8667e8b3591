"""The HTTP gateway: minikeyvalue's API over one pool of the cluster.

    PUT /KEY            store the body (201); Content-MD5 checked when given; chunked or sized
    GET|HEAD /KEY       the bytes (proxied; or, with redirect on, 302 to a daemon's endpoint);
                        HEAD also gives Content-Md5, the MD5 of the value in hex (as
                        minikeyvalue); a missing key is 404 with Content-Length: 0
    DELETE /KEY         204, or 404
    GET /PREFIX?list    {"next": "", "keys": ["/KEY", ...]}, `start` and `limit` for paging

A key is the URL path without its first slash, any UTF-8 (percent-encoded on the wire),
slashes included; it is the object's name in the pool. Listing reads the name index
(shoal.index); the bytes never do. Data is written first and the index second, so a crash
between leaves an object the index does not list (`shoal index rebuild` finds it), never a
listed key without data; a delete hides the key in the index first, deletes the object, then
records the deletion at the object's version, so that a slower PUT of an older version, from
this gateway or another, cannot bring the key back.

As in minikeyvalue, a PUT or DELETE of a key that this gateway is already changing is refused
with 409 (retry), a PUT without a length (neither Content-Length nor chunked) with 411. A PUT
of a key that exists replaces its value. An empty value is a value (stored, listed, read back
empty), as S3 and most stores have it; minikeyvalue refuses it (411), shoal does not.

The MD5 lives in the name index beside the key (Entry.md5): the gateway computes it while the
body streams in (runs of the body hashed in a worker thread: hashlib lets go of the GIL) and
writes it with the listing entry, and in the object's own metadata (MD5_META, hex), which the
daemons keep with the bytes: `shoal index rebuild` takes it from there. A row without it for
the object's version (an index of a shoal before it) is given it by the first HEAD from the
object's metadata; an object written before it has none there either, and that HEAD reads the
object, hashes it, and records it (`Index.amend`, or a new entry), once for all the HEADs that
ask meanwhile; later HEADs take it from the index. A HEAD with the index unreachable answers
without Content-Md5. GET does not look the MD5 up (it would cost every read a round trip to
the index).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_to_bytes

from shoal.asgi import Receive, Scope, Send
from shoal.client.client import ObjectInfo
from shoal.client.cluster import ClusterClient, NoDaemon
from shoal.errors import (
    Forbidden,
    InvalidArgument,
    NoSpace,
    NotAuthenticated,
    NotFound,
    OutcomeUnknown,
    ShoalError,
    Unavailable,
)
from shoal.gateway.auth import CHALLENGE, KeyCheck, KeyRefused
from shoal.gateway.common import (
    BodyTimeout,
    ClientGone,
    RequestLog,
    receive_body,
    stream_reply,
)
from shoal.gateway.common import Exchange as _Exchange
from shoal.gateway.common import header as _header
from shoal.gateway.common import http_date as _http_date
from shoal.index import MAX_KEY, MD5_META, Entry, Index, IndexUnavailable, md5_of
from shoal.proto.http import parse_range

log = logging.getLogger("shoal.http")

LIST_MAX = 1_000_000  # keys in one listing without `limit` (minikeyvalue's bound too)
LIST_PAGE = 1000
READ_AHEAD = 2  # stripes of a large object fetched ahead of the client (memory per reader)
IDLE_TIMEOUT = 60.0  # seconds a client may send nothing of its body (408), or take nothing
HASH_OFF_LOOP = 256 << 10  # bytes hashed (MD5) at a time in a worker thread; less in place
OCTETS = b"application/octet-stream"


class BadDigest(InvalidArgument):
    """The body does not match its Content-MD5."""


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, InvalidArgument | ValueError):
        return 400
    if isinstance(exc, KeyRefused):
        return 401
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, NoSpace):
        return 507
    if isinstance(exc, BodyTimeout):
        return 408
    if isinstance(exc, _Busy):
        return 409
    if isinstance(
        exc,
        Unavailable | NoDaemon | IndexUnavailable | OutcomeUnknown | TimeoutError | ConnectionError,
    ):
        return 503
    return 500


class HttpGateway:
    """The ASGI application. `client` reaches the cluster, `index` lists the keys of `pool`;
    with `auth`, each request needs a key with the right on the pool (shoal.gateway.auth)."""

    def __init__(
        self,
        client: ClusterClient,
        index: Index,
        pool: str,
        *,
        redirect: bool = False,
        request_log: RequestLog | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        auth: KeyCheck | None = None,
    ) -> None:
        self.client, self.index, self.pool = client, index, pool
        self.auth = auth
        self.redirect, self.log, self.idle = redirect, request_log, idle_timeout
        self._busy: set[str] = set()
        self._hashing: dict[str, asyncio.Task[tuple[ObjectInfo, bytes]]] = {}  # MD5s being read

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        t0 = time.perf_counter()
        x = _Exchange(send)
        method, key = scope["method"], ""
        try:
            if self.auth is not None:
                x.unread = method == "PUT"  # (refused: its body is not read)
                await self.auth.check(scope)
            raw = scope.get("raw_path") or scope["path"].encode()
            path = raw.split(b"?", 1)[0]
            try:
                key = unquote_to_bytes(path).decode()[1:]
            except UnicodeDecodeError:
                raise InvalidArgument("a key is UTF-8 (percent-encoded in the URL)") from None
            if len(key.encode()) > MAX_KEY:
                raise InvalidArgument(f"a key is at most {MAX_KEY} bytes of UTF-8")
            if "\x00" in key:
                raise InvalidArgument("a key cannot hold NUL (%00)")
            query = scope.get("query_string", b"")
            if query:
                await self._query(x, method, key, query.decode("latin-1"))
            elif not key:
                raise InvalidArgument("which key? PUT|GET|HEAD|DELETE /KEY, or GET /PREFIX?list")
            elif method in ("GET", "HEAD"):
                try:
                    await self._get(x, scope, receive, key, method == "HEAD")
                except NotFound:
                    if x.started:
                        raise
                    await x.whole(404)  # as minikeyvalue: no body, Content-Length: 0
            elif method == "PUT":
                x.unread = True
                await self._put(x, scope, receive, key)
            elif method == "DELETE":
                await self._delete(x, key)
            else:
                await x.whole(
                    405, b"GET, HEAD, PUT, DELETE\n", [(b"allow", b"GET, HEAD, PUT, DELETE")]
                )
        except ClientGone:
            x.status = 499  # (nginx's code for it) nobody to answer
        except Exception as exc:
            status = _status_of(exc)
            if status == 500:
                log.exception("%s /%s", method, key)
            if x.started:
                raise  # the reply is under way: the server cuts the connection
            headers = [(b"retry-after", b"1")] if status == 503 else []
            if status == 401:
                headers.append(CHALLENGE)
            await x.whole(status, f"{exc or type(exc).__name__}\n".encode(), headers)
        finally:
            if self.log is not None:
                client = scope.get("client")
                remote = f"{client[0]}:{client[1]}" if client else ""
                self.log.write(method, key, x.status, x.nbytes, time.perf_counter() - t0, remote)

    # -- listing ------------------------------------------------------------------------------

    async def _query(self, x: _Exchange, method: str, prefix: str, query: str) -> None:
        op = query.split("&", 1)[0].split("=", 1)[0]
        if op != "list":
            raise InvalidArgument(f"unknown query {op!r}: the one there is is ?list")
        if method != "GET":
            raise InvalidArgument("?list is a GET")
        params = dict(parse_qsl(query, keep_blank_values=True))
        start = params.get("start", "")
        start = start[1:] if start.startswith("/") else start
        try:
            limit = int(params.get("limit") or 0)
        except ValueError:
            raise InvalidArgument("limit is a number") from None
        if limit < 0:
            raise InvalidArgument("limit is a number >= 0 (0: no limit)")
        want = limit or LIST_MAX
        keys: list[str] = []
        after = start
        while len(keys) <= want:  # (one more than wanted: the next page's first)
            n = min(LIST_PAGE, want + 1 - len(keys))
            page = await self.index.list(self.pool, prefix, after, n)
            keys.extend(k for k, _ in page)
            if len(page) < n:
                break
            after = page[-1][0] + "\x00"  # the key right after it, bytewise
        nxt = "/" + keys[want] if len(keys) > want else ""
        keys = ["/" + k for k in keys[:want]]
        if nxt and not limit:
            await x.whole(413, f"more than {LIST_MAX} keys: give a limit\n".encode())
            return
        body = json.dumps({"next": nxt, "keys": keys}, ensure_ascii=False).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await x.start(200, headers)
        await x.body(body)

    # -- reads --------------------------------------------------------------------------------

    async def _get(
        self, x: _Exchange, scope: Scope, receive: Receive, key: str, head_only: bool
    ) -> None:
        md5: list[tuple[bytes, bytes]] = []
        if head_only:
            info, digest = await self._described(key)
            if digest is not None:  # (uvicorn sends header names in lower case)
                md5.append((b"content-md5", digest.hex().encode()))
        if self.redirect and await self._redirected(x, key, md5):
            return
        if head_only:
            reader = None
        else:
            reader = await self.client.open(self.pool, key)
            info = reader.info
        headers = [
            (b"accept-ranges", b"bytes"),
            (b"last-modified", _http_date(info.mtime)),
            (b"content-type", OCTETS),
            *md5,
        ]
        if info.hash is not None:
            headers.append((b"etag", b'"' + info.hash.hex().encode() + b'"'))
        first, length, status = 0, info.size, 200
        want = _header(scope, b"range")
        if want is not None:
            try:
                rng = parse_range(want, info.size)
            except InvalidArgument:
                await x.whole(
                    416,
                    b"range not satisfiable\n",
                    [(b"content-range", f"bytes */{info.size}".encode())],
                )
                return
            if rng is not None:
                first, length, status = rng[0], rng[1] - rng[0] + 1, 206
                headers.append((b"content-range", f"bytes {rng[0]}-{rng[1]}/{info.size}".encode()))
        headers.append((b"content-length", str(length).encode()))
        if reader is None or length == 0:
            await x.start(status, headers)
            await x.body(b"")
            return
        pieces = reader.pieces(first, length, ahead=READ_AHEAD)
        await stream_reply(x, receive, pieces, status, headers, self.idle)

    async def _described(self, key: str) -> tuple[ObjectInfo, bytes | None]:
        """A HEAD's object record (a stat) and MD5: the index's, if it has one for the version
        found; if not, the object is read and hashed, and the MD5 recorded (one read for the
        HEADs that ask meanwhile). No MD5 if the index cannot be reached."""
        listed = asyncio.ensure_future(self._listed(key))
        try:
            info = await self.client.stat(self.pool, key)
        except BaseException:
            listed.cancel()
            raise
        entry, reachable = await listed
        if entry is not None and entry.version == info.version and entry.md5 is not None:
            return info, entry.md5
        if not reachable:
            return info, None
        kept = md5_of(info.meta)  # (written with the object: no need to read it)
        if kept is not None:
            await self._record_md5(key, entry, info, kept)
            return info, kept
        task = self._hashing.get(key)
        if task is None:
            task = asyncio.ensure_future(self._recorded_md5(key, entry))
            self._hashing[key] = task
            task.add_done_callback(functools.partial(self._hashed, key))
        return await asyncio.shield(task)  # (a HEAD that goes does not stop the others')

    def _hashed(self, key: str, task: asyncio.Task[tuple[ObjectInfo, bytes]]) -> None:
        del self._hashing[key]
        if not task.cancelled():
            task.exception()  # (its HEADs have it, if any is left)

    async def _listed(self, key: str) -> tuple[Entry | None, bool]:
        """The key's index entry, and whether the index could be reached."""
        try:
            return await self.index.get(self.pool, key), True
        except IndexUnavailable as exc:
            log.warning("HEAD /%s without Content-Md5: %s", key, exc)
            return None, False

    async def _recorded_md5(self, key: str, listed: Entry | None) -> tuple[ObjectInfo, bytes]:
        """Read the object and hash it; the version read and its MD5, recorded in the index:
        on the entry of that version (`listed`, when it is that), else as a new entry, which
        applies only if nothing newer is there (a tombstone included)."""
        reader = await self.client.open(self.pool, key)
        info, hasher = reader.info, hashlib.md5()
        pieces = reader.pieces(ahead=READ_AHEAD)
        async with contextlib.aclosing(pieces):  # (a striped object's BLAKE3 checked too)
            async for piece in pieces:
                if len(piece) >= HASH_OFF_LOOP:
                    await asyncio.to_thread(hasher.update, piece)
                else:
                    hasher.update(piece)
        md5 = hasher.digest()
        await self._record_md5(key, listed, info, md5)
        return info, md5

    async def _record_md5(
        self, key: str, listed: Entry | None, info: ObjectInfo, md5: bytes
    ) -> None:
        """Record `md5` as the MD5 of `info`'s version: on `listed` if it is that version's
        entry, else as a new entry (applied only if nothing newer is there)."""
        try:
            if listed is not None and listed.version == info.version:
                await self.index.amend(self.pool, key, replace(listed, md5=md5))
            else:
                entry = Entry(info.size, info.hash, info.version, info.mtime, md5=md5)
                await self.index.put(self.pool, key, entry)
        except IndexUnavailable as exc:  # (the next HEAD reads it again)
            log.warning("HEAD /%s: its MD5 is not recorded: %s", key, exc)

    async def _redirected(
        self, x: _Exchange, key: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> bool:
        """302 to the read endpoint of a daemon holding `key`, if it is stored whole there,
        with a URL signed for a minute (shoal.cluster.auth.sign_read)."""
        if not await self.client.stored_whole(self.pool, key):
            return False  # striped: only a client can join the stripes
        m = self.client.map
        for d_id in self.client.acting(self.pool, key):
            d = m.daemons[d_id]
            if d.up and d.http_address:
                url = f"http://{d.http_address}/{quote(self.pool, safe='')}/{quote(key)}?"
                url += await self.client.sign_read(self.pool, key)
                await x.whole(302, b"", [(b"location", url.encode()), *(headers or [])])
                return True
        return False

    # -- writes -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _changing(self, key: str) -> Any:
        if key in self._busy:
            raise _Busy(f"/{key} is being changed by another request: retry")
        self._busy.add(key)
        try:
            yield
        finally:
            self._busy.discard(key)

    async def _put(self, x: _Exchange, scope: Scope, receive: Receive, key: str) -> None:
        length = _header(scope, b"content-length")
        chunked = _header(scope, b"transfer-encoding") is not None
        if length is None and not chunked:
            await x.whole(411, b"a PUT needs Content-Length (or a chunked body)\n")
            return
        size = int(length) if length is not None and not chunked else None
        md5_b64 = _header(scope, b"content-md5")
        expected: bytes | None = None
        if md5_b64 is not None:
            try:
                expected = base64.b64decode(md5_b64, validate=True)
            except (binascii.Error, ValueError):
                expected = b""
            if len(expected) != 16:
                raise InvalidArgument("Content-MD5 is the base64 of a 16-byte MD5")
        md5 = _Md5()

        def kept() -> dict[str, str]:  # (the object's metadata: called once the body is in)
            if md5.value is None:
                raise ShoalError("internal: stored before the whole body was read")
            return {MD5_META: md5.value.hex()}

        with self._changing(key):
            stored = await self.client.put_stream(
                self.pool,
                key,
                size,
                _body(x, receive, size, md5, expected, self.idle),
                meta=kept,
            )
            if md5.value is None:  # (put_stream takes the whole body before it stores)
                raise ShoalError("internal: stored before the whole body was read")
            version = stored.version or 0
            entry = Entry(stored.size, stored.hash, version, time.time(), md5=md5.value)
            try:
                await self.index.put(self.pool, key, entry)
            except IndexUnavailable as exc:
                raise IndexUnavailable(
                    f"/{key} is stored, but not listed: {exc} (a retry of the PUT, or "
                    "`shoal index rebuild`, lists it)"
                ) from None
        x.nbytes = stored.size
        headers = [(b"content-length", b"0")]
        if stored.hash is not None:
            headers.append((b"etag", b'"' + stored.hash.hex().encode() + b'"'))
        await x.start(201, headers)
        await x.send({"type": "http.response.body", "body": b""})

    async def _delete(self, x: _Exchange, key: str) -> None:
        with self._changing(key):
            hidden = await self.index.hide(self.pool, key)
            try:
                version = await self.client.delete(self.pool, key)
            except NotFound:
                if hidden is None:
                    raise
                version = hidden.version  # listed without data: no longer listed
            except (Forbidden, InvalidArgument, NotAuthenticated, NoDaemon):
                # refused before anything changed: listed again. (After a failure that
                # may have deleted it on some daemons, recovery may finish the delete: it
                # stays unlisted, as a crash here leaves it, until a retry or a rebuild.)
                if hidden is not None:
                    with contextlib.suppress(ShoalError):
                        await self.index.restore(self.pool, key, hidden)
                raise
            if version is not None:
                try:
                    await self.index.delete(self.pool, key, version)
                except IndexUnavailable as exc:  # (hidden already: not listed)
                    log.warning("DELETE /%s: %s", key, exc)
        await x.whole(204)


class _Busy(ShoalError):
    """The key is being changed by another request of this gateway (409, as minikeyvalue)."""


class _Md5:
    """The MD5 of a body as it arrives (`value`, once `finish` has run). Runs of
    HASH_OFF_LOOP bytes are hashed in a worker thread (hashlib lets go of the GIL on large
    buffers) while the next pieces arrive, so that the event loop does not spend ~1.4 ms a
    MiB on it; what is left at the end (all of a small body) is hashed in place."""

    __slots__ = ("hasher", "pending", "running", "size", "value")

    def __init__(self) -> None:
        self.hasher = hashlib.md5()
        self.pending: list[bytes] = []
        self.size = 0  # bytes pending
        self.running: asyncio.Future[None] | None = None
        self.value: bytes | None = None

    async def add(self, piece: bytes) -> None:
        self.pending.append(piece)
        self.size += len(piece)
        if self.size >= HASH_OFF_LOOP:
            if self.running is not None:
                await self.running  # (one run at a time: MD5 is sequential)
            run, self.pending, self.size = self.pending, [], 0
            loop = asyncio.get_running_loop()
            self.running = loop.run_in_executor(None, _update, self.hasher, run)

    async def finish(self) -> bytes:
        if self.running is not None:
            await self.running
            self.running = None
        _update(self.hasher, self.pending)
        self.pending, self.size = [], 0
        self.value = self.hasher.digest()
        return self.value


def _update(hasher: Any, pieces: list[bytes]) -> None:
    for piece in pieces:
        hasher.update(piece)


async def _body(
    x: _Exchange,
    receive: Receive,
    size: int | None,
    md5: _Md5,
    expected: bytes | None,
    idle: float,
) -> AsyncIterator[bytes]:
    """The request body as it comes, hashed into `md5`; ClientGone if the client leaves
    before its end, BodyTimeout if it sends nothing for `idle` seconds, BadDigest (after the
    last piece) if it does not match `expected` (a Content-MD5)."""
    async for piece in receive_body(x, receive, size, idle):
        await md5.add(piece)
        yield piece
    digest = await md5.finish()
    if expected is not None and digest != expected:
        raise BadDigest("the body does not match its Content-MD5: nothing was stored")
