"""Can a pool be placed? `shortfall` against the placement table itself (every PG gets
min(replicas, failure domains) daemons, so a pool is placed in full everywhere or nowhere),
the remedies it offers against the rule (each one, taken, places the pool), and its words."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from shoal.cluster.map import ClusterMap, DaemonInfo, Pool
from shoal.cluster.placement import PoolPlacement, failure_domains, shortfall
from tests.unit.test_placement import SETTINGS, cluster_maps, eligible, pools, rows


def one_host(n: int, host: str = "x") -> ClusterMap:
    """`shoal up`'s cluster: n daemons on one machine."""
    return ClusterMap(n, {i: DaemonInfo(i, f"127.0.0.1:{4000 + i}", host) for i in range(n)}, {})


@st.composite
def pools_maybe_on_chosen(draw: st.DrawFn, m: ClusterMap) -> Pool:
    pool = draw(pools(max_pg=64))
    pool = replace(pool, min_size=draw(st.integers(1, pool.replicas)))
    if m.daemons and draw(st.booleans()):
        chosen = draw(st.sets(st.sampled_from(sorted(m.daemons)), min_size=1))
        pool = replace(pool, daemons=tuple(sorted(chosen)))
    return pool


@SETTINGS
@given(cluster_maps(min_daemons=0), st.data())
def test_shortfall_is_none_exactly_when_every_pg_gets_all_its_replicas(
    m: ClusterMap, data: st.DataObject
) -> None:
    pool = data.draw(pools_maybe_on_chosen(m))
    sets = rows(PoolPlacement(m, pool).table())
    short = shortfall(m, pool)
    if short is None:
        assert all(len(s) == pool.replicas for s in sets)
        return
    # short everywhere, by the same count, and that count is the failure domains it has
    assert all(len(s) == short.per_pg for s in sets) and short.per_pg < pool.replicas
    usable = [d for d in eligible(m) if not pool.daemons or d.id in pool.daemons]
    keys = {d.host if pool.failure_domain == "host" else str(d.id) for d in usable}
    assert set(short.domains) == keys == set(failure_domains(m, pool))
    assert short.usable == len(usable)
    assert short.inactive == (short.per_pg < pool.min_size)
    named = [d for i, d in m.daemons.items() if not pool.daemons or i in pool.daemons]
    assert short.usable + short.out + short.weigh_0 == len(named)
    assert short.out == sum(1 for d in named if not d.in_)


@SETTINGS
@given(cluster_maps(min_daemons=0), st.data())
def test_every_remedy_offered_places_the_pool(m: ClusterMap, data: st.DataObject) -> None:
    """What the refusal suggests is true: each way it names, taken alone, gives a pool that
    is placed in full (all but "start more daemons", which the map cannot show)."""
    pool = data.draw(pools_maybe_on_chosen(m))
    short = shortfall(m, pool)
    if short is None:
        return
    remedy = short.remedy()
    assert remedy
    if "--failure-domain daemon" in remedy:
        assert shortfall(m, replace(pool, failure_domain="daemon")) is None
    if short.per_pg:
        assert f"use --replicas {short.per_pg}" in remedy
        fewer = replace(pool, replicas=short.per_pg, min_size=min(pool.min_size, short.per_pg))
        assert shortfall(m, fewer) is None
    else:
        assert "--replicas" not in remedy
    if short.idle or short.weightless:
        woken = {
            i: replace(d, in_=True, weight=d.weight or 1 << 16)
            for i, d in m.daemons.items()
            if i in short.idle or i in short.weightless
        }
        more = ClusterMap(m.epoch + 1, {**m.daemons, **woken}, {})
        domains = failure_domains(more, pool)
        assert len(domains) == short.per_pg + len(short.idle) + len(short.weightless)
    for ids, verb in ((short.idle, "in (`shoal daemon in`)"),
                      (short.weightless, "a weight (`shoal daemon reweight`)")):  # fmt: skip
        if ids:
            assert f"{', '.join(map(str, ids))} {verb}" in remedy
        else:
            assert verb not in remedy


def test_the_readme_example_on_shoal_ups_one_host() -> None:
    """`shoal pool create photos --replicas 3 --pg-num 256` on 3 daemons of one machine."""
    m = one_host(3)
    photos = Pool(1, "photos", 3, 2, 256, "host")
    short = shortfall(m, photos)
    assert short is not None and short.per_pg == 1 and short.inactive
    assert short.why() == "3 replicas need 3 hosts, and the cluster's 3 daemons are on 1 host (x)"
    assert short.remedy() == (
        "use --failure-domain daemon, use --replicas 1, or start daemons on more hosts"
    )
    assert short.status_line() == (
        "pool photos takes no writes: its 256 pgs have 1 daemon each (min_size 2), as "
        "3 replicas need 3 hosts, and the cluster's 3 daemons are on 1 host (x)"
    )
    assert shortfall(m, replace(photos, failure_domain="daemon")) is None


def test_words_for_each_kind_of_shortfall() -> None:
    m = one_host(3)
    two = Pool(1, "two", 2, 1, 8, "host")
    short = shortfall(m, two)
    assert short is not None and not short.inactive
    assert short.status_line() == (
        "pool two keeps 1 copy, not 2: its 8 pgs have 1 daemon each (min_size 1), as "
        "2 replicas need 2 hosts, and the cluster's 3 daemons are on 1 host (x)"
    )

    four = shortfall(m, Pool(1, "four", 4, 2, 8, "daemon"))
    assert four is not None
    assert four.why() == "4 replicas need 4 daemons, and the cluster has 3 daemons (0, 1, 2)"
    assert four.remedy() == "use --replicas 3, or start more daemons"

    chosen = shortfall(m, Pool(1, "c", 3, 2, 8, "host", (0, 1)))
    assert chosen is not None
    assert chosen.why() == "3 replicas need 3 hosts, and the pool's 2 daemons are on 1 host (x)"
    assert chosen.remedy() == "use --replicas 1, or give more daemons (--daemons) on more hosts"

    empty = shortfall(ClusterMap(), Pool(1, "early", 3, 2, 8))
    assert empty is not None and empty.per_pg == 0
    assert empty.why() == "3 replicas need 3 hosts, and no daemon has registered yet"
    assert empty.remedy() == "start the daemons first (`shoal daemon ls` lists those registered)"
    assert empty.status_line().startswith("pool early takes no writes: its 8 pgs have no daemon")

    # a host out, another of weight 0: named, and the way back offered
    m2 = ClusterMap(
        5,
        {**m.daemons, 3: DaemonInfo(3, "a:1", "y", in_=False), 4: DaemonInfo(4, "a:2", "z", 0)},
        {},
    )
    s = shortfall(m2, Pool(1, "p", 3, 2, 8, "host"))
    assert s is not None
    assert s.why() == (
        "3 replicas need 3 hosts, and the cluster's 3 daemons that can hold data are on 1 host "
        "(x); of the others 1 is out, 1 weighs 0"
    )
    assert s.remedy() == (
        "bring daemon 3 in (`shoal daemon in`), give daemon 4 a weight (`shoal daemon "
        "reweight`), use --failure-domain daemon, use --replicas 1, or start daemons on more hosts"
    )
    gone = shortfall(ClusterMap(1, {0: DaemonInfo(0, "a:1", "x", in_=False)}, {}), Pool(1, "p"))
    assert gone is not None
    assert (
        gone.why()
        == "3 replicas need 3 hosts, and no daemon of the cluster can hold data (1 is out)"
    )


def test_many_hosts_are_named_up_to_five() -> None:
    m = ClusterMap(1, {i: DaemonInfo(i, "a:1", f"h{i}") for i in range(8)}, {})
    s = shortfall(m, Pool(1, "wide", 9, 5, 8))
    assert s is not None
    assert s.why() == (
        "9 replicas need 9 hosts, and the cluster's 8 daemons are on 8 hosts "
        "(h0, h1, h2, h3, h4, ... (3 more))"
    )
    assert shortfall(m, Pool(1, "fits", 8, 5, 8)) is None


def test_daemon_domains_are_named_by_id_in_order() -> None:
    m = ClusterMap(1, {i: DaemonInfo(i, "a:1", "x") for i in (2, 10, 33)}, {})
    assert list(failure_domains(m, Pool(1, "p", 4, 1, 8, "daemon"))) == ["2", "10", "33"]
    assert failure_domains(m, Pool(1, "p", 4, 1, 8, "host")) == {"x": (2, 10, 33)}
