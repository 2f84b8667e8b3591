"""Helpers for the replication fault tests (tests/faults/test_replication.py): a cluster of
real daemons with a replicated pool, a write/read load that keeps a ledger of what was
acknowledged, the verifier that reads every acknowledged write back, the recovery and scrub
counters of `status`, and direct reads of one daemon's copy of an object.

The ledger's rule: each name is written by one task at a time, so its writes are ordered.
A read of a name must give the content of its last acknowledged write, or of a write made
after that one whose acknowledgement never came (it may have taken effect or not); None
stands for "deleted / never stored". Anything else is corruption or a lost write.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import blake3

from shoal.client import AsyncClient
from shoal.client.client import ObjectInfo
from shoal.client.cluster import ClusterClient
from shoal.client.stripes import HEAD_REF, STRIPE, Head, stripe_namespace
from shoal.cluster.placement import Placer
from shoal.daemon.process import DaemonProcess
from shoal.engine import ObjectStore
from shoal.engine.manifest import HOLE
from shoal.errors import NotFound, ShoalError, StaleMap, Unavailable
from tests.integration.cluster_helpers import (
    FAST,
    MasterProcess,
    daemons_by_id,
    eventually,
    map_at,
    start_master,
    start_member,
    stop_all,
)

T = TypeVar("T")
KiB, MiB = 1 << 10, 1 << 20
POOL = "rp"
# Daemons look for work to recover every second (the default is 10).
REPL_FLAGS = ("--recovery-interval", "1")
SMALL = (1 * KiB, 64 * KiB)
LARGE = (5 * MiB, 12 * MiB)


# -- data ---------------------------------------------------------------------------------------


def body(seed: str, size: int) -> bytes:
    """`size` bytes that depend only on `seed`."""
    return random.Random(seed).randbytes(size)


def digest(b: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(b).digest()


def short(h: bytes | None) -> str:
    return "absent" if h is None else h[:6].hex()


# -- the cluster -------------------------------------------------------------------------------


def start_cluster(root: Path, n: int) -> MasterProcess:
    """A master (fast failure detection) and `n` daemons h0..h{n-1} (DIR root/d{i}) that
    recover every second. Not waited for: see `ready`."""
    m = start_master(root / "master", *FAST)
    try:
        start_members(m, [(root / f"d{i}", f"h{i}") for i in range(n)])
    except BaseException:
        stop_all(m)
        raise
    return m


def start_members(master: MasterProcess, which: Sequence[tuple[Path, str]]) -> list[DaemonProcess]:
    """Daemons (folder, host) started at the same moment (so that they register within a
    few milliseconds of each other: one map change, not one each)."""
    with ThreadPoolExecutor(len(which)) as ex:
        return list(ex.map(lambda dh: start_member(master, dh[0], dh[1], *REPL_FLAGS), which))


async def ready(c: ClusterClient, n: int, pool: str = POOL, pg_num: int = 64) -> None:
    """Wait until `n` daemons are up and in, then make `pool` (3 replicas, min_size 2, one
    per daemon); `c`'s map has it on return."""
    await eventually(
        lambda: daemons_by_id(c),
        lambda ds: sum(1 for d in ds.values() if d["up"] and d["in"]) == n,
        timeout=30, what=f"{n} daemons up and in",
    )  # fmt: skip
    out = await c.admin("pool_create", name=pool, replicas=3, min_size=2, pg_num=pg_num,
                        failure_domain="daemon")  # fmt: skip
    await map_at(c, out["epoch"])


def host_of(d: DaemonProcess) -> str:
    """The host name a daemon of `start_cluster` was started with (folder dI: host hI)."""
    return "h" + d.dir.name[1:]


def id_of(c: ClusterClient, d: DaemonProcess) -> int:
    """The id, in `c`'s map, of the daemon process `d` (by its address)."""
    (i,) = [i for i, x in c.map.daemons.items() if x.address == d.address]
    return i


async def wait_up(c: ClusterClient, d: DaemonProcess, timeout: float = 30.0) -> int:
    """Wait until the daemon process `d` is up and in, in the master's map and `c`'s; its id."""
    ds = await eventually(
        lambda: daemons_by_id(c),
        lambda ds: any(x["address"] == d.address and x["up"] and x["in"] for x in ds.values()),
        timeout=timeout, what=f"daemon {d.address} up and in",
    )  # fmt: skip
    await map_at(c, (await c.admin("status"))["epoch"])
    (i,) = [i for i, x in ds.items() if x["address"] == d.address]
    return i


# -- status --------------------------------------------------------------------------------------


async def recovery(c: ClusterClient) -> dict[str, Any]:
    out: dict[str, Any] = (await c.admin("status"))["recovery"]
    return out


async def scrub_status(c: ClusterClient) -> dict[str, Any]:
    out: dict[str, Any] = (await c.admin("status"))["scrub"]
    return out


def clean(r: dict[str, Any], misplaced: bool = True) -> bool:
    return (
        r["degraded_objects"] == 0
        and r["recovering"] == 0
        and (not misplaced or r["misplaced_objects"] == 0)
    )


async def wait_clean(
    c: ClusterClient, timeout: float = 30.0, *, misplaced: bool = True, hold: float = 0.0
) -> dict[str, Any]:
    """Wait until `status` says recovery is done: no degraded object, no daemon recovering
    and, if `misplaced`, no misplaced object (for `hold` seconds, if given). One such report
    is enough: a daemon counts as recovering until it reports a finished pass at the master's
    epoch. The last recovery report."""
    deadline = time.monotonic() + timeout
    since: float | None = None
    while True:
        r = await recovery(c)
        now = time.monotonic()
        if clean(r, misplaced):
            since = now if since is None else since
            if now - since >= hold:
                return r
        else:
            since = None
        if now > deadline:
            raise AssertionError(f"recovery not done within {timeout} s; last status: {r}")
        await asyncio.sleep(0.1)


# -- the ledger ----------------------------------------------------------------------------------


@dataclass
class Attempt:
    hash: bytes | None  # the content's BLAKE3; None: a delete
    size: int
    acked: bool = False
    done: bool = False
    error: str = ""


class Ledger:
    """Every write and delete attempted, per name, in order, with whether it was acknowledged."""

    def __init__(self) -> None:
        self.history: dict[str, list[Attempt]] = {}

    def begin(self, name: str, content: bytes | None) -> Attempt:
        a = Attempt(None if content is None else digest(content), len(content or b""))
        self.history.setdefault(name, []).append(a)
        return a

    @staticmethod
    def end(a: Attempt, error: BaseException | None = None) -> None:
        a.done, a.acked = True, error is None
        if error is not None:
            a.error = f"{type(error).__name__}: {error}"

    def allowed(self, name: str) -> set[bytes | None]:
        """What a read of `name` may give now."""
        hist = self.history.get(name, [])
        last = max((i for i, a in enumerate(hist) if a.acked), default=-1)
        out: set[bytes | None] = {hist[last].hash} if last >= 0 else {None}
        out.update(a.hash for a in hist[last + 1 :])
        return out

    def settled(self, name: str) -> bytes | bool | None:
        """The one content `name` must have (None: absent), or False if it may have several."""
        allowed = self.allowed(name)
        return next(iter(allowed)) if len(allowed) == 1 else False

    def stored(self) -> list[str]:
        """Names whose one allowed content is an object (not absent)."""
        return [n for n in self.history if self.settled(n) not in (None, False)]

    def acked(self) -> int:
        return sum(1 for h in self.history.values() for a in h if a.acked)

    def unacked(self) -> list[tuple[str, str]]:
        return [(n, a.error) for n, h in self.history.items() for a in h if a.done and not a.acked]

    def acked_bytes(self) -> int:
        return sum(a.size for h in self.history.values() for a in h if a.acked)


async def read_hash(c: ClusterClient, pool: str, name: str) -> bytes | None:
    """BLAKE3 of the object as the cluster client reads it (None: NotFound)."""
    try:
        return digest(await c.get(pool, name))
    except NotFound:
        return None


async def verify_all(
    c: ClusterClient, ledger: Ledger, pool: str = POOL, parallel: int = 8
) -> list[str]:
    """Read back every name of the ledger; a list of what is wrong (empty: all is well)."""
    problems: list[str] = []
    busy = asyncio.Semaphore(parallel)

    async def one(name: str) -> None:
        allowed = ledger.allowed(name)
        async with busy:
            try:
                got = await read_hash(c, pool, name)
            except (ShoalError, ConnectionError, TimeoutError) as exc:
                problems.append(f"{name}: read failed: {type(exc).__name__}: {exc}")
                return
        if got not in allowed:
            hist = [(short(a.hash), a.acked, a.error) for a in ledger.history[name]]
            problems.append(
                f"{name}: read {short(got)}, expected one of {sorted(map(short, allowed))} "
                f"(writes: {hist})"
            )

    await asyncio.gather(*(one(n) for n in ledger.history))
    return sorted(problems)


# -- a load ----------------------------------------------------------------------------------------


@dataclass
class Stats:
    writes: int = 0
    write_failures: int = 0
    reads: int = 0
    read_failures: int = 0
    corrupt_reads: int = 0
    errors: list[str] = field(default_factory=list)
    done: list[tuple[float, int]] = field(default_factory=list)  # (when, bytes) of each op

    def note(self, what: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(f"{time.monotonic():.3f} {what}")

    def rate(self, t0: float, t1: float) -> float:
        """Bytes per second moved by the operations that ended in [t0, t1)."""
        n = sum(b for t, b in self.done if t0 <= t < t1)
        return n / max(t1 - t0, 1e-9)

    def ops(self, t0: float, t1: float) -> float:
        return sum(1 for t, _ in self.done if t0 <= t < t1) / max(t1 - t0, 1e-9)


class Load:
    """Writers (new objects, some overwrites and deletes of their own earlier names) and
    readers (of acknowledged objects, hash-checked against the ledger), in the background
    on the caller's loop, until `stop`."""

    def __init__(
        self,
        c: ClusterClient,
        ledger: Ledger,
        *,
        pool: str = POOL,
        prefix: str = "obj",
        writers: int = 2,
        readers: int = 1,
        small: tuple[int, int] = SMALL,
        large: tuple[int, int] = LARGE,
        large_every: int = 0,  # every n-th write of a writer is large (0: none)
        large_budget: int = 0,  # bytes of large objects at most, over all writers
        overwrite_every: int = 0,
        delete_every: int = 0,
        read_names: Callable[[], Sequence[str]] | None = None,
        seed: int = 0,
    ) -> None:
        self.c, self.ledger, self.pool, self.prefix = c, ledger, pool, prefix
        self.n_writers, self.n_readers = writers, readers
        self.small, self.large = small, large
        self.large_every, self.large_left = large_every, large_budget
        self.overwrite_every, self.delete_every = overwrite_every, delete_every
        self.read_names = read_names
        self.rng = random.Random(seed)
        self.stats = Stats()
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[str] = set()  # names being written now

    def start(self) -> Load:
        self._tasks = [asyncio.ensure_future(self._writer(w)) for w in range(self.n_writers)]
        self._tasks += [asyncio.ensure_future(self._reader()) for _ in range(self.n_readers)]
        return self

    async def stop(self) -> Stats:
        self.stopping.set()
        try:
            await asyncio.wait_for(asyncio.gather(*self._tasks), 120)
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        return self.stats

    async def __aenter__(self) -> Load:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        if not self.stopping.is_set():
            await self.stop()

    async def _writer(self, w: int) -> None:
        mine: list[str] = []
        i = 0
        while not self.stopping.is_set():
            i += 1
            op, name = "put", f"{self.prefix}-{w}-{i:05d}"
            if self.delete_every and i % self.delete_every == 0 and mine:
                op, name = "delete", mine.pop(self.rng.randrange(len(mine)))
            elif self.overwrite_every and i % self.overwrite_every == 0 and mine:
                name = self.rng.choice(mine)
            elif name not in mine:
                mine.append(name)
            content: bytes | None = None
            if op == "put":
                lo, hi = self.small
                if self.large_every and i % self.large_every == 0 and self.large_left > 0:
                    lo, hi = self.large
                size = self.rng.randint(lo, hi)
                if size > STRIPE:
                    self.large_left -= size
                content = body(f"{name}@{i}", size)
            self._busy.add(name)
            a = self.ledger.begin(name, content)
            try:
                if content is None:
                    await self.c.delete(self.pool, name)
                else:
                    await self.c.put(self.pool, name, content)
            except NotFound as exc:  # deleting what an unacknowledged write never made
                self.ledger.end(a, exc)
            except (ShoalError, ConnectionError, TimeoutError) as exc:
                self.ledger.end(a, exc)
                self.stats.write_failures += 1
                self.stats.note(f"{op} {name}: {type(exc).__name__}: {exc}")
            else:
                self.ledger.end(a)
                self.stats.writes += 1
                self.stats.done.append((time.monotonic(), a.size))
            finally:
                self._busy.discard(name)

    async def _reader(self) -> None:
        while not self.stopping.is_set():
            names = self.read_names() if self.read_names else self.ledger.stored()
            names = [n for n in names if n not in self._busy]
            if not names:
                await asyncio.sleep(0.01)
                continue
            name = self.rng.choice(names)
            before = self.ledger.allowed(name)
            try:
                data = await self.c.get(self.pool, name)
                got: bytes | None = digest(data)
            except NotFound:
                got, data = None, b""
            except (ShoalError, ConnectionError, TimeoutError) as exc:
                self.stats.read_failures += 1
                self.stats.note(f"read {name}: {type(exc).__name__}: {exc}")
                continue
            if got not in before | self.ledger.allowed(name):
                self.stats.corrupt_reads += 1
                self.stats.note(f"read {name}: got {short(got)}, expected one of {before}")
            else:
                self.stats.reads += 1
                self.stats.done.append((time.monotonic(), len(data)))


# -- one daemon's copies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineObject:
    """One object as the daemons store it: a whole small object, a striped object's head, or
    one of its stripes. `key` is the name placement is computed from (the client places a
    stripe by its own name, in the pool)."""

    namespace: str
    name: str
    size: int

    @property
    def key(self) -> str:
        return self.name


async def engine_objects(
    c: ClusterClient, names: Iterable[str], pool: str = POOL
) -> list[EngineObject]:
    """The engine objects that make up the objects `names` (each must exist)."""
    out: list[EngineObject] = []
    for name in names:
        info = await c._on_primary(pool, name, lambda d, name=name: d.stat(pool, name))
        out.append(EngineObject(pool, name, info.size))
        if HEAD_REF in info.refs:
            head = await c._head(pool, name)
            assert isinstance(head, Head)
            for i in range(head.count):
                size = min(head.stripe, head.size - i * head.stripe)
                out.append(EngineObject(stripe_namespace(pool), head.stripe_name(name, i), size))
    return out


async def existing_objects(
    c: ClusterClient, names: Iterable[str], pool: str = POOL
) -> list[EngineObject]:
    """`engine_objects` of those of `names` that still exist (a load may delete some)."""
    out: list[EngineObject] = []
    for name in names:
        with contextlib.suppress(NotFound):
            out += await engine_objects(c, [name], pool)
    return out


class Directs:
    """Plain clients of single daemons, carrying the cluster client's ticket and epoch."""

    def __init__(self, c: ClusterClient) -> None:
        self.c = c
        self._clients: dict[str, AsyncClient] = {}

    async def __aenter__(self) -> Directs:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for a in self._clients.values():
            await a.close()

    async def call(
        self, daemon_id: int, fn: Callable[[AsyncClient], Awaitable[T]], patience: float = 10.0
    ) -> T:
        """`fn` on daemon `daemon_id`, retried when the daemon has a newer map or says it is
        not current yet (Unavailable), for up to `patience` seconds."""
        deadline = time.monotonic() + patience
        while True:
            d = self.c.map.daemons[daemon_id]
            a = self._clients.get(d.address)
            if a is None:
                a = self._clients[d.address] = AsyncClient(d.address, pool_size=1, timeout=10)
            a.ticket, a.epoch = await self.c._ticket(), self.c.map.epoch
            try:
                return await fn(a)
            except StaleMap as exc:
                if time.monotonic() > deadline:
                    raise
                await self.c.refresh(max(exc.epoch, self.c.map.epoch + 1), wait=2.0)
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def stat(
        self, daemon_id: int, o: EngineObject, patience: float = 10.0
    ) -> ObjectInfo | None:
        """The daemon's record of `o` (None: it has none)."""
        try:
            return await self.call(daemon_id, lambda a: a.stat(o.namespace, o.name), patience)
        except NotFound:
            return None

    async def get(self, daemon_id: int, namespace: str, name: str) -> bytes:
        return await self.call(daemon_id, lambda a: a.get(namespace, name))

    async def names(self, daemon_id: int, namespace: str) -> dict[str, int]:
        """What the daemon holds in `namespace`: name -> size."""
        out, after = {}, ""
        while True:
            page, nxt = await self.call(
                daemon_id, lambda a, after=after: a.list(namespace, start_after=after)
            )
            out.update((i.name, i.size) for i in page)
            if nxt is None:
                return out
            after = nxt


async def copy_problems(
    c: ClusterClient,
    directs: Directs,
    objs: Sequence[EngineObject],
    pool: str = POOL,
    parallel: int = 8,
) -> tuple[list[str], dict[int, int]]:
    """Each object's copy on each daemon of its acting set (in `c`'s map) must be there, at
    the version and with the hash of the primary's. What is wrong, and how many objects'
    copies each daemon was checked for."""
    problems: list[str] = []
    checked: dict[int, int] = {}
    placer = Placer(c.map)
    busy = asyncio.Semaphore(parallel)

    async def one(o: EngineObject) -> None:
        acting = placer.place(pool, pool, o.key)
        if len(acting) < 3:
            problems.append(f"{o.namespace}/{o.name}: acting set {acting}, not 3 daemons")
        infos: list[ObjectInfo | str | None] = []
        async with busy:
            for i in acting:
                try:
                    infos.append(await directs.stat(i, o, patience=2.0))
                except (ShoalError, ConnectionError, TimeoutError) as exc:
                    infos.append(f"{type(exc).__name__}: {exc}")
        first = infos[0] if isinstance(infos[0], ObjectInfo) else None
        for i, info in zip(acting, infos, strict=True):
            checked[i] = checked.get(i, 0) + 1
            if isinstance(info, str):
                problems.append(f"{o.namespace}/{o.name}: daemon {i} (acting {acting}): {info}")
            elif info is None:
                problems.append(f"{o.namespace}/{o.name}: no copy on daemon {i} (acting {acting})")
            elif info.size != o.size:
                problems.append(
                    f"{o.namespace}/{o.name} on {i}: size {info.size} version {info.version}, "
                    f"not size {o.size} (the primary {acting[0]}: "
                    f"{first and (first.size, first.version)})"
                )
            elif first is not None and (info.version, info.hash) != (first.version, first.hash):
                problems.append(
                    f"{o.namespace}/{o.name} on {i}: version {info.version} hash "
                    f"{short(info.hash)}; the primary {acting[0]} has version {first.version} "
                    f"hash {short(first.hash)}"
                )

    await asyncio.gather(*(one(o) for o in objs))
    return sorted(problems), checked


async def absent_problems(
    c: ClusterClient, directs: Directs, names: Iterable[str], pool: str = POOL
) -> list[str]:
    """Deleted names must be gone from every daemon of their acting set."""
    problems = []
    for name in names:
        o = EngineObject(pool, name, 0)
        for i in Placer(c.map).place(pool, pool, name):
            info = await directs.stat(i, o)
            if info is not None:
                problems.append(
                    f"{pool}/{name}: deleted, but daemon {i} has version {info.version}"
                )
    return problems


async def held_bytes(directs: Directs, daemon_id: int, pool: str = POOL) -> int:
    """Bytes of objects (heads, whole objects and stripes) of `pool` the daemon holds."""
    total = 0
    for ns in (pool, stripe_namespace(pool)):
        total += sum((await directs.names(daemon_id, ns)).values())
    return total


# -- the blocks file -------------------------------------------------------------------------------


def flip_in_file(path: Path, offset: int, count: int = 8) -> None:
    """Invert `count` bytes of the file at `offset`."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in old))
        f.flush()
        os.fsync(f.fileno())


def find_all(path: Path, pattern: bytes) -> list[int]:
    """Every offset of `pattern` in the file."""
    out = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pos = mm.find(pattern)
        while pos >= 0:
            out.append(pos)
            pos = mm.find(pattern, pos + 1)
    return out


def corrupt_copy(directory: Path, namespace: str, name: str, content: bytes, at: int) -> str:
    """Flip 8 bytes of the copy of `namespace/name` (whose bytes are `content`) kept by the
    daemon of `directory` (stopped), at byte `at` of the object. Found through the daemon's
    own store, opened offline (or, if the store does not know the object under that name,
    by searching the blocks file for the block's bytes). How it was found."""
    blocks = directory / "blocks"
    where: int | None = None
    try:
        with ObjectStore.open(str(blocks), str(directory / "keys.db")) as store:
            rec = store.stat(name, namespace=namespace)
            bs = store.block_size
            assert rec.size == len(content), (rec.size, len(content))
            for _, phys, _ in rec.manifest.runs(at // bs, at // bs + 1):
                assert phys != HOLE
                where = phys * bs + at % bs
    except NotFound:
        pass
    if where is not None:
        flip_in_file(blocks, where)
        return f"the store's manifest: byte {where} of {blocks}"
    start = at - at % 4096
    hits = find_all(blocks, content[start : start + 256])
    assert hits, f"{namespace}/{name}'s bytes are not in {blocks}"
    for h in hits:
        flip_in_file(blocks, h + at % 4096)
    return f"a search of {blocks}: {len(hits)} place(s)"


async def gather_limited(n: int, coros: Iterable[Awaitable[T]]) -> list[T]:
    busy = asyncio.Semaphore(n)

    async def one(co: Awaitable[T]) -> T:
        async with busy:
            return await co

    return list(await asyncio.gather(*(one(co) for co in coros)))


async def fill(
    c: ClusterClient, ledger: Ledger, objects: dict[str, int], pool: str = POOL, parallel: int = 8
) -> dict[str, bytes]:
    """Write `objects` (name -> size; content from `body(name, size)`), every one
    acknowledged; their contents."""
    contents = {n: body(n, size) for n, size in objects.items()}

    async def one(name: str) -> None:
        a = ledger.begin(name, contents[name])
        try:
            await c.put(pool, name, contents[name])
        except BaseException as exc:
            ledger.end(a, exc)
            raise
        ledger.end(a)

    await gather_limited(parallel, (one(n) for n in contents))
    return contents
