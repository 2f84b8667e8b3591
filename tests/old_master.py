"""A master.db as the master made it before it kept the keys' secrets sealed (before
shoal.master.keyring): its schema, ticket key, map 0 and keys with only their secrets'
hashes. For the tests of what a master of today does with one."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import msgpack

from shoal.cluster.auth import hash_secret
from shoal.cluster.map import ClusterMap

# The master's schema before it kept sealed secrets (src/shoal/master/state.py at 446abbb).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS maps (epoch INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS daemon_ids (uuid TEXT PRIMARY KEY, id INTEGER NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS client_keys (
    access_key TEXT PRIMARY KEY, secret_hash BLOB NOT NULL, rights BLOB NOT NULL,
    created REAL NOT NULL, comment TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


def old_master_db(path: Path, keys: dict[str, tuple[str, dict[str, str]]]) -> None:
    """Make `path` as the old master made its master.db, with `keys` (access: (secret,
    rights)), inserted as its add_key did."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(OLD_SCHEMA)
        with db:
            db.execute("INSERT INTO settings VALUES ('ticket_key', ?)", (os.urandom(32),))
            db.execute(
                "INSERT INTO maps VALUES (0, ?)",
                (msgpack.packb(ClusterMap().to_dict(), use_bin_type=True),),
            )
            for i, (access, (secret, rights)) in enumerate(keys.items()):
                db.execute(
                    "INSERT INTO client_keys VALUES (?, ?, ?, ?, ?)",
                    (access, hash_secret(secret), msgpack.packb(rights, use_bin_type=True),
                     1.0e9 + i, "made by the old master"),
                )  # fmt: skip
    finally:
        db.close()
