"""A network partition: one daemon of four is cut off from the others and the master by a
Linux network namespace whose only link (a veth pair) drops every packet both ways.

The master and three daemons listen on our end of the link, the fourth daemon runs inside
the namespace (`ip netns exec`) and listens on its end. Pool: 3 replicas, min_size 2,
failure domain daemon. The master marks a daemon down 1 s after its last heartbeat and
leaves it in (out after 600 s): the acting sets do not change, the cut-off daemon is a
missing replica of the PGs it serves.

While the link is cut:
  (a) a client inside the namespace, with a ticket and the map the cut-off daemon has,
      writes to the cut-off daemon objects it is the primary of, each twice (existing
      objects and new ones; the first write given 3 s, the second 30 s, enough for the
      daemon's own verdict): no write is acknowledged (each one fails or times out);
  (b) once the master has marked it down, the other side overwrites, creates and deletes
      objects, those of the cut-off daemon's PGs among them: every write is acknowledged.
Then the link heals; once no byte sent across the cut is still in flight (a write the
cut-off daemon forwarded may arrive late, with TCP's retransmission timer) and the status
shows recovery done (recovering 0, degraded 0) for a while, every acting daemon of every
object answers STAT with the same version and hash, that of the last acknowledged write (no
daemon off the acting set lists it), and the verifier reads back every acknowledged write
and compares hashes; nothing the cut-off side tried to write is visible anywhere. Every
problem found is listed in the one failure, with what the cut-off client was told.

Needs root (network namespaces) and iproute2: skipped when not root, an error when `ip`,
`tc` or `ss` is missing. Network traffic stays on loopback and the veth pair it makes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import pytest

from shoal.client.cluster import ClusterClient
from shoal.daemon.process import DaemonProcess
from shoal.errors import NotFound, ShoalError
from tests.faults.netns import Link, spawn_in, veth_namespace
from tests.integration.cluster_helpers import (
    DAEMON_SIZE,
    MasterProcess,
    daemon_log,
    daemons_by_id,
    direct,
    eventually,
    map_at,
    start_master,
    start_member,
    stop_all,
    wait_registered,
)

pytestmark = [pytest.mark.slow, pytest.mark.root]

# Heartbeat every 0.2 s, down after 1 s, and out only after 600 s: it stays in its PGs.
TIMING = ("--heartbeat", "0.2", "--down-after", "1", "--out-after", "600")
POOL = "part"
TARGETS = 9  # existing objects the cut-off daemon is the primary of: 3 overwritten, 3
# deleted by the other side during the cut, 3 left alone
NEW_TARGETS = 6  # new names it is the primary of: 3 created by the other side, 3 never
# Seconds the cut-off client gives its first and second write of each name: the first gives up
# early (its outcome unknown to the writer), the second waits for the daemon's own answer.
ATTEMPT_TIMEOUTS = (3.0, 30.0)
ALLOWED_FAILURES = ("TimeoutError", "Unavailable", "ConnectionError")
SETTLE = 60.0  # seconds for the link's backlog to drain and recovery to finish
STABLE = 1.5  # seconds (several heartbeats) the status must show recovery done

# The client inside the namespace: a plain AsyncClient of the cut-off daemon, with the
# ticket and the map epoch of the test's client as they were at the cut. Reads JSON on stdin
# {"address", "ticket" (hex), "epoch", "pool", "timeouts": [seconds, ...], "writes": {name:
# [data hex, ...]}}, writes each name's data one after the other (the names in parallel), the
# k-th with timeouts[k], and prints {name: [outcome, ...]}: "acknowledged HASH" or "ErrorClass:
# message".
CUT_CLIENT = r"""
import asyncio, json, sys
from shoal.client import AsyncClient

async def main(cfg):
    clients = [AsyncClient(cfg["address"], pool_size=4, timeout=t) for t in cfg["timeouts"]]
    for c in clients:
        c.ticket, c.epoch = bytes.fromhex(cfg["ticket"]), cfg["epoch"]

    async def one(name, datas):
        out = []
        for c, data in zip(clients, datas):
            try:
                put = c.put(cfg["pool"], name, bytes.fromhex(data))
                key = await asyncio.wait_for(put, c.timeout + 1)
                out.append("acknowledged " + key.hash.hex())
            except Exception as exc:
                out.append(f"{type(exc).__name__}: {exc}")
        return name, out

    try:
        return dict(await asyncio.gather(*(one(n, d) for n, d in cfg["writes"].items())))
    finally:
        for c in clients:
            await c.close()

print(json.dumps(asyncio.run(main(json.load(sys.stdin)))))
"""


def body(name: str, tag: str) -> bytes:
    r = random.Random(f"{name}/{tag}")
    return tag.encode() + r.randbytes(r.choice([0, 1, 100, 4095, 4096, 4097, 20_000, 100_000]))


def h(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


@dataclass
class Cluster:
    master: MasterProcess
    link: Link
    cut: DaemonProcess  # the daemon in the namespace


@pytest.fixture
def link() -> Iterator[Link]:
    if os.geteuid() != 0:
        pytest.skip(
            "needs root: makes a network namespace and a veth pair (ip netns, ip link, tc); "
            "run the fault tests as root, as CI does"
        )
    with veth_namespace() as ln:
        yield ln


@pytest.fixture
def cluster(link: Link, tmp_path: Path) -> Iterator[Cluster]:
    m = start_master(tmp_path / "master", *TIMING, "--peer-address", f"{link.host_ip}:0")
    try:
        on_host = ("--listen", f"{link.host_ip}:0", "--peer-address", f"{link.host_ip}:0")
        for i in range(3):
            start_member(m, tmp_path / f"d{i}", f"h{i}", *on_host)
        cut = spawn_in(link, tmp_path / "d3", size=DAEMON_SIZE,
                       extra=["--master", m.peer, "--host", "h3"])  # fmt: skip
        m.daemons.append(cut)
        yield Cluster(m, link, cut)
    finally:
        link.heal()  # (so that the cut-off daemon can say goodbye and stop cleanly)
        assert not stop_all(m)


async def stat_of(c: ClusterClient, address: str, name: str) -> tuple[int, bytes] | str | None:
    """(version, hash) of `name` on the daemon at `address`, asked directly; None if it has
    no copy; the error, as text, if it answers with one."""
    a = direct(c, address)
    try:
        info = await a.stat(POOL, name)
        assert info.hash is not None
        return info.version, info.hash
    except NotFound:
        return None
    except ShoalError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await a.close()


async def names_on(c: ClusterClient, address: str) -> set[str]:
    """The names of POOL that the daemon at `address` lists (asked directly)."""
    a = direct(c, address)
    try:
        out, after = set(), ""
        while True:
            page, nxt = await a.list(POOL, "", start_after=after)
            out |= {x.name for x in page}
            if nxt is None:
                return out
            after = nxt
    finally:
        await a.close()


def show(copy: tuple[int, bytes] | str | None, tags: dict[bytes, str]) -> str:
    """A copy as the failure messages show it: version, hash and whose data it is."""
    if copy is None or isinstance(copy, str):
        return copy or "absent"
    return f"v{copy[0]} {copy[1].hex()[:12]} ({tags.get(copy[1], '?')})"


async def recovery_done(c: ClusterClient, n: int) -> dict[str, Any]:
    """Wait until the status shows `n` daemons up and recovery done (recovering 0, degraded
    0), and still does STABLE seconds later (it lags the daemons by about a heartbeat)."""
    deadline, since, last = time.monotonic() + SETTLE, None, None
    while True:
        last = await c.admin("status")
        r = last.get("recovery") or {}
        done = last["up"] == n and r.get("recovering") == 0 and r.get("degraded_objects") == 0
        now = time.monotonic()
        if not done:
            since = None
        elif since is None:
            since = now
        elif now - since >= STABLE:
            return last
        if now > deadline:
            raise AssertionError(f"recovery not done within {SETTLE} s; last status: {last!r}")
        await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_cut_off_primary_acknowledges_nothing_and_replicas_agree_after_heal(
    cluster: Cluster,
) -> None:
    m, link = cluster.master, cluster.link
    async with m.client_for(timeout=30.0) as c:
        ds = await wait_registered(c, 4, timeout=30)
        (cut_id,) = [i for i, d in ds.items() if d["address"] == cluster.cut.address]
        # it registered with the master across the veth pair, from inside the namespace
        assert cluster.cut.address.startswith(f"{link.ns_ip}:")
        assert f"registered with the master at {m.peer} as daemon {cut_id} " in daemon_log(
            cluster.cut
        )
        out = await c.admin("pool_create", name=POOL, replicas=3, min_size=2, pg_num=64,
                            failure_domain="daemon")  # fmt: skip
        await map_at(c, out["epoch"])

        # -- before the cut: objects, some of them primaried by the daemon to cut off --
        def primary(name: str) -> int:
            return c.acting(POOL, name)[0]

        names: list[str] = []
        targets: list[str] = []
        i = 0
        while len(names) < 40 or len(targets) < TARGETS:
            n = f"obj-{i:03d}"
            names.append(n)
            if primary(n) == cut_id and len(targets) < TARGETS:
                targets.append(n)
            i += 1
        new_targets = [n for n in (f"new-{j:03d}" for j in range(1000)) if primary(n) == cut_id]
        new_targets = new_targets[:NEW_TARGETS]
        for n in names:
            acting = c.acting(POOL, n)
            assert len(set(acting)) == 3, f"{n}: acting set {acting}"

        expected: dict[str, bytes | None] = {}  # name -> its acknowledged content (None: gone)
        keys = await asyncio.gather(*(c.put(POOL, n, body(n, "v1")) for n in names))
        for n, k in zip(names, keys, strict=True):
            assert k.hash == h(body(n, "v1"))
            expected[n] = body(n, "v1")

        # what the cut-off side will try: each target twice (an unacknowledged write that a
        # daemon kept would be two versions ahead of the other side's one overwrite)
        cut_writes = {n: [body(n, f"CUT{k}") for k in range(len(ATTEMPT_TIMEOUTS))]
                      for n in targets + new_targets}  # fmt: skip
        assert c.ticket is not None
        cfg = {
            "address": cluster.cut.address, "ticket": c.ticket.hex(), "epoch": c.map.epoch,
            "pool": POOL, "timeouts": ATTEMPT_TIMEOUTS,
            "writes": {n: [d.hex() for d in datas] for n, datas in cut_writes.items()},
        }  # fmt: skip

        # -- the cut --
        link.cut()

        def cut_client() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                link.argv(sys.executable, "-c", CUT_CLIENT), input=json.dumps(cfg),
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip

        cut_side = asyncio.ensure_future(asyncio.to_thread(cut_client))
        try:
            # (b) the other side: the master marks the cut-off daemon down (it stays in),
            # then writes go on without it
            ds = await eventually(
                lambda: daemons_by_id(c), lambda ds: not ds[cut_id]["up"], timeout=10,
                what="the master marks the cut-off daemon down",
            )  # fmt: skip
            assert ds[cut_id]["in"] and all(d["up"] for i, d in ds.items() if i != cut_id)
            await map_at(c, (await c.admin("status"))["epoch"])
            assert not c.map.daemons[cut_id].up

            overwrite = targets[0:3] + [n for n in names if cut_id in c.acting(POOL, n)[1:]][:6]
            delete = targets[3:6] + [n for n in names if cut_id in c.acting(POOL, n)[1:]][6:10]
            create = new_targets[:3] + [f"maj-{j:03d}" for j in range(20)]
            assert len(overwrite) == 9 and len(delete) == 7, "too few objects on the cut daemon"

            async def write(n: str) -> None:
                k = await c.put(POOL, n, body(n, "v2"))
                assert k.hash == h(body(n, "v2"))
                expected[n] = body(n, "v2")

            async def remove(n: str) -> None:
                await c.delete(POOL, n)
                expected[n] = None

            await asyncio.gather(*(write(n) for n in overwrite + create),
                                 *(remove(n) for n in delete))  # fmt: skip
        finally:
            p = await cut_side

        # (a) the cut-off side: not one write acknowledged
        assert p.returncode == 0, f"the cut-off client failed:\n{p.stdout}\n{p.stderr}"
        outcomes: dict[str, list[str]] = json.loads(p.stdout)
        assert sorted(outcomes) == sorted(cut_writes)
        acked = {n: o for n, o in outcomes.items() if any(x.startswith("ack") for x in o)}
        assert not acked, f"the cut-off daemon acknowledged writes: {acked}"
        odd = {
            n: o for n, o in outcomes.items() if not all(x.startswith(ALLOWED_FAILURES) for x in o)
        }
        assert not odd, f"the cut-off writes failed otherwise than unavailable/timeout: {odd}"
        assert link.is_cut  # (still: the other side's writes were made during the cut)

        # -- heal --
        link.heal()
        await eventually(
            lambda: daemons_by_id(c),
            lambda ds: all(d["up"] and d["in"] for d in ds.values()) and len(ds) == 4,
            timeout=SETTLE, every=0.1, what="the cut-off daemon up again",
        )  # fmt: skip
        await eventually(
            lambda: asyncio.to_thread(link.unsent), lambda x: not x, timeout=SETTLE,
            every=0.2, what="no byte sent across the cut still unacknowledged",
        )  # fmt: skip
        status = await recovery_done(c, 4)
        await map_at(c, status["epoch"])

        # every acting daemon holds the same version and hash of each object (or, all of them,
        # nothing), the last acknowledged one; no other daemon lists it
        tags = {h(d): f"cut-off side's attempt {k}" for datas in cut_writes.values()
                for k, d in enumerate(datas)}  # fmt: skip
        for n in names + create:
            tags.setdefault(h(body(n, "v1")), "v1")
            tags.setdefault(h(body(n, "v2")), "v2")
        addresses = {i: d.address for i, d in sorted(c.map.daemons.items())}
        held = {i: await names_on(c, a) for i, a in addresses.items()}
        problems = []
        for n in sorted(set(expected) | set(cut_writes)):
            acting = c.acting(POOL, n)
            seen = {i: await stat_of(c, addresses[i], n) for i in acting}
            want = expected.get(n)
            about = (
                f"{n} (acting {list(acting)}, want {'absent' if want is None else tags[h(want)]}): "
                + ", ".join(f"daemon {i}: {show(x, tags)}" for i, x in seen.items())
                + (f"; the cut-off side was told {outcomes[n]}" if n in outcomes else "")
            )
            copies = set(seen.values())
            if len(copies) != 1:
                problems.append(f"replicas disagree: {about}")
            elif any(isinstance(x, str) for x in copies):
                problems.append(f"an error from STAT: {about}")
            elif want is None and copies != {None}:
                problems.append(f"deleted or never acknowledged, yet there: {about}")
            elif (
                want is not None
                and copies != {None}
                and not any(isinstance(x, tuple) and x[1] == h(want) for x in copies)
            ):
                problems.append(f"not the last acknowledged write: {about}")
            elif want is not None and copies == {None}:
                problems.append(f"an acknowledged write lost: {about}")
            stray = [i for i, ns in held.items() if n in ns and i not in acting]
            if stray:
                problems.append(f"listed by daemons {stray} off its acting set: {about}")

        # the verifier: every acknowledged write reads back, and nothing else is there
        for n, want in sorted(expected.items()):
            try:
                got = h(await c.get(POOL, n))
            except NotFound:
                got = None
            if got != (None if want is None else h(want)):
                problems.append(
                    f"{n}: read back {'absent' if got is None else tags.get(got, '?')}, "
                    f"acknowledged {'absent' if want is None else tags[h(want)]}"
                )
        for n in new_targets[3:]:  # (only the cut-off side tried to write these)
            try:
                got = h(await c.get(POOL, n))
                problems.append(
                    f"{n}: read back {tags.get(got, '?')}, never acknowledged "
                    f"(the cut-off side was told {outcomes[n]})"
                )
            except NotFound:
                pass
        listed = [x.name async for x in c.list(POOL)]
        live = sorted(n for n, w in expected.items() if w is not None)
        if listed != live:
            problems.append(
                f"listing: {sorted(set(listed) - set(live))} extra, "
                f"{sorted(set(live) - set(listed))} missing"
            )
        assert not problems, f"{len(problems)} problems after the heal:\n" + "\n".join(problems)
