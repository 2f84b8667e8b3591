"""Races and failure paths of the ObjectStore: each was a bug once, and stays fixed."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shoal.engine import ObjectStore, check
from shoal.engine.objectstore import MAX_OBJECT_SIZE
from shoal.errors import Conflict, FormatError, IntegrityError, InvalidArgument, NoSpace


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = ObjectStore.format(str(tmp_path / "dev"), size=32 << 20)
    yield s
    s.close()


def test_write_at_refuses_an_object_deleted_and_made_anew(store: ObjectStore) -> None:
    """A write-at that read the old object must not commit over a new one of the same name
    and version (it would point at the old object's freed blocks)."""
    store.put(b"a" * 20_000, name="x")
    real_write = store.blocks.write
    raced = []

    def write_and_race(extents: Any, data: Any) -> Any:
        if not raced:
            raced.append(1)
            store.delete("x")
            store.put(b"b" * 20_000, name="x")  # version 1 again, other blocks
            store.put(b"c" * 30_000, name="filler")  # may reuse the old object's blocks
        return real_write(extents, data)

    store.blocks.write = write_and_race  # type: ignore[method-assign]
    store.write_at("x", 5000, b"PATCH")
    store.blocks.write = real_write  # type: ignore[method-assign]
    expected = bytearray(b"b" * 20_000)
    expected[5000:5005] = b"PATCH"
    assert store.get("x") == expected, "the patch lands on the object that exists now"
    report = check(store)
    assert report.ok, report.problems


def test_unaligned_write_at_racing_puts_never_reports_corruption(store: ObjectStore) -> None:
    names = [f"n{i}" for i in range(4)]
    for n in names:
        store.put(os.urandom(9000), name=n)
    stop = time.monotonic() + 1.5
    errors: list[BaseException] = []

    def patcher() -> None:
        rng = random.Random(1)
        while time.monotonic() < stop:
            try:
                store.write_at(rng.choice(names), rng.randrange(1, 8000), os.urandom(100))
            except Conflict:
                pass  # overwritten faster than it could patch: refused, and said so
            except BaseException as exc:
                errors.append(exc)
                return

    def putter() -> None:
        rng = random.Random(2)
        while time.monotonic() < stop:
            store.put(os.urandom(rng.randrange(100, 9000)), name=rng.choice(names))

    threads = [threading.Thread(target=f) for f in (patcher, patcher, putter, putter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert check(store).ok


def test_a_writer_whose_write_failed_cannot_commit(tmp_path: Path) -> None:
    store = ObjectStore.format(str(tmp_path / "small"), size=1 << 20)
    try:
        free = store.free_blocks
        w = store.writer(name="w")
        w.write(b"x" * 5000)
        with pytest.raises(NoSpace):
            w.write(b"y" * (2 << 20))
        with pytest.raises(InvalidArgument):
            w.write(b"y" * 100)  # a retry would store duplicated bytes
        with pytest.raises(InvalidArgument, match="nothing stored"):
            w.commit()
        assert store.free_blocks == free
        assert check(store).ok
    finally:
        store.close()


def test_streaming_writer_fits_when_little_space_is_left(tmp_path: Path) -> None:
    store = ObjectStore.format(str(tmp_path / "small"), size=1 << 20)
    try:
        store.put(b"z" * ((store.free_blocks - 100) * 4096), name="filler")
        w = store.writer(name="last")  # size unknown: reserves in steps
        w.write(b"q" * 40_000)
        w.commit()
        assert store.get("last") == b"q" * 40_000
    finally:
        store.close()


def test_objects_have_a_size_limit(store: ObjectStore) -> None:
    with pytest.raises(InvalidArgument, match="at most"):
        store.write_at("huge", MAX_OBJECT_SIZE, b"x")
    with pytest.raises(InvalidArgument):
        store.writer(name="huge", size=MAX_OBJECT_SIZE + 1)
    store.put(b"bystander", name="b")
    assert store.get("b") == b"bystander"


def test_reader_connections_end_with_their_threads(store: ObjectStore) -> None:
    store.put(b"x", name="x")
    before = len(os.listdir("/proc/self/fd"))
    threads = [threading.Thread(target=store.stat, args=("x",)) for _ in range(200)]
    for t in threads:
        t.start()
        t.join()
    assert len(os.listdir("/proc/self/fd")) < before + 20


@pytest.mark.parametrize("what", ["junk file", "directory"])
def test_a_key_store_that_is_not_one_is_refused(tmp_path: Path, what: str) -> None:
    dev = str(tmp_path / "dev")
    ObjectStore.format(dev, size=1 << 20).close()
    keys = tmp_path / "bad"
    if what == "directory":
        keys.mkdir()
    else:
        keys.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(FormatError):
        ObjectStore.open(dev, str(keys))


def test_cached_small_read_detects_damage_after_races(store: ObjectStore) -> None:
    store.put(b"k" * 100, name="k")
    assert store.get("k") == b"k" * 100
    block = store.stat("k").manifest.extents[0][0]
    fd = os.open(store.device.path, os.O_RDWR)
    try:
        os.pwrite(fd, b"K", block * 4096)
    finally:
        os.close(fd)
    with pytest.raises(IntegrityError):
        store.get("k")
