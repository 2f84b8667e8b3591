"""An object's metadata through one daemon (a real process, no master): a PUT gathered whole,
a batched small PUT and a streamed one carry it; STAT, GET, LIST give it back; write-at
keeps it; bad metadata is refused; a restart keeps it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from shoal.client import AsyncClient
from shoal.errors import InvalidArgument, NotFound
from shoal.proto.frames import Op
from tests.conftest import DaemonProcess, start_daemon
from tests.integration.daemon_helpers import LOG_LEAK, MiB, data, discard_disk, tidy

pytestmark = pytest.mark.filterwarnings(LOG_LEAK)
META = {"content-type": "image/png", "md5": "0123456789abcdef0123456789abcdef"}


@pytest.fixture
def daemon(daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    yield tidy(daemon)
    discard_disk(daemon)


async def pieces(b: bytes, n: int = 256 << 10) -> AsyncIterator[bytes]:
    for i in range(0, len(b), n):
        yield b[i : i + n]


@pytest.mark.asyncio
async def test_put_paths_carry_the_meta_and_reads_give_it_back(daemon: DaemonProcess) -> None:
    big = data("big", 3 * MiB + 5)  # (over 1 MiB: streamed to an engine writer)
    async with AsyncClient(daemon.address) as c:
        # concurrent small PUTs are batched into one group commit: each keeps its own
        await asyncio.gather(*(c.put("p", f"s{i}", b"v", meta={"i": str(i)}) for i in range(20)))
        await c.put("p", "mid", data("mid", 200_000), meta=META)
        await c.put_stream("p", "big", len(big), pieces(big), meta=META)
        await c.put("p", "none", b"without")
        for i in range(20):
            assert (await c.stat("p", f"s{i}")).meta == {"i": str(i)}
        assert (await c.stat("p", "mid")).meta == META
        info, got = await c.get_with_info("p", "big")
        assert (info.meta, bytes(got)) == (META, big)
        assert (await c.stat("p", "none")).meta == {}
        page, _ = await c.list("p")
        assert {i.name: i.meta for i in page}["big"] == META

        await c.write_at("p", "mid", 10, b"patch")
        assert (await c.stat("p", "mid")).meta == META

        with pytest.raises(InvalidArgument):
            await c.put("p", "bad", b"x", meta={"k": "v" * (16 << 10)})
        for bad in ({"k": 1}, ["not", "a", "map"]):
            with pytest.raises(InvalidArgument):
                await c._call(Op.PUT, {"namespace": "p", "name": "bad", "meta": bad}, b"x",
                              idempotent=True)  # fmt: skip
        # (a large PUT refused at its header: the daemon answers and closes the connection,
        # which the client may see first while it is still sending)
        with pytest.raises((InvalidArgument, ConnectionError)):
            await c.put_stream("p", "bad", len(big), pieces(big), meta={"k": "v" * (16 << 10)})
        with pytest.raises(NotFound):
            await c.stat("p", "bad")


@pytest.mark.asyncio
async def test_the_meta_outlives_a_restart(daemon: DaemonProcess) -> None:
    async with AsyncClient(daemon.address) as c:
        await c.put("p", "kept", b"value", meta=META)
    assert daemon.stop() == 0
    again = tidy(start_daemon(daemon.dir))
    try:
        async with AsyncClient(again.address) as c:
            assert (await c.stat("p", "kept")).meta == META
    finally:
        assert again.stop() == 0
