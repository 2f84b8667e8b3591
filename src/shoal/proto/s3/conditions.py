"""Conditional requests and Range, as S3 applies them (RFC 9110's rules, S3's answers).

    check_read(headers, etag, last_modified)         GET/HEAD: raises S3Error 412 or 304
    check_write(headers, current)                    PUT (and conditional DELETE, complete):
                                                     current = (etag, last_modified) | None
    check_copy_source(headers, etag, last_modified)  the x-amz-copy-source-if-* of a copy: 412
    byte_range(range_value, size)                    -> ByteRange | None (None: the whole object)

headers are (lowercase name, value) pairs; an ETag is compared without its quotes or W/;
last_modified is seconds since the epoch (compared at whole seconds, as HTTP dates are).

GET/HEAD, in RFC 9110's order, which gives S3's documented precedence:
1. If-Match that matches no ETag: 412 (a matching If-Match makes If-Unmodified-Since moot).
2. Otherwise If-Unmodified-Since before the last modification: 412.
3. If-None-Match that matches: 304 Not Modified (If-Modified-Since is then moot).
4. Otherwise If-Modified-Since at or after the last modification: 304.
A date that does not parse is ignored, as RFC 9110 says.

PUT: If-None-Match: * with an object there: 412; any other If-None-Match value: 501
NotImplemented (S3 takes only '*'). If-Match with no object: 404 NoSuchKey; with another
ETag: 412.

Copy: x-amz-copy-source-if-match / -if-unmodified-since / -if-none-match /
-if-modified-since in the same order, every failure a 412 (a copy never answers 304).

Range: one `bytes=` range (first-last, first-, -suffix). Several ranges, another unit, a
malformed or backwards range (last < first) are ignored and the whole object is sent (S3 does
not serve multipart/byteranges); a range that starts at or past the end (any range of an
empty object, a suffix of 0) is 416 InvalidRange, with the object's size for Content-Range.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass

from shoal.errors import InvalidArgument
from shoal.proto.http import parse_range
from shoal.proto.s3.errors import S3Error

__all__ = ["ByteRange", "byte_range", "check_copy_source", "check_read", "check_write"]

Headers = Sequence[tuple[str, str]]


def _get(headers: Headers, name: str) -> str | None:
    values = [v for k, v in headers if k == name]
    return ",".join(values) if values else None


def _tags(value: str) -> list[str]:
    return [t.strip().removeprefix("W/").strip('"') for t in value.split(",") if t.strip()]


def _matches(value: str, etag: str) -> bool:
    etag = etag.strip('"')
    return any(t == "*" or t == etag for t in _tags(value))


def _date(value: str | None) -> float | None:
    if value is None:
        return None
    parsed = email.utils.parsedate_tz(value)
    return None if parsed is None else float(email.utils.mktime_tz(parsed))


def _failed(condition: str) -> S3Error:
    return S3Error("PreconditionFailed", Condition=condition)


def _check(
    headers: Headers, etag: str, last_modified: float, prefix: str, not_modified: bool
) -> None:
    seconds = int(last_modified)
    if_match = _get(headers, prefix + "if-match")
    if if_match is not None:
        if not _matches(if_match, etag):
            raise _failed(prefix.title() + "If-Match")
    else:
        since = _date(_get(headers, prefix + "if-unmodified-since"))
        if since is not None and seconds > since:
            raise _failed(prefix.title() + "If-Unmodified-Since")
    if_none_match = _get(headers, prefix + "if-none-match")
    if if_none_match is not None:
        if _matches(if_none_match, etag):
            raise (
                S3Error("NotModified")
                if not_modified
                else _failed(prefix.title() + "If-None-Match")
            )
    else:
        since = _date(_get(headers, prefix + "if-modified-since"))
        if since is not None and seconds <= since:
            raise (
                S3Error("NotModified")
                if not_modified
                else _failed(prefix.title() + "If-Modified-Since")
            )


def check_read(headers: Headers, etag: str, last_modified: float) -> None:
    """GET and HEAD of an existing object: 412 PreconditionFailed or 304 NotModified."""
    _check(headers, etag, last_modified, "", not_modified=True)


def check_copy_source(headers: Headers, etag: str, last_modified: float) -> None:
    """The copy source's conditions: 412 PreconditionFailed when one fails."""
    _check(headers, etag, last_modified, "x-amz-copy-source-", not_modified=False)


def check_write(headers: Headers, current: tuple[str, float] | None) -> None:
    """A write's conditions against the object there now (None: no object)."""
    if_none_match = _get(headers, "if-none-match")
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise S3Error(
                "NotImplemented",
                "A header you provided implies functionality that is not implemented",
                Header="If-None-Match",
            )
        if current is not None:
            raise _failed("If-None-Match")
    if_match = _get(headers, "if-match")
    if if_match is not None:
        if current is None:
            raise S3Error("NoSuchKey")
        if not _matches(if_match, current[0]):
            raise _failed("If-Match")


@dataclass(frozen=True, slots=True)
class ByteRange:
    first: int
    last: int  # inclusive
    size: int  # the whole object's

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.size}"


_BACKWARDS = re.compile(r"\s*bytes=(\d+)-(\d+)\s*")


def byte_range(value: str | None, size: int) -> ByteRange | None:
    """The range of a Range header to serve (206), None for the whole object (200);
    InvalidRange (416) when it cannot be satisfied (send Content-Range: bytes */size)."""
    if value is None:
        return None
    m = _BACKWARDS.fullmatch(value)
    if m and int(m.group(2)) < int(m.group(1)):
        return None  # invalid, so ignored (RFC 9110 14.1.1)
    try:
        got = parse_range(value, size)
    except InvalidArgument:
        raise S3Error("InvalidRange", RangeRequested=value, ActualObjectSize=str(size)) from None
    return None if got is None else ByteRange(got[0], got[1], size)
