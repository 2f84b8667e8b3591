"""Bucket policies: the common allow and deny on principal, action and resource.

    policy = parse_policy(body, bucket) -> BucketPolicy          (PutBucketPolicy's body)
    decide(policy, who, action, resource) -> "allow" | "deny" | None
        who: the requester (an access key), None when anonymous;
        action: "s3:GetObject", ...; resource: "arn:aws:s3:::bucket/key" (or the bucket's)

What is taken: a JSON object with "Statement" (one statement or a list) and an optional
"Version" (2012-10-17 or 2008-10-17); each statement an Effect (Allow or Deny), a Principal
("*", or {"AWS": one or more of "*", an access key, or an ARN whose last part is one), an
Action (one or more of "*", "s3:*", "s3:Get*", "s3:GetObject": case-insensitive, * and ?
as wildcards) and a Resource (one or more ARNs of this bucket: arn:aws:s3:::bucket and
arn:aws:s3:::bucket/prefix*). Anything else (not JSON, no statement, another Effect, an
action outside s3, a resource of another bucket, over 20 KiB) is MalformedPolicy; what is
not implemented (Condition, NotPrincipal, NotAction, NotResource) is NotImplemented rather
than ignored, since ignoring it would change who may do what.

decide: a matching Deny wins; else a matching Allow allows; else the policy says nothing
(the ACL and the owner decide).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from shoal.proto.s3.errors import S3Error

__all__ = ["MAX_POLICY", "BucketPolicy", "Statement", "decide", "parse_policy"]

MAX_POLICY = 20 * 1024
_VERSIONS = ("2012-10-17", "2008-10-17")
_UNSUPPORTED = ("Condition", "NotPrincipal", "NotAction", "NotResource")


@dataclass(frozen=True, slots=True)
class Statement:
    effect: Literal["Allow", "Deny"]
    principals: tuple[str, ...]  # "*" for anyone, or access keys
    actions: tuple[str, ...]  # lowercase patterns
    resources: tuple[str, ...]  # ARN patterns
    sid: str | None = None


@dataclass(frozen=True, slots=True)
class BucketPolicy:
    statements: tuple[Statement, ...]
    text: str  # the document as given, for GetBucketPolicy


def _malformed(why: str) -> S3Error:
    return S3Error("MalformedPolicy", why)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, str) and i for i in items):
        raise _malformed(f"Invalid {what}")
    return tuple(items)


def _principals(value: Any) -> tuple[str, ...]:
    if value == "*":
        return ("*",)
    if not isinstance(value, dict) or set(value) != {"AWS"}:
        raise _malformed("Invalid principal in policy")
    found = []
    for item in _strings(value["AWS"], "principal in policy"):
        found.append(item if item == "*" else item.rsplit(":", 1)[-1].rsplit("/", 1)[-1])
    return tuple(found)


@lru_cache(maxsize=1024)
def _pattern(wildcard: str) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in wildcard)
    return re.compile(body, re.IGNORECASE)


def parse_policy(body: bytes, bucket: str) -> BucketPolicy:
    if len(body) > MAX_POLICY:
        raise _malformed("Policy exceeds the maximum allowed document size.")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _malformed("Policies must be valid JSON and the first byte must be '{'") from None
    if not isinstance(document, dict):
        raise _malformed("Policies must be valid JSON and the first byte must be '{'")
    if document.get("Version", _VERSIONS[0]) not in _VERSIONS:
        raise _malformed("The policy must contain a valid version string")
    raw = document.get("Statement")
    statements = raw if isinstance(raw, list) else [raw] if isinstance(raw, dict) else []
    if not statements:
        raise _malformed("Missing required field Statement")
    own = re.compile(rf"arn:aws:s3:::{re.escape(bucket)}(/.*)?")
    parsed = []
    for s in statements:
        if not isinstance(s, dict):
            raise _malformed("Statement is not an object")
        unsupported = [k for k in _UNSUPPORTED if k in s]
        if unsupported:
            raise S3Error("NotImplemented", f"{unsupported[0]} in a bucket policy")
        effect = s.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise _malformed("Invalid effect: " + str(effect))
        if "Principal" not in s:
            raise _malformed("Missing required field Principal")
        actions = tuple(a.lower() for a in _strings(s.get("Action"), "action"))
        if any(a != "*" and not a.startswith("s3:") for a in actions):
            raise _malformed("Policy has invalid action")
        resources = _strings(s.get("Resource"), "resource")
        if any(not own.fullmatch(r) for r in resources):
            raise _malformed("Policy has invalid resource")
        sid = s.get("Sid")
        parsed.append(
            Statement(
                effect,
                _principals(s["Principal"]),
                actions,
                resources,
                sid if isinstance(sid, str) else None,
            )
        )
    return BucketPolicy(tuple(parsed), body.decode())


def _applies(statement: Statement, who: str | None, action: str, resource: str) -> bool:
    if "*" not in statement.principals and (who is None or who not in statement.principals):
        return False
    if not any(_pattern(a).fullmatch(action) for a in statement.actions):
        return False
    return any(_pattern(r).fullmatch(resource) for r in statement.resources)


def decide(
    policy: BucketPolicy | None, who: str | None, action: str, resource: str
) -> Literal["allow", "deny"] | None:
    if policy is None:
        return None
    allowed = False
    for statement in policy.statements:
        if _applies(statement, who, action, resource):
            if statement.effect == "Deny":
                return "deny"
            allowed = True
    return "allow" if allowed else None
