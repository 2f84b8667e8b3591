"""What S3 accepts as names: buckets, keys, user metadata, and the copy source of a copy.

    check_bucket(name)                       InvalidBucketName unless S3's rules hold
    check_key(key)                           KeyTooLongError past 1,024 UTF-8 bytes
    user_metadata(headers) -> dict           x-amz-meta-* (names lowercase, without the
                                             prefix); MetadataTooLarge past 2 KiB
    copy_source(value) -> CopySource         x-amz-copy-source: /bucket/key?versionId=v
    copy_range(value, size) -> (first, last) x-amz-copy-source-range: bytes=first-last

Bucket names (general purpose buckets): 3 to 63 characters of lowercase letters, digits,
dots and hyphens; a letter or digit first and last; no two dots side by side, no dot next to
a hyphen; not an IPv4 address; not starting with xn--, sthree- or amzn-s3-demo-; not ending
with -s3alias, --ol-s3, .mrap, --x-s3 or --table-s3.
User metadata: the names and values of x-amz-meta-* headers count, in UTF-8 bytes, against
2 KiB. A copy source is URL-encoded, with or without its leading '/'; a missing bucket or key
is InvalidArgument. A copy range must be one bytes=first-last within the source (first <=
last < size): InvalidArgument when malformed, InvalidRange when past the end.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from shoal.proto.s3.errors import S3Error

__all__ = [
    "MAX_KEY",
    "MAX_METADATA",
    "CopySource",
    "check_bucket",
    "check_key",
    "copy_range",
    "copy_source",
    "user_metadata",
]

MAX_KEY = 1024
MAX_METADATA = 2048

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_COPY_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


def check_bucket(name: str) -> None:
    ok = (
        _BUCKET.fullmatch(name) is not None
        and ".." not in name
        and ".-" not in name
        and "-." not in name
        and not _IPV4.fullmatch(name)
        and not name.startswith(_PREFIXES)
        and not name.endswith(_SUFFIXES)
    )
    if not ok:
        raise S3Error("InvalidBucketName", BucketName=name)


def check_key(key: str) -> None:
    if not key:
        raise S3Error("InvalidArgument", "An object key cannot be empty")
    if len(key.encode("utf-8", "surrogateescape")) > MAX_KEY:
        raise S3Error("KeyTooLongError", MaxSizeAllowed=str(MAX_KEY), Size=str(len(key)))


def user_metadata(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    """x-amz-meta-* headers as {name without the prefix: value}, repeated ones joined by ','."""
    meta: dict[str, str] = {}
    for name, value in headers:
        if name.startswith("x-amz-meta-"):
            short = name[len("x-amz-meta-") :]
            meta[short] = f"{meta[short]},{value.strip()}" if short in meta else value.strip()
    size = sum(len(k.encode()) + len(v.encode()) for k, v in meta.items())
    if size > MAX_METADATA:
        raise S3Error("MetadataTooLarge", MaxSizeAllowed=str(MAX_METADATA), Size=str(size))
    return meta


@dataclass(frozen=True, slots=True)
class CopySource:
    bucket: str
    key: str
    version_id: str | None = None


def copy_source(value: str) -> CopySource:
    path, _, query = value.strip().partition("?")
    bucket, _, key = unquote(path).lstrip("/").partition("/")
    if not bucket or not key:
        raise S3Error(
            "InvalidArgument",
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
            ArgumentName="x-amz-copy-source",
            ArgumentValue=value,
        )
    version = None
    for part in query.split("&"):
        name, _, v = part.partition("=")
        if name == "versionId":
            version = unquote(v)
        elif part:
            raise S3Error(
                "InvalidArgument",
                "Unsupported copy source parameter.",
                ArgumentName="x-amz-copy-source",
                ArgumentValue=value,
            )
    return CopySource(bucket, key, version)


def copy_range(value: str, size: int) -> tuple[int, int]:
    m = _COPY_RANGE.fullmatch(value.strip())
    if not m or int(m.group(2)) < int(m.group(1)):
        raise S3Error(
            "InvalidArgument",
            "The x-amz-copy-source-range value must be of the form bytes=first-last where "
            "first and last are the zero-based offsets of the first and last bytes to copy",
            ArgumentName="x-amz-copy-source-range",
            ArgumentValue=value,
        )
    first, last = int(m.group(1)), int(m.group(2))
    if last >= size:
        raise S3Error("InvalidRange", RangeRequested=value, ActualObjectSize=str(size))
    return first, last
