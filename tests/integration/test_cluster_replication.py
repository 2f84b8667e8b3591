"""Replication in a real cluster: writes refused below min_size while reads go on, writes
sent to the other replicas over the daemons' mutual-TLS addresses, deletes that a daemon
missed while down are not undone by it, and the admin verbs `shoal status`, `shoal rebalance
--dry-run` and `shoal scrub`."""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.client.cluster import ClusterClient
from shoal.errors import NotFound, ShoalError, Unavailable
from tests.integration.cluster_helpers import (
    FAST,
    MasterProcess,
    Tls,
    daemon_log,
    daemons_by_id,
    direct,
    eventually,
    map_at,
    shoal,
    shoal_env,
    start_master,
    start_member,
    stop_all,
    stop_member,
    wait_registered,
)


@pytest.fixture
def master(tmp_path: Path) -> Iterator[MasterProcess]:
    m = start_master(tmp_path / "master", *FAST)
    yield m
    assert not stop_all(m)


def body(name: str) -> bytes:
    r = random.Random(name)
    return r.randbytes(r.choice([1, 4096, 20_000, 100_000]))


async def pool3(c: ClusterClient, name: str = "p", min_size: int = 2) -> None:
    out = await c.admin("pool_create", name=name, replicas=3, min_size=min_size, pg_num=16,
                        failure_domain="daemon")  # fmt: skip
    await map_at(c, out["epoch"])


async def settled(c: ClusterClient, timeout: float = 30.0) -> dict[str, int]:
    """Wait until every daemon is current and nothing is degraded or misplaced."""

    async def recovery() -> dict[str, int]:
        return dict((await c.admin("status"))["recovery"])

    return await eventually(
        recovery,
        lambda r: not (r["recovering"] or r["degraded_objects"] or r["misplaced_objects"]),
        timeout, every=0.2, what="recovery done",
    )  # fmt: skip


async def copies(c: ClusterClient, pool: str, name: str) -> dict[int, int]:
    """daemon id -> the version of `name` it holds (NotFound: absent), for the object's
    acting set, asked of each daemon directly."""
    out = {}
    for i in c.acting(pool, name):
        d = direct(c, c.map.daemons[i].address)
        try:
            out[i] = (await d.stat(pool, name)).version
        except NotFound:
            out[i] = -1
        finally:
            await d.close()
    return out


@pytest.mark.asyncio
async def test_writes_refused_below_min_size_while_reads_go_on(
    master: MasterProcess, tmp_path: Path
) -> None:
    ds = [start_member(master, tmp_path / f"d{i}", f"h{i}", "--recovery-interval", "1")
          for i in range(3)]  # fmt: skip
    async with master.client_for(timeout=4.0) as c:
        await wait_registered(c, 3)
        await pool3(c)
        names = [f"o{i}" for i in range(20)]
        await asyncio.gather(*(c.put("p", n, body(n)) for n in names))
        await settled(c)  # (a daemon answers for its copies once it has caught up)
        for n in names[:5]:  # every copy at one version, on the three daemons
            got = await copies(c, "p", n)
            assert len(got) == 3 and len(set(got.values())) == 1 and -1 not in got.values()

        stop_member(ds[1], signal.SIGKILL)  # one down: 2 of 3 up, min_size 2: writes go on
        await eventually(lambda: daemons_by_id(c), lambda x: sum(d["up"] for d in x.values()) == 2)
        await c.put("p", "during-one-down", b"two copies")
        stop_member(ds[2], signal.SIGKILL)  # two down: refused, and said so
        await eventually(lambda: daemons_by_id(c), lambda x: sum(d["up"] for d in x.values()) == 1)
        with pytest.raises(Unavailable, match="fewer than the pool's min_size 2"):
            await c.put("p", "refused", b"one copy is not enough")
        for n in names:  # reads are served by the one left
            assert await c.get("p", n) == body(n)
        assert await c.get("p", "during-one-down") == b"two copies"
        with pytest.raises(NotFound):
            await c.get("p", "refused")  # not half-stored either
    assert "writes are refused" not in daemon_log(ds[0])  # (a refusal is not an error)


@pytest.mark.asyncio
async def test_replication_over_the_daemons_mutual_tls_addresses(tmp_path: Path) -> None:
    tls = Tls(tmp_path / "tls")
    m = start_master(tmp_path / "master", *FAST, tls=tls)
    try:
        for i in range(3):
            start_member(m, tmp_path / f"d{i}", f"h{i}", "--peer-address", "127.0.0.1:0")
        async with m.client_for(timeout=5.0) as c:
            ds = await wait_registered(c, 3)
            assert all(d["peer_address"] for d in ds.values())
            await pool3(c)
            names = [f"t{i}" for i in range(10)]
            await asyncio.gather(*(c.put("p", n, body(n)) for n in names))
            await settled(c)
            for n in names:
                got = await copies(c, "p", n)
                assert len(set(got.values())) == 1 and -1 not in got.values(), got
    finally:
        assert not stop_all(m)


@pytest.mark.asyncio
async def test_a_daemon_that_missed_deletes_does_not_bring_them_back(
    master: MasterProcess, tmp_path: Path
) -> None:
    extra = ("--recovery-interval", "1")
    ds = [start_member(master, tmp_path / f"d{i}", f"h{i}", *extra) for i in range(3)]
    async with master.client_for() as c:
        await wait_registered(c, 3)
        await pool3(c)
        names = [f"x{i}" for i in range(30)]
        await asyncio.gather(*(c.put("p", n, body(n)) for n in names))
        stop_member(ds[0])  # misses what follows
        await eventually(lambda: daemons_by_id(c), lambda x: sum(d["up"] for d in x.values()) == 2)
        gone, changed = names[:10], names[10:20]
        for n in gone:
            await c.delete("p", n)
        for n in changed:
            await c.put("p", n, b"new " + n.encode())
        ds[0] = start_member(master, ds[0].dir, "h0", *extra)
        await wait_registered(c, 3)
        await settled(c)
        for n in gone:
            with pytest.raises(NotFound):
                await c.get("p", n)
            assert set((await copies(c, "p", n)).values()) == {-1}, n
        for n in changed:
            assert await c.get("p", n) == b"new " + n.encode()
            got = await copies(c, "p", n)
            assert len(set(got.values())) == 1 and -1 not in got.values(), (n, got)
        listed = [i.name async for i in c.list("p")]
        assert listed == sorted(names[10:])


@pytest.mark.asyncio
async def test_status_rebalance_plan_and_scrub_verbs(master: MasterProcess, tmp_path: Path) -> None:
    ds = [start_member(master, tmp_path / f"d{i}", f"h{i}") for i in range(3)]
    env = shoal_env(tmp_path / "home", master)
    async with master.client_for() as c:
        await wait_registered(c, 3)
        await pool3(c)
        names = [f"s{i}" for i in range(40)]
        await asyncio.gather(*(c.put("p", n, b"s" * 50_000) for n in names))
        await settled(c)
        # a fourth daemon that fetches at 20 kB/s: the others' copies wait for it, misplaced
        ds.append(start_member(master, tmp_path / "d3", "h3", "--recovery-rate", "0.02"))
        await wait_registered(c, 4)

        async def plan() -> str:
            return shoal("rebalance", "--dry-run", env=env, cwd=tmp_path).stdout.decode()

        out = await eventually(plan, lambda o: "-> daemon 3" in o, timeout=20, every=0.5)
        assert "total: 0 copies" not in out
        moving = await c.admin("status")
        assert moving["recovery"]["misplaced_objects"] > 0 or moving["recovery"]["recovering"]
        text = shoal("status", env=env, cwd=tmp_path).stdout.decode()
        assert "recovery:" in text and "misplaced:" in text and "HEALTH_WARN" in text
        stop_member(ds[3])  # leave; its share goes back
        await c.admin("daemon_out", id=3)
        await settled(c)
        assert (
            "total: 0 copies"
            in shoal("rebalance", "--dry-run", env=env, cwd=tmp_path).stdout.decode()
        )
        out = shoal("scrub", env=env, cwd=tmp_path).stdout.decode()
        assert "scrub 1 requested" in out  # and followed: when it returns, the pass is done
        assert "scrub 1 done: 120 objects checked, 0 errors, 0 repaired" in out, out

        async def scrubbed() -> dict[str, int]:
            return dict((await c.admin("status"))["scrub"])

        s = await scrubbed()
        assert s["objects"] == 3 * 40 and s["errors"] == 0 and s["repaired"] == 0
        assert s["done"] == 1 and s["pass"] == 3 * 40
        assert (
            "120 objects checked, 0 errors"
            in shoal("status", env=env, cwd=tmp_path).stdout.decode()
        )
        # one pool only: its copies are checked, not the others'
        await pool3(c, "q")
        await asyncio.gather(*(c.put("q", f"q{i}", b"q" * 1000) for i in range(5)))
        out = shoal("scrub", "--pool", "q", "--no-wait", env=env, cwd=tmp_path).stdout.decode()
        assert "scrub 2 requested for pool q" in out and "done" not in out
        s = await eventually(scrubbed, lambda s: s["objects"] >= 3 * 45 and not s["running"],
                             timeout=20, every=0.2)  # fmt: skip
        await asyncio.sleep(0.5)  # (a scrub of more than pool q would show by now)
        assert (await scrubbed())["objects"] == 3 * 45
        bad = shoal("scrub", "--pool", "nope", env=env, cwd=tmp_path, ok=False)
        assert bad.returncode != 0 and b"nope" in bad.stderr
        # and a rebalance with nothing to move says so at once
        out = shoal("rebalance", env=env, cwd=tmp_path, timeout=30).stdout.decode()
        assert "done: every object is where the map puts it" in out


@pytest.mark.asyncio
async def test_a_read_cut_short_is_not_started_again_into_the_same_sink(
    master: MasterProcess, tmp_path: Path
) -> None:
    """A streamed read whose daemon dies half-way fails: another replica would feed the
    caller's sink the first bytes again."""
    ds = [start_member(master, tmp_path / f"d{i}", f"h{i}") for i in range(3)]
    async with master.client_for(timeout=5.0) as c:
        await wait_registered(c, 3)
        out = await c.admin("pool_create", name="p", replicas=2, min_size=1, pg_num=8,
                            failure_domain="daemon")  # fmt: skip
        await map_at(c, out["epoch"])
        await settled(c)
        data = random.Random(7).randbytes(48 << 20)  # one object, not striped: sent directly
        primary = c.acting("p", "big")[0]
        d = direct(c, c.map.daemons[primary].address)
        try:
            await d.put("p", "big", data)
        finally:
            await d.close()
        victim = next(x for x in ds if x.address == c.map.daemons[primary].address)
        got = bytearray()

        def sink(piece: memoryview) -> None:
            if not got:
                stop_member(victim, signal.SIGKILL)  # the daemon sending it dies
            got.extend(piece)

        with pytest.raises((ShoalError, ConnectionError)):
            await c.get_to("p", "big", sink)
        assert len(got) < len(data) and bytes(got) == data[: len(got)], "a prefix, never more"
        assert await c.get("p", "big") == data  # the other copy, read whole


@pytest.mark.asyncio
async def test_reference_changes_reach_every_copy(master: MasterProcess, tmp_path: Path) -> None:
    """Adding and removing references on the primary changes every copy; removing the last
    one deletes the object everywhere."""
    for i in range(3):
        start_member(master, tmp_path / f"d{i}", f"h{i}")
    async with master.client_for() as c:
        await wait_registered(c, 3)
        await pool3(c)
        await c.put("p", "r", b"referenced")
        ref = b"r" * 16
        refs = await c._on_primary("p", "r", lambda d: d.add_refs("p", "r", [ref]))
        assert refs == (ref,)
        await settled(c)
        for i in c.acting("p", "r"):
            d = direct(c, c.map.daemons[i].address)
            try:
                info = await d.stat("p", "r")
            finally:
                await d.close()
            assert info.refs == (ref,), i
        assert await c._on_primary("p", "r", lambda d: d.remove_refs("p", "r", [ref])) == ()
        with pytest.raises(NotFound):
            await c.get("p", "r")
        assert set((await copies(c, "p", "r")).values()) == {-1}
