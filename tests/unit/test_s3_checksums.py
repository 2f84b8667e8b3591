"""S3's checksums (shoal.proto.s3.checksums): published check values, botocore's own, and the
BadDigest / InvalidDigest / XAmzContentSHA256Mismatch rules."""

from __future__ import annotations

import base64
import hashlib

import pytest

from shoal.proto.s3.checksums import ALGORITHMS, BodyCheck, Checksum
from shoal.proto.s3.errors import S3Error

# The CRC catalogue's check values: the CRC of b"123456789".
CHECK = {"crc32": 0xCBF43926, "crc32c": 0xE3069283, "crc64nvme": 0xAE8B14860A799888}


@pytest.mark.parametrize("algorithm", sorted(CHECK))
def test_crc_check_values(algorithm: str) -> None:
    whole = Checksum(algorithm)
    whole.update(b"123456789")
    assert int.from_bytes(whole.digest(), "big") == CHECK[algorithm]
    pieces = Checksum(algorithm)
    for b in (b"1234", memoryview(b"56789")):
        pieces.update(b)
    assert pieces.digest() == whole.digest()


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_same_as_botocore(algorithm: str) -> None:
    from botocore.httpchecksum import _CHECKSUM_CLS

    data = bytes(range(256)) * 1000
    theirs = _CHECKSUM_CLS[algorithm]()
    theirs.update(data)
    ours = Checksum(algorithm)
    ours.update(data[:1000])
    ours.update(data[1000:])
    assert ours.b64() == theirs.b64digest()
    assert len(ours.digest()) == ALGORITHMS[algorithm]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _run(headers: list[tuple[str, str]], body: bytes, sha256: str | None = None) -> str | None:
    try:
        check = BodyCheck(headers, content_sha256=sha256)
        check.update(body)
        check.finish()
    except S3Error as e:
        return e.code
    return None


def test_content_md5() -> None:
    md5 = _b64(hashlib.md5(b"data").digest())
    assert _run([("content-md5", md5)], b"data") is None
    assert _run([("content-md5", md5)], b"datA") == "BadDigest"
    assert _run([("content-md5", "not base64!")], b"data") == "InvalidDigest"
    assert _run([("content-md5", _b64(b"short"))], b"data") == "InvalidDigest"


def test_checksum_headers() -> None:
    sha1 = _b64(hashlib.sha1(b"data").digest())
    assert _run([("x-amz-checksum-sha1", sha1)], b"data") is None
    assert _run([("x-amz-checksum-sha1", sha1)], b"datA") == "BadDigest"
    assert _run([("x-amz-checksum-sha1", "AAAA")], b"data") == "InvalidRequest"
    assert _run([("x-amz-checksum-crc32", "AAAAAA=="), ("x-amz-checksum-sha1", sha1)], b"") == (
        "InvalidRequest"
    )
    assert _run([("x-amz-checksum-md4", "AAAAAA==")], b"") == "InvalidRequest"
    assert (
        _run([("x-amz-checksum-sha1", sha1), ("x-amz-sdk-checksum-algorithm", "CRC32")], b"data")
        == "InvalidRequest"
    )


def test_signed_payload_hash() -> None:
    digest = hashlib.sha256(b"data").hexdigest()
    assert _run([], b"data", digest) is None
    assert _run([], b"datA", digest) == "XAmzContentSHA256Mismatch"


def test_digests_given_back() -> None:
    check = BodyCheck([("x-amz-checksum-crc32", _b64((0xCBF43926).to_bytes(4, "big")))])
    check.update(b"123456789")
    digests = check.finish()
    assert digests.md5 == hashlib.md5(b"123456789").digest()
    assert digests.checksum == ("crc32", "y/Q5Jg==")


def test_boto3_http_put_checked_end_to_end() -> None:
    import time

    from shoal.proto.s3.sigv4 import verify

    from .s3_helpers import boto_request, keys

    request, body = boto_request(
        "put_object", endpoint="http://127.0.0.1:9000", Bucket="b", Key="k", Body=b"x" * 1000
    )
    ctx = verify(request, keys, now=time.time())
    assert ctx is not None and ctx.content_sha256 is not None
    check = BodyCheck(request.headers, content_sha256=ctx.content_sha256)
    check.update(body)
    digests = check.finish()
    assert digests.checksum == ("crc32", request.header("x-amz-checksum-crc32"))
    assert digests.md5 == hashlib.md5(body).digest()
    changed = BodyCheck(request.headers, content_sha256=ctx.content_sha256)
    changed.update(b"y" + body[1:])
    with pytest.raises(S3Error) as e:
        changed.finish()
    assert e.value.code == "XAmzContentSHA256Mismatch"


def test_multipart_values() -> None:
    from shoal.proto.s3.checksums import composite, full_object, multipart_etag

    parts = [b"a" * 5000, b"b" * 3000, b"c"]
    md5s = [hashlib.md5(p).digest() for p in parts]
    assert multipart_etag(md5s) == hashlib.md5(b"".join(md5s)).hexdigest() + "-3"
    for algorithm in ("crc32", "crc32c", "crc64nvme"):
        whole = Checksum(algorithm)
        whole.update(b"".join(parts))
        digests = []
        for p in parts:
            c = Checksum(algorithm)
            c.update(p)
            digests.append(c.digest())
        assert full_object(algorithm, list(zip(digests, map(len, parts), strict=True))) == (
            whole.b64()
        )
        outer = Checksum(algorithm)
        outer.update(b"".join(digests))
        assert composite(algorithm, digests) == outer.b64() + "-3"
    with pytest.raises(ValueError):
        full_object("sha256", [])
