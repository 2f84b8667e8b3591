"""SigV2 for S3 (older clients): "Authorization: AWS AKID:SIG" and query strings with
AWSAccessKeyId, Expires and Signature, as "Signing and Authenticating REST Requests" has it.

    access_key = verify(request, sign, now=time.time(), resource=None)
        -> the access key of a signed request, None when the request carries no SigV2;
           raises S3Error otherwise
    sign(access_key, string_to_sign: bytes) -> bytes | None
        HMAC-SHA1 with the key's secret (None: unknown key): SigV2 signs with the secret
        itself, which the master keeps (cluster.auth.s3_sign_v2); signer(secret) makes one
        from a secret lookup
    or in two steps, for a gateway that asks without blocking:
    claim = prepare(request, now=..., resource=None) -> Claim | None; have each of
        claim.strings_to_sign signed until claim.matches(signature), else raise
        claim.mismatch()
    string_to_sign(request, date, resource=None) -> str

The string to sign: VERB \\n Content-MD5 \\n Content-Type \\n Date \\n, then the x-amz-*
headers (lowercase, sorted, values trimmed and unfolded, inner spaces kept, repeated values
joined by ',', each "name:value\\n"), then the
canonicalized resource: the path-style path as sent ("/bucket/key" encoded: a gateway that
took the bucket from the Host header passes `resource`), then the sub-resources of the query
that S3 signs (acl, uploadId, versionId, response-content-type, ...), sorted, values
decoded. Date is the Date header, or empty when x-amz-date is sent (as AWS says; a Date line
is tried too, as botocore signs it, and so is x-amz-date's value, as AWS's DELETE example
signs it); for the query form it is Expires.

Header requests must be dated within 15 minutes of `now` (RequestTimeTooSkewed); query ones
are refused after Expires (AccessDenied "Request has expired"). Signatures are compared in
constant time.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from shoal.proto.s3.errors import S3Error, expired
from shoal.proto.s3.sigv4 import MAX_SKEW, Request

__all__ = ["SUBRESOURCES", "Claim", "Sign", "prepare", "signer", "string_to_sign", "verify"]

# sign(access_key, string_to_sign) -> HMAC-SHA1 with the key's secret (raw), None: no such key
Sign = Callable[[str, bytes], "bytes | None"]
_FOLD = re.compile(r"\s*\r?\n\s*")  # a folded header line (inner spaces stay as sent)

SUBRESOURCES = frozenset(
    {
        "accelerate",
        "acl",
        "analytics",
        "cors",
        "defaultObjectAcl",
        "delete",
        "encryption",
        "inventory",
        "legal-hold",
        "lifecycle",
        "location",
        "logging",
        "metrics",
        "notification",
        "object-lock",
        "partNumber",
        "policy",
        "replication",
        "requestPayment",
        "response-cache-control",
        "response-content-disposition",
        "response-content-encoding",
        "response-content-language",
        "response-content-type",
        "response-expires",
        "restore",
        "retention",
        "select",
        "select-type",
        "storageClass",
        "tagging",
        "torrent",
        "uploadId",
        "uploads",
        "versionId",
        "versioning",
        "versions",
        "website",
    }
)


def _resource(request: Request, resource: str | None) -> str:
    subs = sorted(
        (k, v, "=" in raw)
        for raw, (k, v) in zip(
            [p for p in request.query.split("&") if p], request.params(), strict=True
        )
        if k in SUBRESOURCES
    )
    text = resource if resource is not None else request.path
    if subs:
        text += "?" + "&".join(f"{k}={v}" if eq else k for k, v, eq in subs)
    return text


def string_to_sign(
    request: Request, date: str, resource: str | None = None, *, amz_date: bool = True
) -> str:
    """The string SigV2 signs; `amz_date=False` leaves x-amz-date out of the x-amz-* lines."""
    amz: dict[str, list[str]] = {}
    for k, v in request.headers:
        if k.startswith("x-amz-") and (amz_date or k != "x-amz-date"):
            amz.setdefault(k, []).append(_FOLD.sub(" ", v).strip())
    lines = [
        request.method.upper(),
        (request.header("content-md5") or "").strip(),
        (request.header("content-type") or "").strip(),
        date,
    ]
    lines += [f"{k}:{','.join(amz[k])}" for k in sorted(amz)]
    return "\n".join(lines) + "\n" + _resource(request, resource)


def signer(secret: Callable[[str], str | None]) -> Sign:
    """The Sign of whoever holds the secrets (tests, a gateway given its keys)."""

    def sign(access_key: str, string_to_sign: bytes) -> bytes | None:
        raw = secret(access_key)
        if raw is None:
            return None
        return hmac.new(raw.encode(), string_to_sign, hashlib.sha1).digest()

    return sign


def _decode_signature(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


@dataclass(frozen=True, slots=True)
class Claim:
    """A SigV2 request that passed every check but its signature: have the strings to sign
    signed with the key's secret, in order, until one `matches`."""

    access_key: str
    strings_to_sign: tuple[bytes, ...]  # AWS's rule first, then what other clients sign
    provided: str  # the signature as sent (base64)

    def matches(self, signature: bytes) -> bool:
        return hmac.compare_digest(signature, _decode_signature(self.provided))

    def mismatch(self) -> S3Error:
        return S3Error(
            "SignatureDoesNotMatch",
            AWSAccessKeyId=self.access_key,
            StringToSign=self.strings_to_sign[0].decode("utf-8", "replace"),
            SignatureProvided=self.provided,
        )


def prepare(request: Request, *, now: float, resource: str | None = None) -> Claim | None:
    """Every check of a SigV2 request but its signature: the Claim, None when the request
    carries no SigV2, S3Error for every refusal."""
    auth = request.header("authorization")
    params = dict(request.params())
    if auth is not None and auth.startswith("AWS "):
        access_key, colon, provided = auth[4:].strip().rpartition(":")
        if not colon or not access_key or not provided:
            raise S3Error(
                "InvalidArgument",
                "AWS authorization header is invalid.  Expected AwsAccessKeyId:signature",
                ArgumentName="Authorization",
                ArgumentValue=auth,
            )
        dates = _header_dates(request, now)
    elif auth is None and "AWSAccessKeyId" in params and "X-Amz-Algorithm" not in params:
        if "Signature" not in params or "Expires" not in params:
            raise S3Error(
                "AccessDenied",
                "Query-string authentication requires the Signature, Expires and "
                "AWSAccessKeyId parameters",
            )
        access_key, provided = params["AWSAccessKeyId"], params["Signature"]
        try:
            expires = int(params["Expires"])
        except ValueError:
            raise S3Error("AccessDenied", "Invalid date (should be seconds since epoch)") from None
        if now > expires:
            raise expired(_iso(expires), _iso(now))
        dates = [(params["Expires"], True)]
    else:
        return None
    strings = tuple(
        string_to_sign(request, date, resource, amz_date=amz_date).encode(
            "utf-8", "surrogateescape"
        )
        for date, amz_date in dates
    )
    return Claim(access_key, strings, provided)


def verify(request: Request, sign: Sign, *, now: float, resource: str | None = None) -> str | None:
    """The access key of a request signed with SigV2, None when it carries no SigV2;
    S3Error for every refusal (InvalidAccessKeyId when `sign` gives None)."""
    claim = prepare(request, now=now, resource=resource)
    if claim is None:
        return None
    for text in claim.strings_to_sign:
        signature = sign(claim.access_key, text)
        if signature is None:
            raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=claim.access_key)
        if claim.matches(signature):
            return claim.access_key
    raise claim.mismatch()


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _header_dates(request: Request, now: float) -> list[tuple[str, bool]]:
    """The Date lines to try (with x-amz-date among the x-amz-* lines or not), once the
    request's date is known to be close to `now`: AWS's rule first (an empty Date line when
    x-amz-date is sent), then the Date header's value (botocore signs it), then x-amz-date's
    value in the Date line (as AWS's own DELETE example does)."""
    amz_date = request.header("x-amz-date")
    date = request.header("date")
    stamp = amz_date if amz_date is not None else date
    parsed = email.utils.parsedate_tz(stamp) if stamp else None
    if parsed is None:
        raise S3Error(
            "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header"
        )
    when = float(email.utils.mktime_tz(parsed))
    if abs(now - when) > MAX_SKEW:
        raise S3Error(
            "RequestTimeTooSkewed",
            RequestTime=stamp or "",
            ServerTime=_iso(now),
            MaxAllowedSkewMilliseconds=str(MAX_SKEW * 1000),
        )
    if amz_date is None:
        return [((date or "").strip(), True)]
    dates = [("", True), (amz_date.strip(), False)]
    if date is not None:
        dates.insert(1, (date.strip(), True))
    return dates
