"""Conditional requests and Range as S3 applies them (shoal.proto.s3.conditions)."""

from __future__ import annotations

import email.utils

import pytest

from shoal.proto.s3.conditions import (
    ByteRange,
    byte_range,
    check_copy_source,
    check_read,
    check_write,
)
from shoal.proto.s3.errors import S3Error

ETAG = '"9bb58f26192e4ba00f01e2e7b136bbd8"'
MODIFIED = 1_700_000_000.5
BEFORE = email.utils.formatdate(MODIFIED - 60, usegmt=True)
AT = email.utils.formatdate(int(MODIFIED), usegmt=True)
AFTER = email.utils.formatdate(MODIFIED + 60, usegmt=True)


def _read(**headers: str) -> int:
    pairs = [(k.replace("_", "-"), v) for k, v in headers.items()]
    try:
        check_read(pairs, ETAG, MODIFIED)
    except S3Error as e:
        return e.status
    return 200


def test_each_read_condition() -> None:
    assert _read(if_match=ETAG) == 200
    assert _read(if_match=ETAG.strip('"')) == 200
    assert _read(if_match='"other", ' + ETAG) == 200
    assert _read(if_match="*") == 200
    assert _read(if_match='"other"') == 412
    assert _read(if_none_match=ETAG) == 304
    assert _read(if_none_match="W/" + ETAG) == 304
    assert _read(if_none_match='"other"') == 200
    assert _read(if_modified_since=BEFORE) == 200
    assert _read(if_modified_since=AT) == 304
    assert _read(if_modified_since=AFTER) == 304
    assert _read(if_unmodified_since=BEFORE) == 412
    assert _read(if_unmodified_since=AT) == 200
    assert _read(if_modified_since="not a date") == 200


def test_read_precedence_as_s3_documents() -> None:
    # If-Match true and If-Unmodified-Since false: 200
    assert _read(if_match=ETAG, if_unmodified_since=BEFORE) == 200
    # If-None-Match false and If-Modified-Since true: 304
    assert _read(if_none_match=ETAG, if_modified_since=BEFORE) == 304
    # If-Match fails first: 412 even with If-None-Match that would give 304
    assert _read(if_match='"x"', if_none_match=ETAG) == 412
    # If-None-Match that does not match makes If-Modified-Since moot
    assert _read(if_none_match='"x"', if_modified_since=AFTER) == 200


def test_precondition_failed_names_the_condition() -> None:
    with pytest.raises(S3Error) as e:
        check_read([("if-match", '"x"')], ETAG, MODIFIED)
    assert (e.value.code, e.value.fields["Condition"]) == ("PreconditionFailed", "If-Match")
    assert b"<Condition>If-Match</Condition>" in e.value.body()


def test_copy_source_conditions_never_304() -> None:
    def copy(**headers: str) -> int:
        pairs = [("x-amz-copy-source-" + k.replace("_", "-"), v) for k, v in headers.items()]
        try:
            check_copy_source(pairs, ETAG, MODIFIED)
        except S3Error as e:
            return e.status
        return 200

    assert copy(if_match=ETAG, if_unmodified_since=BEFORE) == 200
    assert copy(if_none_match=ETAG, if_modified_since=BEFORE) == 412
    assert copy(if_none_match='"x"', if_modified_since=BEFORE) == 200
    assert copy(if_modified_since=AFTER) == 412
    assert copy(if_match='"x"') == 412
    assert check_copy_source([("if-match", '"x"')], ETAG, MODIFIED) is None  # not its headers


def test_write_conditions() -> None:
    def write(current: tuple[str, float] | None, **headers: str) -> str:
        pairs = [(k.replace("_", "-"), v) for k, v in headers.items()]
        try:
            check_write(pairs, current)
        except S3Error as e:
            return e.code
        return "ok"

    here = (ETAG, MODIFIED)
    assert write(None, if_none_match="*") == "ok"
    assert write(here, if_none_match="*") == "PreconditionFailed"
    assert write(here, if_none_match=ETAG) == "NotImplemented"
    assert write(None, if_match=ETAG) == "NoSuchKey"
    assert write(here, if_match=ETAG) == "ok"
    assert write(here, if_match='"x"') == "PreconditionFailed"
    assert write(here) == "ok"


def test_ranges() -> None:
    assert byte_range(None, 10) is None
    assert byte_range("bytes=0-9", 100) == ByteRange(0, 9, 100)
    got = byte_range("bytes=0-9", 100)
    assert got is not None and (got.content_range, got.length) == ("bytes 0-9/100", 10)
    assert byte_range("bytes=90-", 100) == ByteRange(90, 99, 100)
    assert byte_range("bytes=-10", 100) == ByteRange(90, 99, 100)
    assert byte_range("bytes=-1000", 100) == ByteRange(0, 99, 100)
    assert byte_range("bytes=50-1000", 100) == ByteRange(50, 99, 100)
    # ignored: the whole object, 200
    for value in ["bytes=0-1,5-6", "items=0-1", "bytes=abc", "bytes=9-3", "bytes=-"]:
        assert byte_range(value, 100) is None, value
    # unsatisfiable: 416 InvalidRange
    for value, size in [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=0-", 0),
                        ("bytes=-0", 100), ("bytes=-5", 0)]:  # fmt: skip
        with pytest.raises(S3Error) as e:
            byte_range(value, size)
        assert (e.value.code, e.value.status) == ("InvalidRange", 416)
        assert e.value.fields["ActualObjectSize"] == str(size)
