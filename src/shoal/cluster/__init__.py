"""cluster: pure code. The cluster map (daemons, pools, epochs), placement of objects on
daemons, and map diffs. No I/O: the master, daemons and clients all compute with it."""

from shoal.cluster.map import ClusterMap, DaemonInfo, MapDiff, Pool, apply, diff
from shoal.cluster.placement import Placer, PoolPlacement, pg_of, reference_acting

__all__ = [
    "ClusterMap",
    "DaemonInfo",
    "MapDiff",
    "Placer",
    "Pool",
    "PoolPlacement",
    "apply",
    "diff",
    "pg_of",
    "reference_acting",
]
