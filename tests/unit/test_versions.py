"""The engine's part in replication: versions given by the primary, tombstones, a floor for
new versions, dropping a copy, and paging over every row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.engine import ObjectStore, check
from shoal.errors import Conflict, NotFound, Superseded


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ObjectStore]:
    s = ObjectStore.format(str(tmp_path / "dev"), size=16 << 20)
    s.tombstones = True
    yield s
    s.close()


def test_a_replicated_put_takes_the_primarys_version_and_an_older_one_is_superseded(
    store: ObjectStore,
) -> None:
    store.put(b"v7", name="x", version=7)
    assert store.stat("x").version == 7
    with pytest.raises(Superseded) as info:
        store.put(b"v5 arrives late", name="x", version=5)
    assert info.value.version == 7
    with pytest.raises(Superseded):
        store.put(b"v7 again", name="x", version=7)  # the same version: nothing to do
    assert store.get("x") == b"v7"
    store.put(b"v7 repaired", name="x", version=7, force=True)  # a repair replaces it
    assert store.get("x") == b"v7 repaired" and store.stat("x").version == 7
    big = bytes(range(256)) * 1024  # streamed through a writer, not the leader's small path
    with store.writer("default", "x", size=len(big), version=9) as w:
        w.write(big)
        w.commit()
    assert w.record is not None and w.record.version == 9
    assert store.get("x") == big
    assert check(store).ok, "a refused change gives its blocks back"
    free = store.free_blocks
    with pytest.raises(Superseded):
        store.put(big, name="x", version=8)
    assert store.free_blocks == free, "the blocks of a superseded put are not leaked"


def test_a_delete_leaves_a_tombstone_that_outranks_older_copies(store: ObjectStore) -> None:
    store.put(b"data", name="x", version=3)
    previous, tomb = store.remove("x")
    assert previous is not None and previous.version == 3
    assert tomb is not None and tomb.deleted and tomb.version == 4
    with pytest.raises(NotFound):
        store.stat("x")
    assert store.list() == [] and store.namespaces() == []
    assert store.head("x") == tomb  # recovery sees it
    with pytest.raises(Superseded):
        store.put(b"a stale copy", name="x", version=3)  # cannot come back
    store.put(b"newer", name="x", version=5)  # a later write can
    assert store.get("x") == b"newer"
    # a replicated delete of an object this copy never had is recorded all the same
    _, t2 = store.remove("never", version=9)
    assert t2 is not None and store.head("never") == t2
    with pytest.raises(Superseded):
        store.put(b"old", name="never", version=8)
    with pytest.raises(NotFound):
        store.delete("never")  # a client's delete of a deleted object
    assert check(store).ok


def test_new_versions_are_at_least_the_floor(store: ObjectStore) -> None:
    store.put(b"a", name="x")
    assert store.stat("x").version == 1
    store.version_floor = lambda: 5 << 24
    store.put(b"b", name="x")
    assert store.stat("x").version == 5 << 24
    store.put(b"c", name="x")
    assert store.stat("x").version == (5 << 24) + 1
    store.write_at("x", 1, b"!")
    assert store.stat("x").version == (5 << 24) + 2 and store.get("x") == b"c!"
    store.add_refs("x", [b"r" * 16])
    assert store.stat("x").version == (5 << 24) + 3
    assert store.remove_refs("x", [b"r" * 16]) == ()  # the last one: deleted, a tombstone
    head = store.head("x")
    assert head is not None and head.deleted and head.version == (5 << 24) + 4
    store.write_at("x", 0, b"again")  # a write after the delete goes past the tombstone
    assert store.stat("x").version == (5 << 24) + 5


def test_drop_forgets_a_copy_only_at_its_version(store: ObjectStore) -> None:
    store.put(b"moved away", name="x", version=4)
    with pytest.raises(Conflict):
        store.drop("x", version=3)  # changed since it was looked at
    store.drop("x", version=4)
    assert store.head("x") is None, "no tombstone: the object lives on elsewhere"
    _, tomb = store.remove("y", version=2)
    assert tomb is not None
    store.drop("y", version=2)
    assert store.head("y") is None
    assert check(store).ok


def test_page_walks_every_row_tombstones_included(store: ObjectStore) -> None:
    names = [f"n{i:03d}" for i in range(25)]
    for n in names:
        store.put(n.encode(), namespace="b", name=n)
    store.put(b"", namespace="a", name="z")
    store.remove("n010", namespace="b")
    seen, after = [], ("", "")
    while True:
        page = store.page(after, 7)
        seen += [(r.namespace, r.name, r.deleted) for r in page]
        if len(page) < 7:
            break
        after = (page[-1].namespace, page[-1].name)
    assert seen == [("a", "z", False)] + [("b", n, n == "n010") for n in names]
    assert [r.name for r in store.list("b")] == [n for n in names if n != "n010"]
