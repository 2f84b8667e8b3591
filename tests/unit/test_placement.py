"""Placement: golden values that pin the rule, numpy against the plain reference, and the
properties straw2 and stable_mod promise (little movement when the map or pg_num changes)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import blake3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.cluster import placement
from shoal.cluster.map import WEIGHT_ONE, ClusterMap, DaemonInfo, Pool
from shoal.cluster.placement import (
    Placer,
    PoolPlacement,
    fmix64,
    log2_fixed,
    object_hash,
    pg_of,
    pg_seed,
    reference_acting,
    score,
    stable_mod,
)
from shoal.errors import NotFound

# deterministic: the same examples on every run (and no example database between runs)
SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=120)
MOVE_SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=40)


def rows(t: np.ndarray) -> list[tuple[int, ...]]:
    """A table as acting sets (the -1 padding dropped)."""
    return [tuple(int(x) for x in r if x >= 0) for r in t]


def digest(t: np.ndarray) -> str:
    return blake3.blake3(t.astype("<i8").tobytes()).hexdigest()


def build(ds: list[DaemonInfo]) -> ClusterMap:
    return ClusterMap(1, {d.id: d for d in ds}, {})


# -- golden values: any change of these is a change of where every object lives ---------------


@pytest.mark.parametrize(
    ("namespace", "name", "h"),
    [
        ("", "", 0xF1611BF1DFDE3A2D),
        ("default", "a", 0x0AB3F56DC258C53C),
        ("default", "b", 0xD76AC4B4B1F86527),
        ("photos", "2024/cat.jpg", 0x6E566F04564A9D18),
        ("ünï", "日本語/ファイル", 0xF204DC912671624A),
        ("ns", "x" * 1000, 0x1B3EDD233478835F),
    ],
)
def test_golden_object_hash(namespace: str, name: str, h: int) -> None:
    assert object_hash(namespace, name) == h


def test_object_hash_separates_namespace_and_name() -> None:
    assert object_hash("ab", "c") != object_hash("a", "bc")


@pytest.mark.parametrize(
    ("x", "b", "m"),
    [
        (0, 1, 0),
        (12345, 1, 0),
        (0xDEADBEEF, 64, 47),
        (0xDEADBEEF, 100, 47),
        (0xDEADBEEF, 3, 1),
        (2**64 - 1, 1000, 511),
        (7, 5, 3),
        (6, 5, 2),
        (1000, 1000, 488),
    ],
)
def test_golden_stable_mod(x: int, b: int, m: int) -> None:
    assert stable_mod(x, b) == m


@pytest.mark.parametrize(
    ("x", "h"),
    [
        (0, 0),
        (1, 0x5692161D100B05E5),
        (2, 0xDBD238973A2B148A),
        (0xDEADBEEF, 0x4E062702EC929EEA),
        (2**64 - 1, 0xB4D055FCF2CBBD7B),
        (2**64, 0),  # only the low 64 bits count
        (0xAB54A98CEB1F0AD2, 0xCB2060A1236747B7),
    ],
)
def test_golden_fmix64(x: int, h: int) -> None:
    assert fmix64(x) == h


def test_golden_pg_seed() -> None:
    assert pg_seed(1, 0) == 0xD820B7E910B0F93F
    assert pg_seed(7, 123) == 0x5AC780BF372B6476


@pytest.mark.parametrize(
    ("u", "v"),
    [
        (1, 0),
        (2, 1 << 24),
        (3, 26591258),
        (4096, 12 << 24),
        (65535, 268435086),
        (10**9, 501594345),
        (2**31 + 12345, 520093835),
        (2**32 - 1, 536870911),
        (2**32, 32 << 24),
    ],
)
def test_golden_log2_fixed(u: int, v: int) -> None:
    assert log2_fixed(u) == v


def test_log2_fixed_is_exact_at_powers_of_two_and_close_elsewhere() -> None:
    for e in range(33):
        assert log2_fixed(1 << e) == e << 24
    for u in [3, 5, 7, 1000, 12345, 2**20 + 1, 3 * 2**30, 2**32 - 7]:
        exact = np.log2(u) * (1 << 24)
        assert exact - 2 <= log2_fixed(u) <= exact + 1


def test_golden_log2_table() -> None:
    t = placement._log2_table()
    assert len(t) == 4097 and (t[0], t[2048], t[4096]) == (0, 9814042, 1 << 24)
    assert list(t) == sorted(t)
    assert (
        blake3.blake3(np.array(t, dtype="<i8").tobytes()).hexdigest()
        == "a759143112eb8c2e88a838f11965314e8251fe754432a0b4140810275803e859"
    )
    assert list(placement._log2_array()) == list(t)


@pytest.mark.parametrize(
    ("seed", "daemon_id", "weight", "s"),
    [
        (0, 0, WEIGHT_ONE, -536870912),
        (0xD820B7E910B0F93F, 0, WEIGHT_ONE, -1765208),
        (0xD820B7E910B0F93F, 5, 1000, -285670048),
        (0x5AC780BF372B6476, 11, 2 * WEIGHT_ONE, -10562533),
        (2**64 - 1, 3, 1, -921500778496),
        (0xDEADBEEFCAFEBABE, 42, 3 * WEIGHT_ONE, -371681),
    ],
)
def test_golden_score(seed: int, daemon_id: int, weight: int, s: int) -> None:
    assert score(seed, daemon_id, weight) == s


GOLDEN_HOSTS = ["alpha", "bravo", "charlie", "delta"]  # daemon i is on GOLDEN_HOSTS[i % 4]
GOLDEN_WEIGHTS = [65536, 131072, 32768, 65536, 98304, 65536, 1000, 65536, 196608, 65536,
                  65536, 49152]  # fmt: skip


def golden_map() -> ClusterMap:
    m = ClusterMap()
    for i, w in enumerate(GOLDEN_WEIGHTS):
        m = m.with_daemon(DaemonInfo(i, f"10.0.0.{i}:7000", GOLDEN_HOSTS[i % 4], w, up=i != 5))
    m = m.with_daemon(DaemonInfo(12, "x", "alpha", WEIGHT_ONE, in_=False))  # out: never chosen
    return m.with_daemon(DaemonInfo(13, "x", "bravo", 0))  # weight 0: never chosen


@pytest.mark.parametrize(
    ("fd", "hexdigest", "pinned", "names"),
    [
        (
            "host",
            "e184a079dda20090b2d6bb6969bc9eee459e51671b6f07180ff3a9cc01c2019c",
            {0: (0, 9, 3), 1: (1, 8, 3), 2: (8, 9, 7), 31: (8, 2, 11), 63: (8, 3, 1)},
            {"a": (60, (1, 11, 8)), "b": (39, (4, 1, 3)), "photos/cat.jpg": (51, (0, 1, 7))},
        ),
        (
            "daemon",
            "44d3ff7d7837c2ca3f2c1f31af5e5228f223ae8c6bdf56bc81573405d4551b0c",
            {0: (0, 9, 5), 1: (1, 8, 5), 2: (8, 9, 4), 31: (8, 2, 11), 63: (8, 3, 7)},
            {"a": (60, (1, 11, 8)), "b": (39, (4, 0, 8)), "photos/cat.jpg": (51, (0, 8, 1))},
        ),
    ],
)
def test_golden_acting_table(
    fd: str,
    hexdigest: str,
    pinned: dict[int, tuple[int, ...]],
    names: dict[str, tuple[int, tuple[int, ...]]],
) -> None:
    m = golden_map()
    pool = Pool(1, "golden", 3, 2, 64, fd)
    pp = PoolPlacement(m, pool)
    t = pp.table()
    assert t.shape == (64, 3) and t.dtype == np.int64
    assert digest(t) == hexdigest
    for pg, acting in pinned.items():
        assert tuple(int(x) for x in t[pg]) == acting
        assert reference_acting(m, pool, pg) == acting
    for name, (pg, acting) in names.items():
        assert pg_of(pool, "default", name) == pg
        assert pp.place("default", name) == acting
    assert rows(t) == [reference_acting(m, pool, pg) for pg in range(64)]


def test_ties_go_to_the_lower_id_and_the_host_sorting_first() -> None:
    # a weight so large every score is floor(negative / weight) = -1: all daemons tie
    # (but for u = 1.0 exactly, which is one chance in 2**32 per daemon)
    huge = 1 << 50
    ds = [DaemonInfo(i, "a", h, huge) for i, h in [(9, "b"), (4, "c"), (7, "a"), (2, "b"),
                                                   (8, "a"), (5, "c"), (6, "d")]]  # fmt: skip
    m = build(ds)
    by_host = Pool(3, "p", 3, 1, 50, "host")
    by_daemon = Pool(3, "p", 3, 1, 50, "daemon")
    assert rows(PoolPlacement(m, by_host).table()) == [(7, 2, 4)] * 50
    assert rows(PoolPlacement(m, by_daemon).table()) == [(2, 4, 5)] * 50
    for pg in range(50):
        assert reference_acting(m, by_host, pg) == (7, 2, 4)
        assert reference_acting(m, by_daemon, pg) == (2, 4, 5)


# -- numpy against the reference -----------------------------------------------------------------

HOST_NAMES = ["h0", "h1", "h2", "h3", "h4", "h5", "rack9-b", "Ünï", "a", "B"]
HUGE = 1 << 48  # so large every score is -1: all daemons of this weight tie
WEIGHTS = st.one_of(
    st.sampled_from([0, 1000, WEIGHT_ONE, 2 * WEIGHT_ONE, HUGE]), st.integers(1, 1 << 24)
)
TIE_WEIGHTS = st.sampled_from([HUGE, HUGE, WEIGHT_ONE, 0])


@st.composite
def cluster_maps(draw: st.DrawFn, min_daemons: int = 1, max_daemons: int = 40) -> ClusterMap:
    n = draw(st.integers(min_daemons, max_daemons))
    ids = draw(st.lists(st.integers(0, 500), min_size=n, max_size=n, unique=True))
    nhosts = draw(st.integers(1, len(HOST_NAMES)))
    hosts = st.sampled_from(HOST_NAMES[:nhosts])
    weights = draw(st.sampled_from([WEIGHTS, TIE_WEIGHTS]))  # some maps full of ties
    ds = [
        DaemonInfo(i, f"d{i}:1", draw(hosts), draw(weights), draw(st.booleans()),
                   draw(st.sampled_from([True, True, True, False])))  # in_, mostly
        for i in sorted(ids)
    ]  # fmt: skip
    return ClusterMap(draw(st.integers(0, 1000)), {d.id: d for d in ds}, {})


@st.composite
def pools(draw: st.DrawFn, max_pg: int = 300) -> Pool:
    replicas = draw(st.integers(1, 5))
    return Pool(
        draw(st.integers(0, 1 << 32)), "p", replicas, 1, draw(st.integers(1, max_pg)),
        draw(st.sampled_from(["host", "daemon"])),
    )  # fmt: skip


def eligible(m: ClusterMap) -> list[DaemonInfo]:
    return [d for d in m.candidates() if d.weight > 0]


@SETTINGS
@given(cluster_maps(), pools())
def test_numpy_table_equals_the_reference(m: ClusterMap, pool: Pool) -> None:
    pp = PoolPlacement(m, pool)
    t = pp.table()
    assert t.shape == (pool.pg_num, pool.replicas)
    want = [reference_acting(m, pool, pg) for pg in range(pool.pg_num)]
    assert rows(t) == want
    for r in t:  # padding only at the end
        n = int((r >= 0).sum())
        assert (r[:n] >= 0).all() and (r[n:] == -1).all()
    for pg in range(pool.pg_num):
        assert pp.acting(pg) == want[pg]
    # a subset, out of order, with repeats
    some = [pool.pg_num - 1, 0, pool.pg_num // 2, 0]
    assert rows(pp.table(some)) == [want[pg] for pg in some]


def test_numpy_table_in_chunks_equals_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    # several numpy steps per table: chunk boundaries must not matter
    monkeypatch.setattr(placement, "_CHUNK", 100)
    m = build([DaemonInfo(i, "a", f"h{i % 5}", WEIGHT_ONE + 997 * i) for i in range(17)])
    for fd in ("host", "daemon"):
        pool = Pool(4, "p", 4, 1, 97, fd)
        assert rows(PoolPlacement(m, pool).table()) == [
            reference_acting(m, pool, pg) for pg in range(97)
        ]


# -- properties of acting sets ------------------------------------------------------------------


@SETTINGS
@given(cluster_maps(), pools())
def test_acting_sets_obey_the_rule(m: ClusterMap, pool: Pool) -> None:
    ok = eligible(m)
    ok_ids = {d.id for d in ok}
    host = {d.id: d.host for d in m.daemons.values()}
    domains = len({d.host for d in ok}) if pool.failure_domain == "host" else len(ok)
    for acting in rows(PoolPlacement(m, pool).table()):
        assert len(acting) == len(set(acting)), "no daemon twice"
        assert len(acting) == min(pool.replicas, domains)
        assert set(acting) <= ok_ids, "only in daemons of weight > 0"
        if pool.failure_domain == "host":
            assert len({host[i] for i in acting}) == len(acting), "one per host"


@MOVE_SETTINGS
@given(cluster_maps(), pools(), st.data())
def test_up_or_down_does_not_move_anything(m: ClusterMap, pool: Pool, data: st.DataObject) -> None:
    flips = data.draw(st.lists(st.booleans(), min_size=len(m.daemons), max_size=len(m.daemons)))
    other = ClusterMap(
        m.epoch + 1,
        {i: replace(d, up=d.up != f) for (i, d), f in zip(m.daemons.items(), flips, strict=True)},
        {},
    )
    assert np.array_equal(PoolPlacement(m, pool).table(), PoolPlacement(other, pool).table())


def test_no_eligible_daemons_gives_empty_sets() -> None:
    m = build([DaemonInfo(0, "a", "h", 0), DaemonInfo(1, "a", "h", in_=False)])
    pool = Pool(1, "p", 3, 1, 8)
    pp = PoolPlacement(m, pool)
    assert (pp.table() == -1).all() and pp.table().shape == (8, 3)
    assert pp.acting(3) == () and pp.place("ns", "obj") == ()
    assert reference_acting(m, pool, 3) == ()
    assert pp.table([]).shape == (0, 3)


def test_placer_places_by_pool_name() -> None:
    m = golden_map().with_pool(Pool(1, "rbd", pg_num=64)).with_pool(Pool(2, "logs", 2, 1, 32))
    placer = Placer(m)
    assert placer.pool("rbd") is placer.pool("rbd")
    for pool in m.pools.values():
        for name in ["a", "b", "c/d", "ü"]:
            pg = pg_of(pool, "ns", name)
            assert 0 <= pg < pool.pg_num
            assert placer.place(pool.name, "ns", name) == reference_acting(m, pool, pg)
    with pytest.raises(NotFound):
        placer.pool("nope")


# -- stable_mod -----------------------------------------------------------------------------------


def test_stable_mod_exhaustively_for_small_values() -> None:
    for b in range(1, 260):
        top = 1 << (b.bit_length() - 1)
        for x in range(1024):
            m, m1 = stable_mod(x, b), stable_mod(x, b + 1)
            assert 0 <= m < b
            if b & (b - 1) == 0:
                assert m == x % b, "a power of two is a plain mod"
            if m != m1:
                assert m1 == b, "growing pg_num moves a value only to the new bucket"
                assert m == b - top, "and only out of the one bucket that splits"


@settings(derandomize=True, database=None, deadline=None, max_examples=300)
@given(st.integers(0, 2**64 - 1), st.integers(1, 1 << 20))
def test_stable_mod_grows_one_bucket_at_a_time(x: int, b: int) -> None:
    m, m1 = stable_mod(x, b), stable_mod(x, b + 1)
    assert 0 <= m < b and 0 <= m1 < b + 1
    assert m1 in (m, b)
    if m1 != m:
        assert m == b - (1 << (b.bit_length() - 1))


# -- little movement: changes of one daemon move only PGs to or from it --------------------------


def is_subsequence(short: tuple[int, ...], long: tuple[int, ...]) -> bool:
    it = iter(long)
    return all(x in it for x in short)


@MOVE_SETTINGS
@given(cluster_maps(10, 30), pools(400), st.data())
def test_adding_a_daemon_moves_pgs_only_to_it(
    m: ClusterMap, pool: Pool, data: st.DataObject
) -> None:
    pool = replace(pool, pg_num=max(pool.pg_num, 200))
    hosts = [*sorted({d.host for d in m.daemons.values()}), "zz-new"]
    weights = st.sampled_from([1000, WEIGHT_ONE, 4 * WEIGHT_ONE, HUGE]) | st.integers(1, 1 << 20)
    new_id = m.next_daemon_id() + data.draw(st.integers(0, 3))
    new = DaemonInfo(new_id, "new:1", data.draw(st.sampled_from(hosts)), data.draw(weights))
    host = {d.id: d.host for d in m.daemons.values()}
    before = rows(PoolPlacement(m, pool).table())
    after = rows(PoolPlacement(m.with_daemon(new), pool).table())
    for old, cur in zip(before, after, strict=True):
        if old == cur:
            continue
        assert new.id in cur, "a PG that moves, moves to the new daemon"
        rest = tuple(x for x in cur if x != new.id)
        assert is_subsequence(rest, old), "the others keep their order"
        assert len(old) - len(rest) in (0, 1), "at most one member displaced"
        assert len(cur) >= len(old)
        if len(rest) < len(old):
            (gone,) = set(old) - set(rest)
            same_host = pool.failure_domain == "host" and host[gone] == new.host
            assert same_host or gone == old[-1], "the displaced is the last, or a host-mate"


@MOVE_SETTINGS
@given(cluster_maps(10, 30), pools(400), st.data())
def test_removing_a_daemon_moves_only_its_pgs(
    m: ClusterMap, pool: Pool, data: st.DataObject
) -> None:
    pool = replace(pool, pg_num=max(pool.pg_num, 200))
    gone = data.draw(st.sampled_from(sorted(m.daemons)))
    before = rows(PoolPlacement(m, pool).table())
    removed = m.without_daemon(gone)
    marked_out = m.with_daemon(replace(m.daemon(gone), in_=False))
    after = rows(PoolPlacement(removed, pool).table())
    assert rows(PoolPlacement(marked_out, pool).table()) == after, "out is as good as gone"
    for old, cur in zip(before, after, strict=True):
        if gone not in old:
            assert cur == old, "a PG without the daemon stays put"
        else:
            assert gone not in cur
            assert is_subsequence(tuple(x for x in old if x != gone), cur)


@MOVE_SETTINGS
@given(cluster_maps(10, 30), pools(400), st.data())
def test_reweighting_a_daemon_moves_only_its_pgs(
    m: ClusterMap, pool: Pool, data: st.DataObject
) -> None:
    pool = replace(pool, pg_num=max(pool.pg_num, 200))
    d = m.daemon(data.draw(st.sampled_from(sorted(m.daemons))))
    weight = data.draw(WEIGHTS.filter(lambda w: w != d.weight))
    before = rows(PoolPlacement(m, pool).table())
    after = rows(PoolPlacement(m.with_daemon(replace(d, weight=weight)), pool).table())
    for old, cur in zip(before, after, strict=True):
        if old != cur:
            assert d.id in (cur if weight > d.weight else old)


# -- spread -------------------------------------------------------------------------------------


def test_equal_daemons_get_about_equal_shares() -> None:
    m = build([DaemonInfo(i, f"d{i}:1", f"host{i}") for i in range(50)])
    pool = Pool(1, "p", 3, 2, 4096)
    counts = Counter(int(x) for x in PoolPlacement(m, pool).table().ravel())
    mean = 4096 * 3 / 50
    assert set(counts) == set(range(50))
    assert all(0.65 * mean <= c <= 1.35 * mean for c in counts.values()), counts
    primaries = Counter(int(x) for x in PoolPlacement(m, pool).table()[:, 0])
    assert all(0.5 * 4096 / 50 <= c <= 1.5 * 4096 / 50 for c in primaries.values()), primaries


def test_weight_sets_the_share() -> None:
    # daemon 0 weighs 4 times the others: about 4 times their share of replicas-1 PGs
    m = build([DaemonInfo(i, "a", f"h{i}", 4 * WEIGHT_ONE if i == 0 else WEIGHT_ONE)
               for i in range(8)])  # fmt: skip
    counts = Counter(int(x) for x in PoolPlacement(m, Pool(1, "p", 1, 1, 4096)).table()[:, 0])
    share = counts[0] / 4096
    assert 4 / 11 * 0.85 <= share <= 4 / 11 * 1.15, counts


@SETTINGS
@given(cluster_maps(min_daemons=2), pools(), st.data())
def test_a_pool_on_chosen_daemons_places_only_there(
    m: ClusterMap, pool: Pool, data: st.DataObject
) -> None:
    ids = sorted(m.daemons)
    chosen = tuple(sorted(data.draw(st.sets(st.sampled_from(ids), min_size=1))))
    only = replace(pool, daemons=chosen)
    assert Pool.from_dict(only.to_dict()) == only
    t = rows(PoolPlacement(m, only).table())
    assert t == [reference_acting(m, only, pg) for pg in range(only.pg_num)]
    assert all(set(r) <= set(chosen) for r in t)
    usable = [d for d in eligible(m) if d.id in chosen]
    if usable:  # as many replicas as the chosen daemons (and their domains) allow
        want = min(
            only.replicas,
            len(usable) if only.failure_domain == "daemon" else len({d.host for d in usable}),
        )
        assert all(len(r) == want for r in t)
    # the same pool on every daemon is the same rule as before
    assert rows(PoolPlacement(m, pool).table()) == [
        reference_acting(m, pool, pg) for pg in range(pool.pg_num)
    ]
