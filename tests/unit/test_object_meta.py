"""An object's metadata (Record.meta): kept with it by the engine, through every change that
keeps the object, in key stores made before it existed too."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.engine import ObjectStore
from shoal.engine.keystore import MAX_META, SCHEMA_VERSION, encode_meta, meta_digest
from shoal.errors import InvalidArgument
from shoal.index import MD5_META, md5_of, of_object

META = {"content-type": "text/plain", "md5": "5eb63bbbe01eeed093cb22bb8f5acdc3", "x": "ü"}

# the key store's schema before objects had metadata (schema 1), verbatim
_SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    uuid      BLOB NOT NULL UNIQUE,
    size      INTEGER NOT NULL,
    hash      BLOB,
    version   INTEGER NOT NULL,
    flags     INTEGER NOT NULL,
    refs      BLOB NOT NULL,
    extents   BLOB NOT NULL,
    crcs      BLOB NOT NULL,
    ctime     REAL NOT NULL,
    mtime     REAL NOT NULL,
    PRIMARY KEY (namespace, name)
) WITHOUT ROWID;
"""
_COLS_1 = "namespace, name, uuid, size, hash, version, flags, refs, extents, crcs, ctime, mtime"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ObjectStore]:
    s = ObjectStore.format(str(tmp_path / "dev"), size=16 << 20)
    yield s
    s.close()


def test_put_stat_list_locate_and_page_give_the_meta_back(store: ObjectStore) -> None:
    key = store.put(b"hello world", name="a", meta=META)
    store.put(b"no meta", name="b")
    assert store.stat("a").meta == META
    assert store.stat("b").meta == {}
    assert [r.meta for r in store.list()] == [META, {}]
    assert store.locate(key.uuid).meta == META
    assert [r.meta for r in store.page()] == [META, {}]
    assert store.head("a") is not None and store.head("a").meta == META


def test_the_meta_survives_a_reopen(tmp_path: Path) -> None:
    dev = str(tmp_path / "dev")
    with ObjectStore.format(dev, size=16 << 20) as s:
        s.put(b"x" * 5000, name="a", meta=META)
    with ObjectStore.open(dev) as s:
        assert s.stat("a").meta == META


def test_writer_takes_the_meta_at_creation_or_before_commit(store: ObjectStore) -> None:
    with store.writer(name="w", meta={"a": "1"}) as w:
        w.write(b"x" * 10000)
        w.commit()
    assert store.stat("w").meta == {"a": "1"}
    with store.writer(name="w2", meta={"a": "1"}) as w:
        w.write(b"streamed")
        w.set_meta({"md5": "known at the end"})
        w.commit()
    assert store.stat("w2").meta == {"md5": "known at the end"}
    assert w.record is not None and w.record.meta == {"md5": "known at the end"}


def test_put_many_takes_each_ones_meta(store: ObjectStore) -> None:
    items = [("default", n, b"v", (), False, None) for n in ("p", "q", "r")]
    out = store.put_many(items, [{"n": "p"}, None, {"big": "x" * MAX_META}])
    assert isinstance(out[2], InvalidArgument)  # (refused alone; the others are stored)
    assert store.stat("p").meta == {"n": "p"}
    assert store.stat("q").meta == {}
    assert store.put_many([("default", "s", b"v", (), False, None)])[0].meta == {}


def test_a_new_put_replaces_the_meta(store: ObjectStore) -> None:
    store.put(b"1", name="a", meta=META)
    store.put(b"2", name="a", meta={"other": "y"})
    assert store.stat("a").meta == {"other": "y"}
    store.put(b"3", name="a")
    assert store.stat("a").meta == {}


def test_write_at_and_reference_changes_keep_the_meta(store: ObjectStore) -> None:
    store.put(b"a" * 9000, name="img", meta=META)
    store.write_at("img", 4096, b"patched")
    rec = store.stat("img")
    assert rec.version == 2 and rec.meta == META
    store.write_at("img", 20000, b"grown")
    assert store.stat("img").meta == META
    ref = bytes(range(16))
    store.add_refs("img", [ref])
    assert store.stat("img").meta == META
    assert store.stat("img").refs == (ref,)
    store.write_at("fresh", 0, b"made by write-at")
    assert store.stat("fresh").meta == {}


def test_meta_limits_and_types_are_refused_with_invalid_argument(store: ObjectStore) -> None:
    assert len(encode_meta({"k": "v" * (MAX_META - 20)})) <= MAX_META
    store.put(b"ok", name="at-limit", meta={"k": "v" * (MAX_META - 20)})
    for bad in ({"k": "v" * MAX_META}, {"k": b"bytes"}, {1: "int key"}, {"k": None}):
        with pytest.raises(InvalidArgument):
            store.put(b"x", name="bad", meta=bad)
        with pytest.raises(InvalidArgument):
            store.writer(name="bad", meta=bad)
    with store.writer(name="bad") as w, pytest.raises(InvalidArgument):
        w.set_meta({"k": "v" * MAX_META})
    with pytest.raises(Exception, match="not found"):
        store.stat("bad")
    free = store.free_blocks
    with pytest.raises(InvalidArgument):  # (refused before any block is taken)
        store.put(b"y" * 100_000, name="bad", meta={"k": "v" * MAX_META})
    assert store.free_blocks == free


def test_equal_meta_encodes_alike_whatever_the_order() -> None:
    assert encode_meta({"a": "1", "b": "2"}) == encode_meta({"b": "2", "a": "1"})
    assert encode_meta({}) == encode_meta(None) == b""
    assert meta_digest({"a": "1"}) != meta_digest({"a": "2"})
    assert meta_digest({}) == meta_digest({})


def _downgrade_to_schema_1(keys: str) -> None:
    """Rewrite a key store as the shoal before metadata made it: schema 1's table, verbatim."""
    conn = sqlite3.connect(keys, isolation_level=None)
    schema = _SCHEMA_1.replace("IF NOT EXISTS meta", "IF NOT EXISTS unused_meta")
    conn.executescript(f"""
        BEGIN;
        ALTER TABLE objects RENAME TO objects_new;
        {schema}
        INSERT INTO objects SELECT {_COLS_1} FROM objects_new;
        DROP TABLE objects_new;
        DROP TABLE unused_meta;
        UPDATE meta SET value = 1 WHERE key = 'schema_version';
        COMMIT;
    """)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(objects)")]
    assert "meta" not in cols
    conn.close()


def test_a_key_store_of_schema_1_is_migrated_when_opened(tmp_path: Path) -> None:
    dev = str(tmp_path / "dev")
    with ObjectStore.format(dev, size=16 << 20) as s:
        s.put(b"old object", name="old")
        s.put(b"x" * 20000, name="big")
    _downgrade_to_schema_1(dev + ".keys")
    with ObjectStore.open(dev) as s:
        assert s.stat("old").meta == {}
        assert s.get("old") == b"old object"
        assert bytes(s.get("big")) == b"x" * 20000
        s.put(b"new object", name="new", meta=META)
        assert s.stat("new").meta == META
        s.write_at("old", 0, b"OLD")
        assert s.get("old") == b"OLD object"
    conn = sqlite3.connect(dev + ".keys")
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    conn.close()
    assert version == SCHEMA_VERSION == 2
    with ObjectStore.open(dev) as s:  # (and opens again as schema 2)
        assert s.stat("new").meta == META
        assert s.stat("old").meta == {}


def test_disk_put_and_stat_show_the_meta(tmp_path: Path) -> None:
    dev = str(tmp_path / "dev")

    def shoal(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "shoal.cli", "disk", *args], text=True,
                           capture_output=True, check=True)  # fmt: skip
        return r.stdout

    shoal("format", dev, "--size", "16M")
    shoal("put", dev, "a", "--data-literal", "hi", "--meta", "content-type=text/plain",
          "--meta", "md5=49f68a5c8493ec2c0bf489821c21fc3b")  # fmt: skip
    info = json.loads(shoal("stat", dev, "a", "--json"))
    assert info["meta"] == {"content-type": "text/plain",
                            "md5": "49f68a5c8493ec2c0bf489821c21fc3b"}  # fmt: skip
    assert "content-type" in shoal("stat", dev, "a")


def test_a_rebuild_entry_takes_the_md5_and_the_rest_from_the_objects_meta() -> None:
    md5 = bytes(range(16))
    e = of_object(5, b"h" * 32, 7, 1.5, {MD5_META: md5.hex(), "content-type": "text/plain"})
    assert (e.md5, e.meta, e.version, e.size) == (md5, {"content-type": "text/plain"}, 7, 5)
    assert of_object(5, None, 7, 1.5, {}).md5 is None
    for bad in ("", "xyz", "0" * 31, "g" * 32):
        assert md5_of({MD5_META: bad}) is None
