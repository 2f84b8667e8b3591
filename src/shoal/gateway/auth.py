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
the same key wait for one answer. A key removed, or whose rights change, is thus seen within
`GOOD_FOR` seconds. The master unreachable: 503. Secrets are remembered only as hashes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from shoal.asgi import Scope
from shoal.cluster.auth import Ticket, is_loopback
from shoal.errors import Forbidden, NotAuthenticated

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
        self.good_for, self.bad_for, self.remembered = good_for, bad_for, remembered
        # sha256(access, secret): (until, the ticket's contents or why it was refused)
        self._known: OrderedDict[bytes, tuple[float, Ticket | str]] = OrderedDict()
        self._asking: dict[bytes, asyncio.Task[Ticket | str]] = {}

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
        known = self._known.get(h)
        if known is not None and known[0] > time.monotonic():
            self._known.move_to_end(h)
            return known[1]
        asking = self._asking.get(h)
        if asking is None:  # (a task of its own: a request that goes away does not cancel it)
            asking = self._asking[h] = asyncio.ensure_future(self._ask(h, access, secret))
            asking.add_done_callback(_retrieved)
        return await asyncio.shield(asking)

    async def _ask(self, h: bytes, access: str, secret: str) -> Ticket | str:
        try:
            try:
                found: Ticket | str = await self.authenticate(access, secret)
            except NotAuthenticated:
                found = f"unknown access key {access!r} or wrong secret"
        finally:  # (the master unreachable: nothing remembered, the next request asks again)
            del self._asking[h]
        ttl = self.good_for if isinstance(found, Ticket) else self.bad_for
        self._known[h] = (time.monotonic() + ttl, found)
        while len(self._known) > self.remembered:
            self._known.popitem(last=False)
        return found


def _retrieved(task: asyncio.Future[Ticket | str]) -> None:
    if not task.cancelled():
        task.exception()  # (seen: no "never retrieved" if every request waiting went away)
