"""Large objects in a cluster are striped: 4 MiB stripes, each placed on its own, moved in
parallel, under a head written last. Against a real master and four daemons."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shoal.client import AsyncClient
from shoal.client.cluster import ClusterClient
from shoal.client.stripes import HEAD_REF, STRIPE, stripe_namespace
from shoal.errors import NotFound
from tests.integration.cluster_helpers import MasterProcess, start_master, start_member, stop_all
from tests.integration.daemon_helpers import MiB, data, digest


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[MasterProcess]:
    master = start_master(tmp_path / "m", "--heartbeat", "0.2")
    try:
        for i in range(4):
            start_member(master, tmp_path / f"d{i}", f"h{i}", size="256M")
        yield master
    finally:
        assert not stop_all(master)


async def _ready(c: ClusterClient, n: int) -> None:
    deadline = time.monotonic() + 20
    while (await c.admin("status"))["up"] < n:
        assert time.monotonic() < deadline, "the daemons did not register"
        await c.refresh()
    await c.admin("pool_create", name="p", replicas=1, pg_num=64, failure_domain="daemon")
    await c.refresh(at_least=1)


@pytest.mark.asyncio
async def test_a_large_object_is_striped_over_the_daemons(cluster: MasterProcess) -> None:
    body = data("striped", 10 * STRIPE + 12345)
    async with cluster.client_for() as c:
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

        # a rewrite replaces the stripes; the old ones are deleted after the new head, once
        # the client's grace (for readers elsewhere of the old head) is over
        c.grace = 0.5
        old = await c._head("p", "big")
        smaller = data("smaller", 2 * STRIPE + 1)
        await c.put("p", "big", smaller)
        assert await c.get("p", "big") == smaller
        assert old is not None
        sname = old.stripe_name("big", 0)
        await c._on_primary("p", sname, lambda d: d.stat(stripe_namespace("p"), sname))
        await asyncio.sleep(1.0)
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
async def test_a_streamed_upload_is_striped_without_holding_it(cluster: MasterProcess) -> None:
    size = 6 * STRIPE + 777

    async def chunks() -> AsyncIterator[bytes]:
        for k in range(0, size, MiB):
            yield data(f"s{k}", min(MiB, size - k))

    body = b"".join([data(f"s{k}", min(MiB, size - k)) for k in range(0, size, MiB)])
    async with cluster.client_for() as c:
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


async def _stripe_exists(c: ClusterClient, sname: str) -> bool:
    try:
        await c._on_primary("p", sname, lambda d: d.stat(stripe_namespace("p"), sname))
    except NotFound:
        return False
    return True


@pytest.mark.asyncio
async def test_an_object_composed_of_segments_moves_no_data(cluster: MasterProcess) -> None:
    """S3 multipart's ground: segments stored as stripes alone, then one head that names
    them makes the object; reads cross their borders; a replaced object takes them along."""
    bodies = [data("seg0", STRIPE + 5), data("seg1", 3 * STRIPE // 2), data("seg2", 1000)]

    async def chunks(b: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(b), 1 << 20):
            yield b[i : i + (1 << 20)]

    async with cluster.client_for() as c:
        await _ready(c, 4)
        c.grace = 0.3
        segs = [
            await c.put_segment("p", f".up/x/{i}", len(b), chunks(b)) for i, b in enumerate(bodies)
        ]
        assert [s.size for s in segs] == [len(b) for b in bodies]
        assert [s.hash for s in segs] == [digest(b) for b in bodies]
        with pytest.raises(NotFound):  # no object yet: stripes alone
            await c.stat("p", "obj")
        whole = b"".join(bodies)
        key = await c.put_composed("p", "obj", segs, meta={"etag": "x-3"})
        assert key.size == len(whole)
        info = await c.stat("p", "obj")
        assert info.size == len(whole) and info.meta["etag"] == "x-3"
        assert await c.get("p", "obj") == whole
        at = len(bodies[0]) - 7  # a range over both borders
        assert (
            await c.get("p", "obj", offset=at, length=len(bodies[1]) + 20)
            == whole[at : at + len(bodies[1]) + 20]
        )
        reader = await c.open("p", "obj")
        got = b"".join([bytes(p) async for p in reader.pieces(len(whole) - 1500)])
        assert got == whole[-1500:]
        assert [(i.name, i.size) async for i in c.list("p")] == [("obj", len(whole))]

        # a bad size on the way in stores nothing
        with pytest.raises(ValueError):
            await c.put_segment("p", ".up/x/bad", STRIPE * 2, chunks(bodies[0]))

        # the same segments named again (a completion sent twice) are kept
        await c.put_composed("p", "obj", segs)
        await asyncio.sleep(1.0)
        assert await c.get("p", "obj") == whole

        # replacing the object deletes every segment's stripes (after the grace)
        first = segs[0].stripe_name(0)
        last = segs[2].stripe_name(0)
        assert await _stripe_exists(c, first) and await _stripe_exists(c, last)
        await c.put("p", "obj", b"small now")
        await asyncio.sleep(1.0)
        assert not await _stripe_exists(c, first) and not await _stripe_exists(c, last)

        # a segment dropped before it is used leaves nothing
        spare = await c.put_segment("p", ".up/x/spare", 10, chunks(b"0123456789"))
        assert await _stripe_exists(c, spare.stripe_name(0))
        await c.drop_segment("p", spare)
        assert not await _stripe_exists(c, spare.stripe_name(0))
