"""The HTTP gateway at its edges: regression tests for bugs a review found (each failed on
the code as reviewed): NUL in keys, early answers and keep-alive, clients that go or stall,
reads racing overwrites, stripes left behind, deletes that fail half-way, pools on too few
daemons. One cluster for the module, started the way `shoal up` starts it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.client.cluster import ClusterClient
from shoal.cluster.placement import PoolPlacement
from shoal.index import open_index
from shoal.master.server import Master
from shoal.master.state import MasterState
from shoal.up import LocalCluster
from tests.integration.cluster_helpers import eventually_sync, shoal, shoal_env
from tests.integration.http_helpers import (
    Gateway,
    live_stripes,
    local_cluster,
    start_gateway,
    status_of,
)

STRIPE = 4 << 20
LARGE = 12 * STRIPE  # more stripes than the gateway reads ahead (PARALLEL = 8)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Gateway]]:
    with local_cluster(tmp_path_factory.mktemp("review") / "shoal-data") as (lc, gw):
        assert gw.put("rv/big", os.urandom(LARGE)).status == 201  # (read by several tests)
        yield lc, gw


def _cli(lc: LocalCluster, *args: str, ok: bool = True) -> subprocess.CompletedProcess[bytes]:
    env = shoal_env(lc.data.parent / "home")
    return shoal(*args, "--config", str(lc.data / "client.json"), env=env, cwd=lc.data, ok=ok)


def _cluster_client(lc: LocalCluster) -> ClusterClient:
    cfg = json.loads((lc.data / "client.json").read_text())
    return ClusterClient(cfg["master"], cfg["access_key"], cfg["secret_key"], ca=cfg["ca_cert"])


def _log_lines(gw: Gateway, method: str, key: str) -> list[dict[str, object]]:
    text = gw.log.read_text() if gw.log.exists() else ""
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [x for x in lines if x.get("method") == method and x.get("key") == key]


def _connect(gw: Gateway, rcvbuf: int | None = None) -> socket.socket:
    host, _, port = gw.address.rpartition(":")
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect((host, int(port)))
    return s


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- keys -------------------------------------------------------------------------------------


def test_a_key_with_nul_is_refused_at_once(cluster: tuple[LocalCluster, Gateway]) -> None:
    """A NUL in a key (%00) passes the gateway's and the index's checks; the primary sends
    the write to its replicas, which refuse the name (InvalidArgument), the primary reports
    that as Unavailable and the client retries it for its whole timeout: the PUT takes 60 s
    and ends in 503 "retry" (GET and DELETE of the same key give 400 at once).
    (A gateway of its own, killed at the end: on the code reviewed it would go on retrying
    for a minute, and hold up the stop of the module's cluster.)"""
    lc, main = cluster
    gw = start_gateway(lc, "default", main.index, lc.data / "http-nul.log")
    try:
        t0 = time.monotonic()
        r = gw.curl("-X", "PUT", "-d", "x", "--max-time", "5", f"http://{gw.address}/rv/nul%00x")
        assert r.status == 400, (r.status, r.body, f"{time.monotonic() - t0:.1f} s")
    finally:
        assert gw.proc is not None
        gw.proc.kill()
        gw.stop()


def test_an_early_answer_to_a_put_closes_or_keeps_the_connection_usable(
    cluster: tuple[LocalCluster, Gateway],
) -> None:
    """A PUT with `Expect: 100-continue` answered at once (here 400: a bad Content-MD5; a
    409 or 411 is the same) gets no `Connection: close`, so the server goes on waiting for a
    body the client, as RFC 9110 asks, does not send: the client's next request on that
    connection is eaten as the body and answered 400 "Invalid HTTP request". (RFC 9110
    10.1.1: a server that answers before reading the content should say whether it closes.)"""
    _, gw = cluster
    host, _, port = gw.address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"PUT /rv/expect HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n"
                  b"Content-MD5: nonsense\r\nExpect: 100-continue\r\n\r\n")  # fmt: skip
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.endswith(b"\n"):
            reply += s.recv(4096)
        assert status_of(reply) == 400, reply
        if b"connection: close" in reply.lower():
            return  # (the server closes: the client opens another connection)
        s.sendall(b"GET /rv/big HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n")
        second = s.recv(4096)
    assert status_of(second) == 206, second


# -- reads ------------------------------------------------------------------------------------


def test_a_get_stops_reading_the_cluster_when_its_client_goes(
    cluster: tuple[LocalCluster, Gateway],
) -> None:
    """gateway/http.py _get: after the client has gone, uvicorn's send() returns at once
    without sending, and nothing else tells _get: it fetches and "sends" every remaining
    stripe of the object (here 48 MiB, in a real cluster gigabytes) to nobody, and logs them
    as sent."""
    _, gw = cluster
    with _connect(gw) as s:
        s.sendall(b"GET /rv/big HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(65536)
        assert status_of(first) == 200
    # (closed with unread bytes: a reset, seen by the gateway at once)
    got = eventually_sync(lambda: _log_lines(gw, "GET", "rv/big"), bool, timeout=30,
                          what="the GET's log line")  # fmt: skip
    sent = got[-1]["bytes"]
    assert isinstance(sent, int)
    assert sent <= LARGE // 2, f"{sent} of {LARGE} bytes read and sent after the client left"


def test_a_read_of_a_striped_object_survives_an_overwrite(
    cluster: tuple[LocalCluster, Gateway],
) -> None:
    """client/cluster.py _put_head drops the old head's stripes as soon as the new head is
    in place (the module says readers of the old head are safe: they are not): a GET under
    way, past the stripes it fetched ahead, finds the rest gone and the client gets a 200
    whose body is cut short."""
    _, gw = cluster
    old, new = os.urandom(LARGE), os.urandom(LARGE)
    assert gw.put("rv/over", old).status == 201
    with _connect(gw, rcvbuf=16384) as s:
        s.sendall(b"GET /rv/over HTTP/1.1\r\nHost: x\r\n\r\n")
        got = bytearray(s.recv(16384))
        assert status_of(bytes(got)) == 200
        time.sleep(0.5)  # the gateway fetches ahead, then waits for this reader
        assert gw.put("rv/over", new).status == 201  # (meanwhile, another client)
        while True:
            try:
                chunk = s.recv(1 << 20)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            got += chunk
    body = bytes(got.partition(b"\r\n\r\n")[2])
    n, same = len(body), body == old  # (not in the assert: pytest would print 48 MiB)
    assert n == LARGE, f"the read was cut off after {n} of {LARGE} bytes"
    assert same, "the body is not the object as it was when the read began"


def test_stalled_readers_do_not_pin_many_stripes_each(
    cluster: tuple[LocalCluster, Gateway],
) -> None:
    """A reader that stops reading (or vanished without a reset) keeps its GET waiting
    forever (no send timeout) with the piece being sent plus PARALLEL (8) stripes fetched
    ahead in memory: about 50 MiB per connection, so a few hundred idle connections take
    the gateway's memory. Allowed here: 32 MiB per stalled reader (the piece being sent,
    in the transport's buffer too, and a stripe or two ahead). (A gateway of its own: a
    fresh process, whose resident memory grows by what the readers hold, not taken from
    what earlier requests freed.)"""
    lc, main = cluster
    gw = start_gateway(lc, "default", main.index, lc.data / "http-stall.log")
    assert gw.proc is not None
    socks = []
    try:
        assert gw.curl("-r", "0-99", gw.url("rv/big")).status == 206  # (connected)
        before = _rss(gw.proc.pid)
        for _ in range(4):
            s = _connect(gw, rcvbuf=4096)
            s.sendall(b"GET /rv/big HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(s)
        time.sleep(4)
        grown = _rss(gw.proc.pid) - before
    finally:
        for s in socks:
            s.close()
        gw.stop()
    assert grown <= 4 * 32 << 20, f"4 stalled readers hold {grown >> 20} MiB of the gateway"


# -- writes -----------------------------------------------------------------------------------


def test_a_small_overwrite_of_a_striped_object_frees_its_stripes(
    cluster: tuple[LocalCluster, Gateway],
) -> None:
    """client/cluster.py put: a value of at most one stripe was stored whole without looking
    for an old head, so the stripes of a striped value it replaced stayed on the disks for
    ever (a DELETE afterwards found no head either). The stripes of a replaced value are now
    kept for the client's grace (readers elsewhere may still be reading them), and deleted
    when it ends, or when the client (here a gateway of its own) stops."""
    lc, main = cluster
    gw = start_gateway(lc, "default", main.index, lc.data / "http-shrink.log")
    try:
        assert gw.put("rv/shrink", os.urandom(2 * STRIPE + 1)).status == 201
        assert live_stripes(lc, "rv/shrink") == 3 * 3  # 3 stripes, 3 replicas
        assert gw.put("rv/shrink", b"small now").status == 201
        assert gw.get("rv/shrink").body == b"small now"
        assert live_stripes(lc, "rv/shrink") == 3 * 3, "kept for readers elsewhere, a while"
        assert gw.delete("rv/shrink").status == 204
    finally:
        gw.stop()
    assert live_stripes(lc, "rv/shrink") == 0


def test_writers_racing_on_a_striped_key_leave_no_stripes(
    cluster: tuple[LocalCluster, Gateway],
) -> None:
    """Two gateways overwriting one large key at once, then deleting it: every head replaced
    is given back to the one writer that replaced it (the primary answers with it), so each
    set of stripes is deleted once and none is left behind."""
    lc, main = cluster
    gws = [start_gateway(lc, "default", main.index, lc.data / f"http-race{i}.log") for i in (1, 2)]
    try:
        bodies = [os.urandom(2 * STRIPE + 7) for _ in range(2)]

        def writer(i: int) -> None:
            for _ in range(3):
                assert gws[i].put("rv/race", bodies[i]).status == 201

        threads = [threading.Thread(target=writer, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert gws[0].get("rv/race").body in bodies
        assert gws[1].delete("rv/race").status == 204
    finally:
        for g in gws:
            g.stop()  # (retired stripes go when a gateway stops, or after its grace)
    assert live_stripes(lc, "rv/race") == 0


def test_an_uploader_that_stops_sending_gets_408_and_frees_the_key(
    cluster: tuple[LocalCluster, Gateway],
) -> None:
    """A PUT whose body stops coming held the key (409 for every other writer) for ever:
    after --idle-timeout it is answered 408, nothing is stored and the key is free."""
    lc, main = cluster
    gw = start_gateway(lc, "default", main.index, lc.data / "http-idle.log", "--idle-timeout", "1")
    try:
        with _connect(gw) as s:
            s.sendall(b"PUT /rv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            time.sleep(0.3)  # (the gateway has begun it)
            assert gw.put("rv/slow", b"other").status == 409  # (being written)
            reply = s.recv(4096)
        assert status_of(reply) == 408 and b"connection: close" in reply.lower(), reply
        assert gw.get("rv/slow").status == 404 and gw.keys("rv/slow") == []
        assert gw.put("rv/slow", b"now").status == 201
        assert gw.delete("rv/slow").headers.get("content-length") is None  # (a 204 has none)
    finally:
        gw.stop()


# -- the index --------------------------------------------------------------------------------


def test_a_refused_delete_leaves_the_key_listed(cluster: tuple[LocalCluster, Gateway]) -> None:
    """gateway/http.py _delete hides the key in the index first and never shows it again
    when the delete of the data then fails: here a permanent object (403, it is kept), but
    any failure (503, a daemon down) does the same: a key that exists, unlisted."""
    lc, gw = cluster

    async def write_permanent() -> None:
        async with _cluster_client(lc) as c:
            await c._on_primary(
                "default", "rv/perm", lambda d: d.put("default", "rv/perm", b"kept", permanent=True)
            )

    asyncio.run(write_permanent())
    _cli(lc, "index", "rebuild", "--pool", "default", "--index", gw.index)
    assert gw.keys("rv/perm") == ["/rv/perm"]
    assert gw.delete("rv/perm").status == 403
    assert gw.get("rv/perm").body == b"kept"
    assert gw.keys("rv/perm") == ["/rv/perm"], "the key is there, and no longer listed"


def test_rebuild_lists_a_key_whose_delete_stopped_after_hiding_it(
    cluster: tuple[LocalCluster, Gateway],
) -> None:
    """A DELETE that stops between its two steps (the gateway killed, or the data delete
    failing, as above) leaves a tombstone at the object's own version; rebuild writes only
    versions newer than the stored one, so it never lists the object again, though the
    design says the index is derived data that `shoal index rebuild` makes again."""
    lc, gw = cluster
    assert gw.put("rv/half", b"still here").status == 201

    async def hide() -> None:  # what the DELETE had done when the gateway died
        async with open_index(gw.index) as index:
            assert await index.hide("default", "rv/half") is not None

    asyncio.run(hide())
    assert gw.keys("rv/half") == []
    assert gw.get("rv/half").body == b"still here"
    _cli(lc, "index", "rebuild", "--pool", "default", "--index", gw.index)
    assert gw.keys("rv/half") == ["/rv/half"]


# -- pools on chosen daemons ------------------------------------------------------------------


def test_a_pool_on_fewer_daemons_than_it_needs_is_refused(
    cluster: tuple[LocalCluster, Gateway],
) -> None:
    """master/server.py pool_create checks that the daemons named exist, not that there are
    enough of them: `--replicas 3 --daemons 0` makes a pool whose every PG is inactive
    (1 daemon < min_size 2) and that nothing can fix (a pool's daemons cannot be changed):
    each write to it hangs for the client's timeout (60 s), then fails."""
    lc, _ = cluster
    daemons = json.loads(_cli(lc, "daemon", "ls", "--json").stdout)
    one = str(daemons[0]["id"])
    out = _cli(lc, "pool", "create", "rv-tiny", "--replicas", "3", "--failure-domain", "daemon",
               "--daemons", one, "--pg-num", "8", ok=False)  # fmt: skip
    assert out.returncode != 0, out.stdout


def test_a_new_disk_does_not_inherit_a_removed_daemons_place_in_a_pool(tmp_path: Path) -> None:
    """daemon_rm leaves the id in the pools that name it, and MasterState.daemon_id hands
    the highest id out again once it is forgotten: the next disk to register, whatever it
    is, silently becomes one of the pool's chosen disks and receives its data."""

    async def go() -> tuple[int, set[int]]:
        state = MasterState(str(tmp_path / "master.db"))
        try:
            m = Master(state)
            for i, uuid in enumerate(("disk-a", "disk-b", "disk-c")):
                await m._register({"uuid": uuid, "address": f"127.0.0.1:{5000 + i}", "host": "h"})
            await m.pool_create({"name": "ssd", "replicas": 1, "min_size": 1, "pg_num": 8,
                                 "failure_domain": "daemon", "daemons": [2]})  # fmt: skip
            gone = m.map.daemon(2)  # disk-c fails: down, taken out, removed
            await m.commit(m.map.with_daemon(dataclasses.replace(gone, up=False, in_=False)), "t")
            await m.daemon_rm({"id": 2})
            reply = await m._register({"uuid": "disk-d", "address": "127.0.0.1:5009", "host": "h"})
            placement = PoolPlacement(m.map, m.map.pools["ssd"])
            return int(reply["id"]), {i for pg in range(8) for i in placement.acting(pg)}
        finally:
            state.close()

    new_id, acting = asyncio.run(go())
    assert new_id not in acting, f"the new disk (id {new_id}) holds pool ssd's data"
