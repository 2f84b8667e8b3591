"""A daemon's part in keeping every object at N copies: replication, recovery, rebalancing,
scrub.

Replication (primary copy). A client writes to its object's primary, the first daemon of the
placement group's acting set that is up. The primary refuses the write when fewer than the
pool's min_size of the acting set are up, or when it is not the primary in its own map. It
commits the write locally; the engine gives it a version (the next after the object's, and at
least `epoch << 24`, so that a later primary's writes outrank an earlier one's). It then sends
the object as it now is, with that version, to the other up daemons of the acting set, all at
once, over the daemons' own link (mutual TLS when certificates are configured). The client is
acknowledged only when every one of them has committed it. A replica stores a change only if
it is newer than its copy (an older one arriving late is Superseded, and that counts as done).
A delete leaves a tombstone at its version, so that a copy that missed it cannot bring the
object back.

Recovery and rebalancing (pull). On every new map, and every `interval` seconds, a daemon asks
each other daemon that is up for the objects it holds whose acting set now includes the asker
(SCAN), and fetches every one it lacks or holds at an older version. When it has heard from
all of them it is current for that map: from then on it serves client reads of the placement
groups it held then and still holds (a daemon that has just come back, or that has just been
given a placement group, answers Unavailable and the client reads another replica). Then it
hands over what it holds but no longer should: a copy is dropped only once every daemon of the
object's acting set has said it holds that version or a newer one (HAVE); never the last
copy. Fetches are throttled to `rate` bytes per second so that clients keep working.

Scrub: every `scrub_interval` seconds, or when asked, a daemon reads and verifies every block
of its copies (a bad copy is fetched again from another replica) and, for the objects it is
primary of, compares version, hash and metadata with the other replicas and sends its copy to
any that is stale or differs.

An object's metadata (Record.meta) travels with its bytes: in every PUT a primary sends, in
what recovery fetches, in what scrub sends to repair a copy.

Figures for `shoal status` go to the master in heartbeats (`figures`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from shoal.client.client import AsyncClient
from shoal.cluster.auth import issue
from shoal.cluster.map import ClusterMap, Pool
from shoal.cluster.placement import Placer, pg_of, shortfall
from shoal.daemon.membership import Membership
from shoal.engine import Record
from shoal.engine.keystore import check_name, meta_digest
from shoal.errors import (
    IntegrityError,
    InvalidArgument,
    NotFound,
    ShoalError,
    Superseded,
    Unavailable,
)
from shoal.proto.frames import Op

if TYPE_CHECKING:
    from shoal.daemon.server import Daemon

log = logging.getLogger("shoal.daemon")

FORWARD_MAX = 64 << 20  # a replicated object is sent whole: clients stripe larger ones
PEER_TIMEOUT = 10.0  # to connect, and for one request (a whole object of FORWARD_MAX at most)
SCAN_PAGE = 2000
HAVE_BATCH = 500
FETCHES = 4  # objects fetched at once by recovery
SETTLE, SETTLE_MAX = 0.5, 5.0  # a pass after a map change waits for the map to settle
FULL_EVERY = 600.0  # seconds between passes when nothing is left to fetch or hand over
_PEER_ERRORS = (ShoalError, ConnectionError, OSError, TimeoutError)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Until `event` is set or `timeout` passes. (Not asyncio.wait_for: on 3.11 it can swallow
    a cancel that comes as the event is set, and the loop waiting would never stop.)"""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _too_few(m: ClusterMap, pool: Pool, name: str, acting: tuple[int, ...], up: int) -> str:
    """Why a write to `name` is refused, `up` of its `acting` daemons being up (fewer than
    min_size): daemons down, or placement, which leaves a PG short when the daemons the pool
    may use are on fewer failure domains than its replicas (all of them may be up)."""
    floor, refused = f"fewer than the pool's min_size {pool.min_size}", ": writes are refused"
    if len(acting) == pool.replicas:
        return f"{up} of its {pool.replicas} daemons are up, {floor}{refused}"
    short = shortfall(m, pool)  # (not None: an acting set is short only then)
    why = short.why() if short is not None else "placement finds too few failure domains"
    pg = f"pg {pool.id}.{pg_of(pool, pool.name, name):x} of pool {pool.name}"
    if len(acting) < pool.min_size:
        return f"{pg} maps to {_count(len(acting), 'daemon')}, {floor}, as {why}{refused}"
    return (f"{up} of its {len(acting)} daemons are up, {floor} ({pg} maps to {len(acting)} "
            f"of {pool.replicas}, as {why}){refused}")  # fmt: skip


def _pool_of(namespace: str) -> str:
    return namespace.partition("#")[0]


class Peers:
    """Connections to the other daemons, with a ticket this daemon signs for itself."""

    def __init__(self, cluster: Membership, ssl_ctx: ssl.SSLContext | None) -> None:
        self.cluster, self.ssl = cluster, ssl_ctx
        self._clients: dict[str, AsyncClient] = {}
        self._ticket, self._ticket_until = b"", 0.0

    def ticket(self) -> bytes:
        if time.monotonic() > self._ticket_until:
            c = self.cluster
            self._ticket = issue(c.ticket_key, f"daemon.{c.id}", {"*": "rwda"}, 3600)
            self._ticket_until = time.monotonic() + 1800
        return self._ticket

    def client(self, daemon_id: int) -> AsyncClient:
        d = self.cluster.map.daemons.get(daemon_id)
        if d is None:
            raise Unavailable(f"daemon {daemon_id} is not in the map")
        address = d.peer_address or d.address
        c = self._clients.get(address)
        if c is None:
            tls = self.ssl if d.peer_address else None
            c = self._clients[address] = AsyncClient(
                address, pool_size=2, timeout=PEER_TIMEOUT, retries=1, ssl=tls
            )
        c.epoch, c.ticket = self.cluster.epoch, self.ticket()
        return c

    async def call(
        self, daemon_id: int, op: int, meta: dict[str, Any], payload: Any = None
    ) -> tuple[dict[str, Any], bytearray]:
        meta["replica"] = True
        return await self.client(daemon_id)._call(op, meta, payload, idempotent=True)

    async def close(self) -> None:
        for c in self._clients.values():
            await c.close()
        self._clients.clear()


class Replication:
    def __init__(
        self,
        daemon: Daemon,
        cluster: Membership,
        ssl_ctx: ssl.SSLContext | None = None,
        *,
        interval: float = 10.0,
        rate: float = 200e6,
        scrub_interval: float = 86400.0,
    ) -> None:
        self.daemon, self.store, self.cluster = daemon, daemon.store, cluster
        self.peers = Peers(cluster, ssl_ctx)
        self.interval, self.rate, self.scrub_interval = interval, rate, scrub_interval
        self.clean: ClusterMap | None = None  # the map of the last complete recovery pass
        self._placer: Placer | None = None
        self._wake = asyncio.Event()
        self._scrub_wake = asyncio.Event()
        self._scrub_pool = ""
        self._requests: dict[str, int] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._writing: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]] = {}
        self._failed: dict[tuple[str, str], int] = {}  # versions a failed write handed out
        # PGs (per pool) held in every map since the last complete pass / since this one began
        self._held: dict[str, set[int]] = {}
        self._held_in_pass: dict[str, set[int]] | None = None
        self._throttle_at = 0.0
        self.counts: dict[str, Any] = {
            "degraded_objects": 0, "degraded_bytes": 0, "misplaced_objects": 0,
            "misplaced_bytes": 0, "recovered_objects": 0, "recovered_bytes": 0,
        }  # fmt: skip
        self.missing = (0, 0)  # (objects, bytes) found lacking and not fetched yet
        # objects, errors, repaired: since the daemon started; pass: objects checked by the
        # pass under way (or the last); done: the last scrub request (a counter the master
        # hands out) a whole pass has answered, so that `shoal scrub` can follow its own.
        self.scrub_counts: dict[str, Any] = {"objects": 0, "errors": 0, "repaired": 0,
                                             "running": False, "pass": 0, "done": 0}  # fmt: skip
        self._scrub_asked = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        store, cluster = self.store, self.cluster
        store.tombstones = True
        store.version_floor = lambda: cluster.epoch << 24
        cluster.figures = self.figures
        cluster.on_map = self._observe
        cluster.on_reply = self._on_reply
        self._tasks = [asyncio.ensure_future(self._recovery_loop()),
                       asyncio.ensure_future(self._scrub_loop())]  # fmt: skip

    async def close(self) -> None:
        self._closed = True  # (a loop whose cancel was lost stops at its next turn)
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        await self.peers.close()

    def closed(self) -> bool:
        return self._closed

    def figures(self) -> dict[str, Any]:
        c = dict(self.counts)
        c["degraded_objects"] += self.missing[0]
        c["degraded_bytes"] += self.missing[1]
        current = self.clean is not None and self.clean.epoch == self.cluster.epoch
        return {**c, "current": current, "epoch": self.cluster.epoch,
                "scrub": dict(self.scrub_counts)}  # fmt: skip

    def _on_reply(self, reply: dict[str, Any]) -> None:
        asked = {k: int(reply.get(k, 0)) for k in ("scrub", "rebalance")}
        self._scrub_asked = asked["scrub"]
        if self._requests is None:  # (what was asked before this daemon started is not for it)
            self.scrub_counts["done"] = asked["scrub"]
        else:
            if asked["scrub"] > self._requests["scrub"]:
                self._scrub_pool = str(reply.get("scrub_pool") or "")
                self._scrub_wake.set()
            if asked["rebalance"] > self._requests["rebalance"]:
                self._wake.set()
        self._requests = asked

    # -- placement ---------------------------------------------------------------------------

    def placer(self, m: ClusterMap) -> Placer:
        p = self._placer
        if p is None or p.map is not m:
            p = self._placer = Placer(m)
        return p

    def acting(self, m: ClusterMap, namespace: str, name: str) -> tuple[Pool, tuple[int, ...]]:
        pool = _pool_of(namespace)
        if pool not in m.pools:  # (made after this daemon's map, perhaps: it will hear)
            raise Unavailable(f"there is no pool {pool!r} in map epoch {m.epoch} of daemon "
                              f"{self.cluster.id}")  # fmt: skip
        placement = self.placer(m).pool(pool)
        return placement.pool, placement.place(pool, name)

    def _placed_rows(self, m: ClusterMap) -> Iterator[tuple[Record, Pool, tuple[int, ...]]]:
        """(Thread.) Every row of this store, tombstones included, with its pool and acting
        set under `m` (rows of pools `m` does not have are left out)."""
        after = ("", "")
        while True:
            recs = self.store.page(after, SCAN_PAGE)
            for r in recs:
                placed = self._acting_or_none(m, r)
                if placed is not None:
                    yield r, *placed
            if len(recs) < SCAN_PAGE:
                return
            after = (recs[-1].namespace, recs[-1].name)

    def _acting_or_none(self, m: ClusterMap, rec: Record) -> tuple[Pool, tuple[int, ...]] | None:
        if _pool_of(rec.namespace) not in m.pools:
            return None
        return self.acting(m, rec.namespace, rec.name)

    # -- the primary's part ------------------------------------------------------------------

    def replicas_for_write(self, namespace: str, name: str) -> list[int]:
        """The other up daemons a write of `namespace/name` goes to; Unavailable if this
        daemon is not its primary, or fewer than min_size of its daemons are up;
        InvalidArgument for a name no copy would take (refused here, not by every replica)."""
        check_name(namespace, name)
        m, me = self.cluster.map, self.cluster.id
        pool, acting = self.acting(m, namespace, name)
        up = [i for i in acting if m.daemons[i].up]
        if not up or up[0] != me:
            raise Unavailable(
                f"daemon {me} is not the primary of {namespace}/{name} at map epoch {m.epoch} "
                f"(its daemons are {list(acting)})"
            )
        if len(up) < pool.min_size:
            raise Unavailable(f"{namespace}/{name}: {_too_few(m, pool, name, acting, len(up))}")
        return up[1:]

    def require_up_to_date(self) -> None:
        """Unavailable unless this daemon has finished a recovery pass since it came up."""
        m, me, clean = self.cluster.map, self.cluster.id, self.clean
        d = m.daemons.get(me if me is not None else -1)
        if clean is None or d is None or clean.epoch < d.up_from:
            raise Unavailable(f"daemon {me} is catching up after coming up: read another copy")

    def require_current(self, namespace: str, name: str) -> None:
        """Unavailable unless this daemon's copy of `namespace/name` is known current: it
        has finished a recovery pass since it came up, and has held the object's placement
        group in every map since the map of its last complete pass (a group it lost and got
        back meanwhile may have had writes it never saw)."""
        self.require_up_to_date()
        m, me = self.cluster.map, self.cluster.id
        pool, acting = self.acting(m, namespace, name)
        if me not in acting:
            raise Unavailable(f"daemon {me} does not hold {namespace}/{name} at epoch {m.epoch}")
        if pg_of(pool, pool.name, name) not in self._held.get(pool.name, ()):
            raise Unavailable(f"daemon {me} is still fetching {namespace}/{name}'s group")

    def holds(self, rec: Record) -> bool:
        """This daemon is in the acting set of `rec` (a copy it lists as its own)."""
        placed = self._acting_or_none(self.cluster.map, rec)
        return placed is not None and self.cluster.id in placed[1]

    # -- which placement groups this daemon has held, map after map -----------------------

    def _mine(self, m: ClusterMap) -> dict[str, set[int]]:
        """Per pool, the PGs whose acting set under `m` includes this daemon."""
        me, out = self.cluster.id, {}
        for name in m.pools:
            table = self.placer(m).pool(name).table()
            out[name] = {int(pg) for pg in np.nonzero((table == me).any(axis=1))[0]}
        return out

    def _observe(self, m: ClusterMap, step: bool) -> None:
        """A new map (`step`: the next epoch, not a jump over some): what is held
        continuously is what was held and still is; after a jump nothing is known."""
        mine = self._mine(m) if step else {}
        for attr in ("_held", "_held_in_pass"):
            cur: dict[str, set[int]] | None = getattr(self, attr)
            if cur is not None:
                setattr(self, attr, {p: pgs & mine.get(p, set()) for p, pgs in cur.items()})
        self._wake.set()

    @contextlib.asynccontextmanager
    async def writing(self, namespace: str, name: str) -> AsyncIterator[tuple[int, Record | None]]:
        """Hold the primary's turn to write `namespace/name` (writes of one object are
        serialised here, so that a read-modify-write sees the last one); yields the version
        the write takes and the object's current record (None: none, or a tombstone)."""
        key = (namespace, name)
        entry = self._writing.get(key)
        if entry is None:
            entry = self._writing[key] = (asyncio.Lock(), [0])
        entry[1][0] += 1
        try:
            async with entry[0]:
                store = self.store
                cur = store.cached(name, namespace=namespace)
                if cur is None:
                    cur = await self.daemon.run(store.head, name, namespace=namespace)
                version = max((cur.version if cur is not None else 0) + 1,
                              self._failed.get(key, 0) + 1, self.cluster.epoch << 24)  # fmt: skip
                yield version, (None if cur is None or cur.deleted else cur)
                self._failed.pop(key, None)  # (committed here: the store's version is above)
        finally:
            entry[1][0] -= 1
            if not entry[1][0]:
                del self._writing[key]

    async def send_put(
        self, replicas: list[int], namespace: str, name: str, version: int, data: Any,
        refs: Iterable[bytes], permanent: bool, *, force: bool = False,
        expires: float | None = None, meta: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Send the object whole, with its metadata `meta`; each replica's reply (its copy's
        hash among them)."""
        req = {"namespace": namespace, "name": name, "version": version, "refs": list(refs),
               "permanent": permanent, "force": force}  # fmt: skip
        if meta:
            req["meta"] = dict(meta)
        return await self._send(replicas, Op.PUT, req, data, expires)

    async def send_delete(
        self, replicas: list[int], namespace: str, name: str, version: int,
        expires: float | None = None,
    ) -> None:  # fmt: skip
        await self._send(replicas, Op.DELETE, {"namespace": namespace, "name": name,
                                               "version": version}, None, expires)  # fmt: skip

    async def _send(
        self, replicas: list[int], op: int, meta: dict[str, Any], data: Any = None,
        expires: float | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """The change to every one of `replicas`, at once; Unavailable unless all of them
        have committed it. (The primary commits its own copy only after this: a write that
        fails here is in no copy but, at most, some of these: it has no effect, or a late
        one, never the effect of undoing a later acknowledged write, whose version is higher.)"""
        what = f"{meta['namespace']}/{meta['name']} v{meta['version']}"
        timeout = PEER_TIMEOUT
        if expires is not None:  # a replica refuses it after that (wall clocks: NTP's accuracy)
            meta["expires"] = expires
            timeout = min(timeout, expires - time.time())
            if timeout <= 0:
                raise Unavailable(f"{what}: the client's deadline passed before it could start")

        async def one(r: int) -> tuple[dict[str, Any], bytearray]:
            async with asyncio.timeout(timeout):
                return await self.peers.call(r, op, dict(meta), data)

        results = await asyncio.gather(*(one(r) for r in replicas), return_exceptions=True)
        failed: list[tuple[int, BaseException]] = []
        newest = int(meta["version"])
        for r, x in zip(replicas, results, strict=True):
            if isinstance(x, BaseException):
                failed.append((r, x))
            elif x[0].get("superseded"):  # it has this version, or a newer one: not ours
                newest = max(newest, int(x[0].get("version", 0)))
                failed.append((r, Unavailable(f"it has version {x[0].get('version')}")))
        if failed:
            # Some copies may hold this version now: it is never handed out again.
            key = (str(meta["namespace"]), str(meta["name"]))
            self._failed[key] = max(self._failed.get(key, 0), newest)
            why = "; ".join(f"daemon {r}: {type(x).__name__}: {x}" for r, x in failed)
            log.warning("%s not replicated: %s", what, why)
            raise Unavailable(
                f"{what} reached {len(replicas) - len(failed)} of the {len(replicas)} other "
                f"daemons of its set and is not acknowledged ({why}); retry"
            )
        return [x[0] for x in results]  # type: ignore[index]

    async def check_copies(
        self, replicas: list[int], replies: list[dict[str, Any]], rec: Record, data: Any
    ) -> None:
        """The replicas' copies of a write hash as the primary's did; one that does not (a
        fault on the way or on its disk) is sent again, and counted as a scrub would."""
        for r, reply in zip(replicas, replies, strict=True):
            got = reply.get("hash")
            if reply.get("superseded") or got is None or rec.hash is None or got == rec.hash:
                continue
            self.scrub_counts["errors"] += 1
            log.error("daemon %d's copy of %s/%s v%d hashes differently: sending it again", r,
                      rec.namespace, rec.name, rec.version)  # fmt: skip
            try:
                await self.send_put([r], rec.namespace, rec.name, rec.version, data, rec.refs,
                                    rec.permanent, force=True, meta=rec.meta)  # fmt: skip
                self.scrub_counts["repaired"] += 1
            except _PEER_ERRORS as exc:
                log.warning("daemon %d: %s (scrub will find it)", r, exc)

    async def whole(self, namespace: str, name: str) -> tuple[Record, bytes]:
        """The object's record and its bytes, read together (for sending it whole, or
        changing it)."""

        def read() -> tuple[Record, bytes]:
            for _ in range(5):
                rec = self.store.stat(name, namespace=namespace)
                if rec.size > FORWARD_MAX:
                    raise InvalidArgument(
                        f"{namespace}/{name} is {rec.size} bytes: a replicated object is at "
                        f"most {FORWARD_MAX} (clients stripe larger ones)"
                    )
                try:
                    return rec, bytes(self.store.read_into(rec, 0, rec.size,
                                                           bytearray(rec.size + 4096)))  # fmt: skip
                except ShoalError:
                    if rec.same_revision(self.store.head(name, namespace=namespace)):
                        raise
            raise Unavailable(f"{namespace}/{name} kept changing while being read")

        return await self.daemon.run(read)

    # -- serving peers -------------------------------------------------------------------------

    async def handle(self, op: int, meta: dict[str, Any]) -> dict[str, Any]:
        if op == Op.SCAN:
            who = meta.get("for")
            after = meta.get("after") or ["", ""]
            if not isinstance(who, int) or not isinstance(after, list | tuple) or len(after) != 2:
                raise InvalidArgument("SCAN needs 'for' (a daemon id) and 'after' [ns, name]")
            return await self.daemon.run(self._scan_for, who, (str(after[0]), str(after[1])))
        keys = meta.get("keys")
        if not isinstance(keys, list):
            raise InvalidArgument("HAVE needs 'keys': a list of [namespace, name]")
        return await self.daemon.run(self._have, keys)

    def _scan_for(self, who: int, after: tuple[str, str]) -> dict[str, Any]:
        """(Thread.) A page of this store's rows whose acting set includes daemon `who`."""
        m = self.cluster.map
        recs = self.store.page(after, SCAN_PAGE)
        items = []
        for r in recs:
            placed = self._acting_or_none(m, r)
            if placed is not None and who in placed[1]:
                items.append([r.namespace, r.name, r.version, r.deleted, r.size])
        nxt = [recs[-1].namespace, recs[-1].name] if len(recs) == SCAN_PAGE else None
        return {"items": items, "next": nxt, "epoch": m.epoch}

    def _have(self, keys: list[Any]) -> dict[str, Any]:
        """(Thread.) The version (-1: none), hash and metadata digest of each
        [namespace, name]."""
        versions, hashes, metas = [], [], []
        for k in keys[:HAVE_BATCH]:
            rec = self.store.head(str(k[1]), namespace=str(k[0]))
            live = rec is not None and not rec.deleted
            versions.append(rec.version if rec is not None else -1)
            hashes.append(rec.hash if rec is not None and live else None)
            metas.append(meta_digest(rec.meta) if rec is not None and live else None)
        return {"versions": versions, "hashes": hashes, "metas": metas}

    async def _ask_have(
        self, daemon_id: int, keys: list[tuple[str, str]]
    ) -> list[tuple[int, Any, Any]]:
        """(version, hash, metadata digest or None) of each of `keys` on daemon `daemon_id`."""
        out: list[tuple[int, Any, Any]] = []
        for i in range(0, len(keys), HAVE_BATCH):
            chunk = [list(k) for k in keys[i : i + HAVE_BATCH]]
            reply, _ = await self.peers.call(daemon_id, Op.HAVE, {"keys": chunk})
            versions, hashes = reply["versions"], reply["hashes"]
            metas = reply.get("metas") or [None] * len(versions)
            out += list(zip(versions, hashes, metas, strict=True))
        return out

    # -- recovery ----------------------------------------------------------------------------

    async def _recovery_loop(self) -> None:
        await self.cluster.registered.wait()
        seen, done_at, settled = -1, 0.0, False
        while not self._closed:
            woken = self._wake.is_set()
            self._wake.clear()
            changed = self.cluster.epoch != seen
            # With nothing left to do, a timer's pass is a check now and then (every
            # FULL_EVERY): a pass reads every row of every daemon.
            if changed or woken or not settled or time.monotonic() - done_at > FULL_EVERY:
                if changed:
                    await self._settle()
                m = self.cluster.map
                seen = m.epoch
                try:
                    complete = await self.recover(m)
                except Exception:
                    log.exception("recovery pass at epoch %d failed", m.epoch)
                    complete = False
                left = self.counts["misplaced_objects"] + self.counts["degraded_objects"]
                settled = complete and not left and not self.missing[0]
                done_at = time.monotonic()
            await _wait(self._wake, self.interval)

    async def _settle(self) -> None:
        """Let a burst of map changes (daemons added one after the other) end before a pass,
        so that data is not fetched for a map that is already gone (SETTLE at a time, at
        most SETTLE_MAX)."""
        epoch = self.cluster.epoch
        for _ in range(int(SETTLE_MAX / SETTLE)):
            await asyncio.sleep(SETTLE)
            if self.cluster.epoch == epoch:
                return
            epoch = self.cluster.epoch

    async def recover(self, m: ClusterMap) -> bool:
        """One pass at map `m`: fetch what this daemon lacks, then hand over what it should
        no longer hold. True if every peer answered and every fetch succeeded."""
        self._held_in_pass = self._mine(m) if m is self.cluster.map else {}
        try:
            complete = await self._fetch_missing(m)
            if complete:
                first = self.clean is None or self.clean.epoch != m.epoch
                self.clean = m
                self._held = self._held_in_pass or {}
                if first and m.epoch == self.cluster.epoch:
                    log.info("current at epoch %d", m.epoch)
            await self._survey(m, hand_over=complete)
            return complete
        finally:
            self._held_in_pass = None

    async def _fetch_missing(self, m: ClusterMap) -> bool:
        me, complete = self.cluster.id, True
        want: dict[tuple[str, str], tuple[int, bool, int, int]] = {}
        for p, d in sorted(m.daemons.items()):
            if p == me or not d.up:
                continue
            after: Any = None
            while True:
                try:
                    reply, _ = await self.peers.call(p, Op.SCAN, {"for": me, "after": after})
                except _PEER_ERRORS as exc:
                    log.info("recovery: daemon %d did not answer a scan: %s", p, exc)
                    complete = False
                    break
                if reply.get("epoch") != m.epoch:  # it places by another map: ask again later
                    log.info("recovery: daemon %d answered at epoch %s, not %d", p,
                             reply.get("epoch"), m.epoch)  # fmt: skip
                    complete = False
                    break
                for ns, name, version, deleted, size in reply["items"]:
                    got = want.get((ns, name))
                    if got is None or version > got[0]:
                        want[(ns, name)] = (version, bool(deleted), int(size), p)
                after = reply.get("next")
                if after is None:
                    break

        def lacking() -> list[tuple[str, str, int, bool, int, int]]:
            out = []
            for (ns, name), (version, deleted, size, src) in want.items():
                rec = self.store.head(name, namespace=ns)
                if rec is None or rec.version < version:  # (a tombstone too: it must stay)
                    out.append((ns, name, version, deleted, size, src))
            return out

        todo = await self.daemon.run(lacking)
        self.missing = (len(todo), sum(t[4] for t in todo))
        if todo:
            log.info("recovery at epoch %d: fetching %d objects (%d bytes)", m.epoch,
                     *self.missing)  # fmt: skip
        busy = asyncio.Semaphore(FETCHES)
        failures = stale = 0

        async def one(ns: str, name: str, version: int, deleted: bool, size: int, src: int) -> None:
            nonlocal failures, stale
            async with busy:
                if self.cluster.map is not m:  # a newer map: its own pass fetches what it says
                    stale += 1
                    return
                try:
                    n = await self.fetch(src, ns, name, version, deleted)
                except _PEER_ERRORS as exc:
                    failures += 1
                    log.info("recovery: %s/%s from daemon %d: %s", ns, name, src, exc)
                    return
                self.counts["recovered_objects"] += 1
                self.counts["recovered_bytes"] += n
                self.missing = (self.missing[0] - 1, self.missing[1] - size)
                await self._throttle(n)

        await asyncio.gather(*(one(*t) for t in todo))
        if failures:
            log.warning("recovery at epoch %d: %d fetches failed; will retry", m.epoch, failures)
        return complete and not failures and not stale

    async def fetch(
        self, src: int, ns: str, name: str, version: int, deleted: bool, force: bool = False
    ) -> int:
        """Bring this daemon's copy of `ns/name` to `version` (or newer) from daemon `src`;
        the bytes fetched."""
        store = self.store
        if deleted:
            with contextlib.suppress(Superseded):
                await self.daemon.run(store.remove, name, namespace=ns, version=version)
            return 0
        try:
            meta, data = await self.peers.call(src, Op.GET, {"namespace": ns, "name": name})
        except NotFound:
            return 0  # deleted there meanwhile: its tombstone comes with the next pass
        got = int(meta["version"])
        if got < version:
            raise Unavailable(f"daemon {src} has {ns}/{name} at version {got}, not {version}")
        with contextlib.suppress(Superseded):
            await self.daemon.run(
                store.put, data, namespace=ns, name=name, refs=list(meta.get("refs") or []),
                permanent=bool(meta.get("permanent")), version=got, force=force,
                meta=meta.get("meta") or None,
            )  # fmt: skip
        return len(data)

    async def _throttle(self, nbytes: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self._throttle_at = max(self._throttle_at, now - 0.25) + nbytes / self.rate
        if self._throttle_at > now:
            await asyncio.sleep(self._throttle_at - now)

    async def _survey(self, m: ClusterMap, hand_over: bool) -> None:
        """Count the degraded objects this daemon is primary of and the copies it holds out of
        place; with `hand_over`, drop those every daemon of their acting set now holds."""
        me = self.cluster.id

        def walk() -> tuple[int, int, list[tuple[Record, tuple[int, ...]]]]:
            degraded = degraded_bytes = 0
            misplaced: list[tuple[Record, tuple[int, ...]]] = []
            for r, pool, acting in self._placed_rows(m):
                if me not in acting:
                    misplaced.append((r, acting))
                    continue
                up = [i for i in acting if m.daemons[i].up]
                if not r.deleted and up and up[0] == me and len(up) < pool.replicas:
                    degraded += 1
                    degraded_bytes += r.size
            return degraded, degraded_bytes, misplaced

        degraded, degraded_bytes, misplaced = await self.daemon.run(walk)
        self.counts["degraded_objects"], self.counts["degraded_bytes"] = degraded, degraded_bytes
        self._set_misplaced(misplaced)
        if not hand_over or not misplaced:
            return
        by_daemon: dict[int, list[tuple[str, str]]] = {}
        for r, acting in misplaced:
            for a in acting:
                by_daemon.setdefault(a, []).append((r.namespace, r.name))
        have: dict[int, dict[tuple[str, str], int]] = {}
        for a, keys in by_daemon.items():
            if not m.daemons[a].up:
                continue
            with contextlib.suppress(*_PEER_ERRORS):
                answers = await self._ask_have(a, keys)
                have[a] = {k: v for k, (v, _, _) in zip(keys, answers, strict=True)}
        kept = []
        for r, acting in misplaced:
            key = (r.namespace, r.name)
            if acting and all(have.get(a, {}).get(key, -1) >= r.version for a in acting):
                try:
                    await self.daemon.run(self.store.drop, r.name, namespace=r.namespace,
                                          version=r.version)  # fmt: skip
                    continue
                except ShoalError:
                    pass  # changed meanwhile: looked at again next pass
            kept.append((r, acting))
        self._set_misplaced(kept)

    def _set_misplaced(self, items: Iterable[tuple[Record, tuple[int, ...]]]) -> None:
        live = [r for r, _ in items if not r.deleted]
        self.counts["misplaced_objects"] = len(live)
        self.counts["misplaced_bytes"] = sum(r.size for r in live)

    async def plan(self) -> dict[str, Any]:
        """What a hand-over would move now: per target daemon, objects and bytes."""
        m, me = self.cluster.map, self.cluster.id
        moves: dict[int, list[int]] = {}

        def walk() -> None:
            for r, _, acting in self._placed_rows(m):
                if r.deleted or me in acting:
                    continue
                for a in acting:
                    got = moves.setdefault(a, [0, 0])
                    got[0] += 1
                    got[1] += r.size

        await self.daemon.run(walk)
        return {"epoch": m.epoch, "moves": {str(a): v for a, v in sorted(moves.items())}}

    # -- scrub -------------------------------------------------------------------------------

    async def _scrub_loop(self) -> None:
        await self.cluster.registered.wait()
        while not self._closed:
            await _wait(self._scrub_wake, self.scrub_interval)
            if self.closed():
                return
            self._scrub_wake.clear()
            pool, self._scrub_pool = self._scrub_pool, ""
            serving = self._scrub_asked
            try:
                await self.scrub(pool)
            except Exception:  # (the pass is over all the same: whoever follows it hears so)
                log.exception("scrub failed")
            self.scrub_counts["done"] = max(self.scrub_counts["done"], serving)

    async def scrub(self, pool: str = "") -> None:
        m, me = self.cluster.map, self.cluster.id
        sc = self.scrub_counts
        sc["running"], sc["pass"] = True, 0
        log.info("scrub%s started", f" of pool {pool}" if pool else "")
        try:
            mine: list[tuple[Record, list[int]]] = []  # objects this daemon is primary of
            after = ("", "")
            while True:
                recs = await self.daemon.run(self.store.page, after, SCAN_PAGE)
                for r in recs:
                    placed = self._acting_or_none(m, r)
                    if r.deleted or placed is None or (pool and _pool_of(r.namespace) != pool):
                        continue
                    up = [i for i in placed[1] if m.daemons[i].up]
                    sc["objects"] += 1
                    sc["pass"] += 1
                    if not await self._verify(r):
                        sc["errors"] += 1
                        if await self._repair_own(r, [i for i in up if i != me]):
                            sc["repaired"] += 1
                        continue
                    if up and up[0] == me and len(up) > 1:
                        mine.append((r, up[1:]))
                if len(recs) < SCAN_PAGE:
                    break
                after = (recs[-1].namespace, recs[-1].name)
            await self._compare(mine)
        finally:
            sc["running"] = False
            log.info("scrub done: %d objects, %d errors, %d repaired", sc["objects"],
                     sc["errors"], sc["repaired"])  # fmt: skip

    async def _verify(self, rec: Record) -> bool:
        """Every block of this copy matches its checksum (or the copy changed meanwhile)."""

        def check() -> bool:
            store = self.store
            try:
                for _ in store.iter_read(rec.name, namespace=rec.namespace):
                    pass
            except IntegrityError:
                return not rec.same_revision(store.head(rec.name, namespace=rec.namespace))
            except NotFound:
                pass
            return True

        return await self.daemon.run(check)

    async def _repair_own(self, rec: Record, sources: list[int]) -> bool:
        """Fetch this daemon's bad copy of `rec` again from one of `sources`."""
        for src in sources:
            try:
                await self.fetch(src, rec.namespace, rec.name, rec.version, False, force=True)
            except _PEER_ERRORS as exc:
                log.warning("repair of %s/%s from daemon %d: %s", rec.namespace, rec.name, src,
                            exc)  # fmt: skip
                continue
            log.warning("repaired %s/%s v%d (bad blocks) from daemon %d", rec.namespace,
                        rec.name, rec.version, src)  # fmt: skip
            return True
        return False

    async def repair_soon(self, namespace: str, name: str) -> None:
        """A read found bad blocks in this copy: fetch it again from another replica."""
        rec = self.store.cached(name, namespace=namespace)
        if rec is None:
            rec = await self.daemon.run(self.store.head, name, namespace=namespace)
        if rec is None or rec.deleted or await self._verify(rec):
            return
        m, me = self.cluster.map, self.cluster.id
        placed = self._acting_or_none(m, rec)
        if placed is None:
            return
        self.scrub_counts["errors"] += 1
        if await self._repair_own(rec, [i for i in placed[1] if i != me and m.daemons[i].up]):
            self.scrub_counts["repaired"] += 1

    async def _compare(self, mine: list[tuple[Record, list[int]]]) -> None:
        """Version and hash of each of `mine` on its other replicas; a stale or differing
        copy is replaced by this one."""
        by_daemon: dict[int, list[Record]] = {}
        for r, others in mine:
            for o in others:
                by_daemon.setdefault(o, []).append(r)
        sc = self.scrub_counts
        for o, recs in by_daemon.items():
            try:
                answers = await self._ask_have(o, [(r.namespace, r.name) for r in recs])
            except _PEER_ERRORS as exc:
                log.info("scrub: daemon %d did not answer: %s", o, exc)
                continue
            for r, (version, digest, mdigest) in zip(recs, answers, strict=True):
                same = version == r.version
                differs = same and None not in (digest, r.hash) and digest != r.hash
                # (a daemon older than object metadata answers no digest: not compared)
                meta_differs = same and mdigest is not None and mdigest != meta_digest(r.meta)
                if version >= r.version and not differs and not meta_differs:
                    continue
                sc["errors"] += 1
                why = ("different bytes" if differs else "different metadata" if meta_differs
                       else "stale")  # fmt: skip
                log.warning("scrub: daemon %d has %s/%s at version %d (%s), primary has %d",
                            o, r.namespace, r.name, version, why, r.version)  # fmt: skip
                try:
                    rec, data = await self.whole(r.namespace, r.name)
                    await self.send_put([o], rec.namespace, rec.name, rec.version, data, rec.refs,
                                        rec.permanent, force=rec.version == version,
                                        meta=rec.meta)  # fmt: skip
                except _PEER_ERRORS as exc:
                    log.warning("scrub: repair on daemon %d failed: %s", o, exc)
                    continue
                sc["repaired"] += 1
