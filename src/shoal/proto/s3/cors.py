"""CORS as S3 answers it, from a bucket's rules (xml.parse_cors's CORSRule values).

    preflight(rules, headers) -> [(name, value), ...]   OPTIONS: the headers of a 200, or
                                                        S3Error 403 (or 400 for a malformed
                                                        preflight)
    actual(rules, headers, method) -> [(name, value), ...]  the CORS headers to add to any
                                                        other answer (none when no rule
                                                        matches: the browser refuses then)

headers are (lowercase name, value) pairs; `rules` is None for a bucket without CORS.

Matching, as S3 documents it: the first rule whose AllowedOrigin matches the Origin (one '*'
in an AllowedOrigin matches any run of characters), whose AllowedMethod holds the method
(Access-Control-Request-Method for a preflight) and whose AllowedHeader entries match every
name in Access-Control-Request-Headers (case-insensitively, '*' as a wildcard).
The answer: Access-Control-Allow-Origin (the Origin, or '*' for a rule allowing any origin),
Access-Control-Allow-Methods (the rule's), Access-Control-Allow-Headers (those asked),
Access-Control-Expose-Headers, Access-Control-Max-Age, Access-Control-Allow-Credentials: true
(not with '*'), and Vary: Origin, Access-Control-Request-Headers,
Access-Control-Request-Method.
A preflight without Origin or Access-Control-Request-Method: 400 BadRequest; to a bucket
without CORS: 403 AccessDenied "CORSResponse: CORS is not enabled for this bucket."; matching
no rule: 403 AccessDenied "CORSResponse: This CORS request is not allowed. ...".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from shoal.proto.s3.errors import S3Error
from shoal.proto.s3.xml import CORSRule

__all__ = ["VARY", "CORSRule", "actual", "match", "preflight"]

Headers = Sequence[tuple[str, str]]
VARY = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"


@lru_cache(maxsize=1024)
def _pattern(wildcard: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in wildcard.split("*")), re.IGNORECASE)


def _matches(wildcard: str, value: str) -> bool:
    return _pattern(wildcard).fullmatch(value) is not None


def _get(headers: Headers, name: str) -> str | None:
    values = [v for k, v in headers if k == name]
    return ",".join(values) if values else None


def match(
    rules: Sequence[CORSRule], origin: str, method: str, request_headers: Sequence[str] = ()
) -> CORSRule | None:
    """The first rule allowing `origin`, `method` and every one of `request_headers`."""
    for rule in rules:
        if method not in rule.allowed_methods:
            continue
        if not any(_matches(o, origin) for o in rule.allowed_origins):
            continue
        if all(any(_matches(h, name) for h in rule.allowed_headers) for name in request_headers):
            return rule
    return None


def _answer(rule: CORSRule, origin: str, asked: Sequence[str]) -> list[tuple[str, str]]:
    any_origin = "*" in rule.allowed_origins
    out = [
        ("Access-Control-Allow-Origin", "*" if any_origin else origin),
        ("Access-Control-Allow-Methods", ", ".join(rule.allowed_methods)),
    ]
    if asked:
        out.append(("Access-Control-Allow-Headers", ", ".join(asked)))
    if rule.expose_headers:
        out.append(("Access-Control-Expose-Headers", ", ".join(rule.expose_headers)))
    if rule.max_age_seconds is not None:
        out.append(("Access-Control-Max-Age", str(rule.max_age_seconds)))
    if not any_origin:
        out.append(("Access-Control-Allow-Credentials", "true"))
    out.append(("Vary", VARY))
    return out


def preflight(rules: Sequence[CORSRule] | None, headers: Headers) -> list[tuple[str, str]]:
    origin = _get(headers, "origin")
    method = _get(headers, "access-control-request-method")
    if not origin:
        raise S3Error("BadRequest", "Insufficient information. Origin request header needed.")
    if not method:
        raise S3Error(
            "BadRequest",
            "Invalid Access-Control-Request-Method: null",
        )
    if not rules:
        raise S3Error("AccessDenied", "CORSResponse: CORS is not enabled for this bucket.")
    asked = [h.strip() for h in (_get(headers, "access-control-request-headers") or "").split(",")]
    asked = [h for h in asked if h]
    rule = match(rules, origin, method.strip(), [h.lower() for h in asked])
    if rule is None:
        raise S3Error(
            "AccessDenied",
            "CORSResponse: This CORS request is not allowed. This is usually because the "
            "evaluation of Origin, request method / Access-Control-Request-Method or "
            "Access-Control-Request-Headers are not whitelisted by the resource's CORS spec.",
        )
    return _answer(rule, origin, asked)


def actual(
    rules: Sequence[CORSRule] | None, headers: Headers, method: str
) -> list[tuple[str, str]]:
    origin = _get(headers, "origin")
    if not origin or not rules:
        return []
    rule = match(rules, origin, method)
    return [] if rule is None else _answer(rule, origin, ())
