"""Pools the cluster cannot place: refused when made, named when they become so.

`shoal up` runs every daemon on one machine, so the README's `shoal pool create photos
--replicas 3 --pg-num 256` with failure domain host could never take a write (every PG on one
daemon, below min_size) and said "1 of its 3 daemons are up" with all three up. Here: a real
master and daemons that all say `--host same` (as `shoal up`'s do), a cluster built by hand
(a pool made before its daemons register), a cluster whose hosts change under a pool (the
write's error and `shoal status` say why), and the master's own default failure domain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.client.cluster import ClusterClient
from shoal.cluster.placement import pg_of
from shoal.daemon.process import DaemonProcess
from shoal.errors import InvalidArgument, Unavailable
from shoal.master.server import Master
from shoal.master.state import MasterState
from tests.integration.cluster_helpers import (
    FAST,
    MasterProcess,
    daemons_by_id,
    eventually,
    map_at,
    run_sync,
    shoal,
    shoal_env,
    start_master,
    start_member,
    stop_all,
    stop_member,
    wait_current,
    wait_registered,
)

N = 3


@pytest.fixture(scope="module")
def one_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MasterProcess]:
    """A master and 3 daemons on one machine: each registers with `--host same`."""
    root = tmp_path_factory.mktemp("one-host")
    m = start_master(root / "master", *FAST)
    try:
        for i in range(N):
            start_member(m, root / f"d{i}", "same")

        async def registered() -> None:
            async with m.client_for() as c:
                await wait_registered(c, N)

        run_sync(registered)
        yield m
    finally:
        assert not stop_all(m)


def test_a_pool_one_host_cannot_place_is_refused_and_says_why(
    one_host: MasterProcess, tmp_path: Path
) -> None:
    env = shoal_env(tmp_path / "home", one_host)

    def run(*args: str, ok: bool = True) -> Any:
        return shoal(*args, env=env, cwd=tmp_path, ok=ok)

    # the README's example, failure domain host (the command's default): refused, with the
    # cause and the ways out; no pool is made
    p = run("pool", "create", "photos", "--replicas", "3", "--pg-num", "256", ok=False)
    assert p.returncode == 1 and p.stdout == b""
    assert p.stderr.decode() == (
        "shoal: error: pool photos: 3 replicas need 3 hosts, and the cluster's 3 daemons are "
        "on 1 host (same); use --failure-domain daemon, use --replicas 1, or start daemons on "
        "more hosts\n"
    )
    assert "photos" not in [x["name"] for x in json.loads(run("pool", "ls", "--json").stdout)]
    p = run("pool", "create", "pair", "--replicas", "2", ok=False)
    assert p.returncode == 1 and b"2 replicas need 2 hosts" in p.stderr, "not only below min_size"

    # on chosen daemons, counted among those
    ids = sorted(d["id"] for d in json.loads(run("daemon", "ls", "--json").stdout))
    two = f"{ids[0]},{ids[1]}"
    p = run("pool", "create", "two", "--replicas", "3", "--failure-domain", "daemon",
            "--daemons", two, ok=False)  # fmt: skip
    assert p.stderr.decode() == (
        f"shoal: error: pool two: 3 replicas need 3 daemons, and the pool has 2 daemons "
        f"({ids[0]}, {ids[1]}); use --replicas 2, or give more daemons (--daemons)\n"
    )

    # what the refusal suggests works, and the pool takes writes
    out = run("pool", "create", "photos", "--replicas", "3", "--pg-num", "256",
              "--failure-domain", "daemon").stdout.decode()  # fmt: skip
    assert out.startswith("pool photos created: replicas 3 (min 2), pg_num 256, failure domain "
                          "daemon")  # fmt: skip
    run("write", "--pool", "photos", "cat.jpg", "--data-literal", "meow")
    assert run("read", "--pool", "photos", "cat.jpg").stdout == b"meow"
    s = json.loads(run("status", "--json").stdout)
    assert s["problems"] == [] and set(s["pgs"]) == {"active+clean"}


async def placed_at(c: ClusterClient, ds: list[DaemonProcess], hosts: list[str]) -> dict[str, Any]:
    """Wait until the daemons `ds` are up on `hosts`, and `c` has that map; the master's
    status then."""
    want = sorted(zip((d.address for d in ds), hosts, strict=True))
    await eventually(
        lambda: daemons_by_id(c),
        lambda x: sorted((d["address"], d["host"]) for d in x.values() if d["up"]) == want,
        what=f"daemons up on {hosts}",
    )  # fmt: skip
    s: dict[str, Any] = await c.admin("status")
    await map_at(c, s["epoch"])
    return s


@pytest.mark.asyncio
async def test_a_cluster_built_by_hand_and_hosts_that_change_under_a_pool(tmp_path: Path) -> None:
    # (a daemon down stays in: placement changes only when the test changes a host)
    m = start_master(tmp_path / "master", "--heartbeat", "0.2", "--down-after", "1",
                     "--out-after", "600")  # fmt: skip
    try:
        async with m.client_for(timeout=10.0) as c, m.client_for(timeout=2.0) as quick:
            # a pool made before any daemon registers: refused, and told to wait for them
            with pytest.raises(InvalidArgument) as refused:
                await c.admin("pool_create", name="p", replicas=3, pg_num=8)
            assert str(refused.value) == (
                "pool p: 3 replicas need 3 hosts, and no daemon has registered yet; start the "
                "daemons first (`shoal daemon ls` lists those registered)"
            )
            # once they have (three machines), the same request makes it
            ds = [start_member(m, tmp_path / f"d{i}", f"h{i}") for i in range(N)]
            await wait_registered(c, N)
            out = await c.admin("pool_create", name="p", replicas=3, pg_num=8)
            assert out["pool"]["failure_domain"] == "host"
            await map_at(c, out["epoch"])
            await wait_current(c)
            await c.put("p", "before", b"three hosts")
            pool = c.map.pool("p")

            def pg(name: str) -> str:
                return f"pg {pool.id}.{pg_of(pool, 'p', name):x} of pool p"

            # the third machine turns out to be the first (its daemon restarted with that
            # name): two copies, not three, and status says why
            assert stop_member(ds[2]) == 0
            ds[2] = start_member(m, ds[2].dir, "h0")
            s = await placed_at(c, ds, ["h0", "h1", "h0"])
            assert s["pgs"] == {"active+degraded": 8}
            assert s["problems"] == [
                "pool p keeps 2 copies, not 3: its 8 pgs have 2 daemons each (min_size 2), as "
                "3 replicas need 3 hosts, and the cluster's 3 daemons are on 2 hosts (h0, h1)"
            ]
            await c.put("p", "two-hosts", b"two copies")
            assert all(len(c.acting("p", n)) == 2 for n in ("before", "two-hosts"))

            # h1's daemon down as well: below min_size, for both reasons, and it says both
            assert stop_member(ds[1]) == 0
            await eventually(lambda: daemons_by_id(c), lambda x: sum(d["up"] for d in x.values())
                             == 2, what="h1 down")  # fmt: skip
            await map_at(c, (await c.admin("status"))["epoch"])
            with pytest.raises(Unavailable) as below:
                await quick.put("p", "h1-down", b"refused")
            assert str(below.value) == (
                f"p/h1-down: 1 of its 2 daemons are up, fewer than the pool's min_size 2 "
                f"({pg('h1-down')} maps to 2 of 3, as 3 replicas need 3 hosts, and the "
                f"cluster's 3 daemons are on 2 hosts (h0, h1)): writes are refused"
            )

            # and it comes back on the first machine too: every PG has one daemon, all
            # three are up, and the write's error says that placement is the cause
            ds[1] = start_member(m, ds[1].dir, "h0")
            s = await placed_at(c, ds, ["h0", "h0", "h0"])
            assert s["pgs"] == {"inactive": 8} and s["up"] == N
            assert s["problems"] == [
                "pool p takes no writes: its 8 pgs have 1 daemon each (min_size 2), as 3 "
                "replicas need 3 hosts, and the cluster's 3 daemons are on 1 host (h0)"
            ]
            with pytest.raises(Unavailable) as unplaced:
                await quick.put("p", "after", b"one host")
            assert str(unplaced.value) == (
                f"p/after: {pg('after')} maps to 1 daemon, fewer than the pool's min_size 2, "
                "as 3 replicas need 3 hosts, and the cluster's 3 daemons are on 1 host (h0): "
                "writes are refused"
            )
            assert await c.get("p", "before") == b"three hosts", "reads go on"
    finally:
        assert not stop_all(m)


@pytest.mark.asyncio
async def test_the_masters_default_failure_domain(tmp_path: Path) -> None:
    """A pool made without a failure domain (or with none: null) takes the master's, which
    `shoal up` sets to daemon; the pool is checked with it."""
    for default, made in (("daemon", True), ("host", False)):
        state = MasterState(str(tmp_path / f"{default}.db"))
        try:
            master = Master(state, failure_domain=default)
            for i in range(N):
                await master._register({"uuid": f"disk-{i}", "address": f"127.0.0.1:{5000 + i}",
                                        "host": "same"})  # fmt: skip
            for name, args in (("a", {}), ("b", {"failure_domain": None})):
                if made:
                    out = await master.pool_create({"name": name, "replicas": 3, **args})
                    assert out["pool"]["failure_domain"] == "daemon"
                    assert master.map.pools[name].failure_domain == "daemon"
                else:
                    with pytest.raises(InvalidArgument, match=r"need 3 hosts.*1 host \(same\)"):
                        await master.pool_create({"name": name, "replicas": 3, **args})
                    assert name not in master.map.pools
            # a failure domain given wins over the default
            other = "host" if default == "daemon" else "daemon"
            out = await master.pool_create({"name": "c", "replicas": 1, "failure_domain": other})
            assert out["pool"]["failure_domain"] == other
        finally:
            state.close()
    state = MasterState(str(tmp_path / "rack.db"))
    try:
        with pytest.raises(InvalidArgument, match="failure domain must be one of host, daemon"):
            Master(state, failure_domain="rack")
    finally:
        state.close()
