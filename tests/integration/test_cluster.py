"""A real cluster without TLS: `shoal master` and `shoal daemon --master` processes on
127.0.0.1 (port 0), with fast failure detection (heartbeat 0.2 s, down after 1 s, out 2 s
later). Registration and ids, down and out and back, admin out/in/rm, objects placed on the
daemons placement names, clients with an old map, the map's long-poll, and the admin verbs
of the `shoal` command."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

from shoal.client.client import parse_address
from shoal.client.cluster import ClusterClient
from shoal.client.connection import Connection
from shoal.daemon.process import DaemonProcess
from shoal.errors import InvalidArgument, NotAuthenticated, NotFound, StaleMap, Unavailable
from shoal.proto.frames import Op
from tests.integration.cluster_helpers import (
    FAST,
    MasterProcess,
    daemon_log,
    daemons_by_id,
    direct,
    eventually,
    map_at,
    run_sync,
    shoal,
    shoal_env,
    start_master,
    start_member,
    state,
    stop_all,
    stop_member,
    wait_closed,
    wait_registered,
)

N = 3  # daemons of the shared cluster


@pytest.fixture
def master(tmp_path: Path) -> Iterator[MasterProcess]:
    """A master of its own, no daemons yet (the test starts them)."""
    m = start_master(tmp_path / "master", *FAST)
    assert m.access_key and m.secret, "a first start prints the admin key"
    yield m
    assert not stop_all(m)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MasterProcess]:
    """A master and 3 registered daemons (hosts h0..h2), shared by the tests that leave it
    as they found it."""
    root = tmp_path_factory.mktemp("cluster")
    m = start_master(root / "master", *FAST)
    try:
        for i in range(N):
            start_member(m, root / f"d{i}", f"h{i}")

        async def registered() -> None:
            async with m.client_for() as c:
                await wait_registered(c, N)

        run_sync(registered)
        yield m
    finally:
        assert not stop_all(m)


def by_address(ds: dict[int, dict[str, Any]], d: DaemonProcess) -> int:
    """The id the master gave the daemon process `d`."""
    (i,) = [i for i, x in ds.items() if x["address"] == d.address]
    return i


async def epoch_of(c: ClusterClient) -> int:
    return int((await c.admin("status"))["epoch"])


async def new_pool(c: ClusterClient, name: str, pg_num: int = 32) -> None:
    """A pool of one replica spread over daemons; `c`'s map has it when this returns."""
    out = await c.admin(
        "pool_create", name=name, replicas=1, pg_num=pg_num, failure_domain="daemon"
    )
    # (without this, `c` may still place with a map that lacks the pool: see
    # test_stale_client_finds_a_pool_created_after_its_map)
    await map_at(c, out["epoch"])


def body(name: str) -> bytes:
    r = random.Random(name)
    return r.randbytes(r.choice([0, 1, 100, 4095, 4096, 4097, 20_000]))


# -- membership ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_registration_ids_epochs_and_restart(master: MasterProcess, tmp_path: Path) -> None:
    async with master.client_for() as c:
        assert await epoch_of(c) == 0 and await daemons_by_id(c) == {}
        procs, epochs = [], []
        for i in range(4):
            procs.append(start_member(master, tmp_path / f"d{i}", f"h{i}"))
            ds = await eventually(lambda: daemons_by_id(c), lambda ds, n=i + 1: len(ds) == n)
            epochs.append(await epoch_of(c))
        assert epochs == [1, 2, 3, 4], "each registration is one new epoch"
        ds = await daemons_by_id(c)
        ids = [by_address(ds, p) for p in procs]
        assert sorted(ids) == [0, 1, 2, 3], "distinct ids"
        for i, p in zip(ids, procs, strict=True):
            d = ds[i]
            assert state(d) == "up,in" and d["host"] == f"h{procs.index(p)}"
            assert 0 < d["capacity"] <= 256 * 2**20 and d["weight"] > 0
            assert f"registered with the master at {master.peer} as daemon {i} " in daemon_log(p)
            assert f"daemon {i} ({p.address}) registered" in master.log
        s = await c.admin("status")
        assert (s["daemons"], s["up"], s["in"], s["epoch"]) == (4, 4, 4, 4)

        # a daemon restarted on the same folder (same disk) gets its id back
        old = procs[1]
        assert stop_member(old) == 0
        again = start_member(master, old.dir, "h1")
        ds = await eventually(
            lambda: daemons_by_id(c),
            lambda ds: any(d["address"] == again.address and d["up"] for d in ds.values()),
        )
        assert by_address(ds, again) == ids[1] and len(ds) == 4
        assert all(state(d) == "up,in" for d in ds.values())
        # (the master has it up as soon as it answers; the daemon logs once it has the answer)

        async def registered_lines() -> int:
            return daemon_log(again).count(f"as daemon {ids[1]} ")

        await eventually(registered_lines, lambda n: n == 2, timeout=5)


@pytest.mark.asyncio
async def test_down_out_back_and_admin_out_in_rm(master: MasterProcess, tmp_path: Path) -> None:
    async with master.client_for() as c:
        procs = [start_member(master, tmp_path / f"d{i}", f"h{i}") for i in range(3)]
        ds = await wait_registered(c, 3)
        victim = procs[1]
        vid, other = by_address(ds, victim), by_address(ds, procs[0])

        async def victim_state() -> str:
            return state((await daemons_by_id(c))[vid])

        # SIGKILL: no goodbye; the heartbeats stop. Down after 1 s, out 2 s after that.
        e0 = await epoch_of(c)
        t0 = time.monotonic()
        assert stop_member(victim, signal.SIGKILL) == -signal.SIGKILL
        await eventually(victim_state, lambda s: s == "down,in", timeout=10, every=0.02)
        t_down = time.monotonic()
        assert 0.5 < t_down - t0 < 3.0
        s = await c.admin("status")
        assert (s["epoch"], s["up"], s["in"]) == (e0 + 1, 2, 3)
        with pytest.raises(InvalidArgument, match=f"daemon {vid} is down,in: take it out"):
            await c.admin("daemon_rm", id=vid)  # down but still in: refused

        await eventually(victim_state, lambda s: s == "down,out", timeout=10, every=0.02)
        assert 1.5 < time.monotonic() - t_down < 4.0
        s = await c.admin("status")
        assert (s["epoch"], s["daemons"], s["up"], s["in"]) == (e0 + 2, 3, 2, 2)
        assert f"epoch {e0 + 1}: daemon {vid} down (no heartbeat for 1 s)" in master.log
        assert f"epoch {e0 + 2}: daemon {vid} out (down for 2 s)" in master.log

        # back: same id, up, and in again (the master had taken it out, not an admin)
        victim = start_member(master, victim.dir, "h1")
        await eventually(victim_state, lambda s: s == "up,in")
        ds = await daemons_by_id(c)
        assert by_address(ds, victim) == vid and len(ds) == 3
        s = await c.admin("status")
        assert (s["epoch"], s["up"], s["in"]) == (e0 + 3, 3, 3)

        # an admin's `out` holds across a restart, until `in`
        await c.admin("daemon_out", id=vid)
        assert await victim_state() == "up,out"
        with pytest.raises(InvalidArgument, match=f"daemon {vid} is up,out: take it out"):
            await c.admin("daemon_rm", id=vid)  # out but up: refused
        assert stop_member(victim) == 0
        await eventually(victim_state, lambda s: s == "down,out", timeout=10)
        victim = start_member(master, victim.dir, "h1")
        await eventually(victim_state, lambda s: s.startswith("up"))
        await asyncio.sleep(0.5)  # (a few heartbeats: still out)
        assert await victim_state() == "up,out"
        e1 = await epoch_of(c)
        await c.admin("daemon_in", id=vid)
        assert await victim_state() == "up,in" and await epoch_of(c) == e1 + 1

        # rm: refused for a daemon that is up and in, with the way out in the message
        with pytest.raises(InvalidArgument) as err:
            await c.admin("daemon_rm", id=other)
        assert str(err.value) == (
            f"daemon {other} is up,in: take it out (shoal daemon out {other}) and stop it "
            "before removing it"
        )
        with pytest.raises(NotFound, match="no daemon 99"):
            await c.admin("daemon_rm", id=99)
        # ... and done for one that is out and down
        await c.admin("daemon_out", id=vid)
        assert stop_member(victim) == 0
        await eventually(victim_state, lambda s: s == "down,out", timeout=10)
        e2 = await epoch_of(c)
        await c.admin("daemon_rm", id=vid)
        ds = await daemons_by_id(c)
        assert vid not in ds and len(ds) == 2 and await epoch_of(c) == e2 + 1
        assert f"epoch {e2 + 1}: daemon {vid} removed" in master.log

        # its disk is forgotten too: started again, it joins as a new daemon
        victim = start_member(master, victim.dir, "h1")
        ds = await wait_registered(c, 3)
        new_id = by_address(ds, victim)
        assert new_id not in (vid, *[by_address(ds, p) for p in procs if p is not procs[1]])
        assert state(ds[new_id]) == "up,in"


# -- objects ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_objects_are_where_placement_says(cluster: MasterProcess) -> None:
    names = [f"obj-{i:03d}" for i in range(50)]
    async with cluster.client_for() as c:
        await new_pool(c, "objs")
        ds = await daemons_by_id(c)
        assert len(ds) == N
        directs = {i: direct(c, d["address"]) for i, d in ds.items()}
        try:
            keys = dict(
                zip(
                    names,
                    await asyncio.gather(*(c.put("objs", n, body(n)) for n in names)),
                    strict=True,
                )
            )
            for n in names:
                assert keys[n].size == len(body(n))
                assert keys[n].hash == blake3.blake3(body(n)).digest()
                assert await c.get("objs", n) == body(n)
                info = await c.stat("objs", n)
                assert (info.name, info.size, info.hash) == (n, len(body(n)), keys[n].hash)
            big = next(n for n in names if len(body(n)) == 20_000)
            assert await c.get("objs", big, offset=100, length=50) == body(big)[100:150]
            got = bytearray()
            await c.get_to("objs", big, got.extend)
            assert got == body(big)

            # each object is on its primary, and on no other daemon (one replica)
            primaries = {}
            for n in names:
                acting = c.acting("objs", n)
                assert len(acting) == 1 and acting[0] in ds
                primaries[n] = acting[0]
                for i, a in directs.items():
                    if i == acting[0]:
                        info = await a.stat("objs", n)
                        assert (info.size, info.uuid) == (len(body(n)), keys[n].uuid)
                    else:  # (not its daemon: it says so; its listing shows it has none)
                        with pytest.raises(Unavailable, match="does not hold"):
                            await a.stat("objs", n)
            spread = collections.Counter(primaries.values())
            assert len(spread) > 1, f"every object on one daemon: {spread}"
            for i, a in directs.items():
                page, _ = await a.list("objs")
                assert sorted(x.name for x in page) == sorted(n for n in names if primaries[n] == i)

            # list merges every daemon's, in name order
            assert [x.name async for x in c.list("objs")] == names
            assert [x.name async for x in c.list("objs", "obj-04")] == names[40:50]

            for n in names:
                await c.delete("objs", n)
            for n in names[:5]:
                with pytest.raises(NotFound):
                    await c.get("objs", n)
            assert [x async for x in c.list("objs")] == []
            for a in directs.values():
                assert (await a.list("objs"))[0] == []
        finally:
            for a in directs.values():
                await a.close()


# -- an old map ------------------------------------------------------------------------------


async def stop_following(c: ClusterClient) -> None:
    """Cancel the client's long-poll of the map: its map stays as it is."""
    assert c._follow is not None
    c._follow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await c._follow


async def all_daemons_at(c: ClusterClient, new: int, old: int | None = None) -> list[StaleMap]:
    """Wait until every daemon has map `new`: each refuses a request made with map `old`
    (default: `c`'s) with StaleMap, carrying epoch `new`. Their refusals."""
    old = c.map.epoch if old is None else old
    out = []
    for i, d in (await daemons_by_id(c)).items():
        async with direct(c, d["address"], epoch=old) as a:

            async def probe(a: Any = a) -> BaseException | None:
                try:
                    await a.stat("any-pool", "any-name")
                except (StaleMap, NotFound, Unavailable) as refused:  # (not yet at `new`)
                    return refused
                return None

            exc = await eventually(
                probe, lambda e: isinstance(e, StaleMap) and e.epoch >= new, timeout=10
            )
            assert isinstance(exc, StaleMap) and exc.epoch == new, (i, exc)
            out.append(exc)
    return out


@pytest.mark.asyncio
async def test_client_with_an_old_map(cluster: MasterProcess) -> None:
    names = [f"s{i}" for i in range(20)]
    async with cluster.client_for() as c, cluster.client_for() as admin:
        await new_pool(c, "stale")
        for n in names[:10]:
            await c.put("stale", n, body(n))
        await stop_following(c)
        old = c.map.epoch
        ds = await daemons_by_id(admin)

        # the map changes three times: a pool, and a daemon out and in again
        await admin.admin("pool_create", name="stale-other", replicas=1, pg_num=8)
        some = sorted(ds)[1]
        await admin.admin("daemon_out", id=some)
        new = (await admin.admin("daemon_in", id=some))["epoch"]
        assert new == old + 3

        # every daemon soon holds the new map, and refuses a request made with the old one,
        # saying which epoch it has
        for exc in await all_daemons_at(c, new, old):
            assert str(exc) == f"request made with map epoch {old}; this daemon has {new}"
        assert c.map.epoch == old, "the client was not told"

        # the client with the old map works all the same: refused once, it fetches the map
        await c.put("stale", names[10], body(names[10]))
        assert c.map.epoch == new
        for n in names[11:]:
            await c.put("stale", n, body(n))
        for n in names:
            assert await c.get("stale", n) == body(n)
        assert [x.name async for x in c.list("stale")] == sorted(names)


@pytest.mark.asyncio
async def test_stale_client_finds_a_pool_created_after_its_map(cluster: MasterProcess) -> None:
    async with cluster.client_for() as c, cluster.client_for() as admin:
        await stop_following(c)
        await admin.admin("pool_create", name="late", replicas=1, pg_num=8,
                          failure_domain="daemon")  # fmt: skip
        await c.put("late", "x", b"made after the client's map")
        assert await c.get("late", "x") == b"made after the client's map"


@pytest.mark.asyncio
async def test_stale_client_lists(cluster: MasterProcess) -> None:
    async with cluster.client_for() as c, cluster.client_for() as admin:
        await new_pool(c, "stale-list")
        await c.put("stale-list", "x", b"listed")
        await stop_following(c)
        new = (await admin.admin("pool_create", name="stale-list-2", replicas=1))["epoch"]
        await all_daemons_at(c, new)
        assert [x.name async for x in c.list("stale-list")] == ["x"]


# -- the long-poll ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_map_long_poll(cluster: MasterProcess) -> None:
    host, port = parse_address(cluster.client)
    conn = await Connection.open(host, port, 10)
    try:
        async with cluster.client_for() as c:
            e = await epoch_of(c)
            # a change while the poll waits: the answer comes at once, as a diff
            t0 = time.monotonic()
            poll = asyncio.ensure_future(
                conn.request(Op.MAP, {"since": e, "wait": 5, "ticket": c.ticket})
            )
            await asyncio.sleep(0.3)
            assert not poll.done(), "answered before there was anything new"
            await c.admin("pool_create", name="polled", replicas=1, pg_num=4)
            reply, _ = await poll
            took = time.monotonic() - t0
            assert 0.3 <= took < 1.5, took
            assert reply["epoch"] == e + 1
            assert [p["name"] for p in reply["diff"]["pools"]] == ["polled"]
            assert reply["diff"]["base"] == e and "map" not in reply

            # nothing new: the answer comes after `wait`, with just the epoch
            t0 = time.monotonic()
            reply, _ = await conn.request(Op.MAP, {"since": e + 1, "wait": 2, "ticket": c.ticket})
            took = time.monotonic() - t0
            assert 1.9 <= took < 3.0, took
            assert reply == {"epoch": e + 1}

            # an epoch older than any the master keeps (or none): the whole map, at once
            reply, _ = await conn.request(Op.MAP, {"since": -1, "wait": 5, "ticket": c.ticket})
            assert reply["epoch"] == e + 1 and len(reply["map"]["daemons"]) == N

            # the map is for clients that have proven their key
            with pytest.raises(NotAuthenticated):
                await conn.request(Op.MAP, {"since": -1})
    finally:
        await wait_closed([conn])


# -- the `shoal` command ---------------------------------------------------------------------


def test_cli_admin_and_objects(cluster: MasterProcess, tmp_path: Path) -> None:
    env = shoal_env(tmp_path / "home", cluster)

    def run(*args: str, **kw: Any) -> str:
        return shoal(*args, env=env, cwd=tmp_path, **kw).stdout.decode()

    out = run("pool", "create", "clip", "--replicas", "1", "--pg-num", "16",
              "--failure-domain", "daemon")  # fmt: skip
    assert out == (
        "pool clip created: replicas 1 (min 1), pg_num 16, failure domain daemon, daemons all\n"
    )
    assert "clip                     replicas 1 min 1 pg_num 16 daemon daemons all\n" in run(
        "pool", "ls"
    )
    pools = json.loads(run("pool", "ls", "--json"))
    clip = next(p for p in pools if p["name"] == "clip")
    assert (clip["replicas"], clip["min_size"], clip["pg_num"], clip["failure_domain"]) == (
        1, 1, 16, "daemon",
    )  # fmt: skip
    p = shoal("pool", "create", "clip", "--replicas", "1", env=env, cwd=tmp_path, ok=False)
    assert p.returncode == 1 and p.stderr == b"shoal: error: pool 'clip' exists\n"

    table = run("daemon", "ls").splitlines()
    assert table[0].split() == ["id", "state", "weight", "address", "host", "used"]
    rows = [r.split() for r in table[1:]]
    assert len(rows) == N and all(r[1] == "up,in" for r in rows)
    assert sorted(r[4] for r in rows) == ["h0", "h1", "h2"]
    ids = [r[0] for r in rows]

    def status() -> list[str]:
        return [line.strip() for line in run("status").splitlines()]

    total_pgs = sum(p["pg_num"] for p in pools)
    s = status()
    assert "health: HEALTH_OK" in s
    assert f"daemons: {N} daemons: {N} up, {N} in" in s
    assert f"pools:   {len(pools)} pools, {total_pgs} pgs" in s
    assert f"pgs:     {total_pgs} active+clean" in s

    out = run("daemon", "out", ids[1])
    assert out.startswith(f"daemon {ids[1]}: out (epoch ")
    assert [r.split()[1] for r in run("daemon", "ls").splitlines()[1:]] == [
        "up,in",
        "up,out",
        "up,in",
    ]
    assert f"daemons: {N} daemons: {N} up, {N - 1} in" in status()
    assert run("daemon", "in", ids[1]).startswith(f"daemon {ids[1]}: in (epoch ")
    assert f"daemons: {N} daemons: {N} up, {N} in" in status()
    p = shoal("daemon", "rm", ids[0], env=env, cwd=tmp_path, ok=False)
    assert p.returncode == 1 and b"take it out (shoal daemon out" in p.stderr

    # objects through the cluster, without --storage-daemon
    run("write", "--pool", "clip", "greeting", "--data-literal", "hello world")
    assert run("read", "--pool", "clip", "greeting") == "hello world"
    blob = random.Random(7).randbytes(300_000)
    shoal("write", "--pool", "clip", "blob", env=env, cwd=tmp_path, stdin=blob)
    assert shoal("read", "--pool", "clip", "blob", env=env, cwd=tmp_path).stdout == blob
    assert run("ls", "--pool", "clip") == "blob\ngreeting\n"
    run("rm", "--pool", "clip", "greeting")
    p = shoal("read", "--pool", "clip", "greeting", env=env, cwd=tmp_path, ok=False)
    assert p.returncode == 1 and p.stderr.startswith(b"shoal: error: ")

    # no cluster named anywhere: a clear error (not a hang, not a traceback)
    bare = shoal_env(tmp_path / "home")
    p = shoal("status", env=bare, cwd=tmp_path, ok=False)
    assert p.returncode == 1 and b"which cluster? give --master" in p.stderr


@pytest.mark.asyncio
async def test_daemon_down_from_a_supervisor(master: MasterProcess, tmp_path: Path) -> None:
    """`daemon_down` (what `shoal up` sends when it sees a daemon's process end) marks it down
    at once; one about a death older than the daemon's last registration (it has been started
    again since) changes nothing."""
    async with master.client_for() as c:
        procs = [start_member(master, tmp_path / f"d{i}", f"h{i}") for i in range(2)]
        ds = await wait_registered(c, 2)
        vid = by_address(ds, procs[1])
        e0 = await epoch_of(c)
        await c.admin("daemon_down", id=vid, dead_at=time.time() - 60, why="a late report")
        assert await epoch_of(c) == e0 and (await daemons_by_id(c))[vid]["up"]
        assert stop_member(procs[1], signal.SIGKILL) == -signal.SIGKILL
        await c.admin("daemon_down", id=vid, dead_at=time.time(), why="its process ended")
        assert state((await daemons_by_id(c))[vid]) == "down,in"  # (not after --down-after)
        assert f"daemon {vid} down (its process ended)" in master.log
