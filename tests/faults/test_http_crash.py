"""The HTTP gateway killed (SIGKILL) in the middle of PUTs and DELETEs: data is written
first and the index second, so whatever the moment, no listed key is without its object; and
`shoal index rebuild` lists every object there is (the orphans the crash left)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.up import LocalCluster
from tests.integration.cluster_helpers import shoal, shoal_env
from tests.integration.http_helpers import Gateway, local_cluster, start_gateway

WRITERS = 6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Gateway]]:
    with local_cluster(tmp_path_factory.mktemp("crash") / "shoal-data") as (lc, gw):
        yield lc, gw


def _load(gw: Gateway, w: int, stop: threading.Event, done: list[str]) -> None:
    """PUTs (small, and a striped one now and then) and DELETEs of this writer's keys until
    `stop` or until the gateway is gone."""
    i = 0
    while not stop.is_set():
        key = f"crash/{w}/{i % 40:03d}"
        body = os.urandom(9 << 20) if i % 25 == 7 else f"{w}-{i}".encode() * 50
        r = gw.delete(key) if i % 5 == 4 else gw.put(key, body, "--max-time", "20")
        if r.rc != 0 and r.status == 0:  # the gateway is gone
            return
        done.append(key)
        i += 1


def test_a_killed_gateway_leaves_no_listed_key_without_its_object(
    cluster: tuple[LocalCluster, Gateway], tmp_path: Path
) -> None:
    lc = cluster[0]
    index = f"sqlite:///{tmp_path / 'index.db'}"
    for round_ in range(2):
        gw = start_gateway(lc, "default", index, tmp_path / f"h{round_}.log")
        assert gw.proc is not None
        stop, done = threading.Event(), [list[str]() for _ in range(WRITERS)]
        threads = [
            threading.Thread(target=_load, args=(gw, w, stop, done[w])) for w in range(WRITERS)
        ]
        for t in threads:
            t.start()
        time.sleep(2.0 + round_)
        gw.proc.send_signal(signal.SIGKILL)  # mid-request, most likely several
        gw.proc.wait()
        stop.set()
        for t in threads:
            t.join()
        gw.stop()
        assert sum(map(len, done)) > 20, "the load should have been under way"

    after = start_gateway(lc, "default", index, tmp_path / "after.log")
    try:
        listed = after.keys("crash/")
        assert listed, "something was listed before the crashes"
        for key in listed:  # the promise: an entry never outlives (or comes before) its data
            r = after.curl("-I", "-o", "/dev/null", after.url(key[1:]))
            assert r.status == 200, f"{key} is listed, its object is not there ({r.status})"

        env = shoal_env(lc.data.parent / "home")
        config = str(lc.data / "client.json")
        shoal("index", "rebuild", "--pool", "default", "--index", index, "--config", config,
              env=env, cwd=lc.data)  # fmt: skip
        rebuilt = after.keys("crash/")
        assert set(listed) <= set(rebuilt), "a rebuild keeps what is there"
        # and lists exactly what the daemons hold under that prefix (the orphans included)
        out = shoal("ls", "--pool", "default", "--config", config, env=env, cwd=lc.data)
        held = sorted(
            "/" + line.split()[0]
            for line in out.stdout.decode().splitlines()
            if line.startswith("crash/")
        )
        assert rebuilt == held
    finally:
        after.stop()
