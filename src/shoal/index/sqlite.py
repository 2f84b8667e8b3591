"""The index in one SQLite file: the embedded default.

One connection, used only from one worker thread (the async methods await it), so the event
loop never blocks on the disk. WAL and a busy timeout let several processes share the file;
every write is one statement or one IMMEDIATE transaction, so it is atomic across them. Keys
are BLOBs of UTF-8, compared bytewise; a partial index over live rows keeps listings fast
however many tombstones lie between them.

The column md5 came after the first files were made: a file without it gets it (NULL in every
row, `ALTER TABLE ... ADD COLUMN`, under the write lock, so that processes opening one file
together add it once) when it is opened.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import itertools
import json
import sqlite3
import time
from collections.abc import AsyncIterable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from shoal.index.base import (
    Entry,
    Index,
    IndexUnavailable,
    batches,
    check_ns,
    checked,
    current,
    encode_key,
    key_range,
    mask_url,
    unavailable,
)

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    ns TEXT NOT NULL, key BLOB NOT NULL, version INTEGER NOT NULL, deleted INTEGER NOT NULL,
    size INTEGER NOT NULL, hash BLOB, mtime REAL NOT NULL, meta TEXT NOT NULL, md5 BLOB,
    PRIMARY KEY (ns, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_live ON entries (ns, key) WHERE deleted = 0;
"""

_UPSERT = """
INSERT INTO entries (ns, key, version, deleted, size, hash, mtime, meta, md5)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (ns, key) DO UPDATE SET version = excluded.version, deleted = excluded.deleted,
    size = excluded.size, hash = excluded.hash, mtime = excluded.mtime, meta = excluded.meta,
    md5 = excluded.md5
WHERE entries.version < excluded.version
"""

# a rebuild's: also over a tombstone at the same version made before it started (a delete
# that hid the key and then failed or stopped: its object is still there)
_REBUILD_UPSERT = (
    _UPSERT.rstrip()
    + """
    OR (entries.version = excluded.version AND entries.deleted = 1 AND excluded.deleted = 0
        AND entries.mtime < ?)
"""
)

# a hidden entry back, if the tombstone is still the one hide() made
_RESTORE = """
UPDATE entries SET deleted = 0, size = ?, hash = ?, mtime = ?, meta = ?, md5 = ?
WHERE ns = ? AND key = ? AND version = ? AND deleted = 1
"""

# the live entry at its version, with more known of it
_AMEND = """
UPDATE entries SET size = ?, hash = ?, mtime = ?, meta = ?, md5 = ?
WHERE ns = ? AND key = ? AND version = ? AND deleted = 0
"""

_COLUMNS = "size, hash, version, mtime, meta, deleted, md5"

_tables = itertools.count()


def _row(ns: str, key: bytes, e: Entry) -> tuple[Any, ...]:
    meta = json.dumps(e.meta, separators=(",", ":"))
    md5 = None if e.deleted else e.md5
    return (ns, key, e.version, int(e.deleted), e.size, e.hash, e.mtime, meta, md5)


def _entry(row: tuple[Any, ...]) -> Entry:
    size, hash_, version, mtime, meta, deleted, md5 = row
    return Entry(size, hash_, version, mtime, json.loads(meta), bool(deleted), md5)


def _migrate(db: sqlite3.Connection) -> None:
    """Columns added since the first version of the schema, added to a file made before."""
    with _transaction(db):
        columns = {r[1] for r in db.execute("PRAGMA table_info(entries)")}
        if "md5" not in columns:
            db.execute("ALTER TABLE entries ADD COLUMN md5 BLOB")


class SqliteIndex(Index):
    def __init__(self, path: str, url: str | None = None) -> None:
        self.path = path
        self.url = mask_url(url or path)
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shoal-index")
        self._closed = False

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            try:
                return fn(self._connect())
            except sqlite3.Error as e:  # locked too long, disk I/O, cannot open, corrupt
                raise unavailable(self.url, e) from e

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            try:
                db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
                db.executescript(_SCHEMA)
                _migrate(db)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    async def open(self) -> None:
        await self._run(lambda db: None)

    async def close(self) -> None:
        def close(_db: sqlite3.Connection) -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        if self._closed:
            return
        self._closed = True
        if self._db is not None:
            await self._run(close)
        self._thread.shutdown(wait=True)

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def get(self, ns: str, key: str) -> Entry | None:
        check_ns(ns)
        raw = encode_key(key)
        sql = f"SELECT {_COLUMNS} FROM entries WHERE ns = ? AND key = ? AND deleted = 0"
        row = await self._run(lambda db: db.execute(sql, (ns, raw)).fetchone())
        return None if row is None else _entry(row)

    async def put(self, ns: str, key: str, entry: Entry) -> bool:
        check_ns(ns)
        values = _row(ns, encode_key(key), checked(entry))
        return await self._run(lambda db: db.execute(_UPSERT, values).rowcount == 1)

    async def hide(self, ns: str, key: str) -> Entry | None:
        check_ns(ns)
        raw = encode_key(key)
        now = time.time()

        def hide(db: sqlite3.Connection) -> Entry | None:
            with _transaction(db):
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM entries WHERE ns = ? AND key = ? AND deleted = 0",
                    (ns, raw),
                ).fetchone()
                if row is None:
                    return None
                db.execute(
                    "UPDATE entries SET deleted = 1, size = 0, hash = NULL, mtime = ?, meta = '{}',"
                    " md5 = NULL WHERE ns = ? AND key = ?",
                    (now, ns, raw),
                )
                return _entry(row)

        return await self._run(hide)

    async def restore(self, ns: str, key: str, entry: Entry) -> bool:
        check_ns(ns)
        args = _changes(ns, key, replace(entry, deleted=False))
        return await self._run(lambda db: db.execute(_RESTORE, args).rowcount == 1)

    async def amend(self, ns: str, key: str, entry: Entry) -> bool:
        check_ns(ns)
        args = _changes(ns, key, replace(entry, deleted=False))
        return await self._run(lambda db: db.execute(_AMEND, args).rowcount == 1)

    async def list(
        self, ns: str, prefix: str = "", start: str = "", limit: int = 1000
    ) -> builtins.list[tuple[str, Entry]]:
        check_ns(ns)
        low, high = key_range(prefix, start, limit)
        sql = f"SELECT key, {_COLUMNS} FROM entries INDEXED BY entries_live"
        sql += " WHERE ns = ? AND deleted = 0 AND key >= ?"
        args: tuple[Any, ...] = (ns, low)
        if high is not None:
            sql += " AND key < ?"
            args += (high,)
        sql += " ORDER BY key LIMIT ?"
        rows = await self._run(lambda db: db.execute(sql, (*args, limit)).fetchall())
        return [(bytes(r[0]).decode(), _entry(r[1:])) for r in rows]

    async def rebuild(
        self, ns: str, items: AsyncIterable[tuple[str, Entry]], started: float
    ) -> tuple[int, int]:
        check_ns(ns)
        seen = f"rebuild_seen_{next(_tables)}"  # per call: two rebuilds may interleave

        def write(db: sqlite3.Connection, batch: list[tuple[bytes, Entry]]) -> int:
            with _transaction(db):
                db.execute(f"CREATE TEMP TABLE IF NOT EXISTS {seen} (key BLOB PRIMARY KEY)")
                db.executemany(_REBUILD_UPSERT, [(*_row(ns, k, e), started) for k, e in batch])
                db.executemany(
                    f"INSERT OR IGNORE INTO temp.{seen} VALUES (?)", [(k,) for k, _ in batch]
                )
                stored = {
                    k: db.execute(
                        "SELECT version FROM entries WHERE ns = ? AND key = ?", (ns, k)
                    ).fetchone()[0]
                    for k, _ in batch
                }
            return current(batch, stored)

        def sweep(db: sqlite3.Connection) -> int:
            with _transaction(db):
                db.execute(f"CREATE TEMP TABLE IF NOT EXISTS {seen} (key BLOB PRIMARY KEY)")
                removed = db.execute(
                    "DELETE FROM entries WHERE ns = ? AND mtime < ?"
                    f" AND key NOT IN (SELECT key FROM temp.{seen})",
                    (ns, started),
                ).rowcount
            return removed

        def forget(db: sqlite3.Connection) -> None:
            db.execute(f"DROP TABLE IF EXISTS temp.{seen}")

        written = 0
        try:
            async for batch in batches(items):
                written += await self._run(functools.partial(write, batch=batch))
            removed = await self._run(sweep)
        finally:
            with contextlib.suppress(IndexUnavailable):  # the table goes with the connection
                await self._run(forget)
        return written, removed

    async def drop(self, ns: str) -> None:
        check_ns(ns)
        await self._run(lambda db: db.execute("DELETE FROM entries WHERE ns = ?", (ns,)))

    async def namespaces(self) -> builtins.list[str]:
        # a skip scan over the primary key: one probe per namespace, not one per row
        sql = """
            WITH RECURSIVE n(ns) AS (
                SELECT min(ns) FROM entries
                UNION ALL
                SELECT (SELECT min(ns) FROM entries WHERE ns > n.ns) FROM n WHERE n.ns IS NOT NULL)
            SELECT ns FROM n WHERE ns IS NOT NULL"""
        rows = await self._run(lambda db: db.execute(sql).fetchall())
        return sorted(r[0] for r in rows)


def _changes(ns: str, key: str, entry: Entry) -> tuple[Any, ...]:
    """The arguments of _RESTORE and _AMEND: the entry's fields, then the row's (ns, key,
    version)."""
    ns_, raw, version, _, size, hash_, mtime, meta, md5 = _row(ns, encode_key(key), checked(entry))
    return (size, hash_, mtime, meta, md5, ns_, raw, version)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """The write lock taken at BEGIN, so a read-then-write cannot interleave with another
    process's write."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
