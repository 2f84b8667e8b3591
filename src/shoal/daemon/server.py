"""The storage daemon's native-protocol server: one disk's ObjectStore on a TCP port.

asyncio (uvloop) around the sans-IO FrameReader. The event loop only moves bytes and events:
every engine call runs in a thread pool (the engine's pread/pwrite/fsync let go of the GIL),
so one slow disk operation never stalls other clients. Many requests are in flight on one
connection; each reply carries its request id.

Payloads: a small PUT is gathered and stored with one `put` (so concurrent small PUTs share
the engine's group commit); a large one streams to an engine writer in pieces of a few MiB
while reading from the socket is paused, so it is never held whole. A small GET is read and
verified in one trip to a thread (or on the event loop, if it is hot) and goes out through
the transport. A large one is verified piece by piece in the page cache and written to the
socket from there by one thread (`_send_direct`; uvloop keeps the GIL while it writes, so
the event loop would otherwise spend its time copying). A checksum failure in the middle of
a streamed GET closes the connection: the client sees a short payload, never a wrong byte.

Bad input closes only the connection it came on: a frame that is not ours, an oversized
frame, a payload cut short by a dropped connection (the half-written object is aborted:
nothing is stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from shoal.cluster.auth import Ticket, verify
from shoal.daemon.membership import Membership
from shoal.daemon.replication import FORWARD_MAX
from shoal.engine import ObjectStore, ObjectWriter, Record
from shoal.engine.keystore import check_meta
from shoal.engine.objectstore import changed_refs
from shoal.errors import (
    Conflict,
    Forbidden,
    IntegrityError,
    InvalidArgument,
    NotAuthenticated,
    NotFound,
    ShoalError,
    StaleMap,
    Superseded,
    Unavailable,
)
from shoal.proto.frames import (
    MAX_PAYLOAD,
    FrameEnd,
    FrameReader,
    FrameStart,
    Header,
    Op,
    Payload,
    ProtocolError,
    encode,
    encode_error,
)

if TYPE_CHECKING:
    from shoal.daemon.replication import Replication

log = logging.getLogger("shoal.daemon")

SMALL = 1 << 20  # payloads up to this are gathered whole
PIECE = 4 << 20  # larger ones go to the engine in pieces of this size
MAX_WRITE_AT = 64 << 20  # a write-at-offset is gathered whole: bounded
MAX_INFLIGHT = 256  # requests per connection before reading pauses
POOL_BUFFERS = 8  # free streaming buffers kept (x PIECE bytes)
BATCHED_PUT = 64 << 10  # PUTs up to this size are gathered into batches ...
PUT_BATCHES = 2  # ... of which this many commit at once (the engine pipelines two groups)
MAX_BATCH = 256
DIRECT = 64 << 10  # GET replies larger than this are written to the socket by a thread
SEND_TIMEOUT = 120.0  # a client that takes no bytes for this long is dropped
FAST_SEND = 0.25  # a GET piece sent from the page cache must go in this long, or be copied
BLOCK = 4096
T = TypeVar("T")
_RIGHT: dict[int, str] = {Op.GET: "r", Op.STAT: "r", Op.LIST: "r", Op.PUT: "w", Op.WRITE_AT: "w",
          Op.REFS: "w", Op.DELETE: "d"}  # fmt: skip
_local = threading.local()  # a buffer per thread for GETs where the device cannot be mapped


def _piece_end(pos: int, end: int) -> int:
    """Where the streamed piece that starts at byte `pos` ends: a PIECE from its block."""
    return min(end, pos - pos % BLOCK + PIECE)


def _send_fast(sock: socket.socket, views: list[memoryview]) -> memoryview | None:
    """Send `views` if the socket takes them within FAST_SEND; else a copy of what it has
    not taken (None: all sent)."""
    deadline = time.monotonic() + FAST_SEND
    for i, view in enumerate(views):
        done = 0
        while done < len(view):
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                done += sock.send(view[done:])
            except TimeoutError:
                return memoryview(b"".join([view[done:], *views[i + 1 :]]))
    return None


def _send_all(sock: socket.socket, data: bytes | memoryview) -> None:
    """sendall, but the timeout is SEND_TIMEOUT without progress, not for the whole."""
    view, done = memoryview(data), 0
    sock.settimeout(SEND_TIMEOUT)
    while done < len(view):
        done += sock.send(view[done:])


def record_meta(rec: Record) -> dict[str, Any]:
    return {
        "namespace": rec.namespace,
        "name": rec.name,
        "uuid": rec.uuid,
        "size": rec.size,
        "hash": rec.hash,
        "version": rec.version,
        "permanent": rec.permanent,
        "refs": list(rec.refs),
        "ctime": rec.ctime,
        "mtime": rec.mtime,
        "meta": rec.meta,
    }


def _str(meta: dict[str, Any], key: str, default: str | None = None) -> str:
    value = meta.get(key, default)
    if not isinstance(value, str):
        raise InvalidArgument(f"request field {key!r} must be a string")
    return value


def _int(meta: dict[str, Any], key: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"request field {key!r} must be an integer >= 0")
    return value


def _opt_int(meta: dict[str, Any], key: str) -> int | None:
    return None if meta.get(key) is None else _int(meta, key)


def _objmeta(meta: dict[str, Any]) -> dict[str, str]:
    """The object's own metadata a PUT carries (its "meta" field: str -> str), checked."""
    value = meta.get("meta")
    if value is not None and not isinstance(value, dict):
        raise InvalidArgument("request field 'meta' must be a map of strings to strings")
    return check_meta(value)


def _refs(meta: dict[str, Any], key: str) -> list[bytes]:
    value = meta.get(key, [])
    if not isinstance(value, list) or not all(isinstance(r, bytes) for r in value):
        raise InvalidArgument(f"request field {key!r} must be a list of byte strings")
    return value


class Daemon:
    """Serves `store`; `start` binds and returns the bound (host, port)."""

    def __init__(self, store: ObjectStore, *, threads: int = 16, max_payload: int = MAX_PAYLOAD):
        self.store = store
        self.max_payload = max_payload
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="shoal-io")
        self.connections: set[_Connection] = set()
        self.buffers: list[bytearray] = []  # free PIECE-sized buffers for streamed GETs
        self._puts: list[
            tuple[tuple[str, str | None, Any, list[bytes], bool, int | None], dict[str, str], Any]
        ] = []
        self._put_tasks: set[asyncio.Task[None]] = set()
        self._servers: list[asyncio.Server] = []
        self.cluster: Membership | None = None  # set when the daemon is part of a cluster
        self.replication: Replication | None = None  # (and its part in keeping N copies)
        self._tickets: dict[bytes, Ticket] = {}  # verified tickets, by their bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._repairs: set[asyncio.Task[None]] = set()

    async def put_small(
        self, namespace: str, name: str | None, data: bytes | bytearray, refs: list[bytes],
        permanent: bool, version: int | None = None, meta: dict[str, str] | None = None,
    ) -> Record:  # fmt: skip
        """Store a small object with the others that arrive meanwhile: the event loop gathers
        concurrent small PUTs and hands each gathering to the engine as one batch (one thread,
        one group commit), while the previous batch commits."""
        fut: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        self._puts.append(((namespace, name, data, refs, permanent, version), meta or {}, fut))
        if len(self._put_tasks) < PUT_BATCHES:
            task = asyncio.ensure_future(self._put_batches())
            self._put_tasks.add(task)
            task.add_done_callback(self._put_tasks.discard)
        return await fut

    async def _put_batches(self) -> None:
        while self._puts:
            batch, self._puts = self._puts[:MAX_BATCH], self._puts[MAX_BATCH:]
            try:
                results = await self.run(
                    self.store.put_many, [item for item, _, _ in batch], [m for _, m, _ in batch]
                )
            except BaseException as exc:  # the disk failed the whole batch
                results = [exc] * len(batch)  # type: ignore[list-item]
            for (_, _, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    def bad_read(self, namespace: str, name: str, exc: BaseException) -> None:
        """(Any thread.) A read failed: if this copy has bad blocks and the daemon is part of
        a cluster, fetch it again from another replica."""
        repl, loop = self.replication, self._loop
        if repl is None or loop is None or not isinstance(exc, IntegrityError):
            return

        def start() -> None:
            task = asyncio.ensure_future(repl.repair_soon(namespace, name))
            self._repairs.add(task)
            task.add_done_callback(self._repairs.discard)

        loop.call_soon_threadsafe(start)

    async def run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kw))

    async def start(
        self, host: str, port: int, ssl_ctx: ssl.SSLContext | None = None
    ) -> tuple[str, int]:
        loop = self._loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=1024, ssl=ssl_ctx
        )
        self._servers.append(server)
        addr = server.sockets[0].getsockname()
        return addr[0], addr[1]

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        tasks = [t for conn in self.connections for t in conn.tasks]
        for conn in list(self.connections):
            conn.close()
        for server in self._servers:
            await server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost schedule the aborts of cut uploads
        tasks += [t for conn in self.connections for t in conn.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        await asyncio.to_thread(self.executor.shutdown, wait=True)

    def refusal(self, h: Header, meta: dict[str, Any]) -> ShoalError | None:
        """Why a request may not be carried out here, or None. In a cluster: a request made
        with an older map than this daemon's (the client refreshes and retries), a missing,
        forged or expired ticket, or a right the ticket does not grant."""
        c = self.cluster
        if c is None or h.op == Op.PING:
            return None
        if h.epoch < c.epoch:
            return StaleMap(f"request made with map epoch {h.epoch}; this daemon has {c.epoch}",
                            c.epoch)  # fmt: skip
        raw: Any = meta.get("ticket")
        try:
            t = self._tickets.get(raw) if isinstance(raw, bytes) else None
            if t is None or t.expires < time.time():
                t = verify(c.ticket_key, raw)
                if len(self._tickets) > 4096:
                    self._tickets.clear()
                self._tickets[raw] = t  # (verify took only bytes)
            ns = meta.get("namespace", "default")
            right = "a" if meta.get("replica") else _RIGHT.get(h.op, "a")  # (daemons' own)
            t.require(ns if isinstance(ns, str) else "", right)
            if "prev_if_ref" in meta:  # the replaced object's bytes: only for who may read
                try:
                    t.require(ns if isinstance(ns, str) else "", "r")
                except Forbidden:
                    del meta["prev_if_ref"]
        except (NotAuthenticated, Forbidden) as exc:
            log.warning("refused op %d: %s", h.op, exc)
            return exc
        return None

    # -- requests without a payload --------------------------------------------------------

    async def handle(self, op: int, meta: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """(reply meta, reply payload or None) of a request that carries no payload."""
        store = self.store
        if op == Op.PING:
            return {"pong": True}, None
        repl = self.replication
        if op == Op.PLAN and repl is not None:
            return await repl.plan(), None
        if op in (Op.SCAN, Op.HAVE) and repl is not None:
            return await repl.handle(op, meta), None
        if op not in (Op.LIST, Op.STAT, Op.DELETE, Op.REFS):
            raise InvalidArgument(f"unknown operation {op}")
        ns = _str(meta, "namespace", "default")
        if repl is not None and op != Op.LIST:
            return await self.handle_replicated(repl, op, ns, _str(meta, "name"), meta), None
        if op == Op.LIST:
            prefix, after = _str(meta, "prefix", ""), _str(meta, "start_after", "")
            limit = min(_int(meta, "limit", 1000), 10000)
            recs = await self.run(store.list, ns, prefix, start_after=after, limit=limit)
            shown = recs
            if repl is not None and not meta.get("replica"):  # its own copies, once current
                repl.require_up_to_date()
                shown = [r for r in recs if repl.holds(r)]
            items = [record_meta(r) for r in shown]
            return {"items": items, "next": recs[-1].name if len(recs) == limit else None}, None
        name = _str(meta, "name")
        if op == Op.STAT:
            return record_meta(await self.run(store.stat, name, namespace=ns)), None
        if op == Op.DELETE:
            rec = await self.run(
                store.delete,
                name,
                namespace=ns,
                zero=bool(meta.get("zero")),
                discard=bool(meta.get("discard")),
            )
            return {"version": rec.version}, None
        if op == Op.REFS:
            add, remove = _refs(meta, "add"), _refs(meta, "remove")
            refs: tuple[bytes, ...] = ()
            if add:
                refs = await self.run(store.add_refs, name, add, namespace=ns)
            if remove:
                refs = await self.run(store.remove_refs, name, remove, namespace=ns)
            return {"refs": list(refs)}, None
        raise InvalidArgument(f"unknown operation {op}")

    async def handle_replicated(
        self, repl: Replication, op: int, ns: str, name: str, meta: dict[str, Any]
    ) -> dict[str, Any]:
        """STAT, DELETE and REFS in a cluster: a client's on the primary (changes replicated
        before the reply), or a peer's (a replicated delete at the primary's version)."""
        store = self.store
        if meta.get("replica"):
            if op == Op.STAT:
                return record_meta(await self.run(store.stat, name, namespace=ns))
            if op != Op.DELETE:
                raise InvalidArgument(f"operation {op} is not replicated")
            check_expiry(expiry(meta), ns, name)
            try:
                await self.run(store.remove, name, namespace=ns, version=_int(meta, "version"))
            except Superseded as exc:
                return {"version": exc.version, "superseded": True}
            return {"version": meta["version"]}
        if op == Op.STAT:
            repl.require_current(ns, name)
            return record_meta(await self.run(store.stat, name, namespace=ns))
        replicas = repl.replicas_for_write(ns, name)
        repl.require_current(ns, name)  # (a change made from a stale copy would spread)
        if op == Op.DELETE:
            async with repl.writing(ns, name) as (version, cur):
                if cur is None:
                    raise NotFound(f"{ns}/{name} not found")
                if cur.permanent:
                    raise Forbidden(f"{ns}/{name} is permanent: it cannot be deleted")
                prev = await _replaced(repl, ns, name, cur, meta)
                await self._replicated_delete(repl, replicas, ns, name, version, meta)
            return {"version": version, **prev}
        add, remove = _refs(meta, "add"), _refs(meta, "remove")
        async with repl.writing(ns, name) as (version, cur):
            if cur is None:
                raise NotFound(f"{ns}/{name} not found")
            refs, gone = changed_refs(cur, add, remove)
            if gone:  # the last one: the object goes
                await self._replicated_delete(repl, replicas, ns, name, version, meta)
                return {"refs": []}
            _, data = await repl.whole(ns, name)
            await repl.send_put(
                replicas, ns, name, version, data, refs, cur.permanent, expires=expiry(meta),
                meta=cur.meta,
            )  # fmt: skip
            with contextlib.suppress(Superseded):
                await self.run(_put_record, store, ns, name, data, refs, cur.permanent, version,
                               False, cur.meta)  # fmt: skip
        return {"refs": refs}

    async def _replicated_delete(
        self, repl: Replication, replicas: list[int], ns: str, name: str, version: int,
        meta: dict[str, Any],
    ) -> None:  # fmt: skip
        """(On the primary, its turn to write held.) The delete to the other replicas, then
        here; zeroing or discarding the blocks if the request asks."""
        await repl.send_delete(replicas, ns, name, version, expiry(meta))
        zero, discard = bool(meta.get("zero")), bool(meta.get("discard"))
        with contextlib.suppress(Superseded):
            await self.run(self.store.remove, name, namespace=ns, version=version, zero=zero,
                           discard=discard)  # fmt: skip


def expiry(meta: dict[str, Any]) -> float | None:
    """When a change must have been carried out by (wall clock), if it says: a replica's
    request carries its primary's `expires`; a client's its `timeout` (seconds)."""
    if meta.get("replica"):
        e = meta.get("expires")
        return float(e) if isinstance(e, int | float) else None
    t = meta.get("timeout")
    if isinstance(t, int | float) and t > 0:
        return time.time() + min(float(t), 3600.0) - 0.25
    return None


def check_expiry(expires: float | None, namespace: str, name: str | None) -> None:
    if expires is not None and time.time() > expires:
        raise Unavailable(f"a change of {namespace}/{name} arrived after its deadline: dropped")


PREV_MAX = 64 << 10  # the most a reply gives back of the object a change replaced


async def _replaced(
    repl: Replication, ns: str, name: str, cur: Record | None, meta: dict[str, Any]
) -> dict[str, Any]:
    """{"prev": bytes} of the object a change replaces, when the request asks for it by a
    reference that object carries (`prev_if_ref`: a client's striped object's head, whose
    stripes the client then deletes), it is small and this copy reads back; else {}."""
    want = meta.get("prev_if_ref")
    if not isinstance(want, bytes) or cur is None or want not in cur.refs or cur.size > PREV_MAX:
        return {}
    try:
        _, data = await repl.whole(ns, name)
    except ShoalError as exc:  # (a bad copy here must not block the write: scrub mends it)
        log.warning("%s/%s: the object replaced is not read back: %s", ns, name, exc)
        return {}
    return {"prev": bytes(data)}


def _put_record(
    store: ObjectStore, namespace: str, name: str | None, data: Any, refs: list[bytes],
    permanent: bool, version: int | None, force: bool, meta: Mapping[str, str] | None = None,
) -> Record | None:  # fmt: skip
    """(Thread.) Store `data` whole (with metadata `meta`); its committed record."""
    with store.writer(namespace, name, size=len(data), refs=refs, permanent=permanent,
                      version=version, force=force, meta=meta) as w:  # fmt: skip
        w.write(data)
        w.commit()
    return w.record


@dataclass(frozen=True, slots=True)
class _GetRequest:
    namespace: str
    name: str
    offset: int
    length: int | None


class _Upload:
    """The payload of one PUT or WRITE_AT, as it arrives."""

    def __init__(self, conn: _Connection, header: Header, meta: dict[str, Any]) -> None:
        self.conn = conn
        self.header = header
        self.meta = meta
        self.size = header.payload_len
        self.error: BaseException | None = None
        self.buf = bytearray()
        self.writer: ObjectWriter | None = None
        self.pieces: list[bytearray] = []  # full pieces waiting for the engine
        self.pump: asyncio.Task[None] | None = None
        self.streaming = header.op == Op.PUT and self.size > SMALL
        self.ended = False  # the whole payload has arrived
        self.objmeta: dict[str, str] = {}
        try:
            self.namespace = _str(meta, "namespace", "default")
            self.name = _str(meta, "name") if header.op == Op.WRITE_AT else meta.get("name")
            if self.name is not None and not isinstance(self.name, str):
                raise InvalidArgument("request field 'name' must be a string")
            if header.op == Op.WRITE_AT:
                self.offset = _int(meta, "offset")
                if self.size > MAX_WRITE_AT:
                    raise InvalidArgument(
                        f"a write-at-offset carries at most {MAX_WRITE_AT} bytes, not {self.size}"
                    )
            self.refs = _refs(meta, "refs")
            self.objmeta = _objmeta(meta)  # (a WRITE_AT's object keeps its own)
            self._cluster_role(conn.daemon.replication)
        except ShoalError as exc:
            self.error = exc

    def _cluster_role(self, repl: Replication | None) -> None:
        """In a cluster: a peer's replicated PUT (at the primary's version), or a client's
        write on the primary, which keeps the payload to send it on and is refused at once if
        it cannot be replicated."""
        self.replica = repl is not None and bool(self.meta.get("replica"))
        self.replicas: list[int] | None = None  # where a primary sends the write
        self.kept: list[bytearray] = []  # the streamed pieces, kept to send them on
        self.expires = expiry(self.meta)
        if self.replica:
            if self.header.op != Op.PUT or not isinstance(self.name, str):
                raise InvalidArgument("a replicated write is a PUT with a name")
            self.version: int | None = _int(self.meta, "version")
            check_expiry(self.expires, self.namespace, self.name)
            return
        self.version = None
        if repl is None:
            return
        if not isinstance(self.name, str):
            raise InvalidArgument("in a cluster every object has a name")
        if self.size > FORWARD_MAX and self.header.op == Op.PUT:
            raise InvalidArgument(
                f"a replicated object is at most {FORWARD_MAX} bytes, not {self.size}; "
                "the cluster client stripes larger ones"
            )
        self.replicas = repl.replicas_for_write(self.namespace, self.name)
        # A change made from a stale copy would spread (a patch to old bytes, a permanent
        # object it does not know of, a version that some copy has already).
        repl.require_current(self.namespace, self.name)

    def add(self, data: memoryview) -> None:
        if self.error is not None:
            return  # the rest of a refused payload is read and dropped
        self.buf += data
        if self.streaming and len(self.buf) >= PIECE:
            self.pieces.append(self.buf)
            if self.replicas is not None:
                self.kept.append(self.buf)
            self.buf = bytearray()
            if self.pump is None or self.pump.done():
                self.pump = asyncio.ensure_future(self._pump())
            if len(self.pieces) >= 2:
                self.conn.pause_reading("upload")

    async def _pump(self) -> None:
        daemon = self.conn.daemon
        try:
            if self.writer is None:
                self.writer = await daemon.run(
                    daemon.store.writer,
                    self.namespace,
                    self.name,
                    size=self.size,
                    refs=self.refs,
                    permanent=bool(self.meta.get("permanent")),
                    version=self.version,
                    force=bool(self.meta.get("force")),
                    meta=self.objmeta,
                )
            while self.pieces:
                piece = self.pieces.pop(0)
                if self.error is None:
                    await daemon.run(self.writer.write, piece)
                self.conn.resume_reading("upload")
        except (ShoalError, OSError) as exc:  # OSError: the disk said no
            self.error = exc
            self.pieces.clear()
            self.conn.resume_reading("upload")
            if not self.ended:
                self.conn.refuse(self.header, exc)

    async def finish(self) -> tuple[dict[str, Any], None]:
        self.ended = True
        daemon, store = self.conn.daemon, self.conn.daemon.store
        if self.pump is not None:
            await self.pump
        if self.error is None and self.streaming:
            self.pieces.append(self.buf)
            if self.replicas is not None:
                self.kept.append(self.buf)
            self.buf = bytearray()
            await self._pump()
        if self.error is not None:
            await self.abort()
            raise self.error
        permanent, force = bool(self.meta.get("permanent")), bool(self.meta.get("force"))
        repl = daemon.replication
        if repl is not None and self.replicas is not None:
            return await self._replicated(repl, self.replicas), None
        if self.replica:  # (a write that took long to arrive: its primary has given up)
            check_expiry(self.expires, self.namespace, self.name)
        try:
            if self.header.op == Op.WRITE_AT:
                assert isinstance(self.name, str)
                key = await daemon.run(
                    store.write_at, self.name, self.offset, self.buf, namespace=self.namespace
                )
                return {"uuid": key.uuid.bytes, "hash": key.hash, "size": key.size}, None
            rec = await self._commit(self.version, permanent, force)
        except Superseded as exc:  # a peer's change older than this copy: nothing to do
            return {"version": exc.version, "superseded": True}, None
        key = rec.key
        return {"uuid": key.uuid.bytes, "hash": key.hash, "size": key.size,
                "version": rec.version}, None  # fmt: skip

    async def _commit(
        self, version: int | None, permanent: bool, force: bool, data: Any = None,
        refs: list[bytes] | None = None, meta: dict[str, str] | None = None,
    ) -> Record:  # fmt: skip
        """Commit this upload's object here (or `data` instead of its payload, with `refs`
        and `meta`)."""
        daemon, store = self.conn.daemon, self.conn.daemon.store
        refs = self.refs if refs is None else refs
        meta = self.objmeta if meta is None else meta
        if self.writer is not None and data is None:
            writer, self.writer = self.writer, None
            writer.set_version(version, force)
            await daemon.run(writer.commit)
            rec = writer.record
        elif data is None and self.size <= BATCHED_PUT and not force:
            rec = await daemon.put_small(self.namespace, self.name, self.buf, refs, permanent,
                                         version, meta)  # fmt: skip
        else:
            rec = await daemon.run(
                _put_record, store, self.namespace, self.name, self.buf if data is None else data,
                refs, permanent, version, force, meta,
            )  # fmt: skip
        assert rec is not None
        return rec

    async def _replicated(self, repl: Replication, replicas: list[int]) -> dict[str, Any]:
        """A client's write on the primary: the object as it will be goes to the other
        replicas first, and is committed here once they all have it."""
        ns, name = self.namespace, self.name
        assert isinstance(name, str)
        async with repl.writing(ns, name) as (version, cur):
            if cur is not None and cur.permanent:
                raise Forbidden(f"{ns}/{name} is permanent: it cannot be changed")
            if self.header.op == Op.WRITE_AT:  # sent whole, as it is after the write
                old = (await repl.whole(ns, name))[1] if cur is not None else b""
                end = self.offset + len(self.buf)
                data: Any = bytearray(old) + bytes(max(0, end - len(old)))
                data[self.offset : end] = self.buf
                refs, permanent = list(cur.refs) if cur is not None else [], False
                objmeta = cur.meta if cur is not None else {}
            else:
                data = b"".join([*self.kept, self.buf]) if self.kept else self.buf
                refs, permanent = self.refs, bool(self.meta.get("permanent"))
                objmeta = self.objmeta
                if len(data) != self.size:  # (what the replicas get is what came)
                    raise ShoalError(f"internal: {len(data)} bytes kept of {self.size}")
            self.kept = []
            prev = await _replaced(repl, ns, name, cur, self.meta)
            replies = await repl.send_put(replicas, ns, name, version, data, refs, permanent,
                                          expires=self.expires, meta=objmeta)  # fmt: skip
            try:
                if self.header.op == Op.WRITE_AT:
                    rec = await self._commit(version, permanent, False, data, refs, objmeta)
                else:
                    rec = await self._commit(version, permanent, False)
            except Superseded as exc:  # a newer version came meanwhile (recovery)
                raise Unavailable(f"{ns}/{name} changed under this write: retry it") from exc
            await repl.check_copies(replicas, replies, rec, data)
        key = rec.key
        return {"uuid": key.uuid.bytes, "hash": key.hash, "size": key.size, "version": rec.version,
                **prev}  # fmt: skip

    async def abort(self) -> None:
        if self.pump is not None and not self.pump.done():
            self.error = self.error or ConnectionError("connection lost")
            with contextlib.suppress(BaseException):
                await self.pump
        if self.writer is not None:
            writer, self.writer = self.writer, None
            await self.conn.daemon.run(writer.abort)


class _Connection(asyncio.Protocol):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.reader = FrameReader(max_payload=daemon.max_payload)
        self.transport: asyncio.Transport | None = None
        self.upload: _Upload | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.send_lock = asyncio.Lock()
        self.writable = asyncio.Event()
        self.writable.set()
        self.paused: set[str] = set()
        self.closed = False
        self._inflight: list[bytearray] = []  # buffers handed to the transport
        self._fileno = -1
        self.tls = False
        self.direct: socket.socket | None = None  # a thread is writing a reply to this

    # -- transport callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._fileno = transport.get_extra_info("socket").fileno()
        self.tls = transport.get_extra_info("ssl_object") is not None
        self.daemon.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.writable.set()
        if self.upload is not None:  # a payload cut short: store nothing
            upload, self.upload = self.upload, None
            self._spawn(upload.abort())
        if not self.tasks:
            self.daemon.connections.discard(self)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.reader.feed(data)
        except ProtocolError as exc:
            log.warning("closing connection from %s: %s", self._peer(), exc)
            self._send_now(encode_error(Op.PING, 0, exc))
            self.close()
            return
        for ev in events:
            if self.closed:  # a frame was refused: nothing after it is carried out
                return
            if isinstance(ev, Payload):
                if self.upload is not None:
                    self.upload.add(ev.data)
            elif isinstance(ev, FrameStart):
                self._start(ev)
            elif isinstance(ev, FrameEnd) and self.upload is not None:
                upload, self.upload = self.upload, None
                self._spawn(self._reply(upload.header, upload.finish()))

    def _start(self, ev: FrameStart) -> None:
        h = ev.header
        if h.response or (h.payload_len and h.op not in (Op.PUT, Op.WRITE_AT)):
            exc = ProtocolError(f"unexpected {'response' if h.response else 'payload'} frame")
            self._send_now(encode_error(h.op, h.request_id, exc))
            self.close()
            return
        refused = self.daemon.refusal(h, ev.meta)
        if h.op in (Op.PUT, Op.WRITE_AT):
            upload = _Upload(self, h, ev.meta)
            upload.error = refused or upload.error
            if upload.error is not None and h.payload_len > SMALL:
                self.refuse(h, upload.error)  # say so now, not after megabytes more
                return
            self.upload = upload
        elif refused is not None:
            self._spawn(self._send(encode_error(h.op, h.request_id, refused)))
        elif h.op == Op.GET:
            self._get_start(h, ev.meta)
        else:
            self._spawn(self._reply(h, self.daemon.handle(h.op, ev.meta)))

    def refuse(self, h: Header, exc: BaseException) -> None:
        """Refuse a request whose payload is still arriving: the error now, then the
        connection closes (the rest of the frame would have to be read for nothing)."""
        self._send_now(encode_error(h.op, h.request_id, exc))
        self.close()

    # -- replies ---------------------------------------------------------------------------

    async def _reply(self, h: Header, work: Any) -> None:
        try:
            meta, payload = await work
        except ShoalError as exc:
            await self._send(encode_error(h.op, h.request_id, exc))
            return
        except Exception as exc:  # a bug, or the OS: the client still gets an answer
            log.exception("request with op %s failed", h.op)
            await self._send(encode_error(h.op, h.request_id, exc))
            return
        size = len(payload) if payload is not None else 0
        head = encode(h.op, h.request_id, meta, size, response=True)
        await self._send(head, payload)

    def _get_start(self, h: Header, meta: dict[str, Any]) -> None:
        """Route a GET: a hot small object is answered right here, from the page cache,
        without a thread; a large one whose record is cached goes straight to the thread that
        sends it (`_get_large`); anything else takes one trip to a thread to find out (`_get`)."""
        store = self.daemon.store
        try:
            ns, name = _str(meta, "namespace", "default"), _str(meta, "name")
            offset, length = _int(meta, "offset", 0), _opt_int(meta, "length")
            repl = self.daemon.replication
            if repl is not None and not meta.get("replica"):
                repl.require_current(ns, name)
            if not self.send_lock.locked():  # (else a reply is under way: do not cut into it)
                hit = store.get_cached(name, namespace=ns, offset=offset, length=length)
                if hit is not None:
                    rec, data = hit
                    head = encode(h.op, h.request_id, record_meta(rec), len(data), response=True)
                    self._send_now(head, data)
                    return
            req = _GetRequest(ns, name, offset, length)
            known = store.cached(name, namespace=ns)
            if known is not None and store.clip(known, offset, length)[1] > DIRECT:
                self._spawn(self._get_large(h, req))
                return
        except ShoalError as exc:
            self._spawn(self._send(encode_error(h.op, h.request_id, exc)))
            return
        self._spawn(self._get(h, req))

    async def _get(self, h: Header, req: _GetRequest) -> None:
        """A GET the event loop could not answer at once: a thread finds the object and, if it
        is small, reads it; the reply goes out through the transport. A large one goes on to
        `_get_large`."""
        store = self.daemon.store
        buf = bytearray(DIRECT + BLOCK)  # the blocks of at most DIRECT bytes
        try:

            def fetch() -> tuple[Record, int, memoryview | None]:
                for _ in range(3):
                    rec = store.stat(req.name, namespace=req.namespace)
                    off, n = store.clip(rec, req.offset, req.length)
                    if n > DIRECT:
                        return rec, n, None
                    try:
                        return rec, n, store.read_into(rec, off, n, buf)
                    except Conflict:
                        continue  # overwritten meanwhile: read the new one
                raise Conflict(f"{req.namespace}/{req.name} kept changing while being read")

            rec, length, chunk = await self.daemon.run(fetch)
        except ShoalError as exc:
            self.daemon.bad_read(req.namespace, req.name, exc)
            await self._send(encode_error(h.op, h.request_id, exc))
            return
        if chunk is None:
            await self._get_large(h, req)
            return
        head = encode(h.op, h.request_id, record_meta(rec), length, response=True)
        await self._send(head, chunk)

    async def _get_large(self, h: Header, req: _GetRequest) -> None:
        """A GET of more than DIRECT bytes: once the socket is free, a thread sends it
        (`_send_direct`) on a duplicate of the socket's descriptor, which it closes."""
        if self.tls:  # bytes must go through TLS: the transport writes them
            await self._get_through_transport(h, req)
            return
        async with self.send_lock:
            if not await self._drained():
                return
            self.direct = socket.socket(fileno=os.dup(self._fileno))
            try:
                await self.daemon.run(self._send_direct, h, req, self.direct)
            except ShoalError as exc:  # a block went bad mid-stream
                log.error("closing connection mid-GET of %s/%s: %s", req.namespace, req.name, exc)
                self.daemon.bad_read(req.namespace, req.name, exc)
                self.close()  # a short payload, never a wrong one
            except OSError as exc:  # the client went away, or stopped reading
                log.info("GET of %s/%s to %s cut short: %s", req.namespace, req.name,
                         self._peer(), exc)  # fmt: skip
                self.close()
            finally:
                self.direct = None

    async def _get_through_transport(self, h: Header, req: _GetRequest) -> None:
        """A large GET on a TLS connection: piece by piece, each read into a buffer by a
        thread (verified there) and written by the transport."""
        store = self.daemon.store
        try:
            rec = await self.daemon.run(store.stat, req.name, namespace=req.namespace)
            pos, length = store.clip(rec, req.offset, req.length)
        except ShoalError as exc:
            await self._send(encode_error(h.op, h.request_id, exc))
            return
        end = pos + length
        async with self.send_lock:
            self._send_now(encode(h.op, h.request_id, record_meta(rec), length, response=True))
            while pos < end and not self.closed:
                buf, stop = self._buffer(), _piece_end(pos, end)
                try:
                    chunk = await self.daemon.run(store.read_into, rec, pos, stop - pos, buf)
                except ShoalError as exc:
                    log.error("closing connection mid-GET of %s/%s: %s", rec.namespace,
                              rec.name, exc)  # fmt: skip
                    self._give_back(buf)
                    self.close()
                    return
                self._send_now(chunk)
                self._give_back(buf, sent=True)
                pos = stop
                await self.writable.wait()

    def _send_direct(self, h: Header, req: _GetRequest, sock: socket.socket) -> None:
        """(In a thread, which has the socket to itself.) Answer a GET of a large object: each
        piece is verified in the page cache and written to the socket from there, so its bytes
        are copied once, by the kernel. The socket's calls let go of the GIL.

        The blocks stay pinned while they are being sent, so that an overwrite meanwhile cannot
        hand them to another object; but a pin holds back every free in the store, so it is
        held only while the client keeps up. A piece the socket has not taken within
        FAST_SEND is copied and the pin let go; the rest of the GET is then read piece by
        piece into a buffer (verified there, without a pin: if the object changes meanwhile
        its reads fail and the connection closes, a short payload, never a wrong byte). An
        error before the first byte is the reply; after it, it closes the connection (the
        caller's part)."""
        store = self.daemon.store
        pin = contextlib.ExitStack()
        with sock, pin:
            pin.enter_context(store.pinned())
            try:
                rec = store.stat(req.name, namespace=req.namespace)
                pos, length = store.clip(rec, req.offset, req.length)
                end = pos + length
                views, mapped = self._piece(rec, pos, end, True)
            except ShoalError as exc:
                self.daemon.bad_read(req.namespace, req.name, exc)
                _send_all(sock, encode_error(h.op, h.request_id, exc))
                return
            _send_all(sock, encode(h.op, h.request_id, record_meta(rec), length, response=True))
            while True:
                pos += sum(len(v) for v in views)
                if not mapped:
                    for view in views:
                        _send_all(sock, view)
                elif (rest := _send_fast(sock, views)) is not None:
                    pin.close()  # a slow client: the pin goes, the copy is sent
                    mapped = False
                    _send_all(sock, rest)
                if pos >= end or self.closed:
                    return
                views, mapped = self._piece(rec, pos, end, mapped)

    def _piece(
        self, rec: Record, pos: int, end: int, mapped: bool
    ) -> tuple[list[memoryview], bool]:
        """The verified bytes of the streamed piece of `rec` that starts at `pos`: views of
        the page cache if `mapped` (under a pin) and the device can be mapped, else a view of
        this thread's buffer. True if they are views of the page cache."""
        store, stop = self.daemon.store, _piece_end(pos, end)
        if mapped:
            views = store.read_mapped(rec, pos, stop - pos)
            if views is not None:
                return views, True
        buf = getattr(_local, "buf", None) or bytearray(PIECE + BLOCK)
        _local.buf = buf
        return [store.read_into(rec, pos, stop - pos, buf)], False

    async def _drained(self) -> bool:
        """Wait until the transport has handed everything it holds to the socket, so that a
        thread can write to the socket itself. False if the connection closed meanwhile."""
        transport = self.transport
        while not self.closed and transport is not None and transport.get_write_buffer_size():
            if self.writable.is_set():
                await asyncio.sleep(0.0005)  # below the high-water mark: no event will say
            else:
                await self.writable.wait()
        return not self.closed and transport is not None

    def _buffer(self) -> bytearray:
        """A PIECE-sized buffer: one the socket has finished with, or a new one."""
        pool = self.daemon.buffers
        transport = self.transport
        if self._inflight and transport is not None and transport.get_write_buffer_size() == 0:
            pool.extend(self._inflight[: max(0, POOL_BUFFERS - len(pool))])
            self._inflight.clear()
        return pool.pop() if pool else bytearray(PIECE)

    def _give_back(self, buf: bytearray, *, sent: bool = False) -> None:
        """`buf` is no longer needed here; if `sent`, the transport may still hold it."""
        if sent:
            self._inflight.append(buf)
        elif len(self.daemon.buffers) < POOL_BUFFERS:
            self.daemon.buffers.append(buf)

    async def _send(self, head: bytes, payload: Any = None) -> None:
        async with self.send_lock:
            self._send_now(head, payload)
            await self.writable.wait()

    def _send_now(self, head: bytes | memoryview, payload: Any = None) -> None:
        if self.transport is None or self.closed or self.direct is not None:
            return  # (a thread is writing a reply: nothing may cut into it)
        if payload is not None and len(payload):
            self.transport.writelines([head, payload])
        else:
            self.transport.write(head)

    # -- plumbing --------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        if len(self.tasks) >= MAX_INFLIGHT:
            self.pause_reading("inflight")

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self.closed and not self.tasks:
            self.daemon.connections.discard(self)
        if len(self.tasks) < MAX_INFLIGHT // 2:
            self.resume_reading("inflight")
        if not task.cancelled() and task.exception() is not None:
            log.error("connection task failed", exc_info=task.exception())

    def pause_reading(self, why: str) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused.add(why)

    def resume_reading(self, why: str) -> None:
        if why in self.paused:
            self.paused.discard(why)
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
        if self.direct is not None:  # the thread writing to it stops at once
            with contextlib.suppress(OSError):
                self.direct.shutdown(socket.SHUT_RDWR)

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return f"{peer[0]}:{peer[1]}" if peer else "?"
