"""Placement without its start-up costs: the log2 table written out (held to its exact
computation), and a PG placed in plain Python or with numpy, the same answer either way."""

from __future__ import annotations

import pytest
from hypothesis import given

from shoal.cluster import placement
from shoal.cluster.log2_table import TABLE
from shoal.cluster.map import WEIGHT_ONE, ClusterMap, DaemonInfo, Pool
from shoal.cluster.placement import PoolPlacement, log2_table_exact, reference_acting
from tests.unit.test_placement import SETTINGS, cluster_maps, pools, rows


def test_the_written_table_is_the_exact_one() -> None:
    assert log2_table_exact() == TABLE
    assert placement._log2_table() is TABLE


@SETTINGS
@given(cluster_maps(), pools(max_pg=80))
def test_acting_with_numpy_equals_acting_in_plain_python(m: ClusterMap, pool: Pool) -> None:
    want = [reference_acting(m, pool, pg) for pg in range(pool.pg_num)]
    plain = PoolPlacement(m, pool)
    assert [plain.acting(pg) for pg in range(pool.pg_num)] == want
    with pytest.MonkeyPatch.context() as mp:  # every PG with numpy, one row at a time
        mp.setattr(placement, "_PLAIN_DAEMONS", 0)
        mp.setattr(placement, "_PLAIN_PGS", 0)
        pp = PoolPlacement(m, pool)
        assert [pp.acting(pg) for pg in range(pool.pg_num)] == want
        assert rows(pp.table()) == want


@pytest.mark.parametrize("fd", ["host", "daemon"])
def test_many_daemons_first_pgs_in_plain_python_then_numpy(
    fd: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = ClusterMap(1, {i: DaemonInfo(i, "a", f"h{i % 9}", WEIGHT_ONE + 311 * i)
                       for i in range(placement._PLAIN_DAEMONS + 8)}, {})  # fmt: skip
    pool = Pool(2, "p", 3, 2, 64, fd)
    pp = PoolPlacement(m, pool)
    tables: list[list[int] | None] = []
    table = pp.table
    monkeypatch.setattr(pp, "table", lambda pgs=None: tables.append(pgs) or table(pgs))
    got = [pp.acting(pg) for pg in range(pool.pg_num)]
    assert got == [reference_acting(m, pool, pg) for pg in range(pool.pg_num)]
    assert tables == [[pg] for pg in range(placement._PLAIN_PGS, pool.pg_num)]
    assert [pp.acting(pg) for pg in range(pool.pg_num)] == got  # kept: nothing computed again
    assert len(tables) == pool.pg_num - placement._PLAIN_PGS
