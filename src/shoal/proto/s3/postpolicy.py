"""Browser-based uploads (POST with a signed policy), as "Browser-Based Uploads Using POST"
describes them.

    upload = verify(fields, bucket, signing_key=..., sign=..., now=time.time(), filename=f)
        fields: the form's fields but the file, {name: value} (names as sent)
        signing_key as sigv4's (SigV4 forms), sign as sigv2's (SigV2 forms)
        -> PostUpload; raises S3Error
    or in two steps: claim = prepare(fields, bucket, now=..., filename=f) -> PostClaim (every
        check but the signature), then claim.upload (anonymous), claim.verify_v4(signing key
        of claim.scope) or claim.verify_v2(HMAC-SHA1 of claim.policy)
    upload.check_size(n)     the file's size against content-length-range (before or after)

PostUpload holds the access key (None for an anonymous POST: no policy, allowed only where
the bucket lets anyone write), the object key (${filename} replaced by the file's name), the
fields to act on (lowercase names: Content-Type, x-amz-meta-*, acl, success_action_status,
...) without the authentication ones, and the content-length-range.

Rules:
- SigV4: x-amz-algorithm AWS4-HMAC-SHA256, x-amz-credential, x-amz-date, x-amz-signature =
  hex HMAC-SHA256(signing key of the credential's scope, the policy as sent, base64).
  SigV2: AWSAccessKeyId and signature = base64 HMAC-SHA1(secret, the policy as sent).
  A wrong signature: SignatureDoesNotMatch; an unknown key: InvalidAccessKeyId.
- The policy is base64 of JSON {"expiration": ISO 8601, "conditions": [...]}: past its
  expiration, AccessDenied ("Invalid according to Policy: Policy expired."); not JSON, no
  expiration or no conditions: InvalidPolicyDocument.
- Conditions: {"field": "value"} and ["eq", "$field", "value"] match exactly;
  ["starts-with", "$field", "prefix"] by prefix ("" matches anything; for Content-Type each
  comma-separated value must match); ["content-length-range", min, max] bounds the file
  (EntityTooSmall, EntityTooLarge). "bucket" is checked against the bucket of the URL. Field
  names match whatever their case. A failed condition: AccessDenied ("Invalid according to
  Policy: Policy Condition failed: ...").
- Every field but the file, policy, x-amz-signature, signature, AWSAccessKeyId and those
  starting with x-ignore- must be named by a condition: AccessDenied ("Extra input fields").
- A form without the key field: InvalidArgument ("Bucket POST must contain a field named
  'key'.").
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.proto.s3.errors import S3Error
from shoal.proto.s3.sigv2 import Sign
from shoal.proto.s3.sigv4 import ALGORITHM, SigningKey

__all__ = ["PostClaim", "PostUpload", "prepare", "verify"]

_UNCOVERED = frozenset({"file", "policy", "x-amz-signature", "signature", "awsaccesskeyid"})
_AUTH = _UNCOVERED | {"x-amz-algorithm", "x-amz-credential", "x-amz-date"}
_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?Z")


@dataclass(frozen=True, slots=True)
class PostUpload:
    access_key: str | None
    key: str
    fields: dict[str, str]  # lowercase names, the authentication fields left out
    length_range: tuple[int, int] | None = None
    conditions: list[Any] = field(default_factory=list)

    def check_size(self, size: int) -> None:
        if self.length_range is None:
            return
        low, high = self.length_range
        if size < low:
            raise S3Error("EntityTooSmall", MinSizeAllowed=str(low), ProposedSize=str(size))
        if size > high:
            raise S3Error("EntityTooLarge", MaxSizeAllowed=str(high), ProposedSize=str(size))


def _denied(why: str) -> S3Error:
    return S3Error("AccessDenied", f"Invalid according to Policy: {why}")


def _bad_policy(why: str) -> S3Error:
    return S3Error("InvalidPolicyDocument", f"Invalid Policy: {why}")


def _decode_policy(text: str) -> dict[str, Any]:
    try:
        document = json.loads(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _bad_policy("Invalid JSON.") from None
    if not isinstance(document, dict):
        raise _bad_policy("Invalid JSON.")
    if "expiration" not in document:
        raise _bad_policy("Policy missing expiration.")
    if not isinstance(document.get("conditions"), list):
        raise _bad_policy("Policy missing conditions.")
    return document


def _expiration(text: object) -> float:
    m = _ISO.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise _bad_policy(f"Invalid 'expiration' value: {text!r}")
    return float(calendar.timegm((*(int(g) for g in m.groups()), 0, 0, 0)))


def _credential(fields: Mapping[str, str]) -> tuple[str, tuple[str, str, str, str] | None]:
    """The access key of a signed form, and for SigV4 the scope its signing key is for."""
    if "x-amz-signature" in fields:
        if fields.get("x-amz-algorithm") != ALGORITHM:
            raise S3Error(
                "InvalidArgument",
                "POST requires x-amz-algorithm AWS4-HMAC-SHA256",
                ArgumentName="x-amz-algorithm",
                ArgumentValue=fields.get("x-amz-algorithm", ""),
            )
        parts = fields.get("x-amz-credential", "").rsplit("/", 4)
        if len(parts) != 5 or parts[4] != "aws4_request" or parts[3] != "s3":
            raise S3Error(
                "InvalidArgument",
                "Invalid x-amz-credential",
                ArgumentName="x-amz-credential",
                ArgumentValue=fields.get("x-amz-credential", ""),
            )
        access_key, date, region, service, _ = parts
        if not fields.get("x-amz-date", "").startswith(date):
            raise S3Error("InvalidArgument", "x-amz-date is not the credential's date")
        return access_key, (access_key, date, region, service)
    if "signature" in fields and "awsaccesskeyid" in fields:
        return fields["awsaccesskeyid"], None
    raise S3Error(
        "InvalidArgument",
        "Bucket POST must contain x-amz-signature (or AWSAccessKeyId and signature) "
        "with its policy",
    )


@dataclass(frozen=True, slots=True)
class PostClaim:
    """A POST form that passed every check but its signature. Anonymous (`signed` false):
    take `upload`. SigV4 (`scope` set): verify_v4(the signing key of scope). SigV2:
    verify_v2(HMAC-SHA1 of `policy` with the key's secret)."""

    upload: PostUpload
    signed: bool = False
    scope: tuple[str, str, str, str] | None = None  # (access key, date, region, service)
    policy: bytes = b""  # what is signed: the policy field as sent
    provided: str = ""  # the signature as sent

    def verify_v4(self, key: bytes) -> PostUpload:
        expected = hmac.new(key, self.policy, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, self.provided):
            raise S3Error("SignatureDoesNotMatch", AWSAccessKeyId=self.upload.access_key or "")
        return self.upload

    def verify_v2(self, signature: bytes) -> PostUpload:
        try:
            provided = base64.b64decode(self.provided, validate=True)
        except (binascii.Error, ValueError):
            provided = b""
        if not hmac.compare_digest(signature, provided):
            raise S3Error("SignatureDoesNotMatch", AWSAccessKeyId=self.upload.access_key or "")
        return self.upload


def _check_conditions(
    conditions: list[Any], values: Mapping[str, str]
) -> tuple[set[str], tuple[int, int] | None]:
    """The field names the conditions cover, and the content-length-range."""
    covered: set[str] = set()
    length_range = None
    for condition in conditions:
        if isinstance(condition, dict) and len(condition) == 1:
            ((name, want),) = condition.items()
            op, name = "eq", "$" + name
        elif isinstance(condition, list) and len(condition) == 3:
            op, name, want = condition
            op = str(op).lower()
        else:
            raise _bad_policy(f"Invalid condition: {json.dumps(condition)}")
        if op == "content-length-range":
            try:
                length_range = (int(name), int(want))
            except (TypeError, ValueError):
                raise _bad_policy(f"Invalid condition: {json.dumps(condition)}") from None
            continue
        if not isinstance(name, str) or not name.startswith("$") or not isinstance(want, str):
            raise _bad_policy(f"Invalid condition: {json.dumps(condition)}")
        field_name = name[1:].lower()
        covered.add(field_name)
        got = values.get(field_name, "")
        if op == "eq":
            ok = got == want
        elif op == "starts-with":
            if field_name == "content-type":
                ok = all(v.strip().startswith(want) for v in got.split(","))
            else:
                ok = got.startswith(want)
        else:
            raise _bad_policy(f"Invalid condition operator: {op}")
        if not ok:
            raise _denied(f"Policy Condition failed: {json.dumps(condition)}")
    return covered, length_range


def prepare(fields: Mapping[str, str], bucket: str, *, now: float, filename: str = "") -> PostClaim:
    """Every check of a POST form but its signature (see the module's rules)."""
    values = {k.lower(): v for k, v in fields.items() if k.lower() != "file"}
    if "key" not in values:
        raise S3Error(
            "InvalidArgument",
            "Bucket POST must contain a field named 'key'.  If it is specified, please "
            "check the order of the fields.",
            ArgumentName="key",
            ArgumentValue="",
        )
    key = values["key"].replace("${filename}", filename)
    kept = {k: v for k, v in values.items() if k not in _AUTH}
    kept["key"] = key
    policy = values.get("policy")
    if not policy:
        if any(k in values for k in ("x-amz-signature", "signature")):
            raise S3Error("InvalidArgument", "A signed POST needs its policy")
        return PostClaim(PostUpload(None, key, kept))
    access_key, scope = _credential(values)
    document = _decode_policy(policy)
    if now > _expiration(document["expiration"]):
        raise _denied("Policy expired.")
    values["bucket"] = bucket
    covered, length_range = _check_conditions(document["conditions"], values)
    extra = sorted(
        k
        for k in values
        if k not in covered
        and k not in _UNCOVERED
        and k != "bucket"
        and not k.startswith("x-ignore-")
    )
    if extra:
        raise _denied(f"Extra input fields: {', '.join(extra)}")
    upload = PostUpload(access_key, key, kept, length_range, document["conditions"])
    provided = values["x-amz-signature"] if scope else values["signature"]
    return PostClaim(upload, True, scope, policy.encode(), provided)


def verify(
    fields: Mapping[str, str],
    bucket: str,
    *,
    signing_key: SigningKey | None = None,
    sign: Sign | None = None,
    now: float,
    filename: str = "",
) -> PostUpload:
    """prepare, then the signature: with the key `signing_key` gives (SigV4) or the HMAC
    `sign` makes (SigV2); an unknown key is InvalidAccessKeyId."""
    claim = prepare(fields, bucket, now=now, filename=filename)
    if not claim.signed:
        return claim.upload
    access_key = claim.upload.access_key or ""
    if claim.scope is not None:
        key = signing_key(*claim.scope) if signing_key else None
        if key is None:
            raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=access_key)
        return claim.verify_v4(key)
    signature = sign(access_key, claim.policy) if sign else None
    if signature is None:
        raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=access_key)
    return claim.verify_v2(signature)
