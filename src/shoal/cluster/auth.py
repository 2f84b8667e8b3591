"""Client keys, rights and tickets (0-stor's ACL, signed like a cephx ticket).

A client key is an access key and a secret; the master keeps a hash of the secret (and the
secret itself, sealed: shoal.master.keyring) and the key's rights: per namespace (a pool, or
"*" for every one), any of r(ead) w(rite) d(elete) a(dmin), and on "*" only g(ateway): the
key may ask the master for what checks other keys' S3 signatures (`s3_signing_key`,
`s3_sign_v2`), as an S3 gateway does for its users; an admin key may too. A client proves
its secret to the master once and gets a ticket: its access key and rights and an expiry,
signed with the cluster's ticket key (HMAC-SHA256). Daemons hold the ticket key (the master
gives it to them over mutual TLS) and check a ticket and the right an operation needs on
their own, without asking the master.

Signed read URLs (the daemons' HTTP endpoint, where an HTTP gateway redirects a GET): the
holder of a ticket signs `(namespace, name, expiry)` with a key derived from the ticket's
MAC, and the URL carries the ticket's body (its access key, rights and expiry), the expiry
and that signature: `?ticket=B64(body)&expires=UNIX&sig=B64(HMAC)`. A daemon recomputes the
ticket's MAC from the body with the ticket key it holds, then the derived key, then the
signature; so it checks, without asking anyone, that the URL was signed by the holder of a
ticket the master issued, for this object and not another, before its expiry and the
ticket's, and that the ticket grants read on the namespace: what the native port checks.
The MAC itself never travels in a URL and cannot be recovered from one (HMAC is one-way), so
a URL gives a read of one object for a minute, never a ticket usable on the native port; and
the gateway signs with its own ticket, so it needs no cluster secret. Expiries are absolute
times: signer and daemon need clocks that agree (to well under the URL's lifetime).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

import msgpack

from shoal.errors import Forbidden, InvalidArgument, NotAuthenticated

RIGHTS = "rwdag"
CLUSTER_RIGHTS = "g"  # rights that mean something on "*" only
TICKET_TTL = 3600.0
URL_TTL = 60.0  # seconds a signed read URL is good for, by default
_MAC = 32


def check_rights(rights: dict[str, str]) -> dict[str, str]:
    for ns, r in rights.items():
        if not isinstance(ns, str) or not ns or not isinstance(r, str):
            raise InvalidArgument(f"rights map a namespace (or '*') to letters, not {ns!r}: {r!r}")
        bad = set(r) - set(RIGHTS)
        if bad:
            raise InvalidArgument(
                f"unknown right(s) {''.join(sorted(bad))!r} for {ns!r}: use r, w, d, a and g"
            )
        if ns != "*" and set(r) & set(CLUSTER_RIGHTS):
            raise InvalidArgument(f"g (gateway) is a right on '*' only, not on {ns!r}")
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


def s3_signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    """The SigV4 signing key of `secret` for one day (`date`, YYYYMMDD), region and service:
    HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request"), as AWS
    documents it. It checks (and makes) signatures of that scope only, and the secret cannot
    be recovered from it."""

    def mac(key: bytes, text: str) -> bytes:
        return hmac.new(key, text.encode(), hashlib.sha256).digest()

    return mac(mac(mac(mac(("AWS4" + secret).encode(), date), region), service), "aws4_request")


def s3_sign_v2(secret: str, string_to_sign: bytes) -> bytes:
    """The SigV2 signature of `string_to_sign` (HMAC-SHA1 with the secret itself; requests
    carry it in base64)."""
    return hmac.new(secret.encode(), string_to_sign, hashlib.sha1).digest()


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
            what = {"r": "read", "w": "write", "d": "delete", "a": "administer",
                    "g": "check S3 signatures on"}[right]  # fmt: skip
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


def contents(ticket: bytes) -> Ticket:
    """What a ticket says, unchecked: for a client that got it from the master over its own
    connection (it cannot check the signature, which only the master and daemons can)."""
    try:
        d = msgpack.unpackb(ticket[:-_MAC], raw=False)
        return Ticket(str(d["k"]), dict(d["r"]), float(d["x"]))
    except Exception:
        raise NotAuthenticated("the ticket is malformed") from None


def _url_key(mac: bytes) -> bytes:
    return hmac.new(mac, b"shoal-url\x00", hashlib.sha256).digest()


def _url_mac(mac: bytes, namespace: str, name: str, expires: int) -> bytes:
    msg: bytes = msgpack.packb(["read", namespace, name, expires], use_bin_type=True)
    return hmac.new(_url_key(mac), msg, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_read(
    ticket: bytes, namespace: str, name: str, ttl: float = URL_TTL, now: float | None = None
) -> str:
    """The query string (`ticket=...&expires=...&sig=...`, URL-safe as it is) that lets whoever
    has it GET or HEAD `name` of `namespace` from a daemon's HTTP endpoint for `ttl` seconds,
    signed with `ticket` (see the module's doc)."""
    if len(ticket) <= _MAC:
        raise InvalidArgument("sign_read needs a ticket from the master")
    expires = math.ceil((time.time() if now is None else now) + ttl)
    sig = _url_mac(ticket[-_MAC:], namespace, name, expires)
    return f"ticket={_b64(ticket[:-_MAC])}&expires={expires}&sig={_b64(sig)}"


def check_read(
    key: bytes, namespace: str, name: str, query: str, now: float | None = None
) -> Ticket:
    """The ticket of a signed read URL of `name` in `namespace`, whose query string is `query`,
    with `key` the cluster's ticket key: NotAuthenticated if it is unsigned, malformed,
    expired, tampered with or signed for another object, Forbidden if its ticket may not read
    the namespace."""
    params: dict[str, str] = {}
    for part in query.split("&"):
        k, _, v = part.partition("=")
        params.setdefault(k, v)
    if not all(params.get(k) for k in ("ticket", "expires", "sig")):
        raise NotAuthenticated(
            "unsigned URL: a daemon serves only URLs signed with a ticket (a gateway's "
            "redirect carries one)"
        )
    try:
        body, sig = _unb64(params["ticket"]), _unb64(params["sig"])
        expires = int(params["expires"])
    except (binascii.Error, ValueError):
        raise NotAuthenticated("the URL's signature is malformed") from None
    mac = hmac.new(key, body, hashlib.sha256).digest()
    if not hmac.compare_digest(_url_mac(mac, namespace, name, expires), sig):
        raise NotAuthenticated("the URL's signature does not match this object")
    t = time.time() if now is None else now
    if expires < t:
        raise NotAuthenticated(f"the signed URL expired {t - expires:.0f} s ago: ask again")
    ticket = verify(key, body + mac, t)
    ticket.require(namespace, "r")
    return ticket


def is_loopback(host: str) -> bool:
    """Whether `host` (as given to listen on) is a loopback address or `localhost`: only this
    machine can reach it."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))
