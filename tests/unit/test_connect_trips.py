"""A cluster client connects in one trip to the master: AUTH brings the ticket and the map
(a master that sends no map is asked for it); AUTH without `since` is as it was (a gateway
checking its users' keys gets a ticket only). The master in this process, without sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shoal.client.cluster import ClusterClient
from shoal.cluster.auth import contents
from shoal.cluster.map import DaemonInfo, Pool
from shoal.errors import NotAuthenticated
from shoal.master.server import CLIENT, Master
from shoal.master.state import MasterState
from shoal.proto.frames import Op


async def a_master(tmp_path: Path) -> Master:
    m = Master(MasterState(str(tmp_path / "master.db")))
    m.state.add_key("SKTEST", "secret", {"p": "rw"})
    for i in range(3):
        await m.commit(m.map.with_daemon(DaemonInfo(i, f"127.0.0.1:{4000 + i}", f"h{i}")), "d")
    await m.commit(m.map.with_pool(Pool(1, "p", 3, 2, 16)), "pool")
    return m


def wired(c: ClusterClient, m: Master, asked: list[tuple[int, dict[str, Any]]],
          maps: bool = True) -> None:  # fmt: skip
    """`c` talks to `m` in this process; `maps=False`: a master that knows no `since` in
    AUTH (it answers as before)."""

    async def ask(op: int, meta: dict[str, Any], timeout: float | None = None) -> Any:
        asked.append((op, dict(meta)))
        if op == Op.AUTH and not maps:
            meta = {k: v for k, v in meta.items() if k != "since"}
        return await m.handle(CLIENT, op, meta)

    c._ask = ask  # type: ignore[method-assign]


@pytest.mark.asyncio
async def test_auth_brings_the_map(tmp_path: Path) -> None:
    m = await a_master(tmp_path)
    reply = await m.handle(CLIENT, Op.AUTH, {"access_key": "SKTEST", "secret": "secret",
                                             "since": 0})  # fmt: skip
    assert contents(bytes(reply["ticket"])).access_key == "SKTEST"
    assert reply["epoch"] == m.map.epoch and ("map" in reply or "diff" in reply)
    plain = await m.handle(CLIENT, Op.AUTH, {"access_key": "SKTEST", "secret": "secret"})
    assert "ticket" in plain and "map" not in plain and "diff" not in plain
    with pytest.raises(NotAuthenticated):  # no map without the key
        await m.handle(CLIENT, Op.AUTH, {"access_key": "SKTEST", "secret": "x", "since": 0})
    await m.close()
    m.state.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("maps", [True, False])
async def test_connect_is_one_trip(tmp_path: Path, maps: bool) -> None:
    m = await a_master(tmp_path)
    c = ClusterClient("127.0.0.1:1", "SKTEST", "secret")
    asked: list[tuple[int, dict[str, Any]]] = []
    wired(c, m, asked, maps)
    await c.connect()
    try:
        trips = [op for op, meta in asked if not meta.get("wait")]  # (not the map's follower)
        assert trips == ([Op.AUTH] if maps else [Op.AUTH, Op.MAP])
        assert asked[0][1]["since"] == 0
        assert c.map == m.map and c.ticket is not None
        assert len(c.acting("p", "x")) == 3
    finally:
        await c.close()
        await m.close()
        m.state.close()
