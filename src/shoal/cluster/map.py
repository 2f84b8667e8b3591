"""ClusterMap: who the storage daemons are, which pools exist, as of one epoch.

Frozen values. The master makes a new map (epoch + 1) for every change; daemons and clients
hold one and place objects with it. Maps travel as plain dicts (msgpack), whole or as a
`MapDiff` from the epoch the receiver has.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shoal.errors import Conflict, InvalidArgument, NotFound

UP, DOWN = "up", "down"
FAILURE_DOMAINS = ("host", "daemon")
MAX_REPLICAS = 16
MAX_PG_NUM = 1 << 20
MAX_DAEMON_ID = 1 << 31
MAX_WEIGHT = 1 << 62  # (numpy computes scores in int64)
WEIGHT_ONE = 1 << 16  # weights are 16.16 fixed point: 1.0 is a daemon of average size
_POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True, slots=True)
class DaemonInfo:
    id: int
    address: str  # host:port of its native protocol, for clients
    host: str  # the machine it runs on: the "host" failure domain
    weight: int = WEIGHT_ONE  # 16.16 fixed point, about its share of capacity
    up: bool = True
    in_: bool = True  # "in": holds data; "out": holds none (but may still be up)
    peer_address: str = ""  # for other daemons
    http_address: str = ""  # its read-only HTTP endpoint
    capacity: int = 0  # bytes, as reported
    used: int = 0
    up_from: int = 0  # the epoch since which it has been up: its copies are current only after

    def __post_init__(self) -> None:
        if not 0 <= self.id < MAX_DAEMON_ID:
            raise InvalidArgument(f"a daemon id is 0..{MAX_DAEMON_ID - 1}, not {self.id}")
        if not 0 <= self.weight < MAX_WEIGHT:
            raise InvalidArgument(f"a weight is 0..{MAX_WEIGHT - 1} (16.16), not {self.weight}")

    @property
    def state(self) -> str:
        return f"{UP if self.up else DOWN},{'in' if self.in_ else 'out'}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "address": self.address, "host": self.host, "weight": self.weight,
            "up": self.up, "in": self.in_, "peer_address": self.peer_address,
            "http_address": self.http_address, "capacity": self.capacity, "used": self.used,
            "up_from": self.up_from,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DaemonInfo:
        return cls(
            int(d["id"]), str(d["address"]), str(d["host"]), int(d["weight"]), bool(d["up"]),
            bool(d["in"]), str(d.get("peer_address", "")), str(d.get("http_address", "")),
            int(d.get("capacity", 0)), int(d.get("used", 0)), int(d.get("up_from", 0)),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Pool:
    id: int  # never reused: placement of a pool's objects is seeded by it
    name: str
    replicas: int = 3
    min_size: int = 2  # writes are refused below this many up replicas
    pg_num: int = 128
    failure_domain: str = "host"
    daemons: tuple[int, ...] = ()  # the daemons (disks) it may use; () for every one

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _POOL_NAME.fullmatch(self.name):
            raise InvalidArgument(
                f"pool name {self.name!r}: 1 to 128 letters, digits, '.', '_' or '-', "
                "not starting with a punctuation mark"
            )
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise InvalidArgument(f"replicas must be 1..{MAX_REPLICAS}, not {self.replicas}")
        if not 1 <= self.min_size <= self.replicas:
            raise InvalidArgument(
                f"min_size must be 1..replicas ({self.replicas}), not {self.min_size}"
            )
        if not 1 <= self.pg_num <= MAX_PG_NUM:
            raise InvalidArgument(f"pg_num must be 1..{MAX_PG_NUM}, not {self.pg_num}")
        if self.failure_domain not in FAILURE_DOMAINS:
            raise InvalidArgument(
                f"failure domain must be one of {', '.join(FAILURE_DOMAINS)}, "
                f"not {self.failure_domain!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "replicas": self.replicas,
            "min_size": self.min_size, "pg_num": self.pg_num,
            "failure_domain": self.failure_domain, "daemons": list(self.daemons),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Pool:
        return cls(
            int(d["id"]), str(d["name"]), int(d["replicas"]), int(d["min_size"]),
            int(d["pg_num"]), str(d["failure_domain"]),
            tuple(sorted(int(x) for x in d.get("daemons", ()))),
        )  # fmt: skip


@dataclass(frozen=True)
class ClusterMap:
    epoch: int = 0
    daemons: Mapping[int, DaemonInfo] = field(default_factory=dict)
    pools: Mapping[str, Pool] = field(default_factory=dict)

    # -- lookups ---------------------------------------------------------------------------

    def pool(self, name: str) -> Pool:
        try:
            return self.pools[name]
        except KeyError:
            raise NotFound(f"no pool named {name!r}") from None

    def daemon(self, daemon_id: int) -> DaemonInfo:
        try:
            return self.daemons[daemon_id]
        except KeyError:
            raise NotFound(f"no daemon {daemon_id}") from None

    def candidates(self, pool: Pool | None = None) -> list[DaemonInfo]:
        """The daemons that hold data ("in"), by id: placement chooses among these (those
        of `pool`'s daemons, if it names some)."""
        only = set(pool.daemons) if pool is not None and pool.daemons else None
        return [
            self.daemons[i]
            for i in sorted(self.daemons)
            if self.daemons[i].in_ and (only is None or i in only)
        ]

    # -- changes: each returns the next map (epoch + 1) --------------------------------------

    def with_daemon(self, d: DaemonInfo) -> ClusterMap:
        return self._next(daemons={**self.daemons, d.id: d})

    def without_daemon(self, daemon_id: int) -> ClusterMap:
        self.daemon(daemon_id)
        return self._next(daemons={i: d for i, d in self.daemons.items() if i != daemon_id})

    def with_pool(self, pool: Pool) -> ClusterMap:
        if pool.name in self.pools and self.pools[pool.name].id != pool.id:
            raise Conflict(f"pool {pool.name!r} exists")
        return self._next(pools={**self.pools, pool.name: pool})

    def without_pool(self, name: str) -> ClusterMap:
        self.pool(name)
        return self._next(pools={n: p for n, p in self.pools.items() if n != name})

    def next_pool_id(self) -> int:
        return max((p.id for p in self.pools.values()), default=0) + 1

    def next_daemon_id(self) -> int:
        return max(self.daemons, default=-1) + 1

    def _next(self, **kw: Any) -> ClusterMap:
        return replace(self, epoch=self.epoch + 1, **kw)

    # -- the wire ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "daemons": [self.daemons[i].to_dict() for i in sorted(self.daemons)],
            "pools": [self.pools[n].to_dict() for n in sorted(self.pools)],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClusterMap:
        try:
            daemons = [DaemonInfo.from_dict(x) for x in d["daemons"]]
            pools = [Pool.from_dict(x) for x in d["pools"]]
            return cls(int(d["epoch"]), {x.id: x for x in daemons}, {p.name: p for p in pools})
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"not a cluster map: {exc!r}") from None


@dataclass(frozen=True)
class MapDiff:
    """What changed from map `base` to map `epoch`: enough to turn the one into the other."""

    base: int
    epoch: int
    daemons: tuple[DaemonInfo, ...] = ()  # added or changed
    removed_daemons: tuple[int, ...] = ()
    pools: tuple[Pool, ...] = ()
    removed_pools: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.daemons or self.removed_daemons or self.pools or self.removed_pools)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base, "epoch": self.epoch,
            "daemons": [d.to_dict() for d in self.daemons],
            "removed_daemons": list(self.removed_daemons),
            "pools": [p.to_dict() for p in self.pools],
            "removed_pools": list(self.removed_pools),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MapDiff:
        try:
            return cls(
                int(d["base"]), int(d["epoch"]),
                tuple(DaemonInfo.from_dict(x) for x in d["daemons"]),
                tuple(int(i) for i in d["removed_daemons"]),
                tuple(Pool.from_dict(x) for x in d["pools"]),
                tuple(str(n) for n in d["removed_pools"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"not a map diff: {exc!r}") from None


def diff(old: ClusterMap, new: ClusterMap) -> MapDiff:
    return MapDiff(
        old.epoch,
        new.epoch,
        tuple(d for i, d in sorted(new.daemons.items()) if old.daemons.get(i) != d),
        tuple(sorted(set(old.daemons) - set(new.daemons))),
        tuple(p for n, p in sorted(new.pools.items()) if old.pools.get(n) != p),
        tuple(sorted(set(old.pools) - set(new.pools))),
    )


def apply(m: ClusterMap, d: MapDiff) -> ClusterMap:
    """`m` with `d` applied; Conflict if `d` was not made from `m`'s epoch."""
    if d.base != m.epoch:
        raise Conflict(f"a diff from epoch {d.base} does not apply to a map of epoch {m.epoch}")
    daemons = {i: x for i, x in m.daemons.items() if i not in d.removed_daemons}
    daemons.update((x.id, x) for x in d.daemons)
    pools = {n: p for n, p in m.pools.items() if n not in d.removed_pools}
    pools.update((p.name, p) for p in d.pools)
    return ClusterMap(d.epoch, daemons, pools)


def daemons_from(items: Iterable[DaemonInfo]) -> dict[int, DaemonInfo]:
    return {d.id: d for d in items}
