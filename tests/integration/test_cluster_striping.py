"""Large objects in a cluster are striped: 4 MiB stripes, each placed on its own, moved in
parallel, under a head written last. Against a real master and four daemons."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shoal.client import AsyncClient
from shoal.client.cluster import ClusterClient
from shoal.client.stripes import HEAD_REF, STRIPE, stripe_namespace
from shoal.errors import NotFound
from tests.conftest import SHOAL, DaemonProcess, remove_data, start_daemon
from tests.integration.daemon_helpers import MiB, data, digest

_LISTEN = re.compile(rb"listening on (\S+) \(peer\), (\S+) \(client\)")
_ADMIN = re.compile(rb"admin key: (\S+) (\S+)")


@dataclass
class Cluster:
    master: subprocess.Popen[bytes]
    client_address: str
    access: str
    secret: str
    daemons: list[DaemonProcess]

    def client(self) -> ClusterClient:
        return ClusterClient(self.client_address, self.access, self.secret)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cmd = [*SHOAL, "master", "--dir", str(tmp_path / "m"), "--peer-address", "127.0.0.1:0",
           "--listen-address", "127.0.0.1:0", "--heartbeat", "0.2"]  # fmt: skip
    with open(tmp_path / "master.log", "wb") as log:
        master = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
    assert master.stdout is not None
    out, deadline = b"", time.monotonic() + 30
    while not _LISTEN.search(out) and time.monotonic() < deadline:
        if select.select([master.stdout], [], [], 0.2)[0]:
            out += os.read(master.stdout.fileno(), 4096)
    listen, admin = _LISTEN.search(out), _ADMIN.search(out)
    assert listen and admin, out
    daemons = []
    try:
        for i in range(4):
            daemons.append(start_daemon(
                tmp_path / f"d{i}", "--master", listen.group(1).decode(), "--host", f"h{i}",
                size="256M",
            ))  # fmt: skip
        yield Cluster(master, listen.group(2).decode(), admin.group(1).decode(),
                      admin.group(2).decode(), daemons)  # fmt: skip
    finally:
        for d in daemons:
            assert d.stop() == 0
            remove_data(d)
        master.send_signal(signal.SIGTERM)
        assert master.wait(timeout=20) == 0
        master.stdout.close()


async def _ready(c: ClusterClient, n: int) -> None:
    deadline = time.monotonic() + 20
    while (await c.admin("status"))["up"] < n:
        assert time.monotonic() < deadline, "the daemons did not register"
        await c.refresh()
    await c.admin("pool_create", name="p", replicas=1, pg_num=64, failure_domain="daemon")
    await c.refresh(at_least=1)


@pytest.mark.asyncio
async def test_a_large_object_is_striped_over_the_daemons(cluster: Cluster) -> None:
    body = data("striped", 10 * STRIPE + 12345)
    async with cluster.client() as c:
        await _ready(c, 4)
        key = await c.put("p", "big", body)
        assert key.size == len(body) and key.hash == digest(body)

        # the stripes are engine objects of their own, on the daemons placement names
        holders = set()
        for i in range(11):
            sname = f"big/{(await c._head('p', 'big')).wid}/{i:06d}"  # type: ignore[union-attr]
            (primary,) = c.acting("p", sname)
            addr = c.map.daemons[primary].address
            async with AsyncClient(addr) as direct:
                direct.epoch, direct.ticket = c.map.epoch, c.ticket
                info = await direct.stat(stripe_namespace("p"), sname)
                assert info.size == (STRIPE if i < 10 else 12345)
            holders.add(primary)
        assert len(holders) >= 3, f"11 stripes landed on only {holders}"

        info = await c.stat("p", "big")
        assert info.size == len(body) and info.hash == digest(body)
        listed = [i async for i in c.list("p")]
        assert [(i.name, i.size) for i in listed] == [("big", len(body))]
        assert HEAD_REF not in info.refs
        assert digest(await c.get("p", "big")) == digest(body)
        part = await c.get("p", "big", offset=STRIPE - 10, length=2 * STRIPE + 20)
        assert part == body[STRIPE - 10 : 3 * STRIPE + 10]
        assert await c.get("p", "big", offset=len(body) - 5) == body[-5:]

        # a rewrite replaces the stripes; the old ones are deleted after the new head
        old = await c._head("p", "big")
        smaller = data("smaller", 2 * STRIPE + 1)
        await c.put("p", "big", smaller)
        assert await c.get("p", "big") == smaller
        assert old is not None
        sname = old.stripe_name("big", 0)
        with pytest.raises(NotFound):
            await c._on_primary("p", sname, lambda d: d.stat(stripe_namespace("p"), sname))

        # small objects are stored whole; delete takes the stripes with the head
        await c.put("p", "small", b"tiny")
        assert await c.get("p", "small") == b"tiny"
        await c.delete("p", "big")
        with pytest.raises(NotFound):
            await c.stat("p", "big")
        names = [i.name async for i in c.list("p")]
        assert names == ["small"]


@pytest.mark.asyncio
async def test_a_streamed_upload_is_striped_without_holding_it(cluster: Cluster) -> None:
    size = 6 * STRIPE + 777

    async def chunks() -> AsyncIterator[bytes]:
        for k in range(0, size, MiB):
            yield data(f"s{k}", min(MiB, size - k))

    body = b"".join([data(f"s{k}", min(MiB, size - k)) for k in range(0, size, MiB)])
    async with cluster.client() as c:
        await _ready(c, 4)
        key = await c.put_stream("p", "streamed", size, chunks())
        assert key.size == size and key.hash == digest(body)
        got = bytearray()
        info = await c.get_to("p", "streamed", got.extend)
        assert info.size == size and digest(got) == digest(body)

        async def short() -> AsyncIterator[bytes]:
            yield b"x" * (STRIPE + 10)

        with pytest.raises(ValueError):
            await c.put_stream("p", "short", 3 * STRIPE, short())
        with pytest.raises(NotFound):
            await c.stat("p", "short")
