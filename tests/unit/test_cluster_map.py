"""ClusterMap values: pool validation, epochs, the wire form, and diffs between epochs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.cluster.map import (
    MAX_PG_NUM,
    MAX_REPLICAS,
    WEIGHT_ONE,
    ClusterMap,
    DaemonInfo,
    MapDiff,
    Pool,
    apply,
    diff,
)
from shoal.errors import Conflict, InvalidArgument, NotFound

# deterministic: the same examples on every run (and no example database between runs)
SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=150)


def daemon(i: int, host: str = "h0", **kw: Any) -> DaemonInfo:
    return DaemonInfo(i, f"10.0.0.{i}:7000", host, **kw)


def wire(x: Any) -> Any:
    """Through msgpack and back, as a map travels."""
    return msgpack.unpackb(msgpack.packb(x))


# -- pools -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "_x", "a b", "a/b", "ü", "a" * 129])
def test_pool_rejects_a_bad_name(name: str) -> None:
    with pytest.raises(InvalidArgument, match="pool name"):
        Pool(1, name)


@pytest.mark.parametrize("name", ["a", "A9", "rbd", "data.1", "my_pool-2", "a" * 128])
def test_pool_accepts_a_good_name(name: str) -> None:
    assert Pool(1, name).name == name


def test_pool_rejects_a_trailing_newline() -> None:
    # a regex with '$' would let "abc\n" through: the name must match whole
    with pytest.raises(InvalidArgument, match="pool name"):
        Pool(1, "abc\n")


@pytest.mark.parametrize("replicas", [0, -1, MAX_REPLICAS + 1])
def test_pool_rejects_bad_replicas(replicas: int) -> None:
    with pytest.raises(InvalidArgument, match="replicas"):
        Pool(1, "p", replicas=replicas, min_size=1)


def test_pool_accepts_replicas_at_the_bounds() -> None:
    assert Pool(1, "p", replicas=1, min_size=1).replicas == 1
    assert Pool(1, "p", replicas=MAX_REPLICAS).replicas == MAX_REPLICAS


@pytest.mark.parametrize(("replicas", "min_size"), [(3, 4), (1, 2), (3, 0)])
def test_pool_rejects_a_bad_min_size(replicas: int, min_size: int) -> None:
    with pytest.raises(InvalidArgument, match="min_size"):
        Pool(1, "p", replicas=replicas, min_size=min_size)


@pytest.mark.parametrize("pg_num", [0, -5, MAX_PG_NUM + 1])
def test_pool_rejects_a_bad_pg_num(pg_num: int) -> None:
    with pytest.raises(InvalidArgument, match="pg_num"):
        Pool(1, "p", pg_num=pg_num)


@pytest.mark.parametrize("fd", ["rack", "", "Host", "osd"])
def test_pool_rejects_an_unknown_failure_domain(fd: str) -> None:
    with pytest.raises(InvalidArgument, match="failure domain"):
        Pool(1, "p", failure_domain=fd)


# -- changes and lookups ---------------------------------------------------------------------


def test_each_change_bumps_the_epoch_by_one() -> None:
    m0 = ClusterMap()
    assert m0.epoch == 0
    m1 = m0.with_daemon(daemon(0))
    m2 = m1.with_daemon(daemon(1, "h1"))
    m3 = m2.with_daemon(replace(m2.daemon(1), up=False))  # a change of one daemon
    m4 = m3.with_pool(Pool(m3.next_pool_id(), "rbd"))
    m5 = m4.with_pool(replace(m4.pool("rbd"), pg_num=256))  # the same pool, changed
    m6 = m5.without_daemon(0)
    m7 = m6.without_pool("rbd")
    assert [m.epoch for m in (m0, m1, m2, m3, m4, m5, m6, m7)] == list(range(8))
    assert m0.daemons == {} and m0.pools == {}, "a map is a value: changes leave it be"
    assert m3.daemon(1).up is False and m2.daemon(1).up is True
    assert m5.pool("rbd").pg_num == 256 and m4.pool("rbd").pg_num == 128
    assert set(m6.daemons) == {1} and m7.pools == {}


def test_lookups_and_removals_of_missing_things_raise_not_found() -> None:
    m = ClusterMap().with_daemon(daemon(0)).with_pool(Pool(1, "rbd"))
    with pytest.raises(NotFound, match="7"):
        m.daemon(7)
    with pytest.raises(NotFound, match="nope"):
        m.pool("nope")
    with pytest.raises(NotFound):
        m.without_daemon(7)
    with pytest.raises(NotFound):
        m.without_pool("nope")


def test_a_pool_name_is_taken_by_its_id() -> None:
    m = ClusterMap().with_pool(Pool(1, "rbd"))
    with pytest.raises(Conflict, match="rbd"):
        m.with_pool(Pool(2, "rbd"))
    assert m.with_pool(Pool(1, "rbd", pg_num=64)).pool("rbd").pg_num == 64


def test_next_ids() -> None:
    m = ClusterMap()
    assert m.next_daemon_id() == 0 and m.next_pool_id() == 1
    m = m.with_daemon(daemon(5)).with_pool(Pool(9, "a")).with_pool(Pool(3, "b"))
    assert m.next_daemon_id() == 6 and m.next_pool_id() == 10


def test_candidates_are_the_in_daemons_sorted_by_id() -> None:
    m = ClusterMap()
    for d in [
        daemon(7),
        daemon(2, in_=False),
        daemon(10, up=False),  # down but in: still holds data
        daemon(0, weight=0),  # weight 0 is placement's business, not candidates'
        daemon(3, in_=False, up=False),
        daemon(5, "h2", weight=3 * WEIGHT_ONE),
    ]:
        m = m.with_daemon(d)
    assert [d.id for d in m.candidates()] == [0, 5, 7, 10]
    assert all(d.in_ for d in m.candidates())


def test_daemon_state() -> None:
    assert daemon(0).state == "up,in"
    assert daemon(0, up=False, in_=False).state == "down,out"
    assert daemon(0, in_=False).state == "up,out"


# -- the wire ----------------------------------------------------------------------------------


def sample_map() -> ClusterMap:
    m = ClusterMap()
    m = m.with_daemon(
        daemon(
            0,
            "alpha",
            peer_address="10.0.0.0:7001",
            http_address="10.0.0.0:8080",
            capacity=1 << 40,
            used=12345,
        )
    )
    m = m.with_daemon(daemon(3, "bravo", weight=WEIGHT_ONE // 2, up=False, in_=False))
    m = m.with_daemon(daemon(1, "ünïcode-host", weight=0))
    m = m.with_pool(Pool(1, "rbd", 3, 2, 128, "host"))
    m = m.with_pool(Pool(2, "logs", 1, 1, 8, "daemon"))
    return m


def test_map_round_trips_through_dicts_and_msgpack() -> None:
    m = sample_map()
    d = m.to_dict()
    assert d["epoch"] == 5
    assert [x["id"] for x in d["daemons"]] == [0, 1, 3], "daemons go out sorted by id"
    assert [x["name"] for x in d["pools"]] == ["logs", "rbd"], "pools go out sorted by name"
    assert ClusterMap.from_dict(d) == m
    back = ClusterMap.from_dict(wire(d))
    assert back == m and back.to_dict() == d
    assert back.daemon(0).capacity == 1 << 40 and back.daemon(0).used == 12345
    assert back.daemon(3).in_ is False and back.daemon(3).up is False


def test_daemon_from_dict_fills_optional_fields() -> None:
    d = DaemonInfo.from_dict(
        {"id": 4, "address": "a:1", "host": "h", "weight": 7, "up": True, "in": False}
    )
    assert d == DaemonInfo(4, "a:1", "h", 7, True, False)


def pool_dict(**kw: Any) -> dict[str, Any]:
    return {
        "id": 1,
        "name": "p",
        "replicas": 3,
        "min_size": 1,
        "pg_num": 8,
        "failure_domain": "host",
        **kw,
    }


@pytest.mark.parametrize(
    "garbage",
    [
        {},
        None,
        "a cluster map",
        42,
        [1, 2, 3],
        {"epoch": 1, "daemons": [], "pools": None},
        {"epoch": 1, "daemons": None, "pools": []},
        {"epoch": "one", "daemons": [], "pools": []},
        {"epoch": 1, "daemons": [{"id": 1}], "pools": []},
        {"epoch": 1, "daemons": [7], "pools": []},
        {"epoch": 1, "daemons": [], "pools": [{"id": 1, "name": "p"}]},
        {"epoch": 1, "daemons": [], "pools": [pool_dict(replicas="x")]},
        {"epoch": 1, "daemons": [], "pools": [pool_dict(replicas=0)]},
        {"epoch": 1, "daemons": [], "pools": [pool_dict(name="no way")]},
        {"daemons": [], "pools": []},
    ],
)
def test_from_dict_of_garbage_raises_invalid_argument(garbage: Any) -> None:
    with pytest.raises(InvalidArgument):
        ClusterMap.from_dict(garbage)


@pytest.mark.parametrize(
    "garbage",
    [
        {},
        None,
        {"base": 1, "epoch": 2},
        {
            "base": "x",
            "epoch": 2,
            "daemons": [],
            "removed_daemons": [],
            "pools": [],
            "removed_pools": [],
        },
    ],
)
def test_map_diff_from_dict_of_garbage_raises_invalid_argument(garbage: Any) -> None:
    with pytest.raises(InvalidArgument):
        MapDiff.from_dict(garbage)


# -- diffs -------------------------------------------------------------------------------------


def test_an_empty_diff_is_falsy() -> None:
    assert not MapDiff(3, 3)
    m = sample_map()
    assert not diff(m, m)
    same = m.with_daemon(daemon(9)).without_daemon(9)  # two epochs later, the same contents
    d = diff(m, same)
    assert not d and (d.base, d.epoch) == (m.epoch, m.epoch + 2)
    assert apply(m, d) == same
    assert MapDiff(3, 4, removed_pools=("x",))
    assert MapDiff(3, 4, removed_daemons=(0,))


def test_a_diff_holds_only_what_changed() -> None:
    m = sample_map()
    new = m.with_daemon(replace(m.daemon(1), weight=WEIGHT_ONE)).without_pool("logs")
    new = new.without_daemon(3).with_daemon(daemon(8, "charlie"))
    d = diff(m, new)
    assert (d.base, d.epoch) == (m.epoch, m.epoch + 4)
    assert [x.id for x in d.daemons] == [1, 8]
    assert d.removed_daemons == (3,)
    assert d.pools == () and d.removed_pools == ("logs",)


def test_a_diff_applies_only_to_its_base_epoch() -> None:
    m = sample_map()
    new = m.with_daemon(daemon(8))
    d = diff(m, new)
    with pytest.raises(Conflict, match=str(m.epoch)):
        apply(new, d)
    with pytest.raises(Conflict):
        apply(replace(m, epoch=m.epoch - 1), d)
    assert apply(m, d) == new


DAEMON_IDS = st.integers(0, 12)
HOSTS = st.sampled_from(["alpha", "bravo", "charlie", "ünï"])
POOL_NAMES = st.sampled_from(["rbd", "logs", "a", "data.1", "Z-9"])


@st.composite
def daemons(draw: st.DrawFn, ids: st.SearchStrategy[int] = DAEMON_IDS) -> DaemonInfo:
    return DaemonInfo(
        draw(ids),
        draw(st.sampled_from(["h:1", "10.0.0.1:7000", ""])),
        draw(HOSTS),
        draw(st.sampled_from([0, 1000, WEIGHT_ONE, 2 * WEIGHT_ONE]) | st.integers(0, 1 << 40)),
        draw(st.booleans()),
        draw(st.booleans()),
        draw(st.sampled_from(["", "p:1"])),
        draw(st.sampled_from(["", "w:1"])),
        draw(st.integers(0, 1 << 50)),
        draw(st.integers(0, 1 << 50)),
    )


@st.composite
def pool_fields(draw: st.DrawFn) -> dict[str, Any]:
    replicas = draw(st.integers(1, MAX_REPLICAS))
    return {
        "replicas": replicas,
        "min_size": draw(st.integers(1, replicas)),
        "pg_num": draw(st.integers(1, MAX_PG_NUM)),
        "failure_domain": draw(st.sampled_from(["host", "daemon"])),
    }


def changed(data: st.DataObject, m: ClusterMap, steps: int) -> ClusterMap:
    """`m` after `steps` random changes, checking that each bumps the epoch by one."""
    for _ in range(steps):
        ops = ["put_daemon", "put_pool"]
        if m.daemons:
            ops += ["drop_daemon", "tweak_daemon"]
        if m.pools:
            ops += ["drop_pool"]
        op = data.draw(st.sampled_from(ops))
        if op == "put_daemon":
            nxt = m.with_daemon(data.draw(daemons()))
        elif op == "tweak_daemon":
            d = m.daemon(data.draw(st.sampled_from(sorted(m.daemons))))
            field = data.draw(st.sampled_from(["weight", "up", "in_", "host", "used"]))
            value = {
                "weight": d.weight + 1,
                "up": not d.up,
                "in_": not d.in_,
                "host": d.host + "x",
                "used": d.used + 1,
            }[field]
            nxt = m.with_daemon(replace(d, **{field: value}))
        elif op == "drop_daemon":
            nxt = m.without_daemon(data.draw(st.sampled_from(sorted(m.daemons))))
        elif op == "put_pool":
            name = data.draw(POOL_NAMES)
            pid = m.pools[name].id if name in m.pools else m.next_pool_id()
            nxt = m.with_pool(Pool(pid, name, **data.draw(pool_fields())))
        else:
            nxt = m.without_pool(data.draw(st.sampled_from(sorted(m.pools))))
        assert nxt.epoch == m.epoch + 1
        m = nxt
    return m


@SETTINGS
@given(st.data(), st.integers(0, 15), st.integers(1, 15))
def test_apply_of_diff_gives_the_new_map(data: st.DataObject, before: int, after: int) -> None:
    old = changed(data, ClusterMap(), before)
    new = changed(data, old, after)
    d = diff(old, new)
    assert (d.base, d.epoch) == (old.epoch, new.epoch) == (old.epoch, old.epoch + after)
    assert apply(old, d).to_dict() == new.to_dict()
    assert bool(d) == ((old.daemons, old.pools) != (new.daemons, new.pools)), (
        "a diff is empty exactly when nothing but the epoch changed"
    )
    # as it travels: the diff through msgpack, and the result through msgpack
    d2 = MapDiff.from_dict(wire(d.to_dict()))
    assert d2 == d
    assert ClusterMap.from_dict(wire(apply(old, d2).to_dict())).to_dict() == new.to_dict()
    # a diff is not for a map of another epoch
    with pytest.raises(Conflict):
        apply(new, d)
    with pytest.raises(Conflict):
        apply(replace(old, epoch=old.epoch + 1), d)


@SETTINGS
@given(
    st.lists(daemons(), max_size=12),
    st.lists(st.tuples(POOL_NAMES, pool_fields())),
    st.integers(0, 1 << 40),
)
def test_map_round_trip_property(
    ds: list[DaemonInfo], pools: list[tuple[str, dict[str, Any]]], epoch: int
) -> None:
    m = ClusterMap(
        epoch,
        {d.id: d for d in ds},
        {name: Pool(i, name, **f) for i, (name, f) in enumerate(pools)},
    )
    assert ClusterMap.from_dict(wire(m.to_dict())) == m
