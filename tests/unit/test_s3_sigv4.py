"""SigV4 for S3 (shoal.proto.s3.sigv4): AWS's published examples, botocore's signers, refusals."""

from __future__ import annotations

import calendar
import hashlib
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.cluster.auth import s3_signing_key
from shoal.proto.s3 import sigv4
from shoal.proto.s3.errors import S3Error
from shoal.proto.s3.sigv4 import Payload, Request, verify

from .s3_helpers import ACCESS_KEY, SECRET, boto_request, keys

EMPTY = hashlib.sha256(b"").hexdigest()
# the examples' moment: 2013-05-24T00:00:00Z
EXAMPLE_NOW = float(calendar.timegm((2013, 5, 24, 0, 0, 0, 0, 0, 0)))
HOST = ("host", "examplebucket.s3.amazonaws.com")


def _auth(signed: str, signature: str) -> tuple[str, str]:
    return (
        "authorization",
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20130524/us-east-1/s3/aws4_request,"
        f"SignedHeaders={signed},Signature={signature}",
    )


def _check(request: Request, now: float = EXAMPLE_NOW) -> sigv4.Context:
    ctx = verify(request, keys, now=now, region="us-east-1")
    assert ctx is not None
    return ctx


# AWS's examples ("Examples: Signature Calculations", S3 API reference), us-east-1, 20130524.


def test_example_get_object_with_range() -> None:
    request = Request(
        "GET",
        "/test.txt",
        "",
        (
            HOST,
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY),
            ("x-amz-date", "20130524T000000Z"),
            _auth(
                "host;range;x-amz-content-sha256;x-amz-date",
                "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
            ),
        ),
    )
    ctx = _check(request)
    assert ctx.access_key == ACCESS_KEY
    assert ctx.payload is Payload.SIGNED and ctx.content_sha256 == EMPTY
    assert ctx.scope == "20130524/us-east-1/s3/aws4_request"


def test_example_put_object() -> None:
    body_hash = "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
    assert hashlib.sha256(b"Welcome to Amazon S3.").hexdigest() == body_hash
    request = Request(
        "PUT",
        "/test%24file.text",
        "",
        (
            HOST,
            ("date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", body_hash),
            _auth(
                "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
            ),
        ),
    )
    assert sigv4.canonical_uri(request.path) == "/test%24file.text"
    assert _check(request).content_sha256 == body_hash


def test_example_get_bucket_lifecycle() -> None:
    request = Request(
        "GET",
        "/",
        "lifecycle",
        (
            HOST,
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-content-sha256", EMPTY),
            _auth(
                "host;x-amz-content-sha256;x-amz-date",
                "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
            ),
        ),
    )
    assert sigv4.canonical_query("lifecycle") == "lifecycle="
    _check(request)


def test_example_list_objects() -> None:
    request = Request(
        "GET",
        "/",
        "prefix=J&max-keys=2",  # sorted in the canonical query
        (
            HOST,
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-content-sha256", EMPTY),
            _auth(
                "host;x-amz-content-sha256;x-amz-date",
                "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
            ),
        ),
    )
    _check(request)


PRESIGNED_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
)


def test_example_presigned_url() -> None:
    request = Request("GET", "/test.txt", PRESIGNED_QUERY, (HOST,))
    ctx = _check(request, now=EXAMPLE_NOW + 86400)
    assert ctx.presigned and ctx.payload is Payload.UNSIGNED
    with pytest.raises(S3Error) as e:
        _check(request, now=EXAMPLE_NOW + 86401)
    assert (e.value.code, e.value.message, e.value.status) == (
        "AccessDenied",
        "Request has expired",
        403,
    )
    assert e.value.fields["Expires"] == "2013-05-25T00:00:00Z"


def test_example_signing_key_matches_the_master() -> None:
    assert sigv4.derive_signing_key(SECRET, "20130524", "us-east-1", "s3") == s3_signing_key(
        SECRET, "20130524", "us-east-1"
    )


# Refusals.


def _lifecycle(**changes: str) -> Request:
    headers = dict(
        [
            HOST,
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-content-sha256", EMPTY),
            _auth(
                "host;x-amz-content-sha256;x-amz-date",
                "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
            ),
        ]
    )
    headers.update({k.replace("_", "-"): v for k, v in changes.items()})
    return Request("GET", "/", "lifecycle", tuple(headers.items()))


def _code(request: Request, now: float = EXAMPLE_NOW, region: str | None = "us-east-1") -> str:
    with pytest.raises(S3Error) as e:
        verify(request, keys, now=now, region=region)
    return e.value.code


def test_clock_skew_is_15_minutes() -> None:
    _check(_lifecycle(), now=EXAMPLE_NOW + 900)
    _check(_lifecycle(), now=EXAMPLE_NOW - 900)
    assert _code(_lifecycle(), now=EXAMPLE_NOW + 901) == "RequestTimeTooSkewed"
    with pytest.raises(S3Error) as e:
        verify(_lifecycle(), keys, now=EXAMPLE_NOW - 3600)
    assert e.value.status == 403
    assert e.value.fields["MaxAllowedSkewMilliseconds"] == "900000"


def test_tampering_is_refused() -> None:
    assert _code(_lifecycle(host="other.example.com")) == "SignatureDoesNotMatch"
    assert _code(Request("GET", "/", "versioning", _lifecycle().headers)) == (
        "SignatureDoesNotMatch"
    )
    bad = _lifecycle(authorization=dict(_lifecycle().headers)["authorization"][:-1] + "4")
    with pytest.raises(S3Error) as e:
        verify(bad, keys, now=EXAMPLE_NOW)
    assert e.value.status == 403 and "CanonicalRequest" in e.value.fields


def test_unknown_key_wrong_region_and_malformed_headers() -> None:
    other = dict(_lifecycle().headers)["authorization"].replace(ACCESS_KEY, "AKIDUNKNOWN")
    assert _code(_lifecycle(authorization=other)) == "InvalidAccessKeyId"
    assert _code(_lifecycle(), region="eu-west-1") == "AuthorizationHeaderMalformed"
    assert verify(_lifecycle(), keys, now=EXAMPLE_NOW, region=None) is not None
    assert _code(_lifecycle(authorization="AWS4-HMAC-SHA256 Credential=x")) == (
        "AuthorizationHeaderMalformed"
    )
    assert _code(_lifecycle(authorization="Bearer abc")) == "InvalidArgument"
    assert _code(_lifecycle(x_amz_date="20130525T000000Z")) == "AuthorizationHeaderMalformed"


def test_unsigned_amz_header_is_refused() -> None:
    request = _lifecycle(x_amz_meta_color="blue")
    with pytest.raises(S3Error) as e:
        verify(request, keys, now=EXAMPLE_NOW)
    assert e.value.code == "AccessDenied"
    assert e.value.fields["HeadersNotSigned"] == "x-amz-meta-color"


def test_content_sha256_is_required_and_checked() -> None:
    headers = tuple(h for h in _lifecycle().headers if h[0] != "x-amz-content-sha256")
    assert _code(Request("GET", "/", "lifecycle", headers)) == "InvalidRequest"
    assert _code(_lifecycle(x_amz_content_sha256="nonsense")) == "InvalidArgument"


def test_anonymous_requests_carry_no_credentials() -> None:
    assert verify(Request("GET", "/b/k", "", (HOST,)), keys, now=0) is None


def test_presigned_limits() -> None:
    def query(**changes: str) -> str:
        return PRESIGNED_QUERY.replace(*changes["replace"].split("|"))

    for replace, code in [
        ("X-Amz-Expires=86400|X-Amz-Expires=604801", "AuthorizationQueryParametersError"),
        ("X-Amz-Expires=86400|X-Amz-Expires=-1", "AuthorizationQueryParametersError"),
        ("X-Amz-Expires=86400|X-Amz-Expires=0", "AuthorizationQueryParametersError"),
        ("&X-Amz-SignedHeaders=host|", "AuthorizationQueryParametersError"),
        ("X-Amz-Expires=86400|X-Amz-Expires=86401", "SignatureDoesNotMatch"),
    ]:
        request = Request("GET", "/test.txt", query(replace=replace), (HOST,))
        assert _code(request) == code, replace
    future = Request("GET", "/test.txt", PRESIGNED_QUERY, (HOST,))
    assert _code(future, now=EXAMPLE_NOW - 3600) == "AccessDenied"
    both = Request("GET", "/test.txt", PRESIGNED_QUERY, (HOST, _auth("host", "0" * 64)))
    assert _code(both) == "InvalidArgument"


# botocore's own signers, through a real boto3 client (the request captured before sending).


@pytest.mark.parametrize(
    "key", ["plain.txt", "a b~c!d+e=f&g", "dir//./../x", "ünïcødé/日本.txt", "sp ace%25"]
)
def test_boto3_header_signatures_verify(key: str) -> None:
    request, _body = boto_request("put_object", Bucket="bucket", Key=key, Body=b"hello")
    ctx = verify(request, keys, now=time.time(), region="us-east-1")
    assert ctx is not None
    request, _ = boto_request(
        "list_objects_v2", Bucket="bucket", Prefix="a b+c/é", Delimiter="/", StartAfter=key
    )
    assert verify(request, keys, now=time.time()) is not None
    request, _ = boto_request("get_object", Bucket="bucket", Key=key, Range="bytes=0-1")
    assert verify(request, keys, now=time.time()) is not None


def test_boto3_http_put_signs_the_body_hash() -> None:
    request, body = boto_request(
        "put_object", endpoint="http://127.0.0.1:9000", Bucket="b", Key="k", Body=b"hello"
    )
    ctx = verify(request, keys, now=time.time())
    assert ctx is not None and ctx.payload is Payload.SIGNED
    assert ctx.content_sha256 == hashlib.sha256(body).hexdigest()


def test_boto3_https_put_streams_with_a_trailer() -> None:
    request, _ = boto_request("put_object", Bucket="b", Key="k", Body=b"hello")
    ctx = verify(request, keys, now=time.time())
    assert ctx is not None and ctx.payload is Payload.STREAMING_UNSIGNED_TRAILER
    assert ctx.trailers == ("x-amz-checksum-crc32",) and ctx.decoded_length == 5


def test_botocore_presigned_urls_verify() -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url="https://s3.example.com",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": "b", "Key": "a b/ü+x"}, ExpiresIn=60
    )
    from .s3_helpers import to_request

    request = to_request("GET", url, {"host": "s3.example.com"})
    ctx = verify(request, keys, now=time.time())
    assert ctx is not None and ctx.presigned
    with pytest.raises(S3Error):
        verify(request, keys, now=time.time() + 61)
    tampered = to_request("GET", url.replace("a%20b", "a%20c"), {"host": "s3.example.com"})
    with pytest.raises(S3Error) as e:
        verify(tampered, keys, now=time.time())
    assert e.value.code == "SignatureDoesNotMatch"


def test_botocore_sigv4auth_round_trip_with_odd_query_and_headers() -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from .s3_helpers import to_request

    raw = AWSRequest(
        "GET",
        "https://s3.example.com/b?list-type=2&prefix=a%20b&delimiter=%2F&uploads",
        headers={"X-Amz-Meta-Spaces": "  a   b  ", "x-amz-meta-spaces2": "c"},
    )
    S3SigV4Auth(Credentials(ACCESS_KEY, SECRET), "s3", "us-east-1").add_auth(raw)
    prepared = raw.prepare()
    headers = dict(prepared.headers)
    headers["host"] = "s3.example.com"
    request = to_request("GET", prepared.url, headers)
    assert verify(request, keys, now=time.time()) is not None


_KEYS = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40
)  # (any printable UTF-8 name)
_PARAMS = st.dictionaries(
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=10),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=10),
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(key=_KEYS, params=_PARAMS, presigned=st.booleans())
def test_any_key_and_query_botocore_signs_verifies(
    key: str, params: dict[str, str], presigned: bool
) -> None:
    from urllib.parse import quote, urlencode

    from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from .s3_helpers import to_request

    url = "https://s3.example.com/bucket/" + quote(key, safe="/~")
    query = urlencode(params, quote_via=quote)
    raw = AWSRequest("GET", url + ("?" + query if query else ""))
    credentials = Credentials(ACCESS_KEY, SECRET)
    if presigned:
        S3SigV4QueryAuth(credentials, "s3", "us-east-1", expires=60).add_auth(raw)
    else:
        S3SigV4Auth(credentials, "s3", "us-east-1").add_auth(raw)
    prepared = raw.prepare()
    headers = {**dict(prepared.headers), "host": "s3.example.com"}
    ctx = verify(to_request("GET", prepared.url, headers), keys, now=time.time())
    assert ctx is not None and ctx.presigned == presigned


def test_two_steps_as_a_gateway_asking_the_master() -> None:
    claim = sigv4.prepare(_lifecycle(), now=EXAMPLE_NOW, region="us-east-1")
    assert claim is not None
    assert claim.scope == (ACCESS_KEY, "20130524", "us-east-1", "s3")
    key = s3_signing_key(SECRET, "20130524", "us-east-1")  # what the master answers
    assert claim.verify(key).access_key == ACCESS_KEY
    with pytest.raises(S3Error) as e:
        claim.verify(s3_signing_key("another secret", "20130524", "us-east-1"))
    assert e.value.code == "SignatureDoesNotMatch"
    # every check but the signature happens before any key is asked for
    with pytest.raises(S3Error):
        sigv4.prepare(_lifecycle(), now=EXAMPLE_NOW + 3600)


def test_signed_expect_taken_away_by_the_server() -> None:
    import hmac

    signed = ("expect", "host", "x-amz-content-sha256", "x-amz-date")
    headers = (
        ("host", "s3.example.com"),
        ("expect", "100-continue"),
        ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
        ("x-amz-date", "20130524T000000Z"),
    )
    sent = Request("PUT", "/b/k", "", headers)
    canonical = sigv4.canonical_request(sent, signed, "UNSIGNED-PAYLOAD")
    sts = sigv4.string_to_sign("20130524T000000Z", "20130524/us-east-1/s3/aws4_request", canonical)
    key = s3_signing_key(SECRET, "20130524", "us-east-1")
    signature = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    received = Request(
        "PUT",
        "/b/k",
        "",
        (*(h for h in headers if h[0] != "expect"), _auth(";".join(signed), signature)),
    )
    assert _check(received).payload is Payload.UNSIGNED


@pytest.mark.parametrize("query_auth", [False, True])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/b/a%20b~c%21", "UNSIGNED_PAYLOAD"),
        ("/b/dir//x/./y?uploads", "EMPTY_SHA256"),
        ("/b/k?partNumber=2&uploadId=a%2Bb", "STREAMING_AWS4_HMAC_SHA256_PAYLOAD"),
    ],
)
def test_awscrt_signer_verifies(path: str, body: str, query_auth: bool) -> None:
    """AWS's own C signer (aws-c-auth, through awscrt), configured as the S3 SDKs are."""
    import datetime as dt

    from awscrt import auth, http

    if query_auth:
        body = "UNSIGNED_PAYLOAD"  # (what presigned S3 URLs sign, as the SDKs make them)
    provider = auth.AwsCredentialsProvider.new_static(ACCESS_KEY, SECRET)
    headers = [("host", "s3.example.com"), ("x-amz-meta-note", "  two   spaces ")]
    if body.startswith("STREAMING"):
        headers += [("content-encoding", "aws-chunked"), ("x-amz-decoded-content-length", "5")]
    config = auth.AwsSigningConfig(
        algorithm=auth.AwsSigningAlgorithm.V4,
        signature_type=auth.AwsSignatureType.HTTP_REQUEST_QUERY_PARAMS
        if query_auth
        else auth.AwsSignatureType.HTTP_REQUEST_HEADERS,
        credentials_provider=provider,
        region="us-east-1",
        service="s3",
        date=dt.datetime.now(dt.UTC),
        signed_body_value=getattr(auth.AwsSignedBodyValue, body),
        signed_body_header_type=auth.AwsSignedBodyHeaderType.NONE
        if query_auth
        else auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256,
        use_double_uri_encode=False,
        should_normalize_uri_path=False,
        expiration_in_seconds=60 if query_auth else None,
    )
    raw = http.HttpRequest("PUT", path, http.HttpHeaders(headers))
    signed = auth.aws_sign_request(raw, config).result()
    target, _, query = signed.path.partition("?")
    request = Request("PUT", target, query, tuple((k.lower(), v) for k, v in signed.headers))
    ctx = verify(request, keys, now=time.time(), region="us-east-1")
    assert ctx is not None and ctx.presigned is query_auth
    if body.startswith("STREAMING"):
        from shoal.proto.s3.chunked import ChunkedDecoder

        from .s3_helpers import encode_chunked

        encoded = encode_chunked(
            b"hello",
            [],
            key=ctx.signing_key,
            seed=ctx.seed_signature,
            timestamp=ctx.timestamp,
            scope=ctx.scope,
        )
        decoder = ChunkedDecoder.for_context(ctx)
        assert b"".join(decoder.feed(encoded)) == b"hello"
        decoder.end()
