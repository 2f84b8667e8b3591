"""aws-chunked bodies (shoal.proto.s3.chunked): AWS's chunked upload example, boto3's trailers,
signed trailers, and properties: any split decodes alike, any changed byte is refused."""

from __future__ import annotations

import base64
import calendar
import dataclasses
import itertools
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.proto.s3.checksums import Checksum
from shoal.proto.s3.chunked import ChunkedDecoder
from shoal.proto.s3.errors import S3Error
from shoal.proto.s3.sigv4 import Context, Payload, Request, derive_signing_key, verify

from .s3_helpers import ACCESS_KEY, SECRET, boto_request, encode_chunked, keys

EXAMPLE_NOW = float(calendar.timegm((2013, 5, 24, 0, 0, 0, 0, 0, 0)))
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
CHUNK_SIGNATURES = [
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
]


def _example_request() -> Request:
    signed = (
        "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
        "x-amz-decoded-content-length;x-amz-storage-class"
    )
    return Request(
        "PUT",
        "/examplebucket/chunkObject.txt",
        "",
        (
            ("host", "s3.amazonaws.com"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            (
                "authorization",
                f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20130524/us-east-1/s3/aws4_request,"
                f"SignedHeaders={signed},Signature={SEED}",
            ),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "66560"),
            ("content-length", "66824"),
        ),
    )


def _example_body() -> bytes:
    sizes = [65536, 1024, 0]
    body = b""
    for size, signature in zip(sizes, CHUNK_SIGNATURES, strict=True):
        body += b"%x;chunk-signature=%s\r\n" % (size, signature.encode()) + b"a" * size + b"\r\n"
    return body


def _decode(decoder: ChunkedDecoder, pieces: list[bytes]) -> bytes:
    out = bytearray()
    for piece in pieces:
        for view in decoder.feed(piece):
            out += view
    decoder.end()
    return bytes(out)


def test_aws_chunked_upload_example() -> None:
    ctx = verify(_example_request(), keys, now=EXAMPLE_NOW, region="us-east-1")
    assert ctx is not None
    assert ctx.payload is Payload.STREAMING_SIGNED and ctx.seed_signature == SEED
    assert ctx.decoded_length == 66560
    body = _example_body()
    assert len(body) == 66824  # the example's Content-Length
    decoder = ChunkedDecoder.for_context(ctx)
    assert _decode(decoder, [body[:1000], body[1000:70000], body[70000:]]) == b"a" * 66560
    assert decoder.verified == 66560 and decoder.done


def test_aws_example_with_a_changed_chunk_is_refused() -> None:
    ctx = verify(_example_request(), keys, now=EXAMPLE_NOW)
    assert ctx is not None
    body = bytearray(_example_body())
    body[200] = ord("b")
    decoder = ChunkedDecoder.for_context(ctx)
    with pytest.raises(S3Error) as e:
        decoder.feed(bytes(body))
    assert e.value.code == "SignatureDoesNotMatch" and e.value.status == 403
    with pytest.raises(S3Error):
        decoder.end()  # refused for good


def test_aws_example_cut_short_or_reordered() -> None:
    ctx = verify(_example_request(), keys, now=EXAMPLE_NOW)
    assert ctx is not None
    body = _example_body()
    decoder = ChunkedDecoder.for_context(ctx)
    decoder.feed(body[:-2])
    with pytest.raises(S3Error) as e:
        decoder.end()
    assert e.value.code == "IncompleteBody"
    second = body.index(b"400;")  # the 1024-byte chunk, sent first
    swapped = body[second:] + body[:second]
    with pytest.raises(S3Error) as e:
        ChunkedDecoder.for_context(ctx).feed(swapped)
    assert e.value.code == "SignatureDoesNotMatch"


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"])
def test_boto3_unsigned_trailer(algorithm: str) -> None:
    payload = bytes(range(256)) * 9000  # 2.3 MB: boto3 sends 1 MiB chunks
    request, body = boto_request(
        "put_object", Bucket="b", Key="k", Body=payload, ChecksumAlgorithm=algorithm
    )
    ctx = verify(request, keys, now=time.time())
    assert ctx is not None and ctx.payload is Payload.STREAMING_UNSIGNED_TRAILER
    decoder = ChunkedDecoder.for_context(ctx)
    assert _decode(decoder, [body[i : i + 65536] for i in range(0, len(body), 65536)]) == payload
    check = Checksum(algorithm.lower())
    check.update(payload)
    assert decoder.checksum == (algorithm.lower(), check.b64())
    assert decoder.trailers == {f"x-amz-checksum-{algorithm.lower()}": check.b64()}


def test_boto3_unsigned_trailer_with_a_wrong_checksum_is_bad_digest() -> None:
    request, body = boto_request("put_object", Bucket="b", Key="k", Body=b"hello world")
    ctx = verify(request, keys, now=time.time())
    assert ctx is not None
    right = base64.b64encode(zlib.crc32(b"hello world").to_bytes(4, "big"))
    wrong = base64.b64encode(zlib.crc32(b"hello worle").to_bytes(4, "big"))
    decoder = ChunkedDecoder.for_context(ctx)
    with pytest.raises(S3Error) as e:
        _decode(decoder, [body.replace(right, wrong)])
    assert e.value.code == "BadDigest"


def _signed_context(payload: Payload, trailers: tuple[str, ...] = (), length: int = 0) -> Context:
    return Context(
        access_key=ACCESS_KEY,
        region="us-east-1",
        scope="20130524/us-east-1/s3/aws4_request",
        timestamp="20130524T000000Z",
        seed_signature=SEED,
        signing_key=derive_signing_key(SECRET, "20130524", "us-east-1", "s3"),
        payload=payload,
        content_sha256=None,
        presigned=False,
        trailers=trailers,
        decoded_length=length,
    )


def _encode(ctx: Context, payload: bytes, sizes: list[int]) -> bytes:
    trailer = None
    if ctx.trailers:
        check = Checksum(ctx.trailers[0].removeprefix("x-amz-checksum-"))
        check.update(payload)
        trailer = (ctx.trailers[0], check.b64())
    signed = ctx.payload is not Payload.STREAMING_UNSIGNED_TRAILER
    return encode_chunked(
        payload,
        sizes,
        key=ctx.signing_key if signed else None,
        seed=ctx.seed_signature,
        timestamp=ctx.timestamp,
        scope=ctx.scope,
        trailer=trailer,
    )


def test_signed_trailer() -> None:
    payload = b"0123456789" * 3000
    ctx = _signed_context(Payload.STREAMING_SIGNED_TRAILER, ("x-amz-checksum-crc32c",), 30000)
    body = _encode(ctx, payload, [8192, 8192])
    decoder = ChunkedDecoder.for_context(ctx)
    assert _decode(decoder, [body]) == payload
    assert decoder.checksum is not None and decoder.checksum[0] == "crc32c"
    # the trailer's signature chains from the last chunk's: a changed value is refused
    line_start = body.index(b"x-amz-checksum-crc32c:")
    forged = body[:line_start] + b"x-amz-checksum-crc32c:AAAAAA==" + body[line_start + 30 :]
    with pytest.raises(S3Error) as e:
        _decode(ChunkedDecoder.for_context(ctx), [forged])
    assert e.value.code == "SignatureDoesNotMatch"


def test_framing_refusals() -> None:
    ctx = _signed_context(Payload.STREAMING_UNSIGNED_TRAILER, ("x-amz-checksum-crc32",), 5)
    good = _encode(ctx, b"hello", [])
    cases = {
        b"zz\r\nhello\r\n": "InvalidRequest",  # not hex
        b"5\r\nhello\r\n0\r\nx-amz-meta-a:b\r\n\r\n": "InvalidRequest",  # undeclared trailer
        b"5\r\nhelloXX": "InvalidRequest",  # no CRLF after data
        b"5\r\nhello\r\n0\r\n\r\n": "InvalidRequest",  # the declared trailer never came
        b"6\r\nhello!\r\n": "IncompleteBody",  # more than x-amz-decoded-content-length
        b"5\n": "InvalidRequest",  # LF alone
        b"5" * 5000: "InvalidRequest",  # an endless line
        good + b"x": "InvalidRequest",  # bytes after the end
    }
    for body, code in cases.items():
        decoder = ChunkedDecoder.for_context(ctx)
        with pytest.raises(S3Error) as e:
            _decode(decoder, [body])
        assert e.value.code == code, body[:40]
    signed = _signed_context(Payload.STREAMING_SIGNED, (), 5)
    with pytest.raises(S3Error) as e:
        _decode(ChunkedDecoder.for_context(signed), [good])  # no chunk-signature
    assert e.value.code == "InvalidRequest"


def test_memory_stays_bounded_for_a_large_chunk() -> None:
    ctx = _signed_context(Payload.STREAMING_SIGNED, (), 8 << 20)
    body = _encode(ctx, b"x" * (8 << 20), [8 << 20])
    decoder = ChunkedDecoder.for_context(ctx)
    given_out = 0
    for i in range(0, len(body), 1 << 16):
        pieces = decoder.feed(body[i : i + (1 << 16)])
        given_out += sum(len(p) for p in pieces)
        # bytes go out as they come, before their chunk's signature is checked
        assert given_out >= min(i, 8 << 20) - 100
    decoder.end()
    assert given_out == decoder.verified == 8 << 20


MODES = [
    (Payload.STREAMING_SIGNED, ()),
    (Payload.STREAMING_SIGNED_TRAILER, ("x-amz-checksum-crc32",)),
    (Payload.STREAMING_UNSIGNED_TRAILER, ("x-amz-checksum-crc64nvme",)),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(MODES),
    payload=st.binary(max_size=3000),
    sizes=st.lists(st.integers(1, 1500), max_size=4),
    cuts=st.lists(st.integers(0, 10000), max_size=8),
)
def test_any_split_decodes_alike(
    mode: tuple[Payload, tuple[str, ...]], payload: bytes, sizes: list[int], cuts: list[int]
) -> None:
    ctx = _signed_context(mode[0], mode[1], len(payload))
    body = _encode(ctx, payload, sizes)
    points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    pieces = [body[a:b] for a, b in itertools.pairwise(points)]
    assert _decode(ChunkedDecoder.for_context(ctx), pieces) == payload


@settings(max_examples=300, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    payload=st.binary(min_size=1, max_size=600),
    sizes=st.lists(st.integers(1, 300), max_size=3),
    where=st.floats(0, 1, exclude_max=True),
    xor=st.integers(1, 255).filter(lambda x: x != 0x20),  # (0x20: a hex digit's other case)
)
def test_any_changed_byte_is_refused(
    mode: tuple[Payload, tuple[str, ...]],
    payload: bytes,
    sizes: list[int],
    where: float,
    xor: int,
) -> None:
    ctx = _signed_context(mode[0], mode[1], len(payload))
    body = bytearray(_encode(ctx, payload, sizes))
    body[int(where * len(body))] ^= xor
    with pytest.raises(S3Error):
        _decode(ChunkedDecoder.for_context(ctx), [bytes(body)])


def test_decoded_length_is_required() -> None:
    ctx = _signed_context(Payload.STREAMING_SIGNED)
    without = dataclasses.replace(ctx, decoded_length=None)
    with pytest.raises(S3Error) as e:
        ChunkedDecoder.for_context(without)
    assert (e.value.code, e.value.status) == ("MissingContentLength", 411)


@pytest.mark.parametrize(
    "payload", [Payload.STREAMING_UNSIGNED_TRAILER, Payload.STREAMING_SIGNED_TRAILER]
)
def test_trailer_value_may_end_in_lf_crlf(payload: Payload) -> None:
    ctx = _signed_context(payload, ("x-amz-checksum-crc32",), 11)
    body = _encode(ctx, b"hello world", [])
    crc = base64.b64encode(zlib.crc32(b"hello world").to_bytes(4, "big"))
    line = b"x-amz-checksum-crc32:" + crc
    assert line + b"\r\n" in body  # the trailer's signature covers line + "\n" either way
    decoder = ChunkedDecoder.for_context(ctx)
    assert _decode(decoder, [body.replace(line + b"\r\n", line + b"\n\r\n")]) == b"hello world"
    assert decoder.checksum == ("crc32", crc.decode())
