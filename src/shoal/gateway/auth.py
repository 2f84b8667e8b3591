"""Keys at an HTTP gateway: who may do what over its pool.

minikeyvalue's API has no keys, and a gateway listening on loopback stays as open as that
(only this machine reaches it). On any other address it takes keys unless it is started
with `--no-auth` (`auth_required`): a request carries a shoal key, as
`Authorization: Basic base64(ACCESS:SECRET)` (`curl -u ACCESS:SECRET`) or
`Authorization: Bearer ACCESS:SECRET`, and the key needs the right the method takes on the
gateway's pool: r for GET, HEAD and listing, w for PUT, d for DELETE. No key, a malformed
header, an unknown key or a wrong secret: 401 with `WWW-Authenticate: Basic realm="shoal"`;
a key without the right: 403.

The master alone knows the keys (their secrets' hashes and rights), so a key is checked by
asking it for a ticket with that key, as any client does; the answer (the rights, or the
refusal) is remembered for a short while (`GOOD_FOR`, `BAD_FOR`, at most `REMEMBERED` keys),
so that each request does not cost a round trip to the master, and concurrent requests with
the same key wait for one answer (shoal.gateway.recall). A key removed, or whose rights
change, is thus seen within `GOOD_FOR` seconds. The master unreachable: 503. Secrets are
remembered only as hashes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Awaitable, Callable

from shoal.asgi import Scope
from shoal.cluster.auth import Ticket, is_loopback
from shoal.errors import Forbidden, NotAuthenticated
from shoal.gateway.recall import Recall

GOOD_FOR = 30.0  # seconds a key's rights are remembered
BAD_FOR = 5.0  # seconds a refused key (or secret) is remembered
REMEMBERED = 4096  # keys remembered at most (the least recently used go first)
RIGHT_OF = {"GET": "r", "HEAD": "r", "PUT": "w", "DELETE": "d"}
CHALLENGE = (b"www-authenticate", b'Basic realm="shoal"')


def auth_required(host: str, no_auth: bool) -> bool:
    """Whether a gateway listening on `host` takes keys: on any address but loopback, unless
    it is told otherwise (`--no-auth`)."""
    return not no_auth and not is_loopback(host)


class KeyRefused(NotAuthenticated):
    """No key, a malformed one, an unknown key or a wrong secret (401, with a challenge)."""


def credentials(scope: Scope) -> tuple[str, str]:
    """(access key, secret) from the request's Authorization header; KeyRefused if it has
    none or it is malformed."""
    value = b""
    for k, v in scope["headers"]:
        if k == b"authorization":
            value = v
            break
    if not value:
        raise KeyRefused("this gateway takes keys: curl -u ACCESS_KEY:SECRET_KEY ...")
    kind, _, rest = value.decode("latin-1").strip().partition(" ")
    pair = rest.strip()
    if kind.lower() == "basic":
        try:
            pair = base64.b64decode(pair, validate=True).decode()
        except (binascii.Error, ValueError):
            raise KeyRefused("Authorization: Basic takes base64(ACCESS_KEY:SECRET_KEY)") from None
    elif kind.lower() != "bearer":
        raise KeyRefused("Authorization is Basic base64(ACCESS:SECRET) or Bearer ACCESS:SECRET")
    access, sep, secret = pair.partition(":")
    if not sep or not access or not secret:
        raise KeyRefused("a key is ACCESS_KEY:SECRET_KEY")
    return access, secret


class KeyCheck:
    """Checks each request's key against its rights on `pool`; `authenticate(access, secret)`
    asks the master (ClusterClient.authenticate) and raises NotAuthenticated for a bad key."""

    def __init__(
        self,
        authenticate: Callable[[str, str], Awaitable[Ticket]],
        pool: str,
        *,
        good_for: float = GOOD_FOR,
        bad_for: float = BAD_FOR,
        remembered: int = REMEMBERED,
    ) -> None:
        self.authenticate, self.pool = authenticate, pool
        # sha256(access, secret): the ticket's contents, or why it was refused
        self._known: Recall[bytes, Ticket | str] = Recall(
            good_for=good_for, bad_for=bad_for, remembered=remembered,
            refused=lambda v: isinstance(v, str),
        )  # fmt: skip

    async def check(self, scope: Scope) -> Ticket:
        """The request's key, if it may do what the request asks on the pool; KeyRefused
        (401) or Forbidden (403) if not; ConnectionError or TimeoutError (503) if the master
        cannot say."""
        access, secret = credentials(scope)
        found = await self._lookup(access, secret)
        if isinstance(found, str):
            raise KeyRefused(found)
        right = RIGHT_OF.get(scope["method"])
        if right is None:
            if not found.rights:
                raise Forbidden(f"key {access} has no rights")
        else:
            found.require(self.pool, right)
        return found

    async def _lookup(self, access: str, secret: str) -> Ticket | str:
        h = hashlib.sha256(f"{access}\x00{secret}".encode()).digest()
        return await self._known.get(h, lambda: self._ask(access, secret))

    async def _ask(self, access: str, secret: str) -> Ticket | str:
        try:  # (the master unreachable: nothing remembered, the next request asks again)
            return await self.authenticate(access, secret)
        except NotAuthenticated:
            return f"unknown access key {access!r} or wrong secret"
