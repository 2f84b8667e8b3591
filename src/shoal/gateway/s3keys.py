"""What an S3 gateway knows of its users' keys: SigV4 signing keys and SigV2 signatures from
the master, remembered for a while.

An S3 request names its access key and is signed with the key's secret, which the gateway
never sees. It asks the master (shoal.master.server's s3_signing_key and s3_sign_v2: the
gateway's own key needs g on "*", or to be an admin key) for the signing key of (access key,
date, region), which checks signatures of that day and region only, or for the SigV2
signature of a string to sign; each answer comes with the key's rights. Answers are
remembered as the HTTP gateway's key checks are (shoal.gateway.recall, the same limits as
shoal.gateway.auth): a signing key and the rights `GOOD_FOR` seconds (a key removed, or whose
rights change, is seen within that), a refusal `BAD_FOR`, at most `REMEMBERED` answers, and
concurrent requests with one key share one question. SigV2 signatures are remembered per
string to sign (that of a request sent again), by its hash.

A key the master does not know, or whose secret it does not keep yet (made before it kept
them, and not used since: see shoal.master.keyring), raises UnknownAccessKey, S3's
InvalidAccessKeyId; it is remembered as unknown for `BAD_FOR` whatever the date, region or
signature version asked next, so that a client trying keys costs the master one question
per key and `BAD_FOR`. A date or region the master refuses raises InvalidArgument
(remembered for that date and region). Not remembered: Forbidden (the gateway's own key may
not ask: its configuration) and ConnectionError or TimeoutError (the master unreachable: a
503); the next request asks again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shoal.errors import InvalidArgument, NotFound, ShoalError
from shoal.gateway.auth import BAD_FOR, GOOD_FOR, REMEMBERED
from shoal.gateway.recall import Recall

if TYPE_CHECKING:
    from shoal.client.cluster import ClusterClient, S3Grant


class UnknownAccessKey(NotFound):
    """The master has no such key, or no secret for it yet (S3's InvalidAccessKeyId, 403)."""


@dataclass(frozen=True, slots=True)
class _Refusal:
    kind: type[ShoalError]
    message: str


class S3Keys:
    def __init__(
        self,
        signing_key: Callable[[str, str, str], Awaitable[S3Grant]],
        sign_v2: Callable[[str, bytes], Awaitable[S3Grant]],
        *,
        good_for: float = GOOD_FOR,
        bad_for: float = BAD_FOR,
        remembered: int = REMEMBERED,
    ) -> None:
        """`signing_key(access, date, region)` and `sign_v2(access, string_to_sign)` ask the
        master (ClusterClient's methods of those names: see `of`)."""
        self._signing_key, self._sign_v2 = signing_key, sign_v2
        self._known: Recall[tuple[str, ...], S3Grant | _Refusal] = Recall(
            good_for=good_for, bad_for=bad_for, remembered=remembered,
            refused=lambda v: isinstance(v, _Refusal),
        )  # fmt: skip

    @classmethod
    def of(
        cls, client: ClusterClient, *, good_for: float = GOOD_FOR, bad_for: float = BAD_FOR,
        remembered: int = REMEMBERED,
    ) -> S3Keys:  # fmt: skip
        """Asking the master through `client` (whose key needs g on "*", or is an admin's)."""
        return cls(client.s3_signing_key, client.s3_sign_v2, good_for=good_for,
                   bad_for=bad_for, remembered=remembered)  # fmt: skip

    async def signing_key(self, access: str, date: str, region: str) -> S3Grant:
        """The SigV4 signing key of `access` for `date` (YYYYMMDD) and `region`, service s3,
        and its rights: UnknownAccessKey or InvalidArgument if the master refuses, Forbidden
        if this gateway may not ask, ConnectionError or TimeoutError if it cannot say."""
        return await self._lookup(
            access, ("v4", access, date, region), lambda: self._signing_key(access, date, region)
        )

    async def sign_v2(self, access: str, string_to_sign: bytes) -> S3Grant:
        """The SigV2 signature of `string_to_sign` with the secret of `access` (HMAC-SHA1,
        raw), and its rights; refused as `signing_key` is."""
        digest = hashlib.sha256(string_to_sign).hexdigest()
        return await self._lookup(
            access, ("v2", access, digest), lambda: self._sign_v2(access, string_to_sign)
        )

    async def _lookup(
        self, access: str, key: tuple[str, ...], ask: Callable[[], Awaitable[S3Grant]]
    ) -> S3Grant:
        found = self._known.peek(("unknown", access))
        if found is None:
            found = await self._known.get(key, lambda: self._ask(access, ask))
        if isinstance(found, _Refusal):
            raise found.kind(found.message)
        return found

    async def _ask(self, access: str, ask: Callable[[], Awaitable[S3Grant]]) -> S3Grant | _Refusal:
        try:
            return await ask()
        except NotFound as exc:
            refusal = _Refusal(UnknownAccessKey, str(exc))
            self._known.remember(("unknown", access), refusal)
            return refusal
        except InvalidArgument as exc:
            return _Refusal(InvalidArgument, str(exc))
