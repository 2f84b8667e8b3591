"""Client keys, rights and tickets (0-stor's ACL, signed like a cephx ticket).

A client key is an access key and a secret; the master keeps a hash of the secret and the
key's rights: per namespace (a pool, or "*" for every one), any of r(ead) w(rite) d(elete)
a(dmin). A client proves its secret to the master once and gets a ticket: its access key and
rights and an expiry, signed with the cluster's ticket key (HMAC-SHA256). Daemons hold the
ticket key (the master gives it to them over mutual TLS) and check a ticket and the right an
operation needs on their own, without asking the master.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import msgpack

from shoal.errors import Forbidden, InvalidArgument, NotAuthenticated

RIGHTS = "rwda"
TICKET_TTL = 3600.0
_MAC = 32


def check_rights(rights: dict[str, str]) -> dict[str, str]:
    for ns, r in rights.items():
        if not isinstance(ns, str) or not ns or not isinstance(r, str):
            raise InvalidArgument(f"rights map a namespace (or '*') to letters, not {ns!r}: {r!r}")
        bad = set(r) - set(RIGHTS)
        if bad:
            raise InvalidArgument(
                f"unknown right(s) {''.join(sorted(bad))!r} for {ns!r}: use r, w, d and a"
            )
    return rights


def parse_rights(text: str) -> dict[str, str]:
    """'pool1=rw,pool2=r,*=a' -> {'pool1': 'rw', 'pool2': 'r', '*': 'a'}."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        ns, sep, r = part.partition("=")
        if not sep:
            raise InvalidArgument(f"a right is NAMESPACE=LETTERS, not {part!r}")
        out[ns.strip()] = out.get(ns.strip(), "") + r.strip()
    return check_rights(out)


def new_key() -> tuple[str, str]:
    """A fresh (access key, secret)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    access = "SK" + "".join(secrets.choice(alphabet) for _ in range(18))
    return access, secrets.token_urlsafe(30)


def hash_secret(secret: str) -> bytes:
    # The secrets are 240 random bits: a plain hash cannot be searched.
    return hashlib.sha256(b"shoal-key\x00" + secret.encode()).digest()


def secret_matches(secret: str, stored: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored)


@dataclass(frozen=True, slots=True)
class Ticket:
    access_key: str
    rights: dict[str, str]
    expires: float

    def allows(self, namespace: str, right: str) -> bool:
        pool = namespace.partition("#")[0]  # a pool's own namespaces ("pool#stripes") are its
        return right in self.rights.get(pool, "") or right in self.rights.get("*", "")

    def require(self, namespace: str, right: str) -> None:
        if not self.allows(namespace, right):
            what = {"r": "read", "w": "write", "d": "delete", "a": "administer"}[right]
            raise Forbidden(f"key {self.access_key} may not {what} {namespace!r}")


def issue(key: bytes, access_key: str, rights: dict[str, str], ttl: float = TICKET_TTL) -> bytes:
    body: bytes = msgpack.packb(
        {"k": access_key, "r": rights, "x": round(time.time() + ttl, 3)}, use_bin_type=True
    )
    return body + hmac.new(key, body, hashlib.sha256).digest()


def verify(key: bytes, ticket: Any, now: float | None = None) -> Ticket:
    """The ticket's contents if `key` signed it and it has not expired; NotAuthenticated if
    not."""
    if not isinstance(ticket, bytes) or len(ticket) <= _MAC:
        raise NotAuthenticated("no ticket: authenticate with the master first")
    body, mac = ticket[:-_MAC], ticket[-_MAC:]
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), mac):
        raise NotAuthenticated("the ticket's signature does not match (another cluster?)")
    try:
        d = msgpack.unpackb(body, raw=False)
        t = Ticket(str(d["k"]), dict(d["r"]), float(d["x"]))
    except Exception:
        raise NotAuthenticated("the ticket is malformed") from None
    if t.expires < (time.time() if now is None else now):
        raise NotAuthenticated(f"the ticket of key {t.access_key} has expired: authenticate again")
    return t
