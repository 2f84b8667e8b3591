"""Client keys' secrets, sealed at rest: what the master needs to check S3 signatures.

S3's signatures are HMACs keyed by the secret itself (SigV4 derives its signing key from
it, SigV2 uses it as it is), so whoever checks them needs the secret, not a hash of it.
Ceph RGW and Garage keep S3 secrets as they are in their metadata; MinIO keeps them
encrypted. The master keeps each key's secret sealed with AES-256-GCM under a key of its
own, the keyring key: 32 random bytes in `secrets.key` beside master.db (mode 0600, made the
first time the master opens its state), the access key as associated data (a sealed secret
copied into another key's row does not open), and the first bytes of a hash of the keyring
key in front of each (a secret sealed under another keyring key is recognised as such). The
hash of the secret is kept as before: the native protocol's AUTH checks it, not this.

What that protects, honestly: a copy of master.db without secrets.key (a backup of the
database alone, a file attached to a bug report, `sqlite3 .dump`, the shared state store of
several masters that DESIGN plans, etcd, where secrets.key would not go) holds no secret
that signs an S3 request. It does not protect against whoever can read the master's folder
(its user, root, the disk taken away): secrets.key sits there, and opens every secret. Nor
does it protect the data from a copy of master.db alone, which holds the cluster's ticket key
(tickets for any rights can be forged with it while it stands); what it keeps out of such a
copy is the clients' secrets, which applications hold and which outlive a ticket key. So:
back secrets.key up apart from master.db (or not at all, see below), and protect the folder.

secrets.key lost or replaced: the secrets sealed under the old one no longer open. The keys
still work on the native protocol (their hashes are intact) and become S3-capable again the
first time they authenticate (the master sees the secret then and seals it anew), as keys
made before the master kept secrets do (`Keyring.open` gives None for them all).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shoal.errors import InvalidArgument

FILE = "secrets.key"
_MAGIC = b"S1"
_ID = 8  # bytes of the keyring key's hash that name it in a sealed secret
_NONCE = 12


class Keyring:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a keyring key is 32 bytes")
        self._aead = AESGCM(key)
        self.id = hashlib.sha256(b"shoal-keyring\x00" + key).digest()[:_ID]

    @classmethod
    def load(cls, path: str) -> Keyring:
        """The keyring whose key is in `path`, made (32 random bytes, mode 0600) if there is
        none; two processes that make it at once end with the same one. InvalidArgument if
        `path` holds anything else."""
        try:
            return cls._read(path)
        except FileNotFoundError:
            pass
        tmp = f"{path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):  # (left by a crash)
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            with contextlib.suppress(FileExistsError):  # (another made it first: theirs)
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return cls._read(path)

    @classmethod
    def _read(cls, path: str) -> Keyring:
        with open(path, "rb") as f:
            key = f.read(33)
        if len(key) != 32:
            raise InvalidArgument(
                f"{path} is not the master's keyring key (32 bytes, not {len(key)}): restore "
                f"it, or move it away to make a new one (keys become S3-capable again when "
                f"next used)"
            )
        return cls(key)

    def seal(self, access_key: str, secret: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        box = self._aead.encrypt(nonce, secret.encode(), access_key.encode())
        return _MAGIC + self.id + nonce + box

    def open(self, access_key: str, sealed: bytes | None) -> str | None:
        """The secret sealed in `sealed` for `access_key`; None if there is none (a key made
        before the master kept secrets), or it was sealed under another keyring key or for
        another access key, or altered."""
        if sealed is None or len(sealed) < 2 + _ID + _NONCE + 16:
            return None
        head, nonce, box = (
            sealed[: 2 + _ID],
            sealed[2 + _ID : 2 + _ID + _NONCE],
            sealed[2 + _ID + _NONCE :],
        )
        if head != _MAGIC + self.id:
            return None
        try:
            return self._aead.decrypt(nonce, box, access_key.encode()).decode()
        except (InvalidTag, UnicodeDecodeError):
            return None

    def sealed_by_another(self, sealed: bytes | None) -> bool:
        """Whether `sealed` holds a secret sealed under another keyring key."""
        return sealed is not None and sealed[: 2 + _ID] != _MAGIC + self.id
