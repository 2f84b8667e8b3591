"""ObjectStore.read_mapped: verified views of the page cache (a read-only mapping of the
device), valid while the reader is pinned. The bytes equal `get`'s; an overwrite or delete
under a pin cannot hand the blocks to another object; the span-crc cache never lets a
damaged block through; zeroing on delete waits for pinned readers."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.engine import ObjectStore, Record, blockstore, check
from shoal.engine.freelist import Extent
from shoal.engine.manifest import HOLE
from shoal.errors import IntegrityError, InvalidArgument, NoSpace, NotFound

BS = 4096
MiB = 1 << 20


def blob(seed: int | str, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _kernel() -> tuple[int, ...]:
    return tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2] if x.isdigit())


def mapped(store: ObjectStore, rec: Record, offset: int, length: int) -> list[memoryview]:
    views = store.read_mapped(rec, offset, length)
    if views is None:
        if _kernel() < (5, 14):  # no MADV_POPULATE_READ: read_mapped is allowed to decline
            pytest.skip("the device cannot be mapped on this kernel")
        raise AssertionError("read_mapped declined to map a regular file on a recent kernel")
    return views


def joined(views: list[memoryview]) -> bytes:
    return b"".join(views)


def release(views: list[memoryview]) -> None:
    for v in views:
        v.release()


def physical(rec: Record) -> set[int]:
    """The device blocks `rec` owns."""
    return {b for s, n in rec.manifest.physical() for b in range(s, s + n)}


def device_bytes(store: ObjectStore, block: int, count: int) -> bytes:
    with open(store.device.path, "rb") as f:
        f.seek(block * BS)
        return f.read(count * BS)


def flip_byte(store: ObjectStore, block: int, at: int) -> None:
    """Damage one byte of a device block behind the store's back (a buffered write, so the
    page cache, which the mapping shows, has it)."""
    fd = os.open(store.device.path, os.O_RDWR)
    try:
        old = os.pread(fd, 1, block * BS + at)
        os.pwrite(fd, bytes([old[0] ^ 0x5A]), block * BS + at)
    finally:
        os.close(fd)


def device_block_of(rec: Record, logical: int) -> int:
    for _, start, _ in rec.manifest.runs(logical, logical + 1):
        assert start != HOLE
        return start
    raise AssertionError(f"no logical block {logical}")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ObjectStore]:
    s = ObjectStore.format(str(tmp_path / "dev"), size=32 * MiB)
    yield s
    s.close()


# -- read_mapped == get -------------------------------------------------------------------------


def _fill_models(store: ObjectStore) -> dict[str, bytes]:
    model: dict[str, bytes] = {
        "empty": b"",
        "tiny": b"abc",
        "one-block": blob("one", BS),
        "dense": blob("dense", 300_000 + 123),  # ~74 blocks, one extent, unaligned end
        "aligned": blob("aligned", 64 * BS),  # exactly the span-cache threshold
        "big": blob("big", 3 * 64 * BS + 5),
    }
    for name, body in model.items():
        store.put(body, name=name)
    # Sparse: written piecewise with gaps that were never written (holes, read as zeros).
    sparse = bytearray()
    for offset, size, seed in [(0, 5000, 1), (40_000, 100, 2), (400_000, 70_000, 3),
                               (300_000, BS, 4), (1_000_003, 9, 5)]:  # fmt: skip
        patch = blob(seed, size)
        store.write_at("sparse", offset, patch)
        sparse[len(sparse) :] = bytes(max(0, offset + size - len(sparse)))
        sparse[offset : offset + size] = patch
    model["sparse"] = bytes(sparse)
    # Patched in the middle: copy-on-write leaves the object in several extents.
    patched = bytearray(blob("patched", 200 * BS + 77))
    store.put(bytes(patched), name="patched")
    for offset, size, seed in [(10 * BS + 5, 3 * BS, 6), (150 * BS, 100, 7)]:
        patch = blob(seed, size)
        store.write_at("patched", offset, patch)
        patched[offset : offset + size] = patch
    model["patched"] = bytes(patched)
    return model


def test_read_mapped_equals_get(store: ObjectStore) -> None:
    model = _fill_models(store)
    rec = store.stat("sparse")
    assert any(s == HOLE for s, _ in rec.manifest.extents), "the sparse object has holes"
    assert len(store.stat("patched").manifest.extents) > 1

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(name=st.sampled_from(sorted(model)), data=st.data())
    def one_range(name: str, data: st.DataObject) -> None:
        body = model[name]
        offset = data.draw(st.integers(0, len(body)), label="offset")
        length = data.draw(st.integers(0, len(body) - offset + 2 * BS), label="length")
        with store.pinned():
            rec = store.stat(name)
            views = mapped(store, rec, offset, length)
            try:
                got = joined(views)
                assert all(v.readonly for v in views)
            finally:
                release(views)
        want = body[offset : offset + length]
        assert got == want
        assert got == bytes(store.get(name, offset=offset, length=length))

    one_range()


def test_read_mapped_edges(store: ObjectStore) -> None:
    model = _fill_models(store)
    with store.pinned():
        for name, body in model.items():
            rec = store.stat(name)
            assert joined(mapped(store, rec, 0, rec.size)) == body
            assert joined(mapped(store, rec, len(body), 0)) == b""  # zero-length at the end
            assert joined(mapped(store, rec, len(body), 10)) == b""  # clipped to nothing
            assert joined(mapped(store, rec, len(body) // 2, 0)) == b""
            with pytest.raises(InvalidArgument):
                store.read_mapped(rec, len(body) + 1, 1)
            if body:
                assert joined(mapped(store, rec, len(body) - 1, 5)) == body[-1:]
                # The same span twice (the second from the span-crc cache if >= 64 blocks).
                assert joined(mapped(store, rec, 1, rec.size)) == body[1:]
                assert joined(mapped(store, rec, 1, rec.size)) == body[1:]


def test_holes_read_as_zeros(store: ObjectStore) -> None:
    store.write_at("s", 100 * BS + 3, b"tail")
    with store.pinned():
        rec = store.stat("s")
        assert joined(mapped(store, rec, 0, 100 * BS + 3)) == bytes(100 * BS + 3)
        assert joined(mapped(store, rec, 100 * BS, 7)) == bytes(3) + b"tail"


# -- pins keep overwritten blocks from reuse -------------------------------------------------


OBJ = 4 * MiB + 1000  # 1025 blocks
OBJ_BLOCKS = -(-OBJ // BS)


def _fills(store: ObjectStore, n: int) -> list[Record]:
    """Put up to `n` objects the size of OBJ (fewer if the device fills up)."""
    out = []
    for i in range(n):
        try:
            store.put(blob(f"fill{i}", OBJ), name=f"fill/{i}")
        except NoSpace:
            break
        out.append(store.stat(f"fill/{i}"))
    return out


def test_control_without_a_pin_the_freed_blocks_are_reused(tmp_path: Path) -> None:
    """The premise of the next test: on this device, with no reader pinned, an overwrite's
    old blocks go to the very next object, and a view of them shows that object's bytes."""
    with ObjectStore.format(str(tmp_path / "dev"), size=24 * MiB) as store:
        old = blob("old", OBJ)
        store.put(old, name="obj")
        rec = store.stat("obj")
        views = mapped(store, rec, 0, rec.size)  # (outside a pin: what pins are there for)
        assert joined(views) == old
        store.put(blob("new", OBJ), name="obj")
        assert store.pins.retired_blocks == 0
        fills = _fills(store, 8)
        assert len(fills) >= 4, "without a pin the old blocks make room for another fill"
        reused = [f.name for f in fills if physical(f) & physical(rec)]
        assert reused, "no later object took the old blocks: the premise does not hold"
        assert joined(views) != old, "the old blocks were rewritten under the views"
        release(views)


def test_overwrite_under_a_pin_keeps_the_viewed_bytes(tmp_path: Path) -> None:
    with ObjectStore.format(str(tmp_path / "dev"), size=24 * MiB) as store:
        old, new = blob("old", OBJ), blob("new", OBJ)
        store.put(old, name="obj")
        with store.pinned():
            rec = store.stat("obj")
            views = mapped(store, rec, 0, rec.size)
            part = mapped(store, rec, MiB + 17, 2 * MiB)
            assert joined(views) == old

            store.put(new, name="obj")
            assert store.pins.retired_blocks == OBJ_BLOCKS
            fills = _fills(store, 8)
            assert len(fills) == 3, "the old blocks are not free: the device fills up sooner"
            with pytest.raises(NoSpace):
                store.put(b"x" * (OBJ_BLOCKS * BS), name="one-more")

            assert not [f.name for f in fills if physical(f) & physical(rec)]
            assert not physical(store.stat("obj")) & physical(rec)
            assert joined(views) == old, "the viewed blocks were rewritten while pinned"
            assert joined(part) == old[MiB + 17 : 3 * MiB + 17]
            free_pinned = store.free_blocks
            release(views)
            release(part)

        assert store.pins.retired_blocks == 0
        assert store.free_blocks == free_pinned + OBJ_BLOCKS, "the old blocks are free again"
        report = check(store)
        assert report.ok, report.problems
        assert bytes(store.get("obj")) == new
        for i, f in enumerate(fills):
            assert bytes(store.get(f.name)) == blob(f"fill{i}", OBJ)
        # ... and they really are reusable now: the next object of that size takes them.
        store.put(blob("after", OBJ), name="after")
        assert physical(store.stat("after")) == physical(rec)
        assert check(store).ok


def test_delete_under_a_pin_defers_the_free(store: ObjectStore) -> None:
    body = blob("d", 2 * MiB)
    store.put(body, name="d")
    free = store.free_blocks
    with store.pinned():
        rec = store.stat("d")
        views = mapped(store, rec, 0, rec.size)
        store.delete("d")  # no zeroing: it does not wait for the reader
        with pytest.raises(NotFound):
            store.stat("d")
        assert store.free_blocks == free, "freed under a pinned reader"
        assert store.pins.retired_blocks == 2 * MiB // BS
        store.put(blob("other", 2 * MiB), name="other")  # cannot land on d's blocks
        assert not physical(store.stat("other")) & physical(rec)
        assert joined(views) == body
        release(views)
        during = store.free_blocks
    assert store.pins.retired_blocks == 0
    assert store.free_blocks == during + 2 * MiB // BS, "d's blocks are free once unpinned"
    assert check(store).ok


# -- the span-crc cache -------------------------------------------------------------------------


SPAN = 100 * BS - 7  # 100 blocks: one span of >= 64 blocks


def test_damage_after_the_span_crc_is_cached_is_caught(store: ObjectStore) -> None:
    body = blob("span", SPAN)
    store.put(body, name="span")
    with store.pinned():
        rec = store.stat("span")
        assert len(rec.manifest.extents) == 1
        assert joined(mapped(store, rec, 0, rec.size)) == body  # verified block by block ...
        key = (rec.uuid, rec.version, 0, 100)
        assert key in store._span_crcs, "the span's crc should now be cached"
        assert joined(mapped(store, rec, 3, rec.size)) == body[3:]  # ... now by one crc
        block = device_block_of(rec, 37)
        flip_byte(store, block, 1234)
        with pytest.raises(IntegrityError, match="default/span: block 37"):
            store.read_mapped(rec, 0, rec.size)
        with pytest.raises(IntegrityError, match="block 37"):
            store.read_mapped(rec, 5, rec.size - 10)  # the same span, other bytes of it
        with pytest.raises(IntegrityError):
            store.read_mapped(rec, 36 * BS, 2 * BS)  # a short range through it
        assert joined(mapped(store, rec, 0, 37 * BS)) == body[: 37 * BS]  # the rest is fine
        assert joined(mapped(store, rec, 38 * BS, SPAN)) == body[38 * BS :]
        flip_byte(store, block, 1234)  # repaired: served again
        assert joined(mapped(store, rec, 0, rec.size)) == body


def test_damage_before_the_first_read_is_caught(store: ObjectStore) -> None:
    body = blob("fresh", SPAN)
    store.put(body, name="fresh")
    rec = store.stat("fresh")
    flip_byte(store, device_block_of(rec, 70), 4095)
    with store.pinned():
        rec = store.stat("fresh")
        with pytest.raises(IntegrityError, match="default/fresh: block 70"):
            store.read_mapped(rec, 0, rec.size)
        with pytest.raises(IntegrityError):
            store.read_mapped(rec, 70 * BS + 4095, 1)
        assert not store._span_crcs, "a span that failed is not cached"
        with pytest.raises(IntegrityError):  # and still fails the second time
            store.read_mapped(rec, 0, rec.size)
        assert joined(mapped(store, rec, 0, 70 * BS)) == body[: 70 * BS]


# -- zeroing on delete waits for pinned readers --------------------------------------------------


def test_delete_zero_waits_for_a_pinned_reader(store: ObjectStore) -> None:
    body = blob("z", 3 * MiB + 5)
    store.put(body, name="z")
    free = store.free_blocks
    holding, let_go, deleted = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, object] = {}
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            with store.pinned():
                rec = store.stat("z")
                seen["rec"] = rec
                views = mapped(store, rec, 0, rec.size)
                holding.set()
                let_go.wait(10)
                seen["data"] = joined(views)  # read at the end of the pin
                release(views)
        except BaseException as exc:
            errors.append(exc)
            holding.set()

    def deleter() -> None:
        try:
            store.delete("z", zero=True)
            deleted.set()
        except BaseException as exc:
            errors.append(exc)

    r = threading.Thread(target=reader, daemon=True)
    d = threading.Thread(target=deleter, daemon=True)
    r.start()
    try:
        assert holding.wait(5) and not errors, errors
        rec = seen["rec"]
        assert isinstance(rec, Record)
        extents: list[Extent] = list(rec.manifest.physical())
        d.start()
        assert not deleted.wait(0.5), "delete(zero=True) did not wait for the pinned reader"
        with pytest.raises(NotFound):  # committed: only the zeroing waits
            store.stat("z")
        for s, n in extents:
            assert device_bytes(store, s, n) != bytes(n * BS), "zeroed under a reader"
    finally:
        let_go.set()
    r.join(5)
    assert deleted.wait(5), "delete(zero=True) still waits after the reader let go"
    d.join(5)
    assert not errors, errors
    assert seen["data"] == body, "the reader's bytes changed while it was pinned"
    for s, n in extents:
        assert device_bytes(store, s, n) == bytes(n * BS), "the freed blocks were not zeroed"
    assert store.free_blocks == free + len(physical(rec))
    assert check(store).ok


def test_delete_zero_without_readers_does_not_wait(store: ObjectStore) -> None:
    store.put(blob("q", MiB), name="q")
    rec = store.stat("q")
    done = threading.Event()

    def deleter() -> None:
        store.delete("q", zero=True)
        done.set()

    t = threading.Thread(target=deleter, daemon=True)
    t.start()
    assert done.wait(5)
    t.join(5)
    for s, n in rec.manifest.physical():
        assert device_bytes(store, s, n) == bytes(n * BS)


def test_delete_zero_does_not_wait_for_a_reader_pinned_after_it(store: ObjectStore) -> None:
    store.put(blob("b", MiB), name="b")
    done = threading.Event()
    first_in, first_go = threading.Event(), threading.Event()
    second_in, second_go = threading.Event(), threading.Event()

    def reader(inside: threading.Event, go: threading.Event) -> None:
        with store.pinned():
            inside.set()
            go.wait(10)

    first = threading.Thread(target=reader, args=(first_in, first_go), daemon=True)
    second = threading.Thread(target=reader, args=(second_in, second_go), daemon=True)

    def delete() -> None:
        store.delete("b", zero=True)
        done.set()

    deleter = threading.Thread(target=delete, daemon=True)
    first.start()
    try:
        assert first_in.wait(5)
        epoch = store.pins._epoch
        deleter.start()
        deadline = time.monotonic() + 5
        while store.pins._epoch == epoch:  # the delete is in wait_readers now
            assert time.monotonic() < deadline, "the delete never started waiting"
            time.sleep(0.001)
        second.start()
        assert second_in.wait(5)
        assert not done.wait(0.3), "the delete should wait for the first reader"
        first_go.set()
        assert done.wait(5), "the delete waits for a reader that pinned after it began"
    finally:
        first_go.set()
        second_go.set()
    for t in (first, second, deleter):
        t.join(5)
    assert check(store).ok


# -- the mapping budget ------------------------------------------------------------------------


def _rss_file() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise KeyError("RssFile")


def test_the_mapping_budget_bounds_resident_pages_and_keeps_data_readable(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once MAP_BUDGET bytes have been mapped, the mapping's page-table entries are dropped:
    the process's resident file pages stay bounded, and views in use (or read again) still
    give the right bytes."""
    monkeypatch.setattr(blockstore, "MAP_BUDGET", 4 * MiB)
    bodies = {f"m{i}": blob(f"m{i}", 3 * MiB + i) for i in range(8)}
    for name, body in bodies.items():
        store.put(body, name=name)
    base = _rss_file()
    with store.pinned():
        kept = mapped(store, store.stat("m0"), 0, 3 * MiB)
        for _ in range(3):
            for name, body in bodies.items():
                views = mapped(store, store.stat(name), 0, len(body))
                assert joined(views) == body
                release(views)
                assert _rss_file() - base < 16 * MiB, "mapped pages were never dropped"
        assert joined(kept) == bodies["m0"][: 3 * MiB]  # dropped under it: faulted back in
        release(kept)
    sparse = b"x" + bytes(50 * BS - 1) + b"y"
    store.put(b"x", name="sparse")
    store.write_at("sparse", 50 * BS, b"y")
    with store.pinned():
        assert joined(mapped(store, store.stat("sparse"), 0, len(sparse))) == sparse
    assert check(store).ok
