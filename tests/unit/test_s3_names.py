"""Names S3 accepts (shoal.proto.s3.names): buckets, keys, user metadata, copy sources."""

from __future__ import annotations

import pytest

from shoal.proto.s3 import names
from shoal.proto.s3.errors import S3Error

from .s3_helpers import boto_request


def test_bucket_names() -> None:
    for good in ["abc", "my-bucket.v2", "a" * 63, "1bucket", "docexamplebucket1"]:
        names.check_bucket(good)
    for bad in ["ab", "a" * 64, "My-Bucket", "under_score", "-start", "end-", "a..b",
                "a.-b", "192.168.5.4", "xn--bucket", "sthree-x", "amzn-s3-demo-x",
                "b-s3alias", "b--ol-s3", "b.mrap", "b--x-s3", "b--table-s3"]:  # fmt: skip
        with pytest.raises(S3Error) as e:
            names.check_bucket(bad)
        assert (e.value.code, e.value.status) == ("InvalidBucketName", 400), bad


def test_keys() -> None:
    names.check_key("k" * 1024)
    names.check_key("é" * 512)  # 1,024 bytes
    with pytest.raises(S3Error) as e:
        names.check_key("é" * 513)
    assert e.value.code == "KeyTooLongError"
    with pytest.raises(S3Error):
        names.check_key("")


def test_user_metadata() -> None:
    request, _ = boto_request(
        "put_object", Bucket="b", Key="k", Body=b"", Metadata={"Color": "blue", "n": "1"}
    )
    assert names.user_metadata(request.headers) == {"color": "blue", "n": "1"}
    names.user_metadata([("x-amz-meta-a", "v" * 2047)])
    with pytest.raises(S3Error) as e:
        names.user_metadata([("x-amz-meta-a", "v" * 2047), ("x-amz-meta-b", "")])
    assert e.value.code == "MetadataTooLarge"


@pytest.mark.parametrize("key", ["plain", "a b/c?d=e&f+g", "ü/日本", "%41"])
def test_copy_source_as_boto3_sends_it(key: str) -> None:
    request, _ = boto_request(
        "copy_object",
        Bucket="dst",
        Key="k",
        CopySource={"Bucket": "src", "Key": key, "VersionId": "v 1"},
    )
    source = request.header("x-amz-copy-source")
    assert source is not None
    assert names.copy_source(source) == names.CopySource("src", key, "v 1")
    assert names.copy_source("src/a%20b%3Fc") == names.CopySource("src", "a b?c")


def test_copy_source_and_range_refusals() -> None:
    for bad in ["", "/bucket-only", "/b/k?other=1"]:
        with pytest.raises(S3Error) as e:
            names.copy_source(bad)
        assert e.value.code == "InvalidArgument", bad
    assert names.copy_range("bytes=0-9", 10) == (0, 9)
    for value, code in [("bytes=0-10", "InvalidRange"), ("bytes=5-4", "InvalidArgument"),
                        ("bytes=0-", "InvalidArgument"), ("0-9", "InvalidArgument")]:  # fmt: skip
        with pytest.raises(S3Error) as e:
            names.copy_range(value, 10)
        assert e.value.code == code, value
