"""`shoal up` keeps its cluster running: under a write load on replicas=3 (min_size 2), one
daemon, then the master, then the gateway are killed with SIGKILL; each is reported and back
within seconds while the others serve, and every acknowledged write reads back. A daemon that
can no longer start (its disk held by another process) is left down after a few tries, with
the reason, and writes go on without it. Then `shoal up` itself is killed with SIGKILL: none
of its processes is left, and a new `shoal up` on the same folder starts and serves it all."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shoal.client.cluster import ClusterClient
from tests.faults.replication_helpers import Ledger, Load, verify_all, wait_clean
from tests.integration.cluster_helpers import all_exited, pids_under, shoal
from tests.integration.up_helpers import Up, up_fixture  # noqa: F401 - (the fixture `up`)

pytestmark = pytest.mark.slow
POOL = "default"


async def until(probe: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)
    return got


def client(up: Up) -> ClusterClient:
    cfg = json.loads((up.data / "client.json").read_text())
    return ClusterClient(cfg["master"], cfg["access_key"], cfg["secret_key"], ca=cfg["ca_cert"])


def curl(*args: str) -> str:
    p = subprocess.run(["curl", "-sS", "-w", " %{http_code}", *args], capture_output=True,
                       timeout=30)  # fmt: skip
    return p.stdout.decode()


async def kill_and_see_it_back(up: Up, name: str, ledger: Ledger) -> None:
    """SIGKILL `name`; shoal up says so and starts it again; writes go on meanwhile."""
    pid, restarts = up.pid(name), up.processes()[name]["restarts"]
    os.kill(pid, signal.SIGKILL)
    await until(lambda: up.processes()[name]["state"] != "up", f"{name} seen dead", 5)
    acked = ledger.acked()
    back = await until(
        lambda: (p := up.processes()[name])["state"] == "up" and p["restarts"] == restarts + 1,
        f"{name} started again", 30,
    )  # fmt: skip
    assert back and up.pid(name) != pid
    assert ledger.acked() > acked, f"writes stopped while {name} was away"
    err = up.stderr()
    assert f"{name} (pid {pid}) was killed by SIGKILL; the others serve on" in err, err
    assert f"{name} is back (pid {up.pid(name)})" in err, err
    await until(lambda: ledger.acked() > acked + 5, "writes going on", 30)


@pytest.mark.asyncio
async def test_shoal_up_supervises_its_cluster(up: Up, tmp_path: Path) -> None:
    out = up.start()
    gateway = out.split("HTTP gateway (minikeyvalue API) on http://", 1)[1].split("/", 1)[0]
    env = up.env
    c = client(up)
    await c.connect()
    ledger = Ledger()
    load = Load(c, ledger, pool=POOL, writers=3, readers=1, overwrite_every=4, delete_every=7)
    try:
        load.start()
        await until(lambda: ledger.acked() > 20, "the load under way")

        # a daemon: marked down at once (the master need not wait for heartbeats), back, and
        # caught up
        pid = up.pid("daemon1")
        os.kill(pid, signal.SIGKILL)
        down = await until(
            lambda: "daemon1" in up.processes() and up.processes()["daemon1"]["state"] != "up",
            "daemon1 seen dead", 5,
        )  # fmt: skip
        assert down
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the master's map: one daemon down, then all up
            s = await c.admin("status")
            seen.append(s["up"])
            if 2 in seen and s["up"] == 3:
                break
            await asyncio.sleep(0.05)
        assert 2 in seen and seen[-1] == 3, seen
        await until(lambda: "daemon1 is back" in up.stderr(), "shoal up saying daemon1 is back")
        acked = ledger.acked()
        await until(lambda: ledger.acked() > acked + 5, "writes going on", 30)
        await wait_clean(c, timeout=60)

        # the master: daemons and this client carry on without it; it is back (and a scrub
        # asked of it afterwards is a new one, followed to its end, not taken for the last)
        out = shoal("scrub", env=env, cwd=tmp_path, timeout=120).stdout.decode()
        assert "scrub 1 done" in out, out
        await kill_and_see_it_back(up, "master", ledger)
        assert b"HEALTH" in shoal("status", env=env, cwd=tmp_path).stdout
        out = shoal("scrub", env=env, cwd=tmp_path, timeout=120).stdout.decode()
        assert "scrub 2 requested" in out and "scrub 2 done" in out, out

        # the gateway
        await kill_and_see_it_back(up, "http", ledger)
        assert curl("-X", "PUT", "-d", "after", f"http://{gateway}/k").endswith(" 201")
        assert curl(f"http://{gateway}/k") == "after 200"

        # a daemon that cannot start again (its disk is held): left down, with the reason
        pid = up.pid("daemon2")
        blocks = open(up.data / "daemon2" / "blocks", "rb")  # noqa: SIM115 - held below
        try:
            os.kill(pid, signal.SIGKILL)
            while True:  # (the lock is free once the process is gone)
                try:
                    fcntl.flock(blocks.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            left = await until(
                lambda: up.processes()["daemon2"]["state"] == "down", "daemon2 left down", 60
            )
            assert left
            p = up.processes()["daemon2"]
            assert "failed 5 times in a row at start" in p["reason"], p
            err = up.stderr()
            assert "daemon2 exited with status 1 before it was ready, and failed 5 times" in err
            assert "is open in another process" in err, err  # (the end of its log: the cause)
            status = shoal("status", env=env, cwd=tmp_path).stdout.decode()
            assert "daemon2: down: exited with status 1 before it was ready" in status, status
            assert "2 up, 3 in" in status, status
            acked = ledger.acked()  # writes go on with 2 of 3 (min_size 2)
            await until(lambda: ledger.acked() > acked + 5, "writes with a daemon left down")
            # a rebalance says what waits for the daemon left down, and does not wait forever
            out = shoal("rebalance", env=env, cwd=tmp_path, timeout=60).stdout.decode()
            assert "objects stay degraded while 1 daemon(s) are down" in out, out
        finally:
            blocks.close()
        stats = await load.stop()
        assert stats.corrupt_reads == 0, stats.errors
        problems = await verify_all(c, ledger, pool=POOL)
        assert problems == [], problems[:10]
    finally:
        await load.stop()
        await c.close()

    # shoal up itself, killed: its children go too, and a new one starts on the same folder
    assert up.proc is not None
    children = list(up.children)
    live = [p["pid"] for p in up.processes().values() if p["pid"]]
    os.kill(up.proc.pid, signal.SIGKILL)
    up.proc.wait()
    assert up.proc.stdout is not None
    up.proc.stdout.close()
    deadline = time.monotonic() + 30
    while not all_exited(children + live) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert all_exited(children + live), "the children of a killed shoal up are left"
    assert pids_under(tmp_path) == []
    up.start()
    c = client(up)
    try:
        await c.connect()
        s = await c.admin("status")
        assert s["up"] == 3, s
        await wait_clean(c, timeout=60)
        assert await verify_all(c, ledger, pool=POOL) == []
    finally:
        await c.close()
    assert up.interrupt() == 0
