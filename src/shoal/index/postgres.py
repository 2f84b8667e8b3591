"""The index in PostgreSQL, for several gateways on several machines.

One table, shoal_index, keyed by (ns, key) with keys as bytea (compared bytewise); a partial
index over live rows keeps listings fast among tombstones. A put is one INSERT ... ON CONFLICT
DO UPDATE ... WHERE the stored version is older, atomic across gateways. Connections come from
a pool that checks each one before use, so those broken by a server restart are replaced; a
server that is down gives IndexUnavailable after a few seconds. The schema is created on the
first operation that reaches the server; the column md5, added after the first tables were
made, is added then to a table that lacks it (NULL in every row), once per process.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import replace
from typing import Any

import psycopg
import psycopg.errors
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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

log = logging.getLogger("shoal.index")

TIMEOUT = 3.0  # seconds to connect, or to wait for a connection from the pool
RETRY_FOR = 2.0  # seconds the pool retries a failed connect before the next request tries anew
SCHEMA_LOCK = int.from_bytes(
    b"shoal"
)  # advisory lock: gateways starting together create the schema once

# a server that stops answering (a partition, a host gone) breaks the connection within
# seconds instead of leaving a query waiting for ever
_DEAD_PEER = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "tcp_user_timeout": 9000,  # milliseconds
}

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS shoal_index (
        ns text NOT NULL, key bytea NOT NULL, version bigint NOT NULL, deleted boolean NOT NULL,
        size bigint NOT NULL, hash bytea, mtime double precision NOT NULL, meta jsonb NOT NULL,
        md5 bytea, PRIMARY KEY (ns, key))""",
    "CREATE INDEX IF NOT EXISTS shoal_index_live ON shoal_index (ns, key) WHERE NOT deleted",
]

# columns added since the first schema: (name, type), added where missing (checked first: an
# ALTER TABLE takes the table's strongest lock even when it has nothing to do)
_ADDED = [("md5", "bytea")]

_UPSERT = """
INSERT INTO shoal_index AS t (ns, key, version, deleted, size, hash, mtime, meta, md5)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (ns, key) DO UPDATE SET version = excluded.version, deleted = excluded.deleted,
    size = excluded.size, hash = excluded.hash, mtime = excluded.mtime, meta = excluded.meta,
    md5 = excluded.md5
WHERE t.version < excluded.version
"""

# a rebuild's: also over a tombstone at the same version made before it started (a delete
# that hid the key and then failed or stopped: its object is still there)
_REBUILD_UPSERT = (
    _UPSERT.rstrip()
    + """
    OR (t.version = excluded.version AND t.deleted AND NOT excluded.deleted AND t.mtime < %s)
"""
)

# a hidden entry back, if the tombstone is still the one hide() made
_RESTORE = """
UPDATE shoal_index SET deleted = false, size = %s, hash = %s, mtime = %s, meta = %s, md5 = %s
WHERE ns = %s AND key = %s AND version = %s AND deleted RETURNING 1
"""

# the live entry at its version, with more known of it
_AMEND = """
UPDATE shoal_index SET size = %s, hash = %s, mtime = %s, meta = %s, md5 = %s
WHERE ns = %s AND key = %s AND version = %s AND NOT deleted RETURNING 1
"""

_COLUMNS = "size, hash, version, mtime, meta, deleted, md5"


def _row(ns: str, key: bytes, e: Entry) -> tuple[Any, ...]:
    md5 = None if e.deleted else e.md5
    return (ns, key, e.version, e.deleted, e.size, e.hash, e.mtime, Jsonb(e.meta), md5)


def _changes(ns: str, key: str, entry: Entry) -> tuple[Any, ...]:
    """The arguments of _RESTORE and _AMEND: the entry's fields, then the row's (ns, key,
    version)."""
    ns_, raw, version, _, size, hash_, mtime, meta, md5 = _row(ns, encode_key(key), checked(entry))
    return (size, hash_, mtime, meta, md5, ns_, raw, version)


def _entry(row: tuple[Any, ...]) -> Entry:
    size, hash_, version, mtime, meta, deleted, md5 = row
    return Entry(
        size, None if hash_ is None else bytes(hash_), version, mtime, meta, deleted,
        None if md5 is None else bytes(md5),
    )  # fmt: skip


async def _migrate(conn: psycopg.AsyncConnection[Any]) -> None:
    """(In the schema's transaction, under its lock.) The columns a table made by an earlier
    version lacks."""
    cursor = await conn.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'shoal_index'"
    )
    have = {r[0] for r in await cursor.fetchall()}
    for name, kind in _ADDED:
        if name not in have:
            await conn.execute(f"ALTER TABLE shoal_index ADD COLUMN {name} {kind}")


class PostgresIndex(Index):
    def __init__(self, url: str) -> None:
        self.url = mask_url(url)
        self._conninfo = url
        self._ready = False  # the schema exists
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=8,
            open=False,
            timeout=TIMEOUT,
            reconnect_timeout=RETRY_FOR,
            check=AsyncConnectionPool.check_connection,
            kwargs={"autocommit": True, "connect_timeout": int(TIMEOUT), **_DEAD_PEER},
            name="shoal-index",
        )

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        try:
            async with self._pool.connection() as conn:
                if not self._ready:
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                        for statement in _SCHEMA:
                            await conn.execute(statement)
                        await _migrate(conn)
                    self._ready = True
                yield conn
        except PoolTimeout as e:
            raise unavailable(self.url, await self._why(e)) from e
        except psycopg.errors.UndefinedTable as e:  # the database was made anew
            self._ready = False
            raise unavailable(self.url, e) from e
        except psycopg.Error as e:  # the server went away, or refused (permissions...)
            raise unavailable(self.url, e) from e

    async def _why(self, timeout: PoolTimeout) -> BaseException:
        """Why the pool had no connection to give: the pool only says it waited, so one
        connection is tried here to name the cause (refused, a wrong password, no such
        database...); if it succeeds, every connection was busy."""
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, connect_timeout=1)
        except psycopg.Error as e:
            return e
        await conn.close()
        return timeout

    async def _fetch(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        async with self._connection() as conn:
            cursor = await conn.execute(sql, args)
            return await cursor.fetchall()

    async def open(self) -> None:
        await self._pool.open(wait=False)
        try:
            async with self._connection():  # creates the schema
                pass
        except IndexUnavailable as e:
            log.warning("%s (each operation will try again)", e)

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def get(self, ns: str, key: str) -> Entry | None:
        check_ns(ns)
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM shoal_index WHERE ns = %s AND key = %s AND NOT deleted",
            (ns, encode_key(key)),
        )
        return _entry(rows[0]) if rows else None

    async def put(self, ns: str, key: str, entry: Entry) -> bool:
        check_ns(ns)
        rows = await self._fetch(
            _UPSERT + " RETURNING 1", _row(ns, encode_key(key), checked(entry))
        )
        return bool(rows)

    async def hide(self, ns: str, key: str) -> Entry | None:
        check_ns(ns)
        raw = encode_key(key)
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(
                f"SELECT {_COLUMNS} FROM shoal_index"
                " WHERE ns = %s AND key = %s AND NOT deleted FOR UPDATE",
                (ns, raw),
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            await conn.execute(
                "UPDATE shoal_index SET deleted = true, size = 0, hash = NULL, mtime = %s,"
                " meta = '{}', md5 = NULL WHERE ns = %s AND key = %s",
                (time.time(), ns, raw),
            )
        return _entry(row)

    async def restore(self, ns: str, key: str, entry: Entry) -> bool:
        check_ns(ns)
        return bool(await self._fetch(_RESTORE, _changes(ns, key, replace(entry, deleted=False))))

    async def amend(self, ns: str, key: str, entry: Entry) -> bool:
        check_ns(ns)
        return bool(await self._fetch(_AMEND, _changes(ns, key, replace(entry, deleted=False))))

    async def list(
        self, ns: str, prefix: str = "", start: str = "", limit: int = 1000
    ) -> builtins.list[tuple[str, Entry]]:
        check_ns(ns)
        low, high = key_range(prefix, start, limit)
        sql = f"SELECT key, {_COLUMNS} FROM shoal_index WHERE ns = %s AND NOT deleted"
        sql += " AND key >= %s" + ("" if high is None else " AND key < %s")
        args = (ns, low) if high is None else (ns, low, high)
        rows = await self._fetch(sql + " ORDER BY key LIMIT %s", (*args, limit))
        return [(bytes(r[0]).decode(), _entry(r[1:])) for r in rows]

    async def rebuild(
        self, ns: str, items: AsyncIterable[tuple[str, Entry]], started: float
    ) -> tuple[int, int]:
        check_ns(ns)
        written = 0
        # one connection throughout: the keys seen go to a temporary table of its session
        async with self._connection() as conn:
            await conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS shoal_rebuild_seen (key bytea PRIMARY KEY)"
            )
            await conn.execute("TRUNCATE shoal_rebuild_seen")
            try:
                async for batch in batches(items):
                    keys = [k for k, _ in batch]
                    async with conn.transaction():
                        async with conn.cursor() as cursor:
                            await cursor.executemany(
                                _REBUILD_UPSERT, [(*_row(ns, k, e), started) for k, e in batch]
                            )
                        await conn.execute(
                            "INSERT INTO shoal_rebuild_seen SELECT unnest(%s::bytea[])"
                            " ON CONFLICT DO NOTHING",
                            (keys,),
                        )
                        cursor = await conn.execute(
                            "SELECT key, version FROM shoal_index WHERE ns = %s AND key = ANY(%s)",
                            (ns, keys),
                        )
                        stored = {bytes(k): v for k, v in await cursor.fetchall()}
                    written += current(batch, stored)
                cursor = await conn.execute(
                    "DELETE FROM shoal_index i WHERE ns = %s AND mtime < %s AND NOT EXISTS"
                    " (SELECT 1 FROM shoal_rebuild_seen s WHERE s.key = i.key)",
                    (ns, started),
                )
                removed = cursor.rowcount
            finally:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("DROP TABLE IF EXISTS shoal_rebuild_seen")
        return written, removed

    async def drop(self, ns: str) -> None:
        check_ns(ns)
        async with self._connection() as conn:
            await conn.execute("DELETE FROM shoal_index WHERE ns = %s", (ns,))

    async def namespaces(self) -> builtins.list[str]:
        # a skip scan over the primary key: one probe per namespace, not one per row
        rows = await self._fetch(
            """WITH RECURSIVE n(ns) AS (
                SELECT min(ns) FROM shoal_index
                UNION ALL
                SELECT (SELECT min(ns) FROM shoal_index WHERE ns > n.ns)
                FROM n WHERE n.ns IS NOT NULL)
            SELECT ns FROM n WHERE ns IS NOT NULL"""
        )
        return sorted(r[0] for r in rows)
