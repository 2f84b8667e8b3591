"""ObjectStore against a dict model (hypothesis stateful), and the operations one by one."""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shoal.engine import ObjectStore, check
from shoal.errors import (
    DeviceBusy,
    Forbidden,
    FormatError,
    InvalidArgument,
    NoSpace,
    NotFound,
)

NAMES = st.sampled_from(["a", "b", "dir/c", "dir/d", "ünï", "e"])


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="shoal-model-")
        self.dev = str(Path(self.dir) / "dev")
        self.store = ObjectStore.format(self.dev, size=8 << 20)
        self.model: dict[str, bytes] = {}

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir)

    @rule(name=NAMES, seed=st.integers(), size=st.sampled_from([0, 1, 4095, 4096, 4097, 20000]))
    def put(self, name: str, seed: int, size: int) -> None:
        data = blob(seed, size)
        key = self.store.put(data, name=name)
        assert key.size == size
        self.model[name] = data

    @rule(name=NAMES, seed=st.integers(), chunks=st.lists(st.integers(1, 9000), max_size=5))
    def put_streamed(self, name: str, seed: int, chunks: list[int]) -> None:
        data = blob(seed, sum(chunks))
        with self.store.writer(name=name) as w:
            pos = 0
            for n in chunks:
                w.write(data[pos : pos + n])
                pos += n
            w.commit()
        self.model[name] = data

    @rule(name=NAMES)
    def get(self, name: str) -> None:
        if name in self.model:
            assert self.store.get(name) == self.model[name]
        else:
            with pytest.raises(NotFound):
                self.store.get(name)

    @rule(name=NAMES, offset=st.integers(0, 25000), length=st.integers(0, 9000))
    def get_range(self, name: str, offset: int, length: int) -> None:
        if name not in self.model:
            return
        data = self.model[name]
        if offset > len(data):
            with pytest.raises(InvalidArgument):
                self.store.get(name, offset=offset, length=length)
        else:
            got = self.store.get(name, offset=offset, length=length)
            assert got == data[offset : offset + length]

    @rule(name=NAMES, offset=st.integers(0, 30000), seed=st.integers(), size=st.integers(1, 9000))
    def write_at(self, name: str, offset: int, seed: int, size: int) -> None:
        patch = blob(seed, size)
        self.store.write_at(name, offset, patch)
        old = self.model.get(name, b"")
        new = bytearray(old.ljust(offset, b"\x00"))
        new[offset : offset + size] = patch
        self.model[name] = bytes(new)

    @rule(name=NAMES, how=st.sampled_from(["plain", "zero", "discard"]))
    def delete(self, name: str, how: str) -> None:
        if name in self.model:
            self.store.delete(name, zero=how == "zero", discard=how == "discard")
            del self.model[name]
        else:
            with pytest.raises(NotFound):
                self.store.delete(name)

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = ObjectStore.open(self.dev)

    @precondition(lambda self: bool(self.model))
    @rule()
    def listing(self) -> None:
        names = [r.name for r in self.store.list()]
        assert names == sorted(self.model)
        assert [r.name for r in self.store.list(prefix="dir/")] == sorted(
            n for n in self.model if n.startswith("dir/")
        )

    @invariant()
    def sizes_match(self) -> None:
        for name, data in self.model.items():
            assert self.store.stat(name).size == len(data)

    @invariant()
    def allocation_is_exact(self) -> None:
        report = check(self.store)
        assert report.ok, report.problems
        assert report.objects == len(self.model)


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    s = ObjectStore.format(str(tmp_path / "dev"), size=16 << 20)
    yield s  # type: ignore[misc]
    s.close()


def test_put_returns_an_objkey_with_blake3(store: ObjectStore) -> None:
    import blake3

    key = store.put(b"hello world", namespace="ns", name="greeting")
    assert key.size == 11
    assert key.hash == blake3.blake3(b"hello world").digest()
    assert store.locate(key.uuid).name == "greeting"
    assert store.locate(str(key.uuid)).namespace == "ns"
    unnamed = store.put(b"anonymous")
    assert store.get(str(unnamed.uuid)) == b"anonymous"


def test_namespaces_are_separate(store: ObjectStore) -> None:
    store.put(b"1", namespace="x", name="k")
    store.put(b"2", namespace="y", name="k")
    assert store.get("k", namespace="x") == b"1"
    assert store.get("k", namespace="y") == b"2"
    assert sorted(store.namespaces()) == ["x", "y"]
    with pytest.raises(NotFound):
        store.get("k")


def test_overwrite_bumps_version_and_frees_old_blocks(store: ObjectStore) -> None:
    store.put(b"a" * 100_000, name="o")
    free = store.free_blocks
    store.put(b"b" * 100_000, name="o")
    assert store.stat("o").version == 2
    assert store.free_blocks == free
    assert store.get("o") == b"b" * 100_000


def test_list_paginates(store: ObjectStore) -> None:
    names = [f"p/{i:03}" for i in range(25)] + ["q"]
    for n in names:
        store.put(n.encode(), name=n)
    seen: list[str] = []
    after = ""
    while page := store.list(prefix="p/", start_after=after, limit=10):
        seen += [r.name for r in page]
        after = page[-1].name
    assert seen == names[:25]


def test_references_delete_with_the_last_one(store: ObjectStore) -> None:
    a, b = uuid.uuid4().bytes, uuid.uuid4().bytes
    store.put(b"shared", name="s", refs=[a])
    assert store.add_refs("s", [b, a]) == (a, b)
    assert store.remove_refs("s", [a]) == (b,)
    assert store.get("s") == b"shared"
    assert store.remove_refs("s", [b]) == ()
    with pytest.raises(NotFound):
        store.stat("s")
    with pytest.raises(InvalidArgument):
        store.add_refs("x", [b"short"])


def test_permanent_objects_cannot_be_deleted_or_replaced(store: ObjectStore) -> None:
    ref = uuid.uuid4().bytes
    store.put(b"forever", name="p", permanent=True, refs=[ref])
    with pytest.raises(Forbidden):
        store.delete("p")
    with pytest.raises(Forbidden):
        store.put(b"other", name="p")
    with pytest.raises(Forbidden):
        store.write_at("p", 0, b"x")
    assert store.remove_refs("p", [ref]) == ()
    assert store.get("p") == b"forever", "a permanent object outlives its last reference"


def test_write_at_grows_sparsely(store: ObjectStore) -> None:
    free = store.free_blocks
    store.write_at("img", 100 << 20 >> 4, b"end")  # 6.25 MiB in: only one block allocated
    assert store.free_blocks == free - 1
    rec = store.stat("img")
    assert rec.size == (100 << 20 >> 4) + 3
    assert rec.hash is None, "an object changed in place carries no whole-content hash"
    assert store.get("img", offset=4096 * 7, length=10) == bytes(10)
    with pytest.raises(NotFound):
        store.write_at("nothing", 0, b"x", create=False)


def test_zero_length_write_at_does_not_grow(store: ObjectStore) -> None:
    store.put(b"abc", name="z")
    store.write_at("z", 10_000, b"")
    assert store.stat("z").size == 3


def test_truncated_streamed_upload_stores_nothing(store: ObjectStore) -> None:
    free = store.free_blocks
    w = store.writer(name="t", size=10_000)
    w.write(b"x" * 6000)
    with pytest.raises(InvalidArgument, match="6000 of 10000"):
        w.commit()
    with pytest.raises(NotFound):
        store.stat("t")
    assert store.free_blocks == free
    with pytest.raises(InvalidArgument):
        store.writer(name="t", size=10).write(b"x" * 11)


def test_no_space_takes_nothing(store: ObjectStore) -> None:
    free = store.free_blocks
    with pytest.raises(NoSpace):
        store.put(bytes((free + 1) * 4096), name="huge")
    assert store.free_blocks == free
    with pytest.raises(NotFound):
        store.stat("huge")


@pytest.mark.parametrize("name", ["", "x" * 5000, "a\x00b"])
def test_bad_names_are_refused(store: ObjectStore, name: str) -> None:
    with pytest.raises(InvalidArgument):
        store.put(b"x", name=name)


def test_concurrent_writers_share_flushes(store: ObjectStore) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(40):
                store.put(blob(t * 1000 + i, 4096), name=f"w{t}/{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    stats = store.stats
    assert stats["changes"] == 640
    assert stats["groups"] < stats["changes"], "group commit shares key store commits"
    for t in range(16):
        assert store.get(f"w{t}/39") == blob(t * 1000 + 39, 4096)
    assert check(store).ok


def test_readers_see_whole_versions_during_overwrites(store: ObjectStore) -> None:
    versions = [bytes([v]) * 40_000 for v in range(1, 30)]
    store.put(versions[0], name="hot")
    stop = threading.Event()
    bad: list[bytes] = []

    def reader() -> None:
        while not stop.is_set():
            data = bytes(store.get("hot"))
            if data not in versions:
                bad.append(data[:16])

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for r in readers:
        r.start()
    for v in versions[1:]:
        store.put(v, name="hot")
        store.put(b"churn" * 3000, name="churn")  # reuses the blocks just freed
    stop.set()
    for r in readers:
        r.join()
    assert not bad


def test_device_is_locked_and_keystore_paired(tmp_path: Path) -> None:
    dev = str(tmp_path / "d")
    with ObjectStore.format(dev, size=1 << 20), pytest.raises(DeviceBusy):
        ObjectStore.open(dev)
    other = str(tmp_path / "o")
    ObjectStore.format(other, size=1 << 20).close()
    with pytest.raises(FormatError, match="belongs to device"):
        ObjectStore.open(dev, other + ".keys")


def test_format_refuses_foreign_and_existing_devices(tmp_path: Path) -> None:
    dev = tmp_path / "ext"
    raw = bytearray(1 << 20)
    raw[1080:1082] = b"\x53\xef"
    dev.write_bytes(raw)
    with pytest.raises(FormatError, match="ext2/3/4"):
        ObjectStore.open(str(dev))
    with pytest.raises(FormatError, match="use --force"):
        ObjectStore.format(str(dev))
    ObjectStore.format(str(dev), force=True).close()
    with pytest.raises(InvalidArgument, match="already exists"):
        ObjectStore.format(str(dev))
    empty = tmp_path / "zeros"
    empty.write_bytes(bytes(1 << 16))
    with pytest.raises(FormatError, match="unformatted"):
        ObjectStore.open(str(empty))
    with pytest.raises(FormatError, match="does not exist"):
        ObjectStore.open(str(tmp_path / "missing"))


def test_other_format_version_is_refused(tmp_path: Path) -> None:
    from dataclasses import replace

    from shoal.engine.device import BlockDevice

    dev = str(tmp_path / "v")
    ObjectStore.format(dev, size=1 << 20).close()
    bd = BlockDevice.open(dev)
    newer = replace(bd.superblock, version=bd.superblock.version + 1)
    bd.pwritev([newer.encode()], 0)
    bd.close()
    with pytest.raises(FormatError, match=r"format version 2; this shoal reads version 1"):
        ObjectStore.open(dev)


def test_format_reserves_a_new_files_space_unless_sparse(tmp_path: Path) -> None:
    import os

    full, thin = tmp_path / "full", tmp_path / "thin"
    ObjectStore.format(str(full), size=8 << 20).close()
    ObjectStore.format(str(thin), size=8 << 20, sparse=True).close()
    assert os.stat(full).st_blocks * 512 >= 8 << 20
    assert os.stat(thin).st_blocks * 512 < 1 << 20


@pytest.mark.parametrize("size", [100, 4096, 10_000])
def test_cached_reads_still_verify_every_block(store: ObjectStore, size: int) -> None:
    import os

    from shoal.errors import IntegrityError

    store.put(blob(size, size), name="v")
    assert store.get("v") == blob(size, size)  # now cached, small ones on the one-pread path
    block = store.stat("v").manifest.extents[0][0]
    fd = os.open(store.device.path, os.O_RDWR)
    try:
        old = os.pread(fd, 1, block * 4096 + 7)
        os.pwrite(fd, bytes([old[0] ^ 0xFF]), block * 4096 + 7)
    finally:
        os.close(fd)
    with pytest.raises(IntegrityError, match="default/v"):
        store.get("v")
    with pytest.raises(IntegrityError):
        store.get("v", offset=0, length=8)


@pytest.mark.parametrize("prefix", ["a", "\ud7ff", "\U0010ffff", "z\U0010ffff"])
def test_listing_by_prefix_at_the_edges_of_unicode(store: ObjectStore, prefix: str) -> None:
    names = [prefix, prefix + "x", prefix + "\U0010ffff", "\ue000", "b"]
    for n in dict.fromkeys(names):
        store.put(b".", name=n)
    got = [r.name for r in store.list(prefix=prefix)]
    assert got == sorted(n for n in dict.fromkeys(names) if n.startswith(prefix))


def test_put_many_commits_a_batch_and_refuses_each_bad_one(store: ObjectStore) -> None:
    store.put(b"old", name="p", permanent=True)
    store.put(b"v1", name="dup")
    before = store.stats["groups"]
    items = [
        ("default", "a", b"A" * 5000, (), False, None),
        ("default", "", b"bad name", (), False, None),
        ("default", "p", b"replace a permanent one", (), False, None),
        ("default", "dup", b"v2", (), False, None),
        ("default", "dup", b"v3", (), False, None),  # the later one in the same batch wins
        ("default", None, b"unnamed", (), False, None),
        ("default", "big", bytes(100_000), (), False, None),
    ]
    out = store.put_many(items)
    assert store.stats["groups"] == before + 1, "one group for the whole batch"
    assert [type(r).__name__ for r in out] == [
        "Record", "InvalidArgument", "Forbidden", "Record", "Record", "Record", "InvalidArgument",
    ]  # fmt: skip
    assert store.get("a") == b"A" * 5000
    assert store.get("p") == b"old"
    assert store.get("dup") == b"v3" and store.stat("dup").version == 3
    assert store.get(out[5].name) == b"unnamed"  # type: ignore[union-attr]
    report = check(store)
    assert report.ok, report.problems
