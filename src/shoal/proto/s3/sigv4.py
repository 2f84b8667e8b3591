"""SigV4 for S3: the Authorization header and presigned (query) requests, checked as S3 does.

    request = Request(method, path, query, headers)   # path and query raw, as sent;
                                                       # headers (lowercase name, value) pairs
    ctx = verify(request, signing_key, now=time.time(), region="us-east-1")
        -> Context, or None for an anonymous request (no Authorization, no X-Amz-Algorithm);
           raises S3Error otherwise
    signing_key(access_key, date, region, service) -> bytes | None   (None: unknown key)

    or in two steps, for a gateway that asks for the key without blocking:
    claim = prepare(request, now=..., region=...)  -> Claim | None (every check but the
                                                      signature); claim.scope names the key
    ctx = claim.verify(key)                        -> Context
    derive_signing_key(secret, date, region, service) -> bytes       (pure; for tests and for
                                                                      a gateway holding secrets)
    canonical_request(...), string_to_sign(...)                      (the steps, for tests)

`Context` is what the body decoder and the gateway need next: the access key, region, scope,
timestamp, the seed signature and the signing key (chunk signatures chain from them), the
payload mode (`Payload`), the declared hex SHA-256 of a signed payload (the gateway checks the
body against it: XAmzContentSHA256Mismatch), the x-amz-trailer names and
x-amz-decoded-content-length.

Rules kept (AWS's documented behaviour, and what MinIO and Garage accept):
- The canonical URI is the path encoded once with S3's rules (unreserved characters kept, '/'
  kept, everything else %XX), never normalised ('//' and '.' segments stay). The path as sent
  is decoded and re-encoded; a client that encoded differently (AWS's rules leave room, such as
  '%7E' for '~') signed the raw path, which is tried second.
- The canonical query: each name and value decoded then encoded with S3's rules (so '+' is a
  plus, '%2B'), a name without '=' given an empty value, sorted by encoded name then value;
  X-Amz-Signature left out of a presigned one. The raw pairs sorted as sent are tried second.
- Canonical headers: the signed names in order, values of a repeated header joined by ',',
  each trimmed with inner runs of spaces made one; a signed Expect the server took away is
  "100-continue" (the aws CLI signs it), any other signed header missing is empty. Host
  must be signed; every x-amz-* header sent must be signed (AccessDenied, HeadersNotSigned),
  as S3 requires.
- Header auth needs x-amz-content-sha256 (a 64-digit hex hash, UNSIGNED-PAYLOAD or one of the
  STREAMING-* values) and a date (X-Amz-Date, else Date) within 15 minutes of `now`
  (RequestTimeTooSkewed). A presigned request has X-Amz-Expires in 1..604800, is refused once
  expired (AccessDenied "Request has expired") and before its date (more than the skew ahead);
  its payload is UNSIGNED-PAYLOAD unless it signed an x-amz-content-sha256 header.
- The credential scope's date must be X-Amz-Date's day, its service "s3", its terminator
  "aws4_request", its region `region` (when given; None accepts the client's region).
- Signatures are compared in constant time.
"""

from __future__ import annotations

import calendar
import email.utils
import enum
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from shoal.cluster.auth import s3_signing_key as derive_signing_key
from shoal.proto.s3.errors import S3Error, expired

__all__ = [
    "ALGORITHM",
    "MAX_EXPIRES",
    "Claim",
    "MAX_SKEW",
    "Context",
    "Credentials",
    "Payload",
    "Request",
    "SigningKey",
    "canonical_query",
    "canonical_request",
    "canonical_uri",
    "derive_signing_key",
    "parse",
    "prepare",
    "string_to_sign",
    "verify",
]

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = 15 * 60  # seconds between the request's date and ours
MAX_EXPIRES = 7 * 24 * 3600  # a presigned URL lives at most a week
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

SigningKey = Callable[[str, str, str, str], "bytes | None"]


class Payload(enum.Enum):
    """What x-amz-content-sha256 says of the body."""

    SIGNED = "sha256"  # a hex SHA-256 of the whole body, to be checked against it
    UNSIGNED = "UNSIGNED-PAYLOAD"
    STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
    STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"

    @property
    def streaming(self) -> bool:
        return self.value.startswith("STREAMING-")


_PAYLOADS = {p.value: p for p in Payload if p is not Payload.SIGNED}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SPACES = re.compile(r"\s+")
_AMZ_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")


@dataclass(frozen=True, slots=True)
class Request:
    """The parts of an HTTP request that SigV4 signs, as they came off the wire."""

    method: str
    path: str  # percent-encoded, as sent, without the query
    query: str = ""  # as sent, without '?'
    headers: Sequence[tuple[str, str]] = ()  # (lowercase name, value), in order

    def header(self, name: str) -> str | None:
        """The value of header `name` (lowercase), repeated values joined by ','."""
        values = [v for k, v in self.headers if k == name]
        return ",".join(values) if values else None

    def params(self) -> list[tuple[str, str]]:
        """The query's (name, value) pairs, decoded (UTF-8, '+' kept as a plus)."""
        return [(_decode(k), _decode(v)) for k, v in _raw_pairs(self.query)]

    def param(self, name: str) -> str | None:
        for k, v in self.params():
            if k == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request claims: who signed, for which scope and headers, and the signature."""

    access_key: str
    date: str  # YYYYMMDD of the scope
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    timestamp: str  # YYYYMMDDTHHMMSSZ
    presigned: bool
    expires: int = 0  # X-Amz-Expires of a presigned request

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@dataclass(frozen=True, slots=True)
class Context:
    """A verified request: what the body decoder and the gateway need next."""

    access_key: str
    region: str
    scope: str
    timestamp: str
    seed_signature: str
    signing_key: bytes
    payload: Payload
    content_sha256: str | None  # the declared hex hash when payload is SIGNED
    presigned: bool
    trailers: tuple[str, ...] = ()  # x-amz-trailer names, lowercase
    decoded_length: int | None = None  # x-amz-decoded-content-length


def _raw_pairs(query: str) -> list[tuple[str, str]]:
    pairs = []
    for part in query.split("&"):
        if part:
            k, _, v = part.partition("=")
            pairs.append((k, v))
    return pairs


def _decode(text: str) -> str:
    return unquote_to_bytes(text).decode("utf-8", "surrogateescape")


def _encode(text: str, safe: str = "") -> str:
    # quote keeps A-Z a-z 0-9 - _ . ~ and `safe`: S3's unreserved set
    return quote(text.encode("utf-8", "surrogateescape"), safe=safe)


def canonical_uri(path: str) -> str:
    """The path as S3 signs it: decoded, then encoded once with '/' kept; not normalised."""
    return _encode(_decode(path), safe="/") or "/"


def canonical_query(query: str, skip: str | None = None) -> str:
    """The query as S3 signs it: names and values encoded, sorted by name then value."""
    pairs = sorted(
        (_encode(_decode(k)), _encode(_decode(v))) for k, v in _raw_pairs(query) if k != skip
    )
    return "&".join(f"{k}={v}" for k, v in pairs)


def _canonical_header_lines(request: Request, signed: Sequence[str]) -> str:
    lines = []
    for name in signed:
        values = [_SPACES.sub(" ", v.strip()) for k, v in request.headers if k == name]
        if not values and name == "expect":
            values = ["100-continue"]  # (a server may have taken Expect away, having answered it)
        lines.append(f"{name}:{','.join(values)}\n")
    return "".join(lines)


def canonical_request(
    request: Request,
    signed_headers: Sequence[str],
    payload_hash: str,
    *,
    uri: str | None = None,
    query: str | None = None,
) -> str:
    """The canonical request, with S3's encoding unless `uri` or `query` is given as is."""
    return "\n".join(
        [
            request.method.upper(),
            canonical_uri(request.path) if uri is None else uri,
            canonical_query(request.query) if query is None else query,
            _canonical_header_lines(request, signed_headers),
            ";".join(signed_headers),
            payload_hash,
        ]
    )


def string_to_sign(timestamp: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{timestamp}\n{scope}\n{digest}"


def _amz_time(timestamp: str) -> float | None:
    m = _AMZ_DATE.fullmatch(timestamp)
    if not m:
        return None
    try:
        return float(calendar.timegm(time.strptime(timestamp, "%Y%m%dT%H%M%SZ")))
    except ValueError:
        return None


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _split_credential(text: str, error: str) -> tuple[str, str, str, str]:
    parts = text.rsplit("/", 4)
    if len(parts) != 5 or not parts[0]:
        raise S3Error(error, f"Error parsing the Credential parameter: {text!r}")
    access_key, date, region, service, terminator = parts
    if terminator != "aws4_request":
        raise S3Error(error, f"Error parsing the Credential/terminator: {terminator!r}")
    if not re.fullmatch(r"\d{8}", date):
        raise S3Error(error, f"Error parsing the Credential/date: {date!r}")
    return access_key, date, region, service


def _signed_names(text: str, error: str) -> tuple[str, ...]:
    names = tuple(text.split(";"))
    if not text or any(not n or n != n.lower() for n in names):
        raise S3Error(error, f"Error parsing the SignedHeaders: {text!r}")
    return names


def _parse_header(request: Request, value: str) -> Credentials:
    malformed = "AuthorizationHeaderMalformed"
    fields: dict[str, str] = {}
    for part in value[len(ALGORITHM) :].split(","):
        k, eq, v = part.strip().partition("=")
        if not eq:
            raise S3Error(malformed, f"The authorization header is malformed; {part.strip()!r}")
        fields[k] = v
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if k not in fields]
    if missing:
        raise S3Error(malformed, f"The authorization header is malformed; missing {missing[0]}.")
    access_key, date, region, service = _split_credential(fields["Credential"], malformed)
    timestamp = request.header("x-amz-date")
    if timestamp is None:
        date_header = request.header("date")
        if date_header is None:
            raise S3Error(
                "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header"
            )
        if _amz_time(date_header) is not None:
            timestamp = date_header
        else:
            parsed = email.utils.parsedate_tz(date_header)
            if parsed is None:
                raise S3Error(
                    "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header"
                )
            timestamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(email.utils.mktime_tz(parsed)))
    return Credentials(
        access_key=access_key,
        date=date,
        region=region,
        service=service,
        signed_headers=_signed_names(fields["SignedHeaders"], malformed),
        signature=fields["Signature"],
        timestamp=timestamp,
        presigned=False,
    )


_QUERY_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
    "X-Amz-Expires",
)


def _parse_query(params: dict[str, str]) -> Credentials:
    bad = "AuthorizationQueryParametersError"
    if any(k not in params for k in _QUERY_PARAMS):
        raise S3Error(
            bad,
            "Query-string authentication version 4 requires the X-Amz-Algorithm, "
            "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
            "and X-Amz-Expires parameters.",
        )
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise S3Error(bad, 'X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
    try:
        expires = int(params["X-Amz-Expires"])
    except ValueError:
        raise S3Error(bad, "X-Amz-Expires should be a number") from None
    if expires < 0:
        raise S3Error(bad, "X-Amz-Expires must be non-negative")
    if expires > MAX_EXPIRES:
        raise S3Error(
            bad, "X-Amz-Expires must be less than a week (in seconds) that is 604800 seconds"
        )
    if expires == 0:
        raise S3Error(bad, "X-Amz-Expires must be greater than 0")
    access_key, date, region, service = _split_credential(params["X-Amz-Credential"], bad)
    return Credentials(
        access_key=access_key,
        date=date,
        region=region,
        service=service,
        signed_headers=_signed_names(params["X-Amz-SignedHeaders"], bad),
        signature=params["X-Amz-Signature"],
        timestamp=params["X-Amz-Date"],
        presigned=True,
        expires=expires,
    )


def parse(request: Request) -> Credentials | None:
    """The SigV4 credentials a request carries, or None when it carries no SigV4 ones.
    Raises S3Error for a malformed header or query, or both ways at once."""
    auth = request.header("authorization")
    params = dict(request.params())
    in_query = "X-Amz-Algorithm" in params
    if auth is not None and (in_query or "Signature" in params):
        raise S3Error(
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified",
            ArgumentName="Authorization",
            ArgumentValue=auth,
        )
    if auth is not None:
        if auth.startswith(ALGORITHM + " "):
            return _parse_header(request, auth)
        if auth.startswith("AWS "):
            return None  # SigV2: sigv2.py
        if auth.startswith("AWS4-ECDSA-P256-SHA256"):
            raise S3Error("NotImplemented", "SigV4a (AWS4-ECDSA-P256-SHA256) is not supported")
        raise S3Error(
            "InvalidArgument",
            "Unsupported Authorization Type",
            ArgumentName="Authorization",
            ArgumentValue=auth,
        )
    if in_query:
        return _parse_query(params)
    return None


def _check_scope(creds: Credentials, region: str | None) -> None:
    if creds.presigned:
        error, where = "AuthorizationQueryParametersError", "Error parsing the X-Amz-Credential"
    else:
        error, where = "AuthorizationHeaderMalformed", "The authorization header is malformed"
    if creds.service != "s3":
        raise S3Error(
            error, f'{where}; incorrect service {creds.service!r}. This endpoint belongs to "s3".'
        )
    if region is not None and creds.region != region:
        raise S3Error(
            error,
            f"{where}; the region {creds.region!r} is wrong; expecting {region!r}",
            Region=region,
        )
    if creds.timestamp[:8] != creds.date:
        raise S3Error(
            error, f"{where}; Invalid credential date. Date is not the same as X-Amz-Date."
        )


def _check_time(creds: Credentials, now: float) -> None:
    when = _amz_time(creds.timestamp)
    if when is None:
        if creds.presigned:
            raise S3Error(
                "AuthorizationQueryParametersError",
                "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"",
            )
        raise S3Error(
            "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header"
        )
    if creds.presigned:
        if now > when + creds.expires:
            raise expired(_iso(when + creds.expires), _iso(now), str(creds.expires))
        if when - now > MAX_SKEW:
            raise S3Error("AccessDenied", "Request is not valid yet")
    elif abs(now - when) > MAX_SKEW:
        raise S3Error(
            "RequestTimeTooSkewed",
            RequestTime=creds.timestamp,
            ServerTime=_iso(now),
            MaxAllowedSkewMilliseconds=str(MAX_SKEW * 1000),
        )


def _payload(request: Request, creds: Credentials) -> tuple[Payload, str]:
    """The payload mode and the hash that goes in the canonical request."""
    declared = request.header("x-amz-content-sha256")
    if creds.presigned:
        if declared is None or "x-amz-content-sha256" not in creds.signed_headers:
            declared = request.param("X-Amz-Content-Sha256") or Payload.UNSIGNED.value
    elif declared is None:
        raise S3Error(
            "InvalidRequest", "Missing required header for this request: x-amz-content-sha256"
        )
    if declared in _PAYLOADS:
        payload = _PAYLOADS[declared]
        if creds.presigned and payload.streaming:
            raise S3Error("InvalidRequest", "A presigned request cannot have a streaming body")
        return payload, declared
    if _HEX64.fullmatch(declared):
        return Payload.SIGNED, declared
    if declared.startswith("STREAMING-AWS4-ECDSA-P256-SHA256"):
        raise S3Error("NotImplemented", "SigV4a streaming payloads are not supported")
    raise S3Error(
        "InvalidArgument",
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER "
        "or a valid sha256 value.",
        ArgumentName="x-amz-content-sha256",
        ArgumentValue=declared,
    )


def _check_signed(request: Request, creds: Credentials) -> None:
    if "host" not in creds.signed_headers:
        raise S3Error(
            "AuthorizationQueryParametersError"
            if creds.presigned
            else "AuthorizationHeaderMalformed",
            "The host header must be signed (SignedHeaders lacks host)",
        )
    signed = set(creds.signed_headers)
    unsigned = sorted(
        {k for k, _ in request.headers if k.startswith("x-amz-") and k not in signed}
        - ({"x-amz-content-sha256"} if creds.presigned else set())
    )
    if unsigned:
        raise S3Error(
            "AccessDenied",
            "There were headers present in the request which were not signed",
            HeadersNotSigned=", ".join(unsigned),
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """A SigV4 request that passed every check but its signature: ask for the signing key of
    (access_key, date, region, service), then `verify(key)`."""

    request: Request
    credentials: Credentials
    payload: Payload
    payload_hash: str
    trailers: tuple[str, ...]
    decoded_length: int | None

    @property
    def access_key(self) -> str:
        return self.credentials.access_key

    @property
    def scope(self) -> tuple[str, str, str, str]:
        """(access key, date, region, service): what the signing key is asked for."""
        c = self.credentials
        return c.access_key, c.date, c.region, c.service

    def verify(self, key: bytes) -> Context:
        """The request's context once its signature checks out with `key`."""
        creds, request = self.credentials, self.request
        skip = "X-Amz-Signature" if creds.presigned else None
        provided = creds.signature.encode()
        first = canonical_request(
            request,
            creds.signed_headers,
            self.payload_hash,
            query=canonical_query(request.query, skip),
        )
        sts = string_to_sign(creds.timestamp, creds.scope, first)
        if not hmac.compare_digest(_sign(key, sts), provided):
            raw_query = "&".join(
                f"{k}={v}" for k, v in sorted(_raw_pairs(request.query)) if k != skip
            )
            second = canonical_request(
                request,
                creds.signed_headers,
                self.payload_hash,
                uri=request.path or "/",
                query=raw_query,
            )
            if second == first or not hmac.compare_digest(
                _sign(key, string_to_sign(creds.timestamp, creds.scope, second)), provided
            ):
                raise S3Error(
                    "SignatureDoesNotMatch",
                    AWSAccessKeyId=creds.access_key,
                    StringToSign=sts,
                    SignatureProvided=creds.signature,
                    CanonicalRequest=first,
                )
        return Context(
            access_key=creds.access_key,
            region=creds.region,
            scope=creds.scope,
            timestamp=creds.timestamp,
            seed_signature=creds.signature,
            signing_key=key,
            payload=self.payload,
            content_sha256=self.payload_hash if self.payload is Payload.SIGNED else None,
            presigned=creds.presigned,
            trailers=self.trailers,
            decoded_length=self.decoded_length,
        )


def prepare(request: Request, *, now: float, region: str | None = None) -> Claim | None:
    """Every check of a SigV4 request but its signature (which needs the key): the Claim,
    None for a request without SigV4 credentials, S3Error for every refusal."""
    creds = parse(request)
    if creds is None:
        return None
    _check_scope(creds, region)
    _check_time(creds, now)
    _check_signed(request, creds)
    payload, payload_hash = _payload(request, creds)
    trailers = request.header("x-amz-trailer") or ""
    decoded = request.header("x-amz-decoded-content-length")
    if decoded is not None and not decoded.isdigit():
        raise S3Error(
            "InvalidArgument",
            "x-amz-decoded-content-length is not a number",
            ArgumentName="x-amz-decoded-content-length",
            ArgumentValue=decoded,
        )
    return Claim(
        request,
        creds,
        payload,
        payload_hash,
        tuple(t.strip().lower() for t in trailers.split(",") if t.strip()),
        int(decoded) if decoded is not None else None,
    )


def verify(
    request: Request,
    signing_key: SigningKey,
    *,
    now: float,
    region: str | None = None,
) -> Context | None:
    """prepare, then the signature with the key `signing_key` gives (None: an unknown key,
    InvalidAccessKeyId). None for a request without SigV4 credentials (anonymous, or SigV2:
    see sigv2.py); S3Error for every refusal."""
    claim = prepare(request, now=now, region=region)
    if claim is None:
        return None
    key = signing_key(*claim.scope)
    if key is None:
        raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=claim.access_key)
    return claim.verify(key)


def _sign(key: bytes, sts: str) -> bytes:
    return (
        hmac.new(key, sts.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest().encode()
    )
