"""Regression tests of replication races found in review, against a real cluster (a `shoal
master` and `shoal daemon`s on 127.0.0.1, port 0). Each one makes the race happen on purpose
and checks the rule it broke: an acknowledged write or delete is what every later read gives,
from every current copy; a deleted object never comes back; a read never gives stale bytes.

1. A version handed out by a failed write was handed out again: a replica that kept the
   failed write's bytes at that version answered Superseded to the next write (or delete),
   which counted as done; when the primary went, the failed bytes came back.
2. A primary that had just come back (not current yet) answered a DELETE, and the permanent
   check of a PUT, from its own stale copy: the delete was NotFound and left the object in
   the cluster; a permanent object was overwritten.
3. A tombstone was never handed to a daemon that never had the object: with the only holder
   of the tombstone gone, a daemon that missed the delete brought the object back.
4. A daemon taken out and put back in before a recovery pass finished counted as current: it
   served (and patched, and spread) the bytes from before a write made while it was out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from shoal.client.cluster import ClusterClient
from shoal.cluster.placement import Placer
from shoal.daemon.process import DaemonProcess
from shoal.errors import Forbidden, NotFound, ShoalError, StaleMap, Unavailable
from shoal.proto.frames import Op
from tests.faults.replication_helpers import Directs
from tests.integration.cluster_helpers import (
    MasterProcess,
    daemons_by_id,
    direct,
    eventually,
    map_at,
    start_master,
    start_member,
    stop_all,
    stop_member,
    wait_current,
    wait_registered,
)

T = TypeVar("T")
pytestmark = pytest.mark.slow

POOL = "p"
Copy = bytes | None  # an object's bytes on one daemon; None: no live copy (absent, deleted)


# -- the cluster -------------------------------------------------------------------------------


@asynccontextmanager
async def cluster(
    root: Path,
    n: int,
    master_flags: tuple[str, ...],
    daemon_flags: tuple[str, ...] = (),
    *,
    replicas: int = 3,
    min_size: int = 2,
    timeout: float = 30.0,
) -> AsyncIterator[tuple[MasterProcess, ClusterClient, dict[int, DaemonProcess]]]:
    """A master, `n` daemons (hosts h0..), all current with pool POOL (one copy per daemon);
    the master, a client and the daemon processes by id. Stopped daemons are resumed and
    everything is stopped cleanly on the way out."""
    m = start_master(root / "master", *master_flags)
    try:
        for i in range(n):
            start_member(m, root / f"d{i}", f"h{i}", *daemon_flags)
        async with m.client_for(timeout=timeout) as c:
            info = await wait_registered(c, n, timeout=30)
            procs = {i: d for i, x in info.items() for d in m.daemons if d.address == x["address"]}
            out = await c.admin("pool_create", name=POOL, replicas=replicas, min_size=min_size,
                                pg_num=16, failure_domain="daemon")  # fmt: skip
            await map_at(c, out["epoch"], timeout=30)
            await wait_current(c, timeout=60)
            yield m, c, procs
    finally:
        for d in m.daemons:
            if d.proc.poll() is None:
                os.kill(d.proc.pid, signal.SIGCONT)
        assert not stop_all(m)


async def wait_state(c: ClusterClient, i: int, up: bool, timeout: float = 30.0) -> None:
    await eventually(lambda: daemons_by_id(c), lambda ds: ds[i]["up"] == up, timeout,
                     what=f"daemon {i} {'up' if up else 'down'}")  # fmt: skip
    await map_at(c, (await c.admin("status"))["epoch"], timeout=30)


# -- reading copies ----------------------------------------------------------------------------


async def raw_copy(c: ClusterClient, i: int, name: str) -> Copy:
    """Daemon `i`'s copy of POOL/name as it holds it, current or not (a replica's read)."""
    d = direct(c, c.map.daemons[i].address)
    try:
        _, data = await d._call(Op.GET, {"namespace": POOL, "name": name, "replica": True},
                                idempotent=True)  # fmt: skip
        return bytes(data)
    except NotFound:
        return None
    finally:
        await d.close()


async def raw_copies(c: ClusterClient, ids: list[int], name: str) -> dict[int, Copy]:
    return {i: await raw_copy(c, i, name) for i in ids}


async def current_copies(
    c: ClusterClient, ids: list[int], name: str, patience: float = 40.0
) -> dict[int, Copy]:
    """Each daemon's copy as it serves it to a client: once it says it is current."""
    out: dict[int, Copy] = {}
    async with Directs(c) as directs:
        for i in ids:
            got = await eventually(
                lambda i=i: _served(c, directs, i, name), lambda x: x != "unavailable",
                patience, every=0.5, what=f"daemon {i} current for {name}",
            )  # fmt: skip
            assert got != "unavailable"
            out[i] = got  # type: ignore[assignment]
    return out


async def _served(c: ClusterClient, directs: Directs, i: int, name: str) -> Copy | str:
    try:
        return await directs.call(i, lambda a: a.get(POOL, name), patience=0)
    except NotFound:
        return None
    except StaleMap:
        await c.refresh(c.map.epoch + 1, wait=1.0)
        return "unavailable"
    except Unavailable:
        return "unavailable"


async def read(c: ClusterClient, name: str) -> Copy:
    """The object as the cluster client reads it (None: NotFound)."""
    try:
        return await c.get(POOL, name)
    except NotFound:
        return None


async def read_settled(c: ClusterClient, name: str, timeout: float = 40.0) -> Copy:
    """A read that is let fail (Unavailable, no daemon) while the map changes."""

    async def once() -> Copy | str:
        try:
            return await read(c, name)
        except (ShoalError, ConnectionError, TimeoutError) as exc:
            return f"failed: {type(exc).__name__}: {exc}"

    got = await eventually(once, lambda x: not isinstance(x, str), timeout, every=0.2,
                           what=f"a read of {name}")  # fmt: skip
    assert not isinstance(got, str)
    return got


async def within(coro: Awaitable[T], timeout: float, what: str) -> T:
    try:
        return await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        raise AssertionError(f"{what}: no answer within {timeout} s") from None


# -- 1. a failed write's version is never handed out again --------------------------------------


V1, V2, V3 = b"v1 acknowledged", b"v2 FAILED, never acknowledged", b"v3 ACKNOWLEDGED"


@pytest.mark.asyncio
@pytest.mark.parametrize("op", ["put", "delete"])
async def test_failed_write_version_not_reused(tmp_path: Path, op: str) -> None:
    """A write reaches replica B but not C (frozen past the deadline): it fails, the primary
    A stays at the old version, B has the failed bytes at the version A handed out. The next
    write (or delete), acknowledged, must take effect on B too: it is what B and C hold, and
    what the cluster reads once A is gone."""
    # (down after 6 s: C, frozen 2.5 s, stays up; the default recovery interval: no pass of
    # A's fetches B's failed bytes before the next write)
    flags = ("--heartbeat", "0.5", "--down-after", "6")
    async with cluster(tmp_path, 3, flags) as (_, c, procs):
        name = "x"
        a, b, cc = c.acting(POOL, name)
        await c.put(POOL, name, V1)

        prim = direct(c, c.map.daemons[a].address)
        prim.timeout = 1.5
        os.kill(procs[cc].proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            with pytest.raises((ShoalError, TimeoutError)):
                await prim.put(POOL, name, V2)  # B takes it, C never answers
        finally:
            await asyncio.sleep(max(0.0, 2.5 - (time.monotonic() - t0)))
            os.kill(procs[cc].proc.pid, signal.SIGCONT)
            await prim.close()
        # the race's precondition: B holds the failed write, A does not
        await eventually(lambda: raw_copies(c, [a, b], name), lambda x: x == {a: V1, b: V2},
                         20, every=0.2, what="B with the failed write, A without")  # fmt: skip

        want: Copy
        if op == "put":
            await c.put(POOL, name, V3)
            want = V3
        else:
            await c.delete(POOL, name)
            want = None
        assert await read(c, name) == want
        # acknowledged: every copy has it (B's failed bytes are gone)
        copies = await raw_copies(c, [a, b, cc], name)
        assert copies == {a: want, b: want, cc: want}, f"acting {a, b, cc}: {copies}"

        # the primary goes: the others serve the acknowledged state
        stop_member(procs[a], signal.SIGKILL)
        await wait_state(c, a, up=False)
        assert await read_settled(c, name) == want
        assert await current_copies(c, [b, cc], name) == {b: want, cc: want}


# -- 2. a primary that is catching up changes nothing from its stale copy ------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("variant", ["delete", "permanent"])
async def test_stale_primary_changes_nothing(tmp_path: Path, variant: str) -> None:
    """Primary A of X is killed; while it is down X is written (a permanent object, in one
    variant), another object Y is deleted, and more data comes that A must fetch back (slowly:
    100 kB/s, X after those). A comes back and, still catching up, is X's primary again. A delete of
    X must delete it everywhere (not be NotFound from A's copy); a PUT over the permanent X
    must be refused and leave it as it is; a LIST must not show the deleted Y."""
    flags = ("--heartbeat", "0.5", "--down-after", "3")
    slow = ("--recovery-rate", "0.1")  # 100 kB/s: A's catch-up takes ~16 s
    async with cluster(tmp_path, 3, flags, slow, timeout=60.0) as (m, c, procs):
        name = "zz-x"  # (fetched after the a* objects)
        acting = c.acting(POOL, name)
        a = acting[0]
        await c.put(POOL, "y", b"to be deleted while A is down")
        await wait_current(c, timeout=30)

        stop_member(procs[a], signal.SIGKILL)
        await wait_state(c, a, up=False)
        # (fetched 4 at a time, each followed by a pause of its size at 100 kB/s: X, after
        # six of these, is fetched ~10 s into A's pass, the pass ends ~16 s in)
        for i in range(6):
            await c.put(POOL, f"a{i}", os.urandom(256 << 10))
        if variant == "permanent":
            content = b"PERMANENT, written while A was down"
            b = acting[1]  # the primary while A is down
            async with Directs(c) as directs:
                await directs.call(b, lambda d: d.put(POOL, name, content, permanent=True))
        else:
            content = b"written while A was down"
            await c.put(POOL, name, content)
        await c.delete(POOL, "y")
        assert await read(c, name) == content

        start_member(m, procs[a].dir, f"h{a}", *slow)
        await wait_state(c, a, up=True)
        assert c.acting(POOL, name)[0] == a
        await asyncio.sleep(1.0)  # (A is well into its catch-up, X not fetched yet)
        assert await raw_copy(c, a, name) is None, "A fetched X already: the race is missed"

        listed = [i.name async for i in c.list(POOL)]
        want: Copy
        if variant == "permanent":
            with pytest.raises(Forbidden):
                await c.put(POOL, name, b"overwrote a permanent object")
            with pytest.raises(Forbidden):
                await c.delete(POOL, name)
            want = content
        else:
            try:
                await c.delete(POOL, name)
            except NotFound:
                pytest.fail(f"the delete of {name}, written while its primary was down, was "
                            f"answered NotFound (from the primary's stale copy)")  # fmt: skip
            want = None
        assert await read(c, name) == want
        assert "y" not in listed, f"a LIST during A's catch-up shows the deleted y: {listed}"
        # once A is current, every copy agrees
        assert await current_copies(c, acting, name) == dict.fromkeys(acting, want)
        assert await read(c, "y") is None
        assert "y" not in [i.name async for i in c.list(POOL)]


# -- 3. a tombstone is handed over even to a daemon that never had the object --------------------


@pytest.mark.asyncio
async def test_tombstone_handed_over(tmp_path: Path) -> None:
    """X lives on A and C (2 replicas, min_size 1); C is stopped, X deleted (A holds the
    tombstone), A taken out: D, which never had X, is now in X's acting set and must get
    the tombstone. A is stopped and removed, C comes back with its old copy: X must stay
    deleted."""
    flags = ("--heartbeat", "0.5", "--down-after", "3")
    extra = ("--recovery-interval", "1")
    async with cluster(tmp_path, 3, flags, extra, replicas=2, min_size=1) as (m, c, procs):
        d = 2
        name = next(f"x{i}" for i in range(200) if d not in c.acting(POOL, f"x{i}"))
        a, cc = c.acting(POOL, name)
        await c.put(POOL, name, b"deleted data")
        await wait_current(c, timeout=30)

        stop_member(procs[cc])
        await wait_state(c, cc, up=False)
        await c.delete(POOL, name)
        assert await read(c, name) is None

        out = await c.admin("daemon_out", id=a)
        await map_at(c, out["epoch"], timeout=30)
        assert d in c.acting(POOL, name)
        # every daemon up has done its pass at this map (D fetched what it should hold, A
        # handed over what it should not)
        await wait_current(c, timeout=60)
        assert await raw_copy(c, d, name) is None

        stop_member(procs[a])
        await wait_state(c, a, up=False)
        await c.admin("daemon_rm", id=a)
        start_member(m, procs[cc].dir, f"h{cc}", *extra)
        await wait_state(c, cc, up=True)
        await wait_current(c, timeout=60)

        assert await read_settled(c, name) is None, "the deleted object is back"
        ids = c.acting(POOL, name)
        assert await current_copies(c, ids, name) == dict.fromkeys(ids)
        assert name not in [i.name async for i in c.list(POOL)]


# -- 4. a daemon out and back in before a complete pass is not current ---------------------------


@pytest.mark.asyncio
async def test_out_and_back_in_not_current(tmp_path: Path) -> None:
    """B, X's primary at epoch E, is taken out (E+1), X is rewritten on its new acting set,
    and B is put back in (E+2) before a recovery pass of B's completes (a peer E, outside
    both acting sets, is frozen: B's scans of it hang). B must not serve X's old bytes, nor
    patch them: the read gives the E+1 write, a WRITE_AT applies to it."""
    flags = ("--heartbeat", "0.5", "--down-after", "30")
    extra = ("--recovery-interval", "1")
    async with cluster(tmp_path, 5, flags, extra, timeout=60.0) as (_, c, procs):
        m0 = c.map
        pick = None
        for i in range(500):
            name = f"x{i}"
            act0 = Placer(m0).place(POOL, POOL, name)
            b = act0[0]
            m1 = m0.with_daemon(dataclasses.replace(m0.daemons[b], in_=False))
            act1 = Placer(m1).place(POOL, POOL, name)
            others = [e for e in m0.daemons if e not in act0 and e not in act1]
            if others:
                pick = (name, b, others[0], act0, act1)
                break
        assert pick is not None
        name, b, e, act0, act1 = pick
        old, new = b"OLD " * 4, b"NEW acknowledged at E+1"
        await c.put(POOL, name, old)
        await wait_current(c, timeout=30)

        frozen = procs[e].proc.pid
        os.kill(frozen, signal.SIGSTOP)
        try:
            out = await c.admin("daemon_out", id=b)
            await map_at(c, out["epoch"], timeout=30)
            await c.put(POOL, name, new)
            back = await c.admin("daemon_in", id=b)
            await map_at(c, back["epoch"], timeout=30)
            assert c.acting(POOL, name)[0] == b
            await asyncio.sleep(1.0)  # (B has the map; its pass hangs on E)
            got = await within(read(c, name), 30, "a read while B catches up")
            assert got == new, f"a read after B came back in gave {got!r}"
            # the patch must wait for B to be current (E resumed a little later)
            patch = asyncio.ensure_future(c.write_at(POOL, name, 0, b"new"))
            await asyncio.sleep(2.0)
        finally:
            os.kill(frozen, signal.SIGCONT)
        await within(patch, 60, "the WRITE_AT")
        want = b"new acknowledged at E+1"
        assert await read(c, name) == want
        await wait_current(c, timeout=60)
        assert await current_copies(c, act0, name) == dict.fromkeys(act0, want)
