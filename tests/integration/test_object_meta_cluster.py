"""An object's metadata in a real cluster: written through the primary it is on every copy
(whole objects, a striped object's head, metadata known only at the end of a stream), it is
kept by write-at-offset and reference changes on every copy, a daemon added gets it through
recovery, and scrub repairs a copy whose metadata differs at the same version."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shoal.client.client import ObjectInfo
from shoal.client.cluster import ClusterClient
from shoal.client.stripes import HEAD_REF, STRIPE
from shoal.errors import InvalidArgument
from shoal.proto.frames import Op
from tests.integration.cluster_helpers import (
    FAST,
    MasterProcess,
    direct,
    eventually,
    map_at,
    start_master,
    start_member,
    stop_all,
    wait_registered,
)

POOL = "p"
REPL = ("--recovery-interval", "1")


@pytest.fixture
def master(tmp_path: Path) -> Iterator[MasterProcess]:
    m = start_master(tmp_path / "master", *FAST)
    yield m
    assert not stop_all(m)


def body(name: str, size: int) -> bytes:
    return random.Random(name).randbytes(size)


async def settled(c: ClusterClient, timeout: float = 30.0) -> None:
    async def recovery() -> dict[str, int]:
        return dict((await c.admin("status"))["recovery"])

    await eventually(
        recovery,
        lambda r: not (r["recovering"] or r["degraded_objects"] or r["misplaced_objects"]),
        timeout, every=0.2, what="recovery done",
    )  # fmt: skip


async def on_daemon(c: ClusterClient, i: int, name: str) -> ObjectInfo:
    """Daemon `i`'s own record of `name` (a head, for a striped object)."""
    d = direct(c, c.map.daemons[i].address)
    try:
        return await d.stat(POOL, name)
    finally:
        await d.close()


async def metas(c: ClusterClient, name: str) -> dict[int, dict[str, str]]:
    """daemon id -> the metadata of its copy of `name`, for the object's acting set."""
    return {i: (await on_daemon(c, i, name)).meta for i in c.acting(POOL, name)}


async def chunks_of(data: bytes, n: int = 100_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), n):
        yield data[i : i + n]


@pytest.mark.asyncio
async def test_meta_is_on_every_copy_and_kept_by_changes(
    master: MasterProcess, tmp_path: Path
) -> None:
    for i in range(3):
        start_member(master, tmp_path / f"d{i}", f"h{i}", *REPL)
    async with master.client_for() as c:
        await wait_registered(c, 3)
        out = await c.admin("pool_create", name=POOL, replicas=3, min_size=2, pg_num=16,
                            failure_domain="daemon")  # fmt: skip
        await map_at(c, out["epoch"])
        small = {"content-type": "text/plain", "x-amz-meta-a": "ü"}
        await c.put(POOL, "small", b"hello", meta=small)
        await c.put(POOL, "plain", b"no metadata")

        # metadata known only once the bytes are in: a callable, called at the end
        taken: list[int] = []
        streamed = body("streamed", 300_000)

        async def counting() -> AsyncIterator[bytes]:
            async for piece in chunks_of(streamed):
                taken.append(len(piece))
                yield piece

        def at_end() -> dict[str, str]:
            return {"md5": f"after {sum(taken)} bytes"}

        await c.put_stream(POOL, "streamed", len(streamed), counting(), meta=at_end)
        big = body("big", STRIPE + 12345)
        await c.put(POOL, "striped", big, meta={"content-type": "application/x-big"})
        await c.put_stream(POOL, "striped-stream", None, chunks_of(big, 1 << 20),
                           meta=lambda: {"md5": f"after {len(big)} bytes"})  # fmt: skip

        want = {
            "small": small,
            "plain": {},
            "streamed": {"md5": "after 300000 bytes"},
            "striped": {"content-type": "application/x-big"},
            "striped-stream": {"md5": f"after {len(big)} bytes"},
        }
        for name, meta in want.items():
            copies = await metas(c, name)
            assert len(copies) == 3 and all(m == meta for m in copies.values()), (name, copies)
            assert (await c.stat(POOL, name)).meta == meta, name
            assert (await c.open(POOL, name)).info.meta == meta, name
        assert HEAD_REF in (await on_daemon(c, c.acting(POOL, "striped")[0], "striped")).refs
        info = await c.stat(POOL, "striped")
        assert info.size == len(big) and info.meta == want["striped"]
        assert {i.name: i.meta async for i in c.list(POOL)} == want

        # too much metadata is refused, and nothing is stored (the stripes go too)
        with pytest.raises(InvalidArgument):
            await c.put(POOL, "too-much", b"x", meta={"k": "v" * (17 << 10)})
        with pytest.raises(InvalidArgument):
            await c.put(POOL, "too-much", big, meta={"k": "v" * (17 << 10)})
        assert "too-much" not in {i.name async for i in c.list(POOL)}

        # write-at-offset and reference changes (sent whole to the replicas) keep it
        await c.write_at(POOL, "small", 1, b"ELLO, world")
        ref = b"r" * 16
        await c._on_primary(POOL, "small", lambda d: d.add_refs(POOL, "small", [ref]))
        await settled(c)
        for i in c.acting(POOL, "small"):
            got = await on_daemon(c, i, "small")
            assert (got.meta, got.refs, got.size) == (small, (ref,), 12), i
        assert await c.get(POOL, "small") == b"hELLO, world"


@pytest.mark.asyncio
async def test_recovery_and_scrub_carry_the_meta(master: MasterProcess, tmp_path: Path) -> None:
    for i in range(3):
        start_member(master, tmp_path / f"d{i}", f"h{i}", *REPL)
    async with master.client_for() as c:
        await wait_registered(c, 3)
        out = await c.admin("pool_create", name=POOL, replicas=3, min_size=2, pg_num=16,
                            failure_domain="daemon")  # fmt: skip
        await map_at(c, out["epoch"])
        names = [f"obj-{i:02d}" for i in range(24)]
        for n in names:
            await c.put(POOL, n, body(n, 5000), meta={"name": n, "md5": "0" * 32})

        # a daemon added: what placement now gives it arrives through recovery, with its meta
        start_member(master, tmp_path / "d3", "h3", *REPL)
        await wait_registered(c, 4)
        await map_at(c, (await c.admin("status"))["epoch"])
        await settled(c, 60)
        new = max(c.map.daemons)
        moved = [n for n in names if new in c.acting(POOL, n)]
        assert moved, "placement gave the new daemon nothing"
        for n in moved:
            got = await on_daemon(c, new, n)
            assert got.meta == {"name": n, "md5": "0" * 32}, (n, got)

        # a replica whose metadata differs at the same version: scrub sends it the primary's
        name = names[0]
        acting = c.acting(POOL, name)
        primary, replica = acting[0], acting[1]
        rec = await on_daemon(c, primary, name)
        d = direct(c, c.map.daemons[replica].address)
        try:
            await d._call(Op.PUT, {
                "namespace": POOL, "name": name, "version": rec.version, "refs": [],
                "permanent": False, "force": True, "replica": True, "meta": {"name": "wrong"},
            }, body(name, 5000), idempotent=True)  # fmt: skip
        finally:
            await d.close()
        bad = await on_daemon(c, replica, name)
        assert (bad.version, bad.hash, bad.meta) == (rec.version, rec.hash, {"name": "wrong"})
        before = (await c.admin("status"))["scrub"]
        await c.admin("scrub")
        await eventually(
            lambda: on_daemon(c, replica, name), lambda i: i.meta == rec.meta,
            timeout=30, every=0.2, what="scrub repairing the replica's metadata",
        )  # fmt: skip
        await eventually(
            lambda: c.admin("status"), lambda s: s["scrub"]["repaired"] > before["repaired"],
            timeout=10, every=0.2, what="status counting the repair",
        )  # fmt: skip
