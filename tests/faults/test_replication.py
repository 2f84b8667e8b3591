"""Fault tests of replication, recovery and scrub, against a real cluster: a `shoal master`
and `shoal daemon`s on 127.0.0.1 (port 0), fast failure detection (down after 1 s without a
heartbeat, out 2 s later), daemons that look for recovery work every second, and a pool of
3 replicas (min_size 2, one per daemon).

1. kill -9 of a daemon under a load of small and large (striped) writes: no acknowledged
   write lost, reads never fail; restarted on its folder it catches up and holds current
   copies.
2. a daemon's folder wiped: it joins as a new daemon and full redundancy comes back.
3. two daemons added to three holding data: close to the least data moves, the client
   keeps working, the old daemons let go of what they no longer hold.
4. bytes flipped in one replica: reads still give the right bytes, scrub finds and repairs.

Each ends with a verifier that reads back every acknowledged write (BLAKE3 of the whole
content): a write whose acknowledgement never came may read as old or new, never anything
else. Numbers worth seeing (recovery time, bytes moved, throughput) are printed (pytest -s)
and put in the assertion messages.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.client.cluster import ClusterClient
from shoal.cluster.placement import Placer
from tests.faults.replication_helpers import (
    POOL,
    REPL_FLAGS,
    Directs,
    EngineObject,
    KiB,
    Ledger,
    Load,
    MiB,
    absent_problems,
    copy_problems,
    corrupt_copy,
    digest,
    engine_objects,
    existing_objects,
    fill,
    held_bytes,
    host_of,
    id_of,
    ready,
    recovery,
    scrub_status,
    start_cluster,
    start_members,
    verify_all,
    wait_clean,
    wait_up,
)
from tests.integration.cluster_helpers import (
    MasterProcess,
    daemons_by_id,
    eventually,
    start_member,
    state,
    stop_all,
    stop_member,
)

pytestmark = pytest.mark.slow


def cluster_of(n: int, tmp_path: Path) -> Iterator[MasterProcess]:
    m = start_cluster(tmp_path, n)
    try:
        yield m
    finally:
        assert not stop_all(m)


@pytest.fixture
def four(tmp_path: Path) -> Iterator[MasterProcess]:
    """A master and four daemons (hosts h0..h3), none registered yet."""
    yield from cluster_of(4, tmp_path)


@pytest.fixture
def three(tmp_path: Path) -> Iterator[MasterProcess]:
    yield from cluster_of(3, tmp_path)


def say(what: str) -> str:
    print(f"\n[replication] {what}", flush=True)
    return what


async def wait_copies(
    c: ClusterClient, directs: Directs, objs: list[EngineObject], timeout: float
) -> dict[int, int]:
    """Wait until every object has a current copy on every daemon of its acting set (the
    status counters lag; this asks the daemons). How many copies each daemon was checked for."""
    deadline = time.monotonic() + timeout
    while True:
        problems, checked = await copy_problems(c, directs, objs)
        if not problems:
            return checked
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(problems)} copies missing or stale after {timeout} s:\n"
                + "\n".join(problems[:30])
            )
        await asyncio.sleep(0.5)


async def acked_more(ledger: Ledger, n: int, what: str, timeout: float = 30.0) -> None:
    """Wait until the load has had `n` more writes acknowledged (a state, not a time)."""
    start = ledger.acked()
    deadline = time.monotonic() + timeout
    while ledger.acked() < start + n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {ledger.acked() - start} of {n} writes in {timeout} s")
        await asyncio.sleep(0.05)


# -- 1. kill -9 under load ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_kill9_during_writes_loses_nothing(four: MasterProcess) -> None:
    async with four.client_for(timeout=30) as c:
        await ready(c, 4)
        ledger = Ledger()
        load = Load(
            c, ledger, writers=2, readers=2, large_every=6, large_budget=60 * MiB,
            overwrite_every=5, delete_every=11, seed=1,
        )  # fmt: skip
        async with load:
            await acked_more(ledger, 40, "the load under way")
            victim = four.daemons[1]
            vid = id_of(c, victim)
            acked_at_kill = ledger.acked()
            assert stop_member(victim, signal.SIGKILL) == -signal.SIGKILL
            t_kill = time.monotonic()
            # down after 1 s, out 2 s later: the others bring the PGs back to 3 copies
            await eventually(
                lambda: daemons_by_id(c), lambda ds: not ds[vid]["in"], timeout=30,
                what=f"daemon {vid} out",
            )  # fmt: skip
            await acked_more(ledger, 20, "writes with the daemon out")
            again = start_member(four, victim.dir, host_of(victim), *REPL_FLAGS)
            assert await wait_up(c, again) == vid, "restarted on its folder: the same id"
            t_back = time.monotonic()
            await acked_more(ledger, 20, "writes with the daemon back")
        stats = load.stats
        r = await wait_clean(c, 40)
        t_clean = time.monotonic()
        summary = say(
            f"kill -9 of daemon {vid}: {ledger.acked()} writes acknowledged ({acked_at_kill} "
            f"before the kill, {ledger.acked_bytes() / MiB:.1f} MiB), {stats.reads} reads, "
            f"{stats.write_failures} writes and {stats.read_failures} reads failed, "
            f"{stats.corrupt_reads} reads wrong; clean {t_clean - t_back:.1f} s after the "
            f"restart ({t_clean - t_kill:.1f} s after the kill); recovery {r}"
        )
        assert ledger.acked() > acked_at_kill + 20, f"the load stalled at the kill: {summary}"
        assert any(a.size > 4 * MiB for h in ledger.history.values() for a in h if a.acked)

        problems = await verify_all(c, ledger)
        assert not problems, f"{len(problems)} objects wrong:\n" + "\n".join(problems[:30])
        assert stats.corrupt_reads == 0, f"{summary}\n" + "\n".join(stats.errors)
        assert stats.read_failures == 0, f"{summary}\n" + "\n".join(stats.errors)

        # the restarted daemon holds current copies of all it should (and what was deleted
        # while it was away is gone from it)
        objs = await engine_objects(c, ledger.stored())
        deleted = [n for n in ledger.history if ledger.settled(n) is None]
        async with Directs(c) as directs:
            checked = await wait_copies(c, directs, objs, timeout=10)
            assert checked.get(vid, 0) > len(objs) // 4, (vid, checked)
            gone = await absent_problems(c, directs, deleted)
        assert not gone, "\n".join(gone[:30])


# -- 2. a wiped folder ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_wiped_daemon_is_rebuilt(four: MasterProcess) -> None:
    async with four.client_for(timeout=30) as c:
        await ready(c, 4)
        ledger = Ledger()
        sizes = {f"small-{i:03d}": KiB + (i * 7919) % (63 * KiB) for i in range(150)}
        sizes |= {f"large-{i}": 5 * MiB + i * 1_234_567 for i in range(4)}
        await fill(c, ledger, sizes)
        objs = await engine_objects(c, ledger.stored())
        before = await recovery(c)

        victim = four.daemons[2]
        old = id_of(c, victim)
        t0 = time.monotonic()
        assert stop_member(victim, signal.SIGKILL) == -signal.SIGKILL
        shutil.rmtree(victim.dir)
        fresh = start_member(four, victim.dir, host_of(victim), *REPL_FLAGS)
        new = await wait_up(c, fresh)
        assert new != old, "a wiped daemon is a new disk: a new id"
        await eventually(
            lambda: daemons_by_id(c), lambda ds: state(ds[old]) == "down,out",
            timeout=15, what=f"the old daemon {old} down and out",
        )  # fmt: skip
        r = await wait_clean(c, 60)
        async with Directs(c) as directs:
            checked = await wait_copies(c, directs, objs, timeout=20)
            held = await held_bytes(directs, new)
        took = time.monotonic() - t0
        should = sum(o.size for o in objs if new in Placer(c.map).place(POOL, POOL, o.key))
        recovered = r["recovered_bytes"] - before["recovered_bytes"]
        summary = say(
            f"wiped daemon {old} back as {new}: full redundancy in {took:.1f} s; "
            f"{recovered / MiB:.1f} MiB recovered by status ({r['recovered_objects']} objects); "
            f"daemon {new} holds {held / MiB:.1f} MiB of the {should / MiB:.1f} MiB it should; "
            f"copies checked per daemon {checked}; recovery {r}"
        )
        assert r["degraded_objects"] == 0, summary
        assert checked.get(new, 0) > 0 and old not in checked, summary
        assert held >= should, summary
        assert recovered >= should, summary

        problems = await verify_all(c, ledger)
        assert not problems, f"{summary}\n" + "\n".join(problems[:30])


# -- 3. two daemons added ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_two_daemons_added_move_little(three: MasterProcess, tmp_path: Path) -> None:
    async with three.client_for(timeout=30) as c:
        await ready(c, 3)
        ledger = Ledger()
        sizes = {f"base-{i:03d}": 64 * KiB for i in range(300)}
        sizes |= {f"big-{i}": 8 * MiB for i in range(4)}
        await fill(c, ledger, sizes)
        base = list(sizes)
        objs = await engine_objects(c, base)
        old_map = c.map
        small_base = [n for n in base if n.startswith("base-")]

        load = Load(c, ledger, prefix="during", writers=2, readers=2, small=(4 * KiB, 16 * KiB),
                    read_names=lambda: small_base, seed=3)  # fmt: skip
        async with load:
            t_start = time.monotonic()
            await asyncio.sleep(3)
            # what the load has written by now must move too (its later writes go straight
            # to the new sets; what it overwrites or deletes meanwhile may not move at all)
            during = await existing_objects(c, [i.name async for i in c.list(POOL)
                                                if i.name.startswith("during")])  # fmt: skip
            before = await recovery(c)
            t_add = time.monotonic()
            added = start_members(three, [(tmp_path / "d3", "h3"), (tmp_path / "d4", "h4")])
            new_ids = [await wait_up(c, d) for d in added]
            r = await wait_clean(c, 60)
            t_done = time.monotonic()
        stats = load.stats
        new_map = c.map
        assert all(d.up and d.in_ for d in new_map.daemons.values()) and len(new_map.daemons) == 5

        old_p, new_p = Placer(old_map), Placer(new_map)

        def to_move(objects: list[EngineObject]) -> int:
            return sum(
                o.size
                * len(set(new_p.place(POOL, POOL, o.key)) - set(old_p.place(POOL, POOL, o.key)))
                for o in objects
            )

        acting = {o: new_p.place(POOL, POOL, o.key) for o in objs}
        ideal_base = to_move(objs)  # the objects the load never touches: all of them move
        ideal = ideal_base + to_move(during)  # and what existed when the daemons came
        moved = r["recovered_bytes"] - before["recovered_bytes"]
        keys = {(o.namespace, o.name): o for o in objs}
        async with Directs(c) as directs:
            holds: dict[int, set[EngineObject]] = {}
            for i in new_map.daemons:
                mine = set()
                for ns in {o.namespace for o in objs}:
                    for name in await directs.names(i, ns):
                        if (ns, name) in keys:
                            mine.add(keys[ns, name])
                holds[i] = mine
            new_held = sum(o.size for i in new_ids for o in holds[i])
            problems, _ = await copy_problems(c, directs, objs)

        before_rate = stats.rate(t_start + 0.5, t_add)
        during_rate = stats.rate(t_add, t_done)
        summary = say(
            f"2 daemons added ({new_ids}) to 3 holding {sum(o.size for o in objs) / MiB:.1f} "
            f"MiB: moved {moved / MiB:.2f} MiB by status, the new daemons hold "
            f"{new_held / MiB:.2f} MiB of the base's {ideal_base / MiB:.2f} MiB; ideal "
            f"{ideal / MiB:.2f} MiB with the load's objects (x{moved / max(ideal, 1):.3f}); "
            f"move took {t_done - t_add:.1f} s; client throughput during the move "
            f"{during_rate / MiB:.1f} MiB/s, before {before_rate / MiB:.1f} MiB/s "
            f"({during_rate / max(before_rate, 1):.2f} of before); {stats.reads} reads, "
            f"{stats.writes} writes, {stats.read_failures} + {stats.write_failures} failed; "
            f"recovery {r}"
        )
        assert ideal_base > 0, summary
        assert ideal_base <= moved <= 1.2 * ideal, summary
        assert new_held == ideal_base, summary
        assert not problems, f"{summary}\n" + "\n".join(problems[:30])
        # the old daemons let go of the copies they lost (and nobody holds extra ones)
        extra = [
            f"daemon {i} still holds {o.namespace}/{o.name} (acting {acting[o]})"
            for i, held in holds.items() for o in held if i not in acting[o]
        ]  # fmt: skip
        assert not extra, f"{summary}\n" + "\n".join(extra[:30])
        assert r["misplaced_objects"] == 0, summary
        failed = stats.read_failures + stats.write_failures + stats.corrupt_reads
        assert not failed, f"{summary}\n" + "\n".join(stats.errors)

        problems = await verify_all(c, ledger)
        assert not problems, f"{summary}\n" + "\n".join(problems[:30])


# -- 4. flipped bytes ----------------------------------------------------------------------------


def name_where(placer: Placer, prefix: str, ok: object) -> str:
    """The first name prefix-0, prefix-1, ... whose acting set satisfies `ok`."""
    for k in range(10_000):
        name = f"{prefix}-{k}"
        if ok(placer.place(POOL, POOL, name)):  # type: ignore[operator]
            return name
    raise AssertionError(f"no name for {prefix}")


@pytest.mark.asyncio
async def test_flipped_bytes_are_found_and_repaired(four: MasterProcess) -> None:
    async with four.client_for(timeout=30) as c:
        await ready(c, 4)
        victim = four.daemons[1]
        vid = id_of(c, victim)
        placer = Placer(c.map)
        # A and C: the victim is their primary (a read meets the bad copy first);
        # B: the victim is a replica (only scrub can find it)
        a = name_where(placer, "prim-small", lambda s: s[0] == vid)
        b = name_where(placer, "repl-small", lambda s: vid in s[1:])
        cc = name_where(placer, "prim-mid", lambda s: s[0] == vid)
        sizes = {a: 40 * KiB + 123, b: 48 * KiB + 7, cc: 3 * MiB + 5}
        sizes |= {f"other-{i}": 4 * KiB + i * 997 for i in range(40)}
        ledger = Ledger()
        contents = await fill(c, ledger, sizes)
        for n in (a, b, cc):
            assert vid in c.acting(POOL, n)
        await wait_clean(c, 20)
        objs = await engine_objects(c, ledger.stored())

        assert stop_member(victim) == 0
        how = {
            a: corrupt_copy(victim.dir, POOL, a, contents[a], 100),
            b: corrupt_copy(victim.dir, POOL, b, contents[b], 20 * KiB + 5),
            cc: corrupt_copy(victim.dir, POOL, cc, contents[cc], sizes[cc] - 2000),
        }
        say(f"flipped bytes on daemon {vid}: {how}")
        again = start_member(four, victim.dir, host_of(victim), *REPL_FLAGS)
        assert await wait_up(c, again) == vid
        await wait_clean(c, 30)
        scrub0 = await scrub_status(c)  # (the victim's figures began again at its restart)

        # reads through the cluster client give the right bytes, the bad copy or not
        for n in (a, b, cc):
            assert digest(await c.get(POOL, n)) == digest(contents[n]), n

        # (reads may have repaired A and C already: they count as found and repaired too;
        # B can only be found by scrub.) Done when every copy (3 per object) was checked.
        await c.admin("scrub")
        s = await eventually(
            lambda: scrub_status(c),
            lambda s: s["objects"] - scrub0["objects"] >= 3 * len(objs) and s["running"] == 0,
            timeout=30, every=0.2, what="a scrub of every copy",
        )  # fmt: skip
        assert s["errors"] - scrub0["errors"] >= 1, s
        assert s["repaired"] - scrub0["repaired"] >= 1, s
        summary = say(f"scrub: {s} (before: {scrub0})")

        # the victim's own copies are right again
        async with Directs(c) as directs:
            for n in (a, b, cc):
                got = await directs.get(vid, POOL, n)
                assert digest(got) == digest(contents[n]), f"{n} on daemon {vid}; {summary}"
            problems, _ = await copy_problems(c, directs, objs)
        assert not problems, "\n".join(problems[:30])

        problems = await verify_all(c, ledger)
        assert not problems, f"{summary}\n" + "\n".join(problems[:30])
