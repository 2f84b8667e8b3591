"""KeyStore: one SQLite database (WAL mode) with a row per object.

The row holds the ObjKey, the (namespace, name), the manifest, the version, the reference
list, flags and times. It may live on another path than the data (keys on a fast disk, values
on a slow one). `synchronous=FULL`: a commit that returned has been fsynced, which is what lets
the ObjectStore free the old blocks of an overwritten object right after it.

Writes happen only inside the group commit (one writer connection, one transaction per group,
a savepoint per change); reads use one connection per thread so they never wait for a commit.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import sqlite3
import threading
import time
import uuid as uuidlib
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

import msgpack

from shoal.engine.keys import ObjKey
from shoal.engine.manifest import Manifest
from shoal.errors import FormatError, InvalidArgument

SCHEMA_VERSION = 2  # 2: objects.meta (a store of version 1 is migrated when opened)
FLAG_PERMANENT = 1
FLAG_DELETED = 2  # a tombstone: the object was deleted at this version (replicated stores)
MAX_NAME_BYTES = 4096
MAX_NAMESPACE_BYTES = 255
REF_SIZE = 16
MAX_META = 16 << 10  # an object's metadata, msgpack-encoded, is at most this many bytes

_SCHEMA = """
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
    meta      BLOB NOT NULL DEFAULT x'',
    PRIMARY KEY (namespace, name)
) WITHOUT ROWID;
"""
_COLS = "namespace, name, uuid, size, hash, version, flags, refs, extents, crcs, ctime, mtime, meta"
_NCOLS = _COLS.count(",") + 1


@dataclass(frozen=True, slots=True)
class Record:
    namespace: str
    name: str
    uuid: bytes
    size: int
    hash: bytes | None
    version: int
    flags: int
    refs: tuple[bytes, ...]
    manifest: Manifest
    ctime: float
    mtime: float
    # What its writer said of the object (str -> str: a content type, an MD5, S3's headers),
    # kept with it: through write-at-offset, reference changes, replication and recovery.
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> ObjKey:
        return ObjKey(uuidlib.UUID(bytes=self.uuid), self.hash, self.size)

    @property
    def permanent(self) -> bool:
        return bool(self.flags & FLAG_PERMANENT)

    @property
    def deleted(self) -> bool:
        return bool(self.flags & FLAG_DELETED)

    def same_revision(self, other: Record | None) -> bool:
        """`other` is this object at this version: not changed since, nor deleted and made
        anew under the same name."""
        return other is not None and (other.uuid, other.version) == (self.uuid, self.version)

    def changed(self, **kw: object) -> Record:
        """This record, one version on, modified now, with `kw` fields replaced."""
        kw.setdefault("version", self.version + 1)
        kw.setdefault("mtime", time.time())
        return replace(self, **kw)  # type: ignore[arg-type]


def encode_meta(meta: Mapping[str, str] | None) -> bytes:
    """An object's metadata as stored: msgpack, keys sorted (so that equal metadata encodes
    alike), b"" when empty. InvalidArgument unless it maps strings to strings and encodes to
    at most MAX_META bytes."""
    if not meta:
        return b""
    if not isinstance(meta, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise InvalidArgument("an object's metadata maps strings to strings")
    try:
        raw: bytes = msgpack.packb(dict(sorted(meta.items())), use_bin_type=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidArgument(f"an object's metadata cannot be encoded ({exc})") from None
    if len(raw) > MAX_META:
        raise InvalidArgument(
            f"an object's metadata is {len(raw)} bytes encoded; the limit is {MAX_META}"
        )
    return raw


def check_meta(meta: Mapping[str, str] | None) -> dict[str, str]:
    """`meta` as a Record holds it, checked as `encode_meta` does."""
    encode_meta(meta)
    return dict(meta) if meta else {}


def decode_meta(raw: bytes | None) -> dict[str, str]:
    if not raw:
        return {}
    out: dict[str, str] = msgpack.unpackb(raw, raw=False)
    return out


def meta_digest(meta: Mapping[str, str]) -> bytes:
    """16 bytes that differ when metadata does (scrub compares copies' metadata by them)."""
    return hashlib.blake2b(encode_meta(meta), digest_size=16).digest()


def _row(r: tuple[object, ...]) -> Record:
    ns, name, uid, size, h, ver, flags, refs, ext, crcs, ctime, mtime, meta = r
    assert isinstance(refs, bytes) and isinstance(ext, bytes) and isinstance(crcs, bytes)
    assert meta is None or isinstance(meta, bytes)
    return Record(
        ns,  # type: ignore[arg-type]
        name,  # type: ignore[arg-type]
        uid,  # type: ignore[arg-type]
        size,  # type: ignore[arg-type]
        h,  # type: ignore[arg-type]
        ver,  # type: ignore[arg-type]
        flags,  # type: ignore[arg-type]
        tuple(refs[i : i + REF_SIZE] for i in range(0, len(refs), REF_SIZE)),
        Manifest.decode(ext, crcs),
        ctime,  # type: ignore[arg-type]
        mtime,  # type: ignore[arg-type]
        decode_meta(meta),
    )


def _values(rec: Record) -> tuple[object, ...]:
    ext, crcs = rec.manifest.encode()
    return (
        rec.namespace, rec.name, rec.uuid, rec.size, rec.hash, rec.version, rec.flags,
        b"".join(rec.refs), ext, crcs, rec.ctime, rec.mtime, encode_meta(rec.meta),
    )  # fmt: skip


def check_name(namespace: str, name: str) -> None:
    for what, value, limit in (
        ("namespace", namespace, MAX_NAMESPACE_BYTES),
        ("name", name, MAX_NAME_BYTES),
    ):
        if not isinstance(value, str) or not value:
            raise InvalidArgument(f"the {what} must be a non-empty string")
        try:
            n = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidArgument(f"the {what} {value!r} is not valid UTF-8") from None
        if n > limit:
            raise InvalidArgument(f"the {what} is {n} bytes long; the limit is {limit}")
        if "\x00" in value:
            raise InvalidArgument(f"the {what} may not contain NUL characters")


def _prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix`."""
    chars = list(prefix)
    while chars:
        c = ord(chars.pop())
        if c < 0x10FFFF:
            nxt = c + 1 if c + 1 != 0xD800 else 0xE000  # surrogates are not text
            return "".join(chars) + chr(nxt)
    return None


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2: objects get their metadata column (empty), in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        cols = {r[1] for r in conn.execute("PRAGMA table_info(objects)")}
        if "meta" not in cols:
            conn.execute("ALTER TABLE objects ADD COLUMN meta BLOB NOT NULL DEFAULT x''")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA cache_size=-65536")  # KiB: hot index pages stay in memory
    return conn


class _Reader:
    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


class KeyStore:
    def __init__(self, path: str, conn: sqlite3.Connection) -> None:
        self.path = path
        self._w = conn
        self._local = threading.local()
        # Each thread's read connection, held through a holder so that a thread's ending
        # frees it (sqlite3 connections take no weak references).
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        self._readers_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str, device_uuid: bytes, *, force: bool = False) -> KeyStore:
        if os.path.exists(path):
            if not force:
                raise FormatError(f"key store {path} already exists; use --force to replace it")
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.unlink(path + suffix)
        conn = _connect(path)
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("schema_version", SCHEMA_VERSION), ("device_uuid", device_uuid)],
        )
        conn.execute("COMMIT")
        return cls(path, conn)

    @classmethod
    def open(cls, path: str, device_uuid: bytes) -> KeyStore:
        if not os.path.isfile(path):
            raise FormatError(f"key store {path} does not exist (or is not a file)")
        try:
            conn = _connect(path)
        except sqlite3.Error as exc:
            raise FormatError(f"{path} is not a shoal key store ({exc})") from None
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            conn.close()
            raise FormatError(f"{path} is not a shoal key store ({exc})") from None
        if meta.get("schema_version") == 1:  # made before objects had metadata
            try:
                _migrate_1_to_2(conn)
            except sqlite3.Error as exc:
                conn.close()
                raise FormatError(
                    f"key store {path}: migration to schema 2 failed ({exc})"
                ) from None
            meta["schema_version"] = SCHEMA_VERSION
        if meta.get("schema_version") != SCHEMA_VERSION:
            conn.close()
            raise FormatError(
                f"key store {path} has schema version {meta.get('schema_version')}; "
                f"this shoal reads {SCHEMA_VERSION}"
            )
        if meta.get("device_uuid") != device_uuid:
            conn.close()
            theirs = meta.get("device_uuid")
            raise FormatError(
                f"key store {path} belongs to device "
                f"{uuidlib.UUID(bytes=theirs) if isinstance(theirs, bytes) else theirs}, "
                f"not to device {uuidlib.UUID(bytes=device_uuid)}"
            )
        return cls(path, conn)

    def close(self) -> None:
        with self._readers_lock:
            for holder in list(self._readers):
                holder.conn.close()
        self._w.close()

    def _reader(self) -> sqlite3.Connection:
        holder: _Reader | None = getattr(self._local, "reader", None)
        if holder is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA cache_size=-16384")
            holder = self._local.reader = _Reader(conn)
            with self._readers_lock:
                self._readers.add(holder)
        return holder.conn

    # -- reads (any thread) ----------------------------------------------------------------

    def get(self, namespace: str, name: str, *, tombstones: bool = False) -> Record | None:
        """The object's row; a tombstone only if `tombstones`."""
        r = (
            self._reader()
            .execute(
                f"SELECT {_COLS} FROM objects WHERE namespace = ? AND name = ?", (namespace, name)
            )
            .fetchone()
        )
        if r is None or (not tombstones and r[6] & FLAG_DELETED):
            return None
        return _row(r)

    def by_uuid(self, uid: bytes) -> Record | None:
        r = (
            self._reader()
            .execute(
                f"SELECT {_COLS} FROM objects WHERE uuid = ? AND flags & {FLAG_DELETED} = 0", (uid,)
            )
            .fetchone()
        )
        return _row(r) if r else None

    def list(
        self, namespace: str, prefix: str = "", start_after: str = "", limit: int = 1000
    ) -> builtins.list[Record]:
        sql = (
            f"SELECT {_COLS} FROM objects WHERE namespace = ? AND name >= ? AND name > ? "
            f"AND flags & {FLAG_DELETED} = 0"
        )
        args: list[object] = [namespace, prefix, start_after]
        end = _prefix_end(prefix)
        if prefix and end is not None:
            sql += " AND name < ?"
            args.append(end)
        sql += " ORDER BY name LIMIT ?"
        args.append(limit)
        return [_row(r) for r in self._reader().execute(sql, args)]

    def namespaces(self) -> builtins.list[str]:
        sql = f"SELECT DISTINCT namespace FROM objects WHERE flags & {FLAG_DELETED} = 0"
        return [r[0] for r in self._reader().execute(sql)]

    def page(self, after: tuple[str, str] = ("", ""), limit: int = 1000) -> builtins.list[Record]:
        """Every row after (namespace, name) in key order, tombstones included: `limit` of
        them (recovery and scrub walk the whole store with it)."""
        sql = (
            f"SELECT {_COLS} FROM objects WHERE namespace > ? OR (namespace = ? AND name > ?) "
            "ORDER BY namespace, name LIMIT ?"
        )
        return [_row(r) for r in self._reader().execute(sql, (after[0], after[0], after[1], limit))]

    def scan(self) -> Iterator[Record]:
        """Every record, in key order (used at open and by check)."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            yield from (_row(r) for r in conn.execute(f"SELECT {_COLS} FROM objects"))
        finally:
            conn.close()

    def scan_extents(self) -> Iterator[tuple[str, str, bytes]]:
        """(namespace, name, encoded extents) of every object: the FreeList's rebuild input."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            yield from conn.execute("SELECT namespace, name, extents FROM objects")
        finally:
            conn.close()

    # -- writes (the group-commit leader only) ---------------------------------------------

    def begin(self) -> None:
        self._w.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._w.execute("COMMIT")

    def rollback(self) -> None:
        if self._w.in_transaction:
            self._w.execute("ROLLBACK")

    def w_get_many(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], Record | None]:
        """The current rows of (namespace, name) `keys`, inside the write transaction.
        (One `name IN (...)` per namespace: a row-value IN over a VALUES list scans the
        whole table in SQLite.)"""
        by_ns: dict[str, list[str]] = {}
        for ns, name in keys:
            by_ns.setdefault(ns, []).append(name)
        out: dict[tuple[str, str], Record | None] = {}
        for ns, names in by_ns.items():
            for i in range(0, len(names), 500):
                chunk = names[i : i + 500]
                sql = (
                    f"SELECT {_COLS} FROM objects WHERE namespace = ? "
                    f"AND name IN ({','.join('?' * len(chunk))})"
                )
                for r in self._w.execute(sql, [ns, *chunk]):
                    rec = _row(r)
                    out[(rec.namespace, rec.name)] = rec
        return out

    def w_write(self, records: Iterable[Record], deletes: Iterable[tuple[str, str]]) -> None:
        """Insert or replace `records` (by namespace and name) and delete `deletes`."""
        self._w.executemany(
            f"INSERT OR REPLACE INTO objects ({_COLS}) VALUES ({','.join('?' * _NCOLS)})",
            [_values(r) for r in records],
        )
        deletes = list(deletes)
        if deletes:
            self._w.executemany("DELETE FROM objects WHERE namespace = ? AND name = ?", deletes)
