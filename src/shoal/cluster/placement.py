"""Placement: which daemons hold an object, computed by anyone holding the map.

    pg     = stable_mod(hash64(namespace, name), pg_num)
    acting = the top `replicas` daemons by straw2 score among the daemons that are in, at most
             one per failure domain (host), best first (the first is the PG's primary)

Straw2 (weighted rendezvous): daemon d draws u = hash(pool, pg, d) in (0, 1] and scores
ln(u) / weight(d); the highest score wins. A daemon's chance of winning is its share of the
weight, and a change of one daemon (added, removed, reweighted) only moves PGs to or from
that daemon.

Every node must compute the same answer, so the score is integer arithmetic only: a 64-bit
mixing hash, a fixed-point log2 (a table of log2(1 + i/4096) made with the decimal module,
which rounds the same everywhere, kept written out in shoal.cluster.log2_table, and linear
interpolation), and a floor division by the 16.16 weight. Ties (very rare) go to the lower
daemon id, and between hosts to the host name that sorts first. numpy does the arithmetic for a
whole table of PGs at once; `reference_acting` is the same rule written plainly, one PG at a
time, and the tests hold the two to each other. A client placing a few names uses the plain
one and never loads numpy (~70 ms of a `shoal read`); numpy is imported when a table is made.

stable_mod is Ceph's: when pg_num grows, a PG's objects either stay or move to one new PG.

Every PG of a pool gets min(replicas, D) daemons, D being the failure domains among the
daemons it may use (`failure_domains`): a pool is either placed in full or short everywhere,
and `shortfall` says which, and why, in words.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import blake3

from shoal.cluster.log2_table import TABLE
from shoal.cluster.map import ClusterMap, DaemonInfo, Pool

if TYPE_CHECKING:
    import numpy as np

M64 = (1 << 64) - 1
_FRAC = 24  # fractional bits of the fixed-point log2
_TAB_BITS = 12
_INTERP_BITS = 32 - _TAB_BITS
_GOLDEN = 0x9E3779B97F4A7C15
_CHUNK = 1 << 20  # score-matrix entries per numpy step (bounds memory)
# A PG's acting set is computed in plain Python (no numpy) when the pool may use at most this
# many daemons (one PG: ~18 us at 16 daemons against numpy's ~27-57 us), and for the first
# PGs a PoolPlacement is asked for whatever their number (a client placing a few names never
# loads numpy); past both, a row at a time with numpy (at 1,000 daemons ~0.1 ms, ~10x faster).
_PLAIN_DAEMONS = 32
_PLAIN_PGS = 16


def log2_table_exact() -> tuple[int, ...]:
    """floor(log2(1 + i / 4096) * 2**24) for i in 0..4096, exactly (decimal rounds the same
    on every machine; a float log might not). ~0.1 s: shoal.cluster.log2_table holds it
    written out, and the tests hold that to this."""
    from decimal import Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = 40
        ln2 = Decimal(2).ln()
        n = 1 << _TAB_BITS
        return tuple(int((Decimal(n + i) / n).ln() / ln2 * (1 << _FRAC)) for i in range(n + 1))


def _log2_table() -> tuple[int, ...]:
    return TABLE


@functools.cache
def _log2_array() -> np.ndarray[Any, np.dtype[np.int64]]:
    import numpy as np

    return np.array(TABLE, dtype=np.int64)


# -- hashes ----------------------------------------------------------------------------------


def object_hash(namespace: str, name: str) -> int:
    """64 bits of BLAKE3 of the object's namespace and name."""
    h = blake3.blake3(namespace.encode() + b"\x00" + name.encode()).digest(8)
    return int.from_bytes(h, "little")


def stable_mod(x: int, b: int) -> int:
    """x mod b, such that raising b moves each value either nowhere or to one new bucket."""
    mask = (1 << (b - 1).bit_length()) - 1
    return x & mask if (x & mask) < b else x & (mask >> 1)


def pg_of(pool: Pool, namespace: str, name: str) -> int:
    return stable_mod(object_hash(namespace, name), pool.pg_num)


def fmix64(x: int) -> int:
    """A 64-bit finaliser (splitmix64's): every input bit moves every output bit."""
    x &= M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _fmix64_np(x: np.ndarray[Any, np.dtype[np.uint64]]) -> np.ndarray[Any, np.dtype[np.uint64]]:
    import numpy as np

    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def pg_seed(pool_id: int, pg: int) -> int:
    return fmix64((pool_id << 32) | pg)


# -- scores ----------------------------------------------------------------------------------


def log2_fixed(u: int) -> int:
    """log2(u) * 2**24, rounded down (nearly), for 1 <= u <= 2**32."""
    e = u.bit_length() - 1
    x = u << (32 - e)  # in [2**32, 2**33)
    idx = (x >> _INTERP_BITS) & ((1 << _TAB_BITS) - 1)
    r = x & ((1 << _INTERP_BITS) - 1)
    t = TABLE
    return (e << _FRAC) + t[idx] + (((t[idx + 1] - t[idx]) * r) >> _INTERP_BITS)


def score(seed: int, daemon_id: int, weight: int) -> int:
    """The straw2 score of a daemon for the PG whose seed is `seed` (higher wins)."""
    h = fmix64(seed ^ ((daemon_id * _GOLDEN) & M64))
    ln = log2_fixed((h >> 32) + 1) - (32 << _FRAC)  # log2(u), u in (0, 1]: <= 0
    return (ln << 16) // weight


def _scores_np(
    seeds: np.ndarray[Any, np.dtype[np.uint64]],
    ids: np.ndarray[Any, np.dtype[np.uint64]],
    weights: np.ndarray[Any, np.dtype[np.int64]],
) -> np.ndarray[Any, np.dtype[np.int64]]:
    """`score` for every (seed, daemon) pair: a (len(seeds), len(ids)) matrix."""
    import numpy as np

    with np.errstate(over="ignore"):
        h = _fmix64_np(seeds[:, None] ^ (ids * np.uint64(_GOLDEN))[None, :])
    u = (h >> np.uint64(32)).astype(np.int64) + 1
    _, e = np.frexp(u.astype(np.float64))  # exact: u < 2**53
    e = e.astype(np.int64) - 1  # floor(log2(u))
    x = u << (32 - e)
    idx = (x >> _INTERP_BITS) & ((1 << _TAB_BITS) - 1)
    r = x & ((1 << _INTERP_BITS) - 1)
    t = _log2_array()
    lo = t[idx]
    ln = (e << _FRAC) + lo + (((t[idx + 1] - lo) * r) >> _INTERP_BITS) - (32 << _FRAC)
    out: np.ndarray[Any, np.dtype[np.int64]] = np.floor_divide(ln << 16, weights[None, :])
    return out


# -- acting sets -------------------------------------------------------------------------------


class PoolPlacement:
    """Placement of one pool's PGs under one map: acting sets computed on demand and kept."""

    def __init__(self, cmap: ClusterMap, pool: Pool) -> None:
        self.epoch, self.pool = cmap.epoch, pool
        self._cands = usable(cmap, pool)
        self._id_list = [d.id for d in self._cands]
        self._by_daemon = pool.failure_domain != "host"
        self._arrays: _Arrays | None = None  # numpy's view of the candidates, once needed
        self._sets: dict[int, tuple[int, ...]] = {}

    def acting(self, pg: int) -> tuple[int, ...]:
        """The daemon ids of PG `pg`, primary first (fewer than `replicas` if the map has
        fewer failure domains)."""
        got = self._sets.get(pg)
        if got is None:
            if len(self._cands) <= _PLAIN_DAEMONS or len(self._sets) < _PLAIN_PGS:
                got = _acting(self.pool, self._cands, pg)
            else:
                got = tuple(int(x) for x in self.table([pg])[0] if x >= 0)
            self._sets[pg] = got
        return got

    def place(self, namespace: str, name: str) -> tuple[int, ...]:
        return self.acting(pg_of(self.pool, namespace, name))

    def _numpy(self) -> _Arrays:
        if self._arrays is None:
            self._arrays = _Arrays(self._cands, self._by_daemon)
        return self._arrays

    def table(self, pgs: list[int] | None = None) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Acting sets of `pgs` (default: all), one row each, -1 where there is no daemon."""
        import numpy as np

        pg_list = list(range(self.pool.pg_num)) if pgs is None else pgs
        k, n = self.pool.replicas, len(self._id_list)
        out = np.full((len(pg_list), k), -1, dtype=np.int64)
        if n == 0:
            return out
        arr = self._numpy()
        ids = np.array(self._id_list, dtype=np.int64)
        step = max(1, _CHUNK // n)
        for a in range(0, len(pg_list), step):
            chunk = pg_list[a : a + step]
            seeds = np.array([pg_seed(self.pool.id, pg) for pg in chunk], dtype=np.uint64)
            s = _scores_np(seeds, arr.ids, arr.weights)
            if self._by_daemon:
                order = np.argsort(-s, axis=1, kind="stable")[:, :k]
            else:
                order = arr.best_per_domain(s, k)
            out[a : a + len(chunk), : order.shape[1]] = np.where(order >= 0, ids[order], -1)
        return out


class _Arrays:
    """A pool's candidate daemons as numpy arrays: ids, weights and failure domains (hosts by
    name order; for failure domain "daemon", each daemon its own)."""

    def __init__(self, cands: list[DaemonInfo], by_daemon: bool) -> None:
        import numpy as np

        self.ids = np.array([d.id for d in cands], dtype=np.uint64)
        self.weights = np.array([d.weight for d in cands], dtype=np.int64)
        keys = [str(d.id) if by_daemon else d.host for d in cands]
        self.domain_names = keys if by_daemon else sorted(set(keys))
        index = {n: i for i, n in enumerate(self.domain_names)}
        self.domains = np.array([index[k] for k in keys], dtype=np.int64)

    def best_per_domain(
        self, s: np.ndarray[Any, np.dtype[np.int64]], k: int
    ) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Column indexes of the best daemon of each of the top-k domains, per row."""
        import numpy as np

        n = s.shape[1]
        nd = len(self.domain_names)
        # order daemons by (domain, id): each domain is then one run of columns
        cols = np.lexsort((np.arange(n), self.domains))
        starts = np.flatnonzero(np.r_[True, np.diff(self.domains[cols]) != 0])
        sd = s[:, cols]
        best = np.maximum.reduceat(sd, starts, axis=1)  # (rows, nd)
        ends = np.r_[starts[1:], n]
        run_of = np.repeat(np.arange(nd), ends - starts)
        is_best = sd == best[:, run_of]
        pos = np.where(is_best, np.arange(n)[None, :], n)
        first = np.minimum.reduceat(pos, starts, axis=1)  # first column at the max: lowest id
        top = np.argsort(-best, axis=1, kind="stable")[:, :k]  # ties: domain name order
        chosen = np.take_along_axis(first, top, axis=1)
        result: np.ndarray[Any, np.dtype[np.int64]] = cols[chosen]
        return result


# -- can a pool be placed? ----------------------------------------------------------------------

_NAMES_SHOWN = 5  # failure domains named in a message, at most


def usable(cmap: ClusterMap, pool: Pool) -> list[DaemonInfo]:
    """The daemons placement chooses among for `pool`: its daemons (every daemon, if it names
    none) that are in and weigh more than 0, by id."""
    return [d for d in cmap.candidates(pool) if d.weight > 0]


def domain_of(pool: Pool, d: DaemonInfo) -> str:
    return d.host if pool.failure_domain == "host" else str(d.id)


def failure_domains(cmap: ClusterMap, pool: Pool) -> dict[str, tuple[int, ...]]:
    """The failure domains placement has for `pool` under `cmap`, each with its daemons' ids:
    hosts by name (or, for failure domain "daemon", each usable daemon its own)."""
    out: dict[str, list[int]] = {}
    for d in usable(cmap, pool):
        out.setdefault(domain_of(pool, d), []).append(d.id)
    items = sorted(out.items()) if pool.failure_domain == "host" else out.items()  # (daemons by id)
    return {k: tuple(v) for k, v in items}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (
        f", ... ({len(names) - _NAMES_SHOWN} more)" if len(names) > _NAMES_SHOWN else ""
    )


def _ids(ids: tuple[int, ...]) -> str:
    return f"{'daemon' if len(ids) == 1 else 'daemons'} {', '.join(map(str, ids))}"


@dataclass(frozen=True)
class Shortfall:
    """A pool whose PGs cannot each have `replicas` daemons on distinct failure domains: each
    gets `len(domains)` daemons instead (none when there are none)."""

    pool: Pool
    domains: tuple[str, ...]  # the failure domains placement has for the pool
    usable: int  # the daemons it may use (in, weight > 0)
    out: int  # the registered daemons it would use but for being out
    weigh_0: int  # ... that are in but weigh 0
    idle: tuple[int, ...] = ()  # of those out, one per failure domain it lacks
    weightless: tuple[int, ...] = ()  # of those that weigh 0, one per failure domain it lacks

    @property
    def unit(self) -> str:
        return self.pool.failure_domain  # "host" or "daemon"

    @property
    def per_pg(self) -> int:
        """Daemons in each PG's acting set."""
        return len(self.domains)

    @property
    def inactive(self) -> bool:
        """Too few even for min_size: the pool takes no writes at all."""
        return self.per_pg < self.pool.min_size

    def why(self) -> str:
        """The cause in one sentence: "3 replicas need 3 hosts, and the cluster's 3 daemons
        are on 1 host (x)"."""
        r, unit, n = self.pool.replicas, self.unit, self.usable
        owner = "the pool" if self.pool.daemons else "the cluster"
        need = f"{_plural(r, 'replica')} need{'s' if r == 1 else ''} {_plural(r, unit)}"
        unused = [f"{self.out} {'is' if self.out == 1 else 'are'} out"] if self.out else []
        if self.weigh_0:
            unused.append(f"{self.weigh_0} weigh{'s' if self.weigh_0 == 1 else ''} 0")
        if n == 0:
            if not unused and self.pool.daemons:
                gone = ", ".join(map(str, self.pool.daemons))
                return f"{need}, and the pool's daemons ({gone}) have been removed"
            if not unused:
                return f"{need}, and no daemon has registered yet"
            return f"{need}, and no daemon of {owner} can hold data ({', '.join(unused)})"
        names = _names(list(self.domains))
        that = " that can hold data" if unused else ""
        if unit == "host":
            have = (f"{owner}'s {_plural(n, 'daemon')}{that} {'is' if n == 1 else 'are'} on "
                    f"{_plural(len(self.domains), 'host')} ({names})")  # fmt: skip
        else:
            have = f"{owner} has {_plural(n, 'daemon')}{that} ({names})"
        return f"{need}, and {have}" + (f"; of the others {', '.join(unused)}" if unused else "")

    def status_line(self) -> str:
        """For `shoal status`: "pool photos takes no writes: its 256 pgs have 1 daemon each
        (min_size 2), as 3 replicas need 3 hosts, and the cluster's 3 daemons are on 1 host
        (x)"."""
        p, n = self.pool, self.per_pg
        what = ("takes no writes" if self.inactive
                else f"keeps {n} {'copy' if n == 1 else 'copies'}, not {p.replicas}")  # fmt: skip
        each = f"{_plural(n, 'daemon')} each" if n else "no daemon"
        has = f"its {p.pg_num} pgs have {each} (min_size {p.min_size})"
        return f"pool {p.name} {what}: {has}, as {self.why()}"

    def remedy(self) -> str:
        """What the maker of the pool can do instead, in one clause."""
        if self.usable + self.out + self.weigh_0 == 0:
            return "start the daemons first (`shoal daemon ls` lists those registered)"
        ways = []
        if self.idle:
            ways.append(f"bring {_ids(self.idle)} in (`shoal daemon in`)")
        if self.weightless:
            ways.append(f"give {_ids(self.weightless)} a weight (`shoal daemon reweight`)")
        if self.unit == "host" and self.usable >= self.pool.replicas:
            ways.append("use --failure-domain daemon")
        if self.per_pg:
            ways.append(f"use --replicas {self.per_pg}")
        if self.pool.daemons:
            ways.append(f"give more daemons (--daemons) on more {self.unit}s"
                        if self.unit == "host" else "give more daemons (--daemons)")  # fmt: skip
        else:
            ways.append("start daemons on more hosts" if self.unit == "host"
                        else "start more daemons")  # fmt: skip
        return ", ".join(ways[:-1]) + (", or " if len(ways) > 1 else "") + ways[-1]


def shortfall(cmap: ClusterMap, pool: Pool) -> Shortfall | None:
    """None when every PG of `pool` gets `replicas` daemons on distinct failure domains under
    `cmap`; otherwise what it gets, and why."""
    domains = failure_domains(cmap, pool)
    if len(domains) >= pool.replicas:
        return None
    named = set(pool.daemons) if pool.daemons else None
    ok = {d.id for d in usable(cmap, pool)}
    unused = [d for i, d in sorted(cmap.daemons.items())
              if i not in ok and (named is None or i in named)]  # fmt: skip
    idle: list[int] = []
    weightless: list[int] = []
    new = set(domains)
    for d in unused:
        if domain_of(pool, d) not in new:
            new.add(domain_of(pool, d))
            (weightless if d.in_ else idle).append(d.id)
    out = sum(1 for d in unused if not d.in_)
    return Shortfall(pool, tuple(domains), len(ok), out, len(unused) - out, tuple(idle),
                     tuple(weightless))  # fmt: skip


def reference_acting(cmap: ClusterMap, pool: Pool, pg: int) -> tuple[int, ...]:
    """The placement rule written plainly, one PG at a time: what the tests hold the numpy
    table to, and what places a PG where numpy would not repay its cost."""
    return _acting(pool, usable(cmap, pool), pg)


def _acting(pool: Pool, cands: list[DaemonInfo], pg: int) -> tuple[int, ...]:
    """The acting set of PG `pg` of `pool` among `cands` (usable: in, weight > 0, by id)."""
    seed = pg_seed(pool.id, pg)
    scored = [(score(seed, d.id, d.weight), d) for d in cands]
    if pool.failure_domain == "daemon":
        scored.sort(key=lambda sd: (-sd[0], sd[1].id))
        return tuple(d.id for _, d in scored[: pool.replicas])
    best: dict[str, tuple[int, int]] = {}
    for sc, d in scored:
        cur = best.get(d.host)
        if cur is None or (sc, -d.id) > (cur[0], -cur[1]):
            best[d.host] = (sc, d.id)
    hosts = sorted(best, key=lambda h: (-best[h][0], h))
    return tuple(best[h][1] for h in hosts[: pool.replicas])


class Placer:
    """Placement for every pool of one map, computed as needed."""

    def __init__(self, cmap: ClusterMap) -> None:
        self.map = cmap
        self._pools: dict[str, PoolPlacement] = {}

    def pool(self, name: str) -> PoolPlacement:
        p = self._pools.get(name)
        if p is None:
            p = self._pools[name] = PoolPlacement(self.map, self.map.pool(name))
        return p

    def place(self, pool: str, namespace: str, name: str) -> tuple[int, ...]:
        return self.pool(pool).place(namespace, name)
