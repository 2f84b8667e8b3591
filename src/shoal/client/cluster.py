"""`ClusterClient`: a client of a whole cluster.

It proves its key to the master once (TLS when a CA certificate is given) and gets a ticket
and the cluster map, then follows the map by long-polling the master. Each object's daemons
come from placement (shoal.cluster.placement): the client goes straight to the PG's primary
(the first daemon of the acting set that is up), carrying its map epoch and ticket. A daemon
with a newer map answers StaleMap: the client fetches the newer map and retries, and the
caller never hears of it. An expired ticket is renewed the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections import Counter
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, TypeVar

import blake3

from shoal.client.client import AsyncClient, ObjectInfo, parse_address
from shoal.client.connection import Connection, Sink
from shoal.client.stripes import (
    HEAD_REF,
    PARALLEL,
    STRIPE,
    Head,
    Segment,
    digest,
    stripe_namespace,
    stripes_of,
)
from shoal.cluster.auth import URL_TTL, Ticket, contents, sign_read
from shoal.cluster.map import ClusterMap, MapDiff, apply
from shoal.cluster.placement import Placer
from shoal.engine.keys import ObjKey
from shoal.errors import (
    IntegrityError,
    InvalidArgument,
    NotAuthenticated,
    NotFound,
    ShoalError,
    StaleMap,
    Unavailable,
)
from shoal.proto.frames import Op
from shoal.tls import client_context

log = logging.getLogger("shoal.client")
Data = bytes | memoryview
T = TypeVar("T")
POLL_WAIT = 30.0
ATTEMPTS = 5
# seconds the stripes of a replaced or deleted object outlive it, for readers elsewhere (in
# other processes) that had its head; readers in this process hold them as long as they read
GRACE = 30.0


class NoDaemon(ShoalError):
    """No daemon of the object's placement group is up."""


@dataclass(frozen=True, slots=True)
class S3Grant:
    """What the master answers a gateway about one key's S3 signature: the key's rights, as
    a ticket's, and `value`, the SigV4 signing key asked for (32 bytes) or the SigV2
    signature (20 bytes)."""

    access_key: str
    rights: dict[str, str]
    value: bytes

    def allows(self, namespace: str, right: str) -> bool:
        return Ticket(self.access_key, self.rights, 0.0).allows(namespace, right)

    def require(self, namespace: str, right: str) -> None:
        Ticket(self.access_key, self.rights, 0.0).require(namespace, right)


MASTER_RETRY = 5.0  # seconds a refused connection to the master is tried again


class ClusterClient:
    def __init__(
        self,
        master: str,
        access_key: str,
        secret: str,
        *,
        ca: str | None = None,
        timeout: float = 60.0,
        pool_size: int = 2,
        grace: float = GRACE,
    ) -> None:
        self.master = parse_address(master)
        self.grace = grace
        self.access_key, self.secret = access_key, secret
        self.ssl: ssl.SSLContext | None = client_context(ca) if ca else None
        self.timeout, self.pool_size = timeout, pool_size
        self.map = ClusterMap()
        self.placer = Placer(self.map)
        self.ticket: bytes | None = None
        self._ticket_until = 0.0
        self._master: Connection | None = None
        self._daemons: dict[str, AsyncClient] = {}
        self._follow: asyncio.Task[None] | None = None
        self._map_lock = asyncio.Lock()
        self._opening = asyncio.Lock()
        self._reading: Counter[str] = Counter()  # a striped object's wid: readers here
        self._retired: dict[str, tuple[str, str, Head]] = {}  # wid: stripes to delete
        self._retiring: set[asyncio.Task[None]] = set()  # waiting out the grace
        self._dropping: set[asyncio.Task[None]] = set()  # deleting

    async def __aenter__(self) -> ClusterClient:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        # One trip: the ticket and the map (a master that sends no map is asked for it).
        reply = await self._auth(with_map=True)
        self._take(reply)
        if self.map.epoch < int(reply.get("epoch", 0)):
            await self.refresh()
        self._follow = asyncio.ensure_future(self._follow_loop())

    async def close(self) -> None:
        for t in list(self._retiring):  # stripes retired: deleted now (no reader here is left)
            t.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        left, self._retired = list(self._retired.values()), {}
        for pool, name, head in left:
            self._dropping_now(pool, name, head)
        await asyncio.gather(*self._dropping, return_exceptions=True)
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        for c in self._daemons.values():
            await c.close()
        self._daemons.clear()
        if self._master is not None:
            self._master.close()
            await self._master.wait_closed()

    # -- the master ------------------------------------------------------------------------

    async def _master_conn(self) -> Connection:
        async with self._opening:  # (two callers must not open two, one of them lost)
            if self._master is None or self._master.closed:
                host, port = self.master
                # A refused connection is most often a master being restarted (`shoal up`
                # restarts one within a second or two): try again for a few seconds.
                deadline, pause = time.monotonic() + MASTER_RETRY, 0.1
                while True:
                    try:
                        self._master = await Connection.open(host, port, self.timeout, ssl=self.ssl)
                        break
                    except ConnectionRefusedError as exc:
                        if time.monotonic() + pause > deadline:
                            raise ConnectionError(
                                f"cannot reach the master at {host}:{port}: {exc}"
                            ) from None
                        await asyncio.sleep(pause)
                        pause = min(pause * 2, 1.0)
                    except (OSError, ssl.SSLError) as exc:
                        raise ConnectionError(
                            f"cannot reach the master at {host}:{port}: {exc}"
                        ) from None
            return self._master

    async def _ask(self, op: int, meta: dict[str, Any], timeout: float | None = None) -> Any:
        conn = await self._master_conn()
        async with asyncio.timeout(timeout or self.timeout):
            reply, _ = await conn.request(op, meta)
        return reply

    async def _auth(self, with_map: bool = False) -> dict[str, Any]:
        """A new ticket; `with_map`: the map since this client's epoch too (as MAP answers)."""
        meta: dict[str, Any] = {"access_key": self.access_key, "secret": self.secret}
        if with_map:
            meta["since"] = self.map.epoch
        reply: dict[str, Any] = await self._ask(Op.AUTH, meta)
        self.ticket = bytes(reply["ticket"])
        self._ticket_until = time.monotonic() + float(reply.get("ttl", 3600)) * 0.8
        return reply

    async def _ticket(self) -> bytes:
        if self.ticket is None or time.monotonic() > self._ticket_until:
            await self._auth()
        assert self.ticket is not None
        return self.ticket

    async def sign_read(self, pool: str, name: str, ttl: float = URL_TTL) -> str:
        """The query string of a URL that reads `name` of `pool` from a daemon's HTTP endpoint
        for `ttl` seconds, signed with this client's ticket (shoal.cluster.auth.sign_read)."""
        return sign_read(await self._ticket(), pool, name, ttl)

    async def authenticate(self, access_key: str, secret: str) -> Ticket:
        """What the master's ticket for another key says (its rights): how a gateway checks
        the keys of its own users. NotAuthenticated for an unknown key or a wrong secret."""
        reply = await self._ask(Op.AUTH, {"access_key": access_key, "secret": secret})
        return contents(bytes(reply["ticket"]))

    async def s3_signing_key(self, access_key: str, date: str, region: str) -> S3Grant:
        """For an S3 gateway (this client's key needs g on "*", or to be an admin key): the
        SigV4 signing key of `access_key` for `date` (YYYYMMDD) and `region` (service s3),
        and its rights. NotFound if the master has no such key or does not know its secret
        (S3's InvalidAccessKeyId), Forbidden if this client's key may not ask."""
        r = await self.admin("s3_signing_key", access_key=access_key, date=date, region=region)
        return S3Grant(str(r["access_key"]), dict(r["rights"]), bytes(r["signing_key"]))

    async def s3_sign_v2(self, access_key: str, string_to_sign: bytes) -> S3Grant:
        """For an S3 gateway, as s3_signing_key: the SigV2 signature (HMAC-SHA1, raw: the
        request carries it in base64) of `string_to_sign` with the secret of `access_key`."""
        r = await self.admin("s3_sign_v2", access_key=access_key, string_to_sign=string_to_sign)
        return S3Grant(str(r["access_key"]), dict(r["rights"]), bytes(r["signature"]))

    async def admin(self, cmd: str, **args: Any) -> dict[str, Any]:
        """An admin command on the master (needs an admin key for most)."""
        reply: dict[str, Any] = await self._ask(
            Op.ADMIN, {"ticket": await self._ticket(), "cmd": cmd, "args": args}
        )
        return reply

    async def refresh(self, at_least: int = 0, wait: float = 0.0) -> None:
        """Bring the map up to date (at least to epoch `at_least`, waiting up to `wait`)."""
        async with self._map_lock:
            if at_least and self.map.epoch >= at_least:
                return
            deadline = time.monotonic() + wait
            while True:
                left = max(0.0, deadline - time.monotonic())
                meta = {"since": self.map.epoch, "wait": left if at_least else 0,
                        "ticket": await self._ticket()}  # fmt: skip
                reply = await self._ask(Op.MAP, meta, timeout=self.timeout + left)
                self._take(reply)
                if self.map.epoch >= at_least or time.monotonic() >= deadline:
                    return

    def _take(self, reply: dict[str, Any]) -> None:
        if "map" in reply:
            self._set(ClusterMap.from_dict(reply["map"]))
        elif "diff" in reply:
            d = MapDiff.from_dict(reply["diff"])
            self._set(apply(self.map, d) if d.base == self.map.epoch else self.map)

    def _set(self, m: ClusterMap) -> None:
        if m.epoch != self.map.epoch:
            self.map = m
            self.placer = Placer(m)

    async def _follow_loop(self) -> None:
        while True:
            try:
                async with self._map_lock:
                    epoch = self.map.epoch
                meta = {"since": epoch, "wait": POLL_WAIT, "ticket": await self._ticket()}
                reply = await self._ask(Op.MAP, meta, timeout=POLL_WAIT + 10)
                async with self._map_lock:
                    if self.map.epoch == epoch:
                        self._take(reply)
            except (OSError, ConnectionError, ShoalError, TimeoutError) as exc:
                log.debug("following the map: %s", exc)
                await asyncio.sleep(1.0)

    # -- daemons ---------------------------------------------------------------------------

    def acting(self, pool: str, name: str) -> tuple[int, ...]:
        return self.placer.place(pool, pool, name)

    def _client(self, address: str) -> AsyncClient:
        c = self._daemons.get(address)
        if c is None:
            c = self._daemons[address] = AsyncClient(
                address, pool_size=self.pool_size, timeout=self.timeout
            )
        return c

    async def _on_primary(
        self, pool: str, name: str, fn: Callable[[AsyncClient], Awaitable[T]]
    ) -> T:
        """`fn` on the primary of `name`'s placement group (the first of its daemons that is
        up), retried with a newer map or a new ticket when a daemon asks for one."""

        async def call() -> T:
            up = [self.map.daemons[i] for i in self.acting(pool, name)]
            up = [d for d in up if d.up]
            if not up:
                raise NoDaemon(f"no daemon of {pool}/{name}'s placement group is up")
            return await fn(await self._daemon(up[0].address))

        return await self._retrying(pool, call)

    async def _on_replicas(
        self, pool: str, name: str, fn: Callable[[AsyncClient], Awaitable[T]]
    ) -> T:
        """`fn` (a read) on the first daemon of `name`'s placement group that can serve it:
        one that is catching up, has a bad copy or is unreachable passes to the next."""

        async def call() -> T:
            up = [self.map.daemons[i] for i in self.acting(pool, name)]
            up = [d for d in up if d.up]
            if not up:
                raise NoDaemon(f"no daemon of {pool}/{name}'s placement group is up")
            last: BaseException | None = None
            for d in up:
                try:
                    return await fn(await self._daemon(d.address))
                except (Unavailable, IntegrityError, ConnectionError, TimeoutError) as exc:
                    last = exc
            assert last is not None
            raise last

        return await self._retrying(pool, call)

    async def _daemon(self, address: str) -> AsyncClient:
        c = self._client(address)
        c.epoch, c.ticket = self.map.epoch, await self._ticket()
        return c

    async def _retrying(self, pool: str, call: Callable[[], Awaitable[T]]) -> T:
        if pool not in self.map.pools:  # made after this map?
            await self.refresh()
            self.map.pool(pool)  # NotFound if not
        last: BaseException | None = None
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while attempt < ATTEMPTS or time.monotonic() < deadline:
            attempt += 1
            try:
                return await call()
            except StaleMap as exc:
                last = exc
                await self.refresh(max(exc.epoch, self.map.epoch + 1), wait=2.0)
            except NotAuthenticated as exc:
                last = exc
                await self._auth()
            except (NoDaemon, Unavailable, ConnectionError, TimeoutError) as exc:
                # A daemon may be going down, or catching up: news of the map, then again.
                last = exc
                await self.refresh(self.map.epoch + 1, wait=min(1.0, 0.1 * 2**attempt))
        assert last is not None
        raise last

    # -- objects ---------------------------------------------------------------------------
    # An object of more than one stripe is striped (shoal.client.stripes): its stripes are
    # placed one by one and move in parallel; its head, under its name, says where they are.

    async def put(
        self, pool: str, name: str, data: bytes | bytearray | memoryview, *,
        meta: Mapping[str, str] | None = None, keep_prev: bool = False,
    ) -> ObjKey:  # fmt: skip
        """Store `data` under `name`, with `meta` (the object's metadata, str -> str, 16 KiB
        at most encoded: a striped object's is on its head), which stat, open and list give
        back as ObjectInfo.meta. The stripes of a striped object it replaces are deleted,
        unless `keep_prev` (another head names them: an S3 version kept)."""
        if len(data) <= STRIPE:
            key, prev = await self._on_primary(
                pool, name, lambda c: c.put_over(pool, name, data, over_ref=HEAD_REF, meta=meta)
            )
            if prev is not None and not keep_prev:  # it replaced a striped object
                self._retire(pool, name, Head.decode(prev))
            return key
        mv = memoryview(data).cast("B")
        head = Head.new(len(mv), digest(mv))
        await self._put_stripes(pool, head.segments(name)[0], _slices(mv, head))
        return await self._put_head(pool, name, head, meta, keep_prev=keep_prev)

    async def put_stream(
        self, pool: str, name: str, size: int | None, chunks: AsyncIterator[bytes | memoryview],
        *, meta: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
        keep_prev: bool = False,
    ) -> ObjKey:  # fmt: skip
        """Store the bytes taken from `chunks`, a few stripes in memory at most: `size` of
        them, or as many as come when `size` is None. If `chunks` raises, or gives another
        count than `size`, nothing is stored (stripes already sent are deleted). `meta`: as
        for `put`, or a callable that gives it, called once every byte has been taken from
        `chunks` and before the object is committed (metadata known only at the end of the
        bytes: their MD5). `keep_prev`: as for `put`."""

        def final_meta() -> Mapping[str, str] | None:
            return meta() if callable(meta) else meta

        it = aiter(chunks)
        if size is not None and size <= STRIPE:  # one object: gathered in place
            whole, fill = bytearray(size), 0
            async for chunk in it:
                mv = memoryview(chunk).cast("B")  # (bytes, whatever the items)
                n = len(mv)
                if fill + n > size:
                    raise ValueError(f"the source gave more than the announced {size} bytes")
                whole[fill : fill + n] = mv
                fill += n
            if fill != size:
                raise ValueError(f"the source gave {fill} of the announced {size} bytes")
            return await self.put(pool, name, whole, meta=final_meta(), keep_prev=keep_prev)
        first = bytearray()
        if size is None:  # as much as one object holds, then on to stripes if there is more
            async for chunk in it:
                first += chunk
                if len(first) > STRIPE:
                    break
            else:
                return await self.put(pool, name, first, meta=final_meta(), keep_prev=keep_prev)
        head = Head.new(size or 0, b"")
        seg = await self._put_run(pool, head.segments(name)[0], first, it, size)
        done = replace(head, size=seg.size, count=seg.count, hash=seg.hash)
        try:
            final = final_meta()
        except BaseException:
            await self._drop(pool, seg.stripe_names())
            raise
        return await self._put_head(pool, name, done, final, keep_prev=keep_prev)

    async def put_segment(
        self, pool: str, base: str, size: int | None, chunks: AsyncIterator[bytes | memoryview]
    ) -> Segment:
        """Store the bytes taken from `chunks` as stripes only, named after `base`: a segment
        that no object is yet made of (put_composed makes one of segments; drop_segment
        deletes it). As put_stream: `size` of them or as many as come, and if `chunks`
        raises, or gives another count than `size`, nothing is stored."""
        return await self._put_run(pool, Segment.new(base), b"", aiter(chunks), size)

    async def put_composed(
        self, pool: str, name: str, parts: Sequence[Segment], *,
        meta: Mapping[str, str] | None = None, keep_prev: bool = False,
    ) -> ObjKey:  # fmt: skip
        """Make `name` the object that is `parts` end to end (segments from put_segment, each
        in one object only), with `meta`: one small write, the commit point; no data moves.
        The object replaced, if any, goes as a put's does. If this is refused, the segments
        are left as they were."""
        head = Head.composed(tuple(parts))
        return await self._put_head(pool, name, head, meta, drop_refused=False, keep_prev=keep_prev)

    async def drop_segment(self, pool: str, seg: Segment) -> None:
        """Delete a segment's stripes (best effort: a leftover is garbage, not harm)."""
        await self._drop(pool, seg.stripe_names())

    async def head_of(self, pool: str, name: str) -> Head | None:
        """The head of `name` if it is striped or composed, None if it is stored whole;
        NotFound if there is no such object."""
        info, raw = await self._on_replicas(pool, name, lambda c: c.get_with_info(pool, name))
        return Head.decode(raw) if HEAD_REF in info.refs else None

    async def _put_run(
        self, pool: str, seg: Segment, first: bytes | bytearray,
        it: AsyncIterator[bytes | memoryview], size: int | None,
    ) -> Segment:  # fmt: skip
        """Stripe `first` and then what `it` gives into `seg`'s stripes; `seg` with its
        size and BLAKE3. Nothing is left stored if `it` raises or gives another count than
        `size` (ValueError)."""
        hasher = blake3.blake3()
        got = 0

        async def stripes() -> AsyncIterator[tuple[int, bytes | bytearray]]:
            nonlocal got
            i, piece, fill = 0, bytearray(STRIPE), 0
            chunk: bytes | bytearray | memoryview | None = first
            while chunk is not None:
                mv = memoryview(chunk).cast("B")
                while len(mv):
                    n = min(len(mv), STRIPE - fill)
                    piece[fill : fill + n] = mv[:n]
                    fill, mv = fill + n, mv[n:]
                    if fill == STRIPE:  # a whole stripe: off it goes, a new one fills
                        hasher.update(piece)
                        got += fill
                        yield i, piece
                        i, piece, fill = i + 1, bytearray(STRIPE), 0
                chunk = await anext(it, None)
            if fill:
                hasher.update(memoryview(piece)[:fill])
                got += fill
                yield i, piece[:fill]

        await self._put_stripes(pool, seg, stripes())
        done = replace(seg, size=got, stripe=STRIPE, hash=hasher.digest())
        if size is not None and got != size:
            await self._drop(pool, done.stripe_names())
            raise ValueError(f"the source gave {got} of the announced {size} bytes")
        return done

    async def put_file(
        self, pool: str, name: str, f: BinaryIO, *, progress: Callable[[int], None] | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> ObjKey:  # fmt: skip
        size = os.fstat(f.fileno()).st_size - f.tell()

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await asyncio.to_thread(f.read, STRIPE):
                yield chunk
                if progress:
                    progress(len(chunk))

        return await self.put_stream(pool, name, size, chunks(), meta=meta)

    async def _put_stripes(
        self,
        pool: str,
        seg: Segment,
        pieces: AsyncIterator[tuple[int, bytes | bytearray | memoryview]],
    ) -> None:
        ns, busy = stripe_namespace(pool), asyncio.Semaphore(PARALLEL)
        tasks: list[asyncio.Task[ObjKey]] = []
        try:
            async for i, piece in pieces:
                await busy.acquire()
                sname = seg.stripe_name(i)

                async def one(
                    sname: str = sname, piece: bytes | bytearray | memoryview = piece
                ) -> ObjKey:
                    try:
                        return await self._on_primary(
                            pool, sname, lambda c: c.put(ns, sname, piece)
                        )
                    finally:
                        busy.release()

                tasks.append(asyncio.ensure_future(one()))
                if tasks[-1].done() and tasks[-1].exception():
                    break
            await asyncio.gather(*tasks)
        except BaseException:
            # not cancelled: a put already on the wire may still be stored after its delete
            # (which finds nothing), leaving a stripe behind; the deletes come after them
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._drop(pool, [seg.stripe_name(i) for i in range(len(tasks))])
            raise

    async def _put_head(
        self, pool: str, name: str, head: Head, meta: Mapping[str, str] | None = None,
        drop_refused: bool = True, keep_prev: bool = False,
    ) -> ObjKey:  # fmt: skip
        # Not sent twice: a second try after a lost answer could put this head back after
        # another writer replaced it and deleted its stripes. The caller hears OutcomeUnknown.
        # The object's metadata is the head's.
        try:
            key, prev = await self._on_primary(pool, name, lambda c: c.put_over(
                pool, name, head.encode(), refs=[HEAD_REF], over_ref=HEAD_REF, resend=False,
                meta=meta,
            ))  # fmt: skip
        except InvalidArgument:  # (refused: metadata too large, say) nothing half-stored
            if drop_refused:
                await self._drop_head(pool, name, head)
            raise
        if prev is not None and not keep_prev and (old := Head.decode(prev)).wid != head.wid:
            # (a segment both heads name stays: a multipart completion sent again)
            ours = {(s.base, s.wid) for s in head.segments(name)}
            gone = tuple(s for s in old.segments(name) if (s.base, s.wid) not in ours)
            if gone:
                self._retire(pool, name, replace(old, parts=gone) if old.parts else old)
        return ObjKey(key.uuid, head.hash, head.size, key.version)

    def _retire(self, pool: str, name: str, head: Head) -> None:
        """Delete the stripes of `head` (replaced or deleted) once no reader of this client
        reads them and `grace` seconds have passed; at once when the client closes."""
        self._retired[head.wid] = (pool, name, head)

        async def later() -> None:
            await asyncio.sleep(self.grace)
            while self._reading[head.wid]:
                await asyncio.sleep(0.5)
            if self._retired.pop(head.wid, None) is not None:
                await asyncio.shield(self._dropping_now(pool, name, head))

        t = asyncio.ensure_future(later())
        self._retiring.add(t)
        t.add_done_callback(self._retiring.discard)

    def _dropping_now(self, pool: str, name: str, head: Head) -> asyncio.Task[None]:
        """The deletion of `head`'s stripes, as a task `close` waits for (never cut short)."""
        t = asyncio.ensure_future(self._drop_head(pool, name, head))
        self._dropping.add(t)
        t.add_done_callback(self._dropping.discard)
        return t

    async def _drop_head(self, pool: str, name: str, head: Head) -> None:
        """Delete every stripe of `head`'s object (of each of its segments)."""
        await self._drop(pool, [s for seg in head.segments(name) for s in seg.stripe_names()])

    async def _drop(self, pool: str, snames: Sequence[str]) -> None:
        """Delete these stripes (best effort: a leftover is garbage, not harm)."""
        ns, busy = stripe_namespace(pool), asyncio.Semaphore(PARALLEL)

        async def one(sname: str) -> None:
            async with busy:
                with contextlib.suppress(ShoalError, ConnectionError):
                    await self._on_primary(pool, sname, lambda c: c.delete(ns, sname))

        await asyncio.gather(*(one(s) for s in snames))

    async def _head(self, pool: str, name: str, missing_ok: bool = False) -> Head | None:
        """The head of `name` if it is striped (None if it is not, or is missing_ok). Its
        callers have seen the head's reference on a stat: one read, which returns None if the
        object was replaced by one that is not striped meanwhile."""
        try:
            info, raw = await self._on_replicas(pool, name, lambda c: c.get_with_info(pool, name))
        except NotFound:
            if missing_ok:
                return None
            raise
        return Head.decode(raw) if HEAD_REF in info.refs else None

    async def get(
        self, pool: str, name: str, *, offset: int = 0, length: int | None = None
    ) -> bytes:
        out = bytearray()
        await self.get_to(pool, name, out.extend, offset=offset, length=length)
        return bytes(out)

    async def get_to(
        self, pool: str, name: str, sink: Sink, *, offset: int = 0, length: int | None = None
    ) -> ObjectInfo:
        info = await self._on_replicas(pool, name, lambda c: c.stat(pool, name))
        if HEAD_REF not in info.refs:
            fed = 0

            def counted(piece: memoryview) -> None:
                nonlocal fed
                fed += len(piece)
                sink(piece)

            async def once(c: AsyncClient) -> ObjectInfo:
                if fed:  # another replica would start again from the first byte
                    raise ShoalError(f"{pool}/{name}: the read was cut short after {fed} bytes")
                return await c.get_to(pool, name, counted, offset=offset, length=length)

            return await self._on_replicas(pool, name, once)
        head = await self._head(pool, name)
        assert head is not None
        info = _striped_info(info, head)
        if offset < 0 or (length is not None and length < 0) or offset > head.size:
            raise InvalidArgument(f"offset {offset} is beyond the end of {pool}/{name}")
        n = head.size - offset if length is None else min(length, head.size - offset)
        async with contextlib.aclosing(self._stripe_pieces(pool, name, head, offset, n)) as it:
            async for piece in it:
                sink(piece)
        return info

    async def _stripe_pieces(
        self, pool: str, name: str, head: Head, offset: int, n: int, ahead: int = PARALLEL
    ) -> AsyncGenerator[memoryview, None]:
        """Bytes [offset, offset + n) of a striped object, stripe by stripe in order, with up
        to `ahead` stripes fetched ahead. Each segment read whole (the whole object, for a
        striped one) is checked against its BLAKE3 (IntegrityError after its last piece)."""
        ns = stripe_namespace(pool)
        segments = head.segments(name)
        self._reading[head.wid] += 1  # (its stripes are not deleted while it reads)

        def fetch(k: int, i: int, start: int, count: int) -> asyncio.Task[bytes]:
            sname = segments[k].stripe_name(i)
            return asyncio.ensure_future(self._on_replicas(
                pool, sname, lambda c: c.get(ns, sname, offset=start, length=count)
            ))  # fmt: skip

        parts = stripes_of(segments, offset, n)
        fetching: list[asyncio.Task[bytes]] = []
        hashing: tuple[int, Any] | None = None  # (segment, its hasher) while one is read whole
        try:
            for j, (k, i, start, count) in enumerate(parts):
                while len(fetching) < ahead and j + len(fetching) < len(parts):
                    fetching.append(fetch(*parts[j + len(fetching)]))
                piece = await fetching.pop(0)
                if len(piece) != count:
                    raise IntegrityError(f"{pool}/{name}: stripe {i} is short")
                if i == 0 and start == 0:
                    hashing = (k, blake3.blake3())  # (whole, if it runs to its end)
                if hashing is not None and hashing[0] == k:
                    hashing[1].update(piece)
                    seg = segments[k]
                    if start + count == seg.size - i * seg.stripe:  # its last byte
                        if hashing[1].digest() != seg.hash:
                            what = "its stripes" if not head.parts else f"its part {k + 1}"
                            raise IntegrityError(f"{pool}/{name}: {what} do not hash to its "
                                                 "BLAKE3")  # fmt: skip
                        hashing = None
                yield memoryview(piece)
        finally:
            for t in fetching:
                t.cancel()
            self._reading[head.wid] -= 1
            if not self._reading[head.wid]:
                del self._reading[head.wid]

    async def open(self, pool: str, name: str) -> ObjectReader:
        """An object to read in pieces (a gateway's GET): one round trip for an object of one
        stripe, which it then holds (at most STRIPE bytes); a striped one's stripes are fetched
        as the pieces are taken."""
        info, raw = await self._on_replicas(pool, name, lambda c: c.get_with_info(pool, name))
        if HEAD_REF not in info.refs:
            return ObjectReader(self, pool, name, info, None, raw)
        head = Head.decode(raw)
        return ObjectReader(self, pool, name, _striped_info(info, head), head, b"")

    async def stat(self, pool: str, name: str) -> ObjectInfo:
        info = await self._on_replicas(pool, name, lambda c: c.stat(pool, name))
        if HEAD_REF not in info.refs:
            return info
        head = await self._head(pool, name)
        return info if head is None else _striped_info(info, head)

    async def stored_whole(self, pool: str, name: str) -> bool:
        """Whether `name` is stored whole under its name (not striped); NotFound if missing."""
        info = await self._on_replicas(pool, name, lambda c: c.stat(pool, name))
        return HEAD_REF not in info.refs

    async def delete(self, pool: str, name: str, *, keep_prev: bool = False) -> int | None:
        """Delete `name`; the version of the deletion (its tombstone's). `keep_prev`: its
        stripes, if it is striped, are left (another head names them)."""
        version, prev = await self._on_primary(
            pool, name, lambda c: c.delete_over(pool, name, over_ref=HEAD_REF)
        )
        if prev is not None and not keep_prev:  # a striped object: its stripes go
            self._retire(pool, name, Head.decode(prev))
        return version

    async def write_at(self, pool: str, name: str, offset: int, data: bytes) -> ObjKey:
        """Write into an object that is not striped (block images are made of such)."""
        return await self._on_primary(pool, name, lambda c: c.write_at(pool, name, offset, data))

    async def list(self, pool: str, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object of `pool` whose name starts with `prefix`, in name order (merged from
        every daemon that is up and in)."""
        pages: dict[int, list[ObjectInfo]] = {}

        async def all_of(d_id: int) -> None:
            c = await self._daemon(self.map.daemons[d_id].address)
            out, after = [], ""
            while True:
                page, nxt = await c.list(pool, prefix, start_after=after)
                out.extend(page)
                if nxt is None:
                    break
                after = nxt
            pages[d_id] = out

        async def every() -> None:
            pages.clear()
            ids = [i for i, d in self.map.daemons.items() if d.up and d.in_]
            got = await asyncio.gather(*(all_of(i) for i in ids), return_exceptions=True)
            # A daemon catching up is left out: the others of its objects' sets list them.
            failed = [x for x in got if isinstance(x, BaseException)]
            if failed and (len(failed) == len(ids) or any(
                not isinstance(x, Unavailable) for x in failed
            )):  # fmt: skip
                raise failed[0]

        await self._retrying(pool, every)
        seen: set[str] = set()
        for info in sorted((x for p in pages.values() for x in p), key=lambda x: x.name):
            if info.name not in seen:
                seen.add(info.name)
                if HEAD_REF in info.refs:  # a striped object: its size is in its head
                    head = await self._head(pool, info.name, missing_ok=True)
                    if head is None:
                        continue
                    info = _striped_info(info, head)
                yield info


def _slices(mv: memoryview, head: Head) -> AsyncIterator[tuple[int, memoryview]]:
    async def gen() -> AsyncIterator[tuple[int, memoryview]]:
        for i in range(head.count):
            yield i, mv[i * head.stripe : (i + 1) * head.stripe]

    return gen()


class ObjectReader:
    """What ClusterClient.open returns: the object's record (`info`, as its user sees it) and
    `pieces(offset, length)`, its bytes in order."""

    def __init__(
        self, client: ClusterClient, pool: str, name: str, info: ObjectInfo, head: Head | None,
        data: bytes | bytearray,
    ) -> None:  # fmt: skip
        self.client, self.pool, self.name, self.info = client, pool, name, info
        self.head, self.data = head, data

    async def pieces(
        self, offset: int = 0, length: int | None = None, *, ahead: int = PARALLEL
    ) -> AsyncGenerator[memoryview, None]:
        """Bytes [offset, offset + length) in order; a striped object's stripes are fetched
        up to `ahead` at a time (each is held in memory until it is taken)."""
        size = self.info.size
        if offset < 0 or offset > size or (length is not None and length < 0):
            raise InvalidArgument(f"offset {offset} is beyond the end of {self.pool}/{self.name}")
        n = size - offset if length is None else min(length, size - offset)
        if self.head is None:
            if n:
                yield memoryview(self.data)[offset : offset + n]
            return
        stripes = self.client._stripe_pieces(self.pool, self.name, self.head, offset, n, ahead)
        async with contextlib.aclosing(stripes):  # (closed with this: its fetches cancelled)
            async for piece in stripes:
                yield piece


def _striped_info(info: ObjectInfo, head: Head) -> ObjectInfo:
    """A striped object's record as its user sees it: its size and hash, not its head's."""
    refs = tuple(r for r in info.refs if r != HEAD_REF)
    return replace(info, size=head.size, hash=head.hash, refs=refs)


__all__ = ["ClusterClient", "NoDaemon", "ObjectReader"]
