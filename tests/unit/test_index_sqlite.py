"""The name index on SQLite, and the contract every backend keeps (`IndexContract`, run here
on SQLite and by tests/integration/test_index_backends.py on Redis and PostgreSQL): newer
versions win, tombstones included; hide then delete; bytewise listings with prefix, start and
limit among tombstones; rebuild; drop; namespaces; the key limit; the URL forms; an entry's
MD5 (kept with its version, amended later), and a file made before the MD5 existed."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import InvalidArgument
from shoal.index import MAX_NAME, Entry, Index, open_index, tombstone
from shoal.index.sqlite import SqliteIndex

NS = "pool"
H = bytes(range(32))
M1, M2 = bytes(range(16)), bytes(range(100, 116))  # MD5s

# keys whose bytewise order differs from a naive one: prefixes of others, a space and a slash
# (both below letters), upper case below lower, and multi-byte UTF-8 above ASCII
KEYS = [
    "a", "a b", "a/", "a/b", "a/b/c", "a/bc", "a/é", "a/z", "a/😀", "ab", "b", "Z", "z",
    "é", "éa", "日本", "😀", "~",
]  # fmt: skip


def entry(version: int, size: int = 1, mtime: float | None = None, **meta: str) -> Entry:
    return Entry(size, H, version, time.time() if mtime is None else mtime, dict(meta))


def ordered(keys: list[str]) -> list[str]:
    return sorted(keys, key=str.encode)


async def listed(
    index: Index, ns: str = NS, prefix: str = "", start: str = "", limit: int = 1000
) -> list[str]:
    return [k for k, _ in await index.list(ns, prefix, start, limit)]


async def all_pages(index: Index, prefix: str, limit: int, ns: str = NS) -> list[str]:
    """Every key under `prefix`, page by page, as a gateway pages: the next page starts just
    after the last key (its successor is the key plus a NUL)."""
    keys: list[str] = []
    start = ""
    while True:
        page = await listed(index, ns, prefix=prefix, start=start, limit=limit)
        assert len(page) <= limit
        keys += page
        if len(page) < limit:
            return keys
        start = page[-1] + "\x00"


class Model:
    """What an index must hold after a sequence of operations: key -> (version, live)."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[int, bool]] = {}

    def put(self, key: str, version: int) -> bool:
        if key in self.rows and self.rows[key][0] >= version:
            return False
        self.rows[key] = (version, True)
        return True

    def hide(self, key: str) -> int | None:
        if key not in self.rows or not self.rows[key][1]:
            return None
        version = self.rows[key][0]
        self.rows[key] = (version, False)
        return version

    def delete(self, key: str, version: int) -> None:
        if key not in self.rows or self.rows[key][0] < version:
            self.rows[key] = (version, False)

    def live(self) -> dict[str, int]:
        return {k: v for k, (v, live) in self.rows.items() if live}


Op = tuple[str, str, int]


async def check_against_model(index: Index, ops: list[Op], ns: str = NS) -> None:
    model = Model()
    for op, key, version in ops:
        if op == "put":
            assert await index.put(ns, key, entry(version)) == model.put(key, version), (op, key)
        elif op == "hide":
            hidden = await index.hide(ns, key)
            assert (hidden.version if hidden else None) == model.hide(key), (op, key)
        else:
            await index.delete(ns, key, version)
            model.delete(key, version)
    live = model.live()
    got = await index.list(ns, limit=10_000)
    assert [(k, e.version) for k, e in got] == [(k, live[k]) for k in ordered(list(live))]
    for prefix in ("", "a", "a/", "é", "😀"):
        expected = ordered([k for k in live if k.startswith(prefix)])
        assert await all_pages(index, prefix, limit=3, ns=ns) == expected, prefix
    for key in {k for _, k, _ in ops}:
        got_entry = await index.get(ns, key)
        assert (got_entry.version if got_entry else None) == live.get(key), key


def random_ops(seed: int, n: int = 120) -> list[Op]:
    rng = random.Random(seed)
    keys = ["a", "a/b", "a/é", "ab", "a b", "é", "😀", "😀/x", "b"]
    return [
        (rng.choice(["put", "put", "hide", "delete"]), rng.choice(keys), rng.randrange(1, 12))
        for _ in range(n)
    ]


class IndexContract:
    """The behaviour every backend shares; a subclass provides the `index` fixture (opened,
    empty, closed afterwards)."""

    pytestmark = pytest.mark.asyncio

    async def test_a_put_applies_only_when_newer(self, index: Index) -> None:
        assert await index.get(NS, "k") is None
        e2 = Entry(10, H, 2, 1700000000.25, {"content-type": "text/plain", "x-amz-meta-a": "é"})
        assert await index.put(NS, "k", e2)
        assert await index.get(NS, "k") == e2
        assert not await index.put(NS, "k", entry(1)), "an older version"
        assert not await index.put(NS, "k", entry(2, size=99)), "the same version"
        assert await index.get(NS, "k") == e2
        e3 = Entry(0, None, 2**53 - 1, time.time())  # the largest version, no hash, no meta
        assert await index.put(NS, "k", e3)
        assert await index.get(NS, "k") == e3
        assert await index.get("other", "k") is None, "namespaces are apart"

    async def test_a_stale_put_is_refused_after_a_tombstone(self, index: Index) -> None:
        await index.put(NS, "k", entry(1))
        await index.delete(NS, "k", 2)
        assert await index.get(NS, "k") is None
        assert not await index.put(NS, "k", entry(1))
        assert not await index.put(NS, "k", entry(2)), "a tombstone outranks its own version"
        assert await index.get(NS, "k") is None and await listed(index) == []
        assert await index.put(NS, "k", entry(3))
        assert (await index.get(NS, "k")) == (await index.list(NS))[0][1]

    async def test_hide_keeps_the_version_so_a_newer_put_still_wins(self, index: Index) -> None:
        e5 = entry(5, size=7, content_type="a")
        await index.put(NS, "k", e5)
        assert await index.hide(NS, "k") == e5, "hide returns the entry it hid"
        assert await index.get(NS, "k") is None and await listed(index) == []
        assert await index.hide(NS, "k") is None, "nothing live left to hide"
        assert await index.hide(NS, "never") is None
        assert not await index.put(NS, "k", entry(5)), "the hidden version cannot come back"
        assert await index.put(NS, "k", entry(6))
        assert (await index.get(NS, "k") or entry(0)).version == 6
        await index.hide(NS, "k")
        await index.delete(NS, "k", 7)  # step two: the cluster's tombstone
        assert not await index.put(NS, "k", entry(6)) and await index.put(NS, "k", entry(8))

    async def test_restore_undoes_a_hide_and_nothing_else(self, index: Index) -> None:
        e5 = entry(5, size=7, content_type="a")
        await index.put(NS, "k", e5)
        hidden = await index.hide(NS, "k")
        assert hidden == e5
        assert await index.restore(NS, "k", hidden), "the delete failed: listed again"
        assert await index.get(NS, "k") == e5 and await listed(index) == ["k"]
        assert not await index.restore(NS, "k", e5), "it is live: nothing to undo"
        await index.hide(NS, "k")
        assert await index.put(NS, "k", entry(6))  # a newer write came meanwhile
        assert not await index.restore(NS, "k", e5)
        assert (await index.get(NS, "k") or entry(0)).version == 6
        await index.hide(NS, "k")
        await index.delete(NS, "k", 7)  # the delete went through
        assert not await index.restore(NS, "k", entry(6))
        assert await index.get(NS, "k") is None
        assert not await index.restore(NS, "never", e5)

    async def test_rebuild_lists_what_a_stopped_delete_hid(self, index: Index) -> None:
        await index.put(NS, "stopped", entry(5))
        await index.put(NS, "done", entry(5))
        await index.hide(NS, "stopped")  # and then the gateway died: the object is still there
        await index.hide(NS, "done")
        await index.delete(NS, "done", 6)  # a finished delete: a newer tombstone
        started = time.time() + 0.001

        async def items() -> AsyncIterator[tuple[str, Entry]]:
            for key in ("stopped", "done"):
                yield key, entry(5)  # (a stale copy of "done" somewhere: still deleted)

        await index.rebuild(NS, items(), started)
        assert await listed(index) == ["stopped"]
        # a tombstone at the same version made after the rebuild started is a delete under
        # way: the rebuild leaves it alone
        while time.time() <= started:
            await asyncio.sleep(0.005)
        await index.hide(NS, "stopped")

        async def again() -> AsyncIterator[tuple[str, Entry]]:
            yield "stopped", entry(5)

        await index.rebuild(NS, again(), started)
        assert await listed(index) == []

    async def test_a_delete_applies_only_when_newer(self, index: Index) -> None:
        await index.delete(NS, "ghost", 3)  # a tombstone where nothing was
        assert not await index.put(NS, "ghost", entry(2)) and await index.get(NS, "ghost") is None
        await index.put(NS, "k", entry(4))
        await index.delete(NS, "k", 3)  # older than the live entry: ignored
        assert (await index.get(NS, "k") or entry(0)).version == 4
        await index.delete(NS, "k", 4)  # the same version: ignored too
        assert await index.get(NS, "k") is not None
        await index.delete(NS, "k", 5)
        assert await index.get(NS, "k") is None
        await index.delete(NS, "k", 4)  # an older delete after a newer one: no change
        assert not await index.put(NS, "k", entry(5)) and await index.put(NS, "k", entry(6))

    async def test_list_is_bytewise_with_prefix_start_and_limit(self, index: Index) -> None:
        for i, key in enumerate(reversed(KEYS)):
            await index.put(NS, key, entry(i + 1))
        everything = ordered(KEYS)
        assert everything.index("Z") < everything.index("a") < everything.index("a b")
        assert everything.index("a b") < everything.index("a/") < everything.index("ab")
        assert await listed(index) == everything
        assert await listed(index, prefix="a/") == [
            "a/",
            "a/b",
            "a/b/c",
            "a/bc",
            "a/z",
            "a/é",
            "a/😀",
        ]
        assert await listed(index, prefix="a") == [k for k in everything if k.startswith("a")]
        assert await listed(index, prefix="a/b") == ["a/b", "a/b/c", "a/bc"]
        assert await listed(index, prefix="é") == ["é", "éa"]
        assert await listed(index, prefix="😀") == ["😀"]
        assert await listed(index, prefix="nothing") == []
        assert await listed(index, start="a/b") == everything[everything.index("a/b") :]
        assert await listed(index, start="a/b", limit=2) == ["a/b", "a/b/c"]
        assert await listed(index, prefix="a/", start="a/c") == ["a/z", "a/é", "a/😀"]
        assert await listed(index, prefix="a/", start="0") == await listed(index, prefix="a/")
        assert await listed(index, prefix="a/", start="b") == [], "start past the prefix"
        assert await listed(index, start="\U0010ffff") == []
        assert await listed(index, limit=1) == [everything[0]]
        for limit in (1, 2, 5, 100):
            assert await all_pages(index, "", limit) == everything
            assert await all_pages(index, "a", limit) == await listed(index, prefix="a")
        with pytest.raises(InvalidArgument):
            await index.list(NS, limit=0)
        (key, got), *_ = await index.list(NS, prefix="a/b/c")
        assert key == "a/b/c" and got == await index.get(NS, "a/b/c")

    async def test_tombstones_never_show_and_do_not_shorten_a_page(self, index: Index) -> None:
        keys = [f"k{i:04d}" for i in range(300)]
        for i, key in enumerate(keys):
            await index.put(NS, key, entry(1))
            if i % 10:
                await index.delete(NS, key, 2)  # nine in ten are tombstones
        live = keys[::10]
        assert await listed(index, limit=1000) == live
        assert await listed(index, limit=7) == live[:7], "a page is full of live keys"
        assert await all_pages(index, "k", limit=4) == live
        assert await listed(index, prefix="k000") == ["k0000"]

    async def test_keys_up_to_max_name_bytes(self, index: Index) -> None:
        longest = "x" * (MAX_NAME - 4) + "😀"  # exactly MAX_NAME bytes (an S3 bucket's key)
        await index.put(NS, longest, entry(1))
        assert await listed(index, prefix="xxx") == [longest]
        assert await index.get(NS, longest) is not None
        for too_long in ("x" * (MAX_NAME + 1), "☃" * 363):  # 1089 bytes each
            with pytest.raises(InvalidArgument):
                await index.put(NS, too_long, entry(1))
            with pytest.raises(InvalidArgument):
                await index.get(NS, too_long)
            with pytest.raises(InvalidArgument):
                await index.hide(NS, too_long)
            with pytest.raises(InvalidArgument):
                await index.delete(NS, too_long, 1)
        with pytest.raises(InvalidArgument):
            await index.put(NS, "\udc80", entry(1))  # not encodable as UTF-8
        with pytest.raises(InvalidArgument):
            await index.put("", "k", entry(1))
        with pytest.raises(InvalidArgument):
            await index.put(NS, "k", entry(2**53))

    async def test_rebuild_writes_the_items_and_removes_old_rows_not_seen(
        self, index: Index
    ) -> None:
        started = time.time()
        old = started - 100
        await index.put(NS, "same", entry(3, mtime=old))
        await index.put(NS, "stale", entry(9, mtime=old))
        await index.put(NS, "gone", entry(1, mtime=old))
        await index.put(NS, "gone-tombstone", tombstone(4, mtime=old))
        await index.put(NS, "fresh", entry(1, mtime=started + 1))  # a gateway's, during the run
        await index.put("other", "gone", entry(1, mtime=old))

        async def items() -> AsyncIterator[tuple[str, Entry]]:
            yield "same", entry(3, mtime=old)  # already current
            yield "stale", entry(8, mtime=old)  # an older copy: not current
            yield "new", entry(2, size=5, mtime=old, content_type="b")
            yield "new", entry(2, size=5, mtime=old, content_type="b")  # a second replica
            yield "dead", tombstone(6, mtime=old)  # a daemon's tombstone
            for i in range(2500):  # several batches
                yield f"bulk/{i:05d}", entry(1, mtime=old)

        written, removed = await index.rebuild(NS, items(), started)
        assert (written, removed) == (2504, 2)
        assert await listed(index, limit=3) == ["bulk/00000", "bulk/00001", "bulk/00002"]
        assert await listed(index, start="c") == ["fresh", "new", "same", "stale"]
        assert (await index.get(NS, "stale") or entry(0)).version == 9
        assert await index.get(NS, "new") == entry(2, size=5, mtime=old, content_type="b")
        assert await index.get(NS, "dead") is None and not await index.put(NS, "dead", entry(5))
        assert await index.put(NS, "gone-tombstone", entry(1)), "its tombstone was removed"
        assert await listed(index, ns="other") == ["gone"], "another namespace is untouched"

        async def nothing() -> AsyncIterator[tuple[str, Entry]]:
            return
            yield

        assert await index.rebuild(NS, nothing(), time.time() + 1) == (0, 2506)
        assert await listed(index) == [] and await index.namespaces() == ["other"]

    async def test_drop_and_namespaces(self, index: Index) -> None:
        assert await index.namespaces() == []
        await index.put("n2", "k", entry(1))
        await index.put("n1", "k", entry(1))
        await index.put("n1", "j", entry(1))
        await index.delete("n3", "k", 1)  # a namespace of tombstones only still has rows
        assert await index.namespaces() == ["n1", "n2", "n3"]
        await index.drop("n1")
        assert await index.namespaces() == ["n2", "n3"]
        assert await index.get("n1", "k") is None and await listed(index, "n1") == []
        assert await index.put("n1", "k", entry(1)), "a dropped namespace starts afresh"
        await index.drop("never-was")
        assert await index.namespaces() == ["n1", "n2", "n3"]

    async def test_random_operations_match_a_sorted_model(self, index: Index) -> None:
        for seed in range(3):
            await check_against_model(index, random_ops(seed), ns=f"model{seed}")

    async def test_ping(self, index: Index) -> None:
        await index.ping()

    async def test_the_md5_goes_with_its_version(self, index: Index) -> None:
        e1 = replace(entry(1, size=3), md5=M1)
        assert await index.put(NS, "k", e1)
        assert await index.get(NS, "k") == e1 and (await index.list(NS))[0][1].md5 == M1
        assert not await index.put(NS, "k", replace(entry(1), md5=M2)), "the same version"
        assert (await index.get(NS, "k") or entry(0)).md5 == M1
        assert await index.put(NS, "k", entry(2)), "a new value, its MD5 not known"
        assert (await index.get(NS, "k") or entry(0)).md5 is None
        e3 = replace(entry(3), md5=M2)
        await index.put(NS, "k", e3)
        hidden = await index.hide(NS, "k")
        assert hidden == e3, "hide returns the MD5 with the entry"
        assert await index.restore(NS, "k", e3) and await index.get(NS, "k") == e3
        await index.hide(NS, "k")
        await index.delete(NS, "k", 4)
        assert await index.put(NS, "k", replace(entry(5), md5=M1))
        assert (await index.get(NS, "k") or entry(0)).md5 == M1
        await index.put(NS, "t", replace(tombstone(1), md5=M1))  # (a tombstone keeps none)
        assert await index.put(NS, "t", entry(2)) and (await index.get(NS, "t") or e1).md5 is None
        for bad in (b"", b"x" * 15, b"x" * 32):
            with pytest.raises(InvalidArgument):
                await index.put(NS, "bad", replace(entry(1), md5=bad))
            with pytest.raises(InvalidArgument):
                await index.amend(NS, "k", replace(entry(5), md5=bad))
        assert await index.get(NS, "bad") is None

    async def test_amend_changes_only_the_live_entry_at_its_version(self, index: Index) -> None:
        e2 = entry(2, size=4, content_type="a")
        assert not await index.amend(NS, "k", replace(e2, md5=M1)), "no entry: nothing"
        assert await index.get(NS, "k") is None and await listed(index) == []
        await index.put(NS, "k", e2)
        assert not await index.amend(NS, "k", replace(entry(1), md5=M1)), "an older version"
        assert not await index.amend(NS, "k", replace(entry(3), md5=M1)), "a newer version"
        assert await index.get(NS, "k") == e2
        assert await index.amend(NS, "k", replace(e2, md5=M1))
        assert await index.get(NS, "k") == replace(e2, md5=M1)
        assert await index.list(NS) == [("k", replace(e2, md5=M1))]
        assert await index.amend(NS, "k", replace(e2, md5=M2)), "(what it says replaces)"
        assert (await index.get(NS, "k") or e2).md5 == M2
        assert not await index.put(NS, "k", replace(e2, md5=M1)), "amend is not a new version"
        hidden = await index.hide(NS, "k")
        assert not await index.amend(NS, "k", replace(e2, md5=M1)), "a delete under way"
        assert await index.get(NS, "k") is None and await listed(index) == []
        assert hidden is not None and await index.restore(NS, "k", hidden)
        await index.delete(NS, "k", 3)
        assert not await index.amend(NS, "k", replace(entry(3), md5=M1)), "a tombstone"
        assert await index.get(NS, "k") is None
        assert not await index.amend("other", "k", replace(e2, md5=M1)), "another namespace"

    async def test_rebuild_keeps_an_md5_it_cannot_know(self, index: Index) -> None:
        """A rebuild's items come from the daemons, which keep no MD5: an entry of the same
        version keeps the MD5 it has; a newer one comes without (amend adds it later)."""
        old = time.time() - 100
        await index.put(NS, "same", replace(entry(3, mtime=old), md5=M1))
        await index.put(NS, "older", replace(entry(3, mtime=old), md5=M1))

        async def items() -> AsyncIterator[tuple[str, Entry]]:
            yield "same", entry(3, mtime=old)
            yield "older", entry(4, mtime=old)
            yield "new", replace(entry(1, mtime=old), md5=M2)  # (an item that knows it)

        assert await index.rebuild(NS, items(), time.time()) == (3, 0)
        assert (await index.get(NS, "same") or entry(0)).md5 == M1
        assert (await index.get(NS, "older") or entry(0)).md5 is None
        assert (await index.get(NS, "new") or entry(0)).md5 == M2
        assert await index.amend(NS, "older", replace(entry(4, mtime=old), md5=M2))
        assert (await index.get(NS, "older") or entry(0)).md5 == M2


class TestSqliteIndex(IndexContract):
    @pytest_asyncio.fixture
    async def index(self, tmp_path: Path) -> AsyncIterator[Index]:
        async with open_index(str(tmp_path / "index.db")) as index:
            yield index


@pytest.mark.asyncio
async def test_two_sqlite_indexes_share_one_file(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/sub/dir/index.db"  # the directories are made
    async with open_index(url) as one, open_index(url) as two:
        assert one.url == url
        assert await one.put(NS, "k", entry(2))
        assert not await two.put(NS, "k", entry(1))
        assert await two.hide(NS, "k") is not None and await one.get(NS, "k") is None
        results = await asyncio.gather(
            *(i.put(NS, "c", entry(v)) for v in range(1, 20) for i in (one, two))
        )
        assert sum(results) >= 1
        assert (await two.get(NS, "c") or entry(0)).version == 19
        assert await one.list(NS) == await two.list(NS)


def test_index_urls() -> None:
    def path(url: str) -> str:
        index = open_index(url)
        assert isinstance(index, SqliteIndex)
        return index.path

    assert path("sqlite:///var/lib/shoal/index.db") == "/var/lib/shoal/index.db"
    assert path("sqlite://index.db") == "index.db"
    assert path("/var/lib/shoal/index.db") == "/var/lib/shoal/index.db"
    assert path("data/index.db") == "data/index.db"
    for url in ("", "sqlite://", "http://host/x", "mysql://u@h/db", "localhost:6379", "redis://"):
        with pytest.raises(InvalidArgument, match=r"sqlite:///absolute/path\.db") as error:
            open_index(url)
        assert "redis://" in str(error.value) and "postgresql://" in str(error.value)
    with pytest.raises(InvalidArgument) as error:
        open_index("ftp://user:secret@host/x")
    assert "secret" not in str(error.value)


@pytest.mark.asyncio
async def test_redis_and_postgres_urls_mask_the_password() -> None:
    from shoal.index.postgres import PostgresIndex
    from shoal.index.redis import RedisIndex

    for url, kind, shown in [
        ("redis://127.0.0.1:6390/0", RedisIndex, "redis://127.0.0.1:6390/0"),
        ("redis://:pw@127.0.0.1:6390/1", RedisIndex, "redis://:***@127.0.0.1:6390/1"),
        ("rediss://u:pw@h:6390", RedisIndex, "rediss://u:***@h:6390"),
        ("postgresql://shoal:pw@h:5432/db", PostgresIndex, "postgresql://shoal:***@h:5432/db"),
        ("postgres://shoal@h/db", PostgresIndex, "postgres://shoal@h/db"),
    ]:
        index = open_index(url)
        assert isinstance(index, kind) and index.url == shown
        await index.close()


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "put", "hide", "delete"]),
            st.text(alphabet=["a", "b", "/", " ", "é", "😀", "\x00"], min_size=1, max_size=4),
            st.integers(min_value=0, max_value=8),
        ),
        max_size=40,
    )
)
def test_list_matches_a_sorted_model(ops: list[Op]) -> None:
    async def run(directory: str) -> None:
        async with open_index(f"{directory}/index.db") as index:
            await check_against_model(index, ops)

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run(directory))


# the schema of the files shoal made before entries had an MD5, verbatim
_SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS entries (
    ns TEXT NOT NULL, key BLOB NOT NULL, version INTEGER NOT NULL, deleted INTEGER NOT NULL,
    size INTEGER NOT NULL, hash BLOB, mtime REAL NOT NULL, meta TEXT NOT NULL,
    PRIMARY KEY (ns, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_live ON entries (ns, key) WHERE deleted = 0;
"""


def old_file(path: Path) -> None:
    """An index file as shoal made it before the MD5: a live row and a tombstone."""
    db = sqlite3.connect(path)
    with contextlib.closing(db), db:
        db.executescript(_SCHEMA_1)
        db.execute("INSERT INTO entries VALUES (?, ?, 3, 0, 5, ?, 1700000000.5, '{}')",
                   (NS, b"old", H))  # fmt: skip
        db.execute("INSERT INTO entries VALUES (?, ?, 4, 1, 0, NULL, 1700000000.5, '{}')",
                   (NS, b"gone"))  # fmt: skip


@pytest.mark.asyncio
async def test_a_file_made_before_the_md5_is_taken_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    old_file(path)
    # two processes' indexes opening it at once: the column is added once
    async with open_index(str(path)) as one, open_index(str(path)) as two:
        await asyncio.gather(one.ping(), two.ping())
        old = Entry(5, H, 3, 1700000000.5)
        assert await one.get(NS, "old") == old and await two.list(NS) == [("old", old)]
        assert not await one.put(NS, "gone", entry(4)), "its tombstone still counts"
        assert await two.amend(NS, "old", replace(old, md5=M1))
        assert await one.get(NS, "old") == replace(old, md5=M1)
        assert await one.put(NS, "new", replace(entry(1), md5=M2))
        assert (await two.get(NS, "new") or entry(0)).md5 == M2
    db = sqlite3.connect(path)
    with contextlib.closing(db):
        columns = [r[1] for r in db.execute("PRAGMA table_info(entries)")]
    assert columns.count("md5") == 1
    async with open_index(str(path)) as again:  # opened again: nothing more to do
        assert (await again.get(NS, "old") or entry(0)).md5 == M1
