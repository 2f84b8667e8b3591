"""Placement, simulated: spread, data moved when a daemon comes or goes, time to place.

At 10, 100 and 1,000 daemons (equal weights, one per host, failure domain host, replicas 3)
with 100,000 objects, using shoal.cluster.placement as the clients and daemons do:

- spread: the fullest daemon's object count over the mean (goal <= 1.10 at 100 daemons);
- add one daemon: the fraction of object copies that move, over the ideal (the new daemon's
  share of the weight, 1/(N+1)); goal <= 1.15, and every moved copy lands on the new daemon;
- remove one daemon: the fraction that moves over its share (1/N); only its copies move;
- time to place one object: with the PG's acting set already known (the common case: a client
  keeps them per map), and the first time for a PG (computed over all daemons), against the
  floor, hashing the name alone.

    .venv/bin/python -m bench.placement [--objects N] [--pg-num M]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bench import REPO, write_result
from bench.engine import git, log, machine
from shoal.cluster import ClusterMap, DaemonInfo, Pool, PoolPlacement
from shoal.cluster.placement import object_hash, pg_of

REPLICAS = 3
NS = "bench"


def cluster(n: int, pg_num: int) -> tuple[ClusterMap, Pool]:
    pool = Pool(1, "bench", replicas=REPLICAS, min_size=2, pg_num=pg_num)
    daemons = {i: DaemonInfo(i, f"10.0.{i // 250}.{i % 250}:4148", f"host{i}") for i in range(n)}
    return ClusterMap(1, daemons, {pool.name: pool}), pool


def copies(cmap: ClusterMap, pool: Pool, pgs: list[int]) -> list[tuple[int, ...]]:
    """The acting set of each object (given by its PG), computed for the distinct PGs."""
    pp = PoolPlacement(cmap, pool)
    distinct = sorted(set(pgs))
    table = pp.table(distinct)
    row = {pg: tuple(int(x) for x in table[i] if x >= 0) for i, pg in enumerate(distinct)}
    return [row[pg] for pg in pgs]


def spread(sets: list[tuple[int, ...]], n: int) -> dict[str, float]:
    count = Counter(d for s in sets for d in s)
    mean = sum(count.values()) / n
    return {
        "fullest_over_mean": max(count.values()) / mean,
        "emptiest_over_mean": min(count.get(i, 0) for i in range(n)) / mean,
    }


def moved(old: list[tuple[int, ...]], new: list[tuple[int, ...]]) -> tuple[int, set[int]]:
    """Copies that are in a new set and not in the old one, and the daemons they went to."""
    count, onto = 0, set()
    for a, b in zip(old, new, strict=True):
        for d in set(b) - set(a):
            count += 1
            onto.add(d)
    return count, onto


def place_times(cmap: ClusterMap, pool: Pool, names: list[str]) -> dict[str, float]:
    pp = PoolPlacement(cmap, pool)
    sample = names[:2000]
    t0 = time.perf_counter()
    for name in sample:  # the first time for (nearly) every PG
        pp.place(NS, name)
    cold = (time.perf_counter() - t0) / len(sample)
    for name in names:  # now every PG is known
        pp.place(NS, name)
    t0 = time.perf_counter()
    for name in names:
        pp.place(NS, name)
    warm = (time.perf_counter() - t0) / len(names)
    t0 = time.perf_counter()
    for name in names:
        object_hash(NS, name)
    floor = (time.perf_counter() - t0) / len(names)
    return {"warm_us": warm * 1e6, "first_in_pg_us": cold * 1e6, "hash_only_us": floor * 1e6}


def simulate(n: int, objects: int, pg_num: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    cmap, pool = cluster(n, pg_num)
    names = [f"object-{i}" for i in range(objects)]
    pgs = [pg_of(pool, NS, name) for name in names]
    base = copies(cmap, pool, pgs)
    total = len(base) * REPLICAS

    grown = cmap.with_daemon(DaemonInfo(n, "10.1.0.0:4148", f"host{n}"))
    after_add = copies(grown, pool, pgs)
    add_count, add_onto = moved(base, after_add)
    ideal_add = 1 / (n + 1)

    gone = n // 2
    shrunk = cmap.without_daemon(gone)
    after_rm = copies(shrunk, pool, pgs)
    rm_count, _ = moved(base, after_rm)
    held = sum(1 for s in base if gone in s)
    untouched = all(a == b for a, b in zip(base, after_rm, strict=True) if gone not in a)
    ideal_rm = 1 / n

    res = {
        "daemons": n, "objects": objects, "pg_num": pg_num, "replicas": REPLICAS,
        **spread(base, n),
        "add": {"moved_fraction": add_count / total, "ideal": ideal_add,
                "ratio": add_count / total / ideal_add,
                "all_onto_new_daemon": add_onto <= {n}},
        "remove": {"moved_fraction": rm_count / total, "ideal": ideal_rm,
                   "ratio": rm_count / total / ideal_rm,
                   "only_its_copies": untouched and rm_count == held},
        **place_times(cmap, pool, names),
        "wall_s": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__)
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--pg-num", type=int, default=65536, help="PGs in the pool (default 65536)")
    ap.add_argument("--daemons", type=int, nargs="+", default=[10, 100, 1000])
    args = ap.parse_args(argv)
    started = datetime.now()
    rows = []
    for n in args.daemons:
        log(f"{n} daemons, {args.objects} objects, pg_num {args.pg_num} ...")
        rows.append(simulate(n, args.objects, args.pg_num))
    # spread at 100 daemons also with fewer PGs: how it depends on pg_num
    extra = [
        {k: v for k, v in simulate(100, args.objects, p).items()
         if k in ("daemons", "pg_num", "fullest_over_mean", "emptiest_over_mean")}
        for p in (1024, 4096, 16384) if 100 in args.daemons
    ]  # fmt: skip
    goals = []
    for r in rows:
        n = r["daemons"]
        if n == 100:
            goals.append(("spread at 100 daemons", r["fullest_over_mean"], "<= 1.10",
                          r["fullest_over_mean"] <= 1.10))  # fmt: skip
        goals.append((f"add one to {n}: moved / ideal", r["add"]["ratio"], "<= 1.15",
                      r["add"]["ratio"] <= 1.15 and r["add"]["all_onto_new_daemon"]))  # fmt: skip
        goals.append((f"remove one of {n}: moved / its share", r["remove"]["ratio"],
                      "only its copies", r["remove"]["only_its_copies"]))  # fmt: skip
    head = (f"{'daemons':>8}{'fullest/mean':>14}{'add: moved':>12}{'/ideal':>8}{'onto new':>10}"
            f"{'rm: moved':>11}{'/share':>8}{'only its':>10}{'place us':>10}{'1st in PG':>11}"
            f"{'hash us':>9}{'ratio':>7}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in rows:
        a, m = r["add"], r["remove"]
        print(f"{r['daemons']:>8}{r['fullest_over_mean']:>14.3f}{a['moved_fraction']:>12.4f}"
              f"{a['ratio']:>8.3f}{'yes' if a['all_onto_new_daemon'] else 'NO':>10}"
              f"{m['moved_fraction']:>11.4f}{m['ratio']:>8.3f}"
              f"{'yes' if m['only_its_copies'] else 'NO':>10}{r['warm_us']:>10.2f}"
              f"{r['first_in_pg_us']:>11.1f}{r['hash_only_us']:>9.2f}"
              f"{r['warm_us'] / r['hash_only_us']:>7.2f}")  # fmt: skip
    print(f"({args.objects} objects, replicas {REPLICAS}, pg_num {args.pg_num}, equal weights, "
          "one daemon per host; 'place us' with the PG's set known, '1st in PG' computing it; "
          "'ratio' = place / hash of the name alone)")  # fmt: skip
    for e in extra:
        print(f"spread at 100 daemons with pg_num {e['pg_num']}: {e['fullest_over_mean']:.3f}")
    for what, value, goal, met in goals:
        print(f"{what:<40} {value:8.3f}  {goal:<16} {'met' if met else 'MISSED'}")
    result = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(REPO),
        "git": git(),
        "parameters": vars(args),
        "rows": rows,
        "spread_by_pg_num": extra,
        "goals": [{"what": w, "value": v, "goal": g, "met": m} for w, v, g, m in goals],
        "goals_met": all(m for *_, m in goals),
    }
    write_result("placement", result)
    return 0 if result["goals_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
