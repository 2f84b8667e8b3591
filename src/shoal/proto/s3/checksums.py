"""The digests S3 checks bodies against: Content-MD5 and x-amz-checksum-{crc32, crc32c,
crc64nvme, sha1, sha256}, incrementally, as S3 sends them (base64 of the big-endian digest).

    h = Checksum("crc32c"); h.update(data); h.digest() -> bytes; h.b64() -> str
    check = BodyCheck(headers, content_sha256=ctx.content_sha256)
        # headers: (lowercase name, value) pairs; refuses bad header values at once
    check.update(data)           # every payload byte, in order
    digests = check.finish()     # after the body: raises BadDigest & co.
    digests.md5 (bytes, the simple PUT's ETag), digests.checksum ((algorithm, base64) | None)

Rules, as S3 keeps them:
- Content-MD5 that is not base64 of 16 bytes: InvalidDigest, before any byte is read; one
  that does not match the body: BadDigest.
- x-amz-checksum-ALG that is not base64 of the algorithm's digest size: InvalidRequest
  ("Value for x-amz-checksum-crc32 header is invalid."); one that does not match: BadDigest.
  More than one checksum header: InvalidRequest. An algorithm named by
  x-amz-sdk-checksum-algorithm and not the one sent: InvalidRequest. (A checksum sent as an
  aws-chunked trailer is checked by chunked.py, which holds the trailers.)
- A signed payload (x-amz-content-sha256 a hex hash) whose body hashes otherwise:
  XAmzContentSHA256Mismatch.
crc32 is zlib's, crc32c the crc32c package's, crc64nvme awscrt's (botocore's own).

A multipart upload's values, from its parts':
    multipart_etag(part_md5s) -> "hex-N"            (the MD5 of the parts' MD5s, and N)
    composite(algorithm, part_digests) -> "b64-N"    (COMPOSITE: the checksum of the parts'
                                                      checksums, and N)
    full_object(algorithm, [(digest, size), ...]) -> b64   (FULL_OBJECT: the CRC of the whole
                                                      object, combined from the parts' CRCs;
                                                      crc32, crc32c and crc64nvme only)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import crc32c as _crc32c
from awscrt import checksums as _crt

from shoal.proto.s3.errors import S3Error

__all__ = [
    "ALGORITHMS",
    "BodyCheck",
    "Checksum",
    "Digests",
    "composite",
    "decode_b64",
    "decode_declared",
    "full_object",
    "multipart_etag",
    "verify",
]

# algorithm -> digest size in bytes
ALGORITHMS: dict[str, int] = {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20, "sha256": 32}


class Checksum:
    """One of S3's checksum algorithms, fed incrementally."""

    def __init__(self, algorithm: str) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown checksum algorithm {algorithm!r}")
        self.algorithm = algorithm
        self._crc = 0
        self._hash = hashlib.new(algorithm) if algorithm.startswith("sha") else None

    def update(self, data: bytes | memoryview) -> None:
        if self._hash is not None:
            self._hash.update(data)
        elif self.algorithm == "crc32":
            self._crc = zlib.crc32(data, self._crc)
        elif self.algorithm == "crc32c":
            self._crc = _crc32c.crc32c(data, value=self._crc)
        else:
            self._crc = _crt.crc64nvme(data, self._crc)

    def digest(self) -> bytes:
        if self._hash is not None:
            return self._hash.digest()
        return self._crc.to_bytes(ALGORITHMS[self.algorithm], "big")

    def b64(self) -> str:
        return base64.b64encode(self.digest()).decode()


def decode_b64(value: str, size: int) -> bytes | None:
    """The bytes of a base64 digest of `size` bytes, or None if it is not one."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


def decode_declared(algorithm: str, value: str) -> bytes:
    """The digest an x-amz-checksum-ALG header or trailer declares (InvalidRequest if none)."""
    raw = decode_b64(value, ALGORITHMS[algorithm])
    if raw is None:
        raise S3Error("InvalidRequest", f"Value for x-amz-checksum-{algorithm} header is invalid.")
    return raw


def verify(checksum: Checksum, expected: bytes | None) -> tuple[str, str]:
    """(algorithm, base64) of a checksum fed the whole body; BadDigest if not `expected`."""
    actual = checksum.digest()
    if actual != expected:
        raise S3Error(
            "BadDigest",
            f"The {checksum.algorithm.upper()} you specified did not match the calculated "
            "checksum.",
        )
    return checksum.algorithm, base64.b64encode(actual).decode()


@dataclass(frozen=True, slots=True)
class Digests:
    md5: bytes
    checksum: tuple[str, str] | None  # (algorithm, base64) to store and give back


class BodyCheck:
    """Everything a request says its body hashes to, checked as the body goes by."""

    def __init__(
        self,
        headers: Sequence[tuple[str, str]],
        *,
        content_sha256: str | None = None,
    ) -> None:
        values = dict(headers)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._content_md5: bytes | None = None
        if "content-md5" in values:
            self._content_md5 = decode_b64(values["content-md5"], 16)
            if self._content_md5 is None:
                raise S3Error("InvalidDigest")
        self._sha256 = hashlib.sha256() if content_sha256 else None
        self._content_sha256 = content_sha256
        declared = [k[len("x-amz-checksum-") :] for k in values if k.startswith("x-amz-checksum-")]
        declared = [a for a in declared if a not in ("mode", "type", "algorithm")]
        unknown = [a for a in declared if a not in ALGORITHMS]
        if unknown:
            raise S3Error("InvalidRequest", f"Unsupported checksum x-amz-checksum-{unknown[0]}")
        if len(declared) > 1:
            raise S3Error(
                "InvalidRequest",
                "Expecting a single x-amz-checksum- header. "
                "Multiple checksum Types are not allowed.",
            )
        self._algorithm = declared[0] if declared else None
        sdk = values.get("x-amz-sdk-checksum-algorithm")
        if sdk is not None and self._algorithm is not None and sdk.lower() != self._algorithm:
            raise S3Error(
                "InvalidRequest",
                "Value for x-amz-sdk-checksum-algorithm header is invalid.",
            )
        self._expected: bytes | None = None
        if declared:
            self._expected = decode_declared(declared[0], values[f"x-amz-checksum-{declared[0]}"])
        self._checksum = Checksum(self._algorithm) if self._algorithm else None

    def update(self, data: bytes | memoryview) -> None:
        self._md5.update(data)
        if self._sha256 is not None:
            self._sha256.update(data)
        if self._checksum is not None:
            self._checksum.update(data)

    def finish(self) -> Digests:
        """Check the whole body; the digests to store."""
        md5 = self._md5.digest()
        if self._content_md5 is not None and md5 != self._content_md5:
            raise S3Error(
                "BadDigest",
                "The Content-MD5 you specified did not match what we received.",
                ExpectedDigest=self._content_md5.hex(),
                CalculatedDigest=md5.hex(),
            )
        if self._sha256 is not None and self._sha256.hexdigest() != self._content_sha256:
            raise S3Error(
                "XAmzContentSHA256Mismatch",
                ClientComputedContentSHA256=self._content_sha256 or "",
                S3ComputedContentSHA256=self._sha256.hexdigest(),
            )
        if self._checksum is None or self._algorithm is None:
            return Digests(md5, None)
        return Digests(md5, verify(self._checksum, self._expected))


def multipart_etag(part_md5s: Sequence[bytes]) -> str:
    """A completed multipart upload's ETag: the MD5 of its parts' MD5s, "-", their number."""
    digest = hashlib.md5(b"".join(part_md5s), usedforsecurity=False).hexdigest()
    return f"{digest}-{len(part_md5s)}"


def composite(algorithm: str, part_digests: Sequence[bytes]) -> str:
    """A multipart upload's COMPOSITE checksum: of the parts' digests, then "-N"."""
    checksum = Checksum(algorithm)
    for digest in part_digests:
        checksum.update(digest)
    return f"{checksum.b64()}-{len(part_digests)}"


_COMBINE = {
    "crc32": _crt.combine_crc32,
    "crc32c": _crt.combine_crc32c,
    "crc64nvme": _crt.combine_crc64nvme,
}


def full_object(algorithm: str, parts: Sequence[tuple[bytes, int]]) -> str:
    """A multipart upload's FULL_OBJECT checksum: the CRC of the whole object, combined from
    each part's (digest, size); only CRCs combine (ValueError otherwise)."""
    if algorithm not in _COMBINE:
        raise ValueError(f"{algorithm} does not combine: FULL_OBJECT is for CRCs only")
    combine = _COMBINE[algorithm]
    crc = 0
    for digest, size in parts:
        crc = combine(crc, int.from_bytes(digest, "big"), size)
    return base64.b64encode(crc.to_bytes(ALGORITHMS[algorithm], "big")).decode()
