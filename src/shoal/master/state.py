"""The master's state, in SQLite: every map by epoch, the daemons' identities, client keys,
and the cluster's ticket key. One writer (the master process); WAL, synchronous FULL: an
epoch the master has announced is on disk."""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from typing import Any

import msgpack

from shoal.cluster.auth import check_rights, hash_secret, new_key
from shoal.cluster.map import ClusterMap
from shoal.errors import NotFound

KEEP_MAPS = 1000  # older maps are dropped: a client that far behind gets the whole map

_SCHEMA = """
CREATE TABLE IF NOT EXISTS maps (epoch INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS daemon_ids (uuid TEXT PRIMARY KEY, id INTEGER NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS client_keys (
    access_key TEXT PRIMARY KEY, secret_hash BLOB NOT NULL, rights BLOB NOT NULL,
    created REAL NOT NULL, comment TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


class MasterState:
    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
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
                "INSERT INTO client_keys VALUES (?, ?, ?, ?, ?)",
                (access, hash_secret(secret), _pack(check_rights(rights)), time.time(), comment),
            )

    def key(self, access_key: str) -> tuple[bytes, dict[str, str]] | None:
        row = self.db.execute(
            "SELECT secret_hash, rights FROM client_keys WHERE access_key=?", (access_key,)
        ).fetchone()
        return (bytes(row[0]), msgpack.unpackb(row[1], raw=False)) if row else None

    def keys(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT access_key, rights, created, comment FROM client_keys ORDER BY created"
        ).fetchall()
        return [
            {"access_key": a, "rights": msgpack.unpackb(r, raw=False), "created": c,
             "comment": m}
            for a, r, c, m in rows
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
