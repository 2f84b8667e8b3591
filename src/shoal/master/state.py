"""The master's state, in SQLite: every map by epoch, the daemons' identities, client keys,
and the cluster's ticket key. One writer (the master process); WAL, synchronous FULL: an
epoch the master has announced is on disk.

A client key's row holds the hash of its secret (what AUTH checks) and the secret sealed
(shoal.master.keyring, its key in `secrets.key` beside the database: what S3 signatures are
checked with). Databases made before the sealed secrets get the column when opened; their
keys have none until they next authenticate (`seal_secret`)."""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
from typing import Any, NamedTuple

import msgpack

from shoal.cluster.auth import check_rights, hash_secret, new_key
from shoal.cluster.map import ClusterMap
from shoal.errors import NotFound
from shoal.master.keyring import FILE as KEYRING_FILE
from shoal.master.keyring import Keyring

KEEP_MAPS = 1000  # older maps are dropped: a client that far behind gets the whole map

_SCHEMA = """
CREATE TABLE IF NOT EXISTS maps (epoch INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS daemon_ids (uuid TEXT PRIMARY KEY, id INTEGER NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS client_keys (
    access_key TEXT PRIMARY KEY, secret_hash BLOB NOT NULL, rights BLOB NOT NULL,
    created REAL NOT NULL, comment TEXT NOT NULL DEFAULT '', secret_sealed BLOB);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""
log = logging.getLogger("shoal.master")


class KeyRow(NamedTuple):
    secret_hash: bytes
    rights: dict[str, str]
    s3: bool  # its secret is sealed here (and opens): it can sign S3 requests


class MasterState:
    def __init__(self, path: str, keyring: str | None = None) -> None:
        """The state in the SQLite file `path`; `keyring`: the file of the key that seals
        the keys' secrets (`secrets.key` beside `path` by default)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        keyring = keyring or os.path.join(os.path.dirname(os.path.abspath(path)), KEYRING_FILE)
        self.keyring = Keyring.load(keyring)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(client_keys)")}
        if "secret_sealed" not in columns:  # (a database made before S3)
            self.db.execute("ALTER TABLE client_keys ADD COLUMN secret_sealed BLOB")
        other = sum(
            self.keyring.sealed_by_another(r[0])
            for r in self.db.execute("SELECT secret_sealed FROM client_keys")
        )
        if other:
            log.warning(
                "%d key(s) have their secret sealed under another keyring key than %s "
                "(replaced or lost?): they are not S3-capable until they next authenticate",
                other, keyring,
            )  # fmt: skip
        self.created = False
        with self.db:
            row = self.db.execute("SELECT value FROM settings WHERE name='ticket_key'").fetchone()
            if row is None:
                self.created = True
                self.db.execute(
                    "INSERT INTO settings VALUES ('ticket_key', ?)", (secrets.token_bytes(32),)
                )
                self.db.execute(
                    "INSERT OR IGNORE INTO maps VALUES (0, ?)", (_pack(ClusterMap().to_dict()),)
                )

    def close(self) -> None:
        self.db.close()

    # -- maps --------------------------------------------------------------------------------

    def latest(self) -> ClusterMap:
        row = self.db.execute("SELECT body FROM maps ORDER BY epoch DESC LIMIT 1").fetchone()
        return ClusterMap.from_dict(msgpack.unpackb(row[0], raw=False))

    def map_at(self, epoch: int) -> ClusterMap | None:
        row = self.db.execute("SELECT body FROM maps WHERE epoch=?", (epoch,)).fetchone()
        return ClusterMap.from_dict(msgpack.unpackb(row[0], raw=False)) if row else None

    def save(self, m: ClusterMap) -> None:
        with self.db:
            self.db.execute("INSERT INTO maps VALUES (?, ?)", (m.epoch, _pack(m.to_dict())))
            self.db.execute("DELETE FROM maps WHERE epoch < ?", (m.epoch - KEEP_MAPS,))

    # -- daemons -----------------------------------------------------------------------------

    def daemon_id(self, uuid: str, proposed: int) -> int:
        """The id of the daemon whose disk has `uuid`: the one it had, or `proposed`."""
        with self.db:
            row = self.db.execute("SELECT id FROM daemon_ids WHERE uuid=?", (uuid,)).fetchone()
            if row is not None:
                return int(row[0])
            taken = self.db.execute("SELECT MAX(id) FROM daemon_ids").fetchone()[0]
            new = max(proposed, (taken if taken is not None else -1) + 1)
            self.db.execute("INSERT INTO daemon_ids VALUES (?, ?)", (uuid, new))
            return new

    def forget_daemon(self, daemon_id: int) -> None:
        """Forget the disk of a removed daemon, but not its id: an id is never given again
        (a pool may name it: a new disk must not take its place there)."""
        with self.db:
            self.db.execute(
                "UPDATE daemon_ids SET uuid = 'removed:' || id WHERE id=?", (daemon_id,)
            )

    # -- keys --------------------------------------------------------------------------------

    def setting(self, name: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM settings WHERE name=?", (name,)).fetchone()
        return bytes(row[0]) if row else None

    def set_setting(self, name: str, value: bytes) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (name, value))

    @property
    def ticket_key(self) -> bytes:
        row = self.db.execute("SELECT value FROM settings WHERE name='ticket_key'").fetchone()
        return bytes(row[0])

    def create_key(self, rights: dict[str, str], comment: str = "") -> tuple[str, str]:
        access, secret = new_key()
        self.add_key(access, secret, rights, comment)
        return access, secret

    def add_key(self, access: str, secret: str, rights: dict[str, str], comment: str = "") -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO client_keys (access_key, secret_hash, rights, created, comment, "
                "secret_sealed) VALUES (?, ?, ?, ?, ?, ?)",
                (access, hash_secret(secret), _pack(check_rights(rights)), time.time(), comment,
                 self.keyring.seal(access, secret)),
            )  # fmt: skip

    def key(self, access_key: str) -> KeyRow | None:
        row = self.db.execute(
            "SELECT secret_hash, rights, secret_sealed FROM client_keys WHERE access_key=?",
            (access_key,),
        ).fetchone()
        if row is None:
            return None
        sealed = None if row[2] is None else bytes(row[2])
        s3 = self.keyring.open(access_key, sealed) is not None
        return KeyRow(bytes(row[0]), msgpack.unpackb(row[1], raw=False), s3)

    def secret(self, access_key: str) -> tuple[str | None, dict[str, str]] | None:
        """The key's secret (None if the master has none: see the module's doc) and rights;
        None if there is no such key."""
        row = self.db.execute(
            "SELECT rights, secret_sealed FROM client_keys WHERE access_key=?", (access_key,)
        ).fetchone()
        if row is None:
            return None
        sealed = None if row[1] is None else bytes(row[1])
        return self.keyring.open(access_key, sealed), msgpack.unpackb(row[0], raw=False)

    def seal_secret(self, access_key: str, secret: str) -> None:
        """Keep the secret of a key that has none here (made before the master kept secrets,
        or sealed under a lost keyring key), once its owner has proven it (AUTH)."""
        with self.db:
            self.db.execute(
                "UPDATE client_keys SET secret_sealed=? WHERE access_key=?",
                (self.keyring.seal(access_key, secret), access_key),
            )

    def keys(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT access_key, rights, created, comment, secret_sealed FROM client_keys "
            "ORDER BY created"
        ).fetchall()
        return [
            {"access_key": a, "rights": msgpack.unpackb(r, raw=False), "created": c,
             "comment": m,
             "s3": self.keyring.open(a, None if s is None else bytes(s)) is not None}
            for a, r, c, m, s in rows
        ]  # fmt: skip

    def delete_key(self, access_key: str) -> None:
        with self.db:
            cur = self.db.execute("DELETE FROM client_keys WHERE access_key=?", (access_key,))
        if not cur.rowcount:
            raise NotFound(f"no key {access_key}")

    def set_rights(self, access_key: str, rights: dict[str, str]) -> None:
        with self.db:
            cur = self.db.execute(
                "UPDATE client_keys SET rights=? WHERE access_key=?",
                (_pack(check_rights(rights)), access_key),
            )
        if not cur.rowcount:
            raise NotFound(f"no key {access_key}")


def _pack(value: Any) -> bytes:
    out: bytes = msgpack.packb(value, use_bin_type=True)
    return out
