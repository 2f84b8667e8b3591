"""SigV2 (shoal.proto.s3.sigv2): AWS's examples ("Signing and Authenticating REST Requests"),
botocore's HmacV1Auth and HmacV1QueryAuth, refusals."""

from __future__ import annotations

import email.utils
import time

import pytest

from shoal.proto.s3 import sigv2
from shoal.proto.s3.errors import S3Error
from shoal.proto.s3.sigv4 import Request

from .s3_helpers import ACCESS_KEY, SECRET, sign_v2, to_request


def _when(date: str) -> float:
    parsed = email.utils.parsedate_tz(date)
    assert parsed is not None
    return float(email.utils.mktime_tz(parsed))


def _example(method: str, path: str, query: str, signature: str, *headers: tuple[str, str]) -> str:
    request = Request(
        method, path, query, (*headers, ("authorization", f"AWS {ACCESS_KEY}:{signature}"))
    )
    stamp = dict(headers).get("x-amz-date") or dict(headers)["date"]
    resource = path if path.startswith("/awsexamplebucket1") else "/awsexamplebucket1" + path
    access_key = sigv2.verify(request, sign_v2, now=_when(stamp), resource=resource)
    assert access_key == ACCESS_KEY
    return sigv2.string_to_sign(request, dict(headers).get("date", ""), resource)


VHOST = ("host", "awsexamplebucket1.us-west-1.s3.amazonaws.com")


def test_example_object_get() -> None:
    sts = _example(
        "GET",
        "/photos/puppy.jpg",
        "",
        "qgk2+6Sv9/oM7G3qLEjTH1a1l1g=",
        VHOST,
        ("date", "Tue, 27 Mar 2007 19:36:42 +0000"),
    )
    assert sts == "GET\n\n\nTue, 27 Mar 2007 19:36:42 +0000\n/awsexamplebucket1/photos/puppy.jpg"


def test_example_object_put() -> None:
    _example(
        "PUT",
        "/photos/puppy.jpg",
        "",
        "iqRzw+ileNPu1fhspnRs8nOjjIA=",
        ("content-type", "image/jpeg"),
        ("content-length", "94328"),
        VHOST,
        ("date", "Tue, 27 Mar 2007 21:15:45 +0000"),
    )


def test_example_list_and_acl() -> None:
    listing = _example(
        "GET",
        "/",
        "prefix=photos&max-keys=50&marker=puppy",  # not sub-resources: not signed
        "m0WP8eCtspQl5Ahe6L1SozdX9YA=",
        VHOST,
        ("date", "Tue, 27 Mar 2007 19:42:41 +0000"),
    )
    assert listing.endswith("\n/awsexamplebucket1/")
    acl = _example(
        "GET", "/", "acl", "82ZHiFIjc+WbcwFKGUVEQspPn+0=", VHOST,
        ("date", "Tue, 27 Mar 2007 19:44:46 +0000"),
    )  # fmt: skip
    assert acl.endswith("\n/awsexamplebucket1/?acl")


def test_example_delete_with_x_amz_date() -> None:
    _example(
        "DELETE",
        "/awsexamplebucket1/photos/puppy.jpg",
        "",
        "XbyTlbQdu9Xw5o8P4iMwPktxQd8=",
        ("host", "s3.us-west-1.amazonaws.com"),
        ("date", "Tue, 27 Mar 2007 21:20:27 +0000"),
        ("x-amz-date", "Tue, 27 Mar 2007 21:20:26 +0000"),
    )


def _botocore(method: str, url: str, headers: dict[str, str], query_auth: bool = False) -> Request:
    from botocore.auth import HmacV1Auth, HmacV1QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    raw = AWSRequest(method, url, headers=headers)
    credentials = Credentials(ACCESS_KEY, SECRET)
    (HmacV1QueryAuth(credentials, expires=60) if query_auth else HmacV1Auth(credentials)).add_auth(
        raw
    )
    prepared = raw.prepare()
    return to_request(method, prepared.url, dict(prepared.headers))


def test_botocore_hmacv1_round_trip() -> None:
    request = _botocore(
        "PUT",
        "https://s3.example.com/bucket/a%20b/c%2Bd?uploadId=x%2By&partNumber=2&foo=bar",
        {
            "Content-Type": "text/plain",
            "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==",
            "x-amz-meta-b": " two  words ",
            "X-Amz-Meta-A": "1",
        },
    )
    assert sigv2.verify(request, sign_v2, now=time.time()) == ACCESS_KEY
    tampered = Request("PUT", request.path, request.query.replace("2", "3"), request.headers)
    with pytest.raises(S3Error) as e:
        sigv2.verify(tampered, sign_v2, now=time.time())
    assert e.value.code == "SignatureDoesNotMatch" and "StringToSign" in e.value.fields
    with pytest.raises(S3Error) as e:
        sigv2.verify(request, sign_v2, now=time.time() + 901)
    assert e.value.code == "RequestTimeTooSkewed"


def test_botocore_hmacv1_query_round_trip() -> None:
    request = _botocore("GET", "https://s3.example.com/bucket/key?versionId=3", {}, True)
    assert sigv2.verify(request, sign_v2, now=time.time()) == ACCESS_KEY
    with pytest.raises(S3Error) as e:
        sigv2.verify(request, sign_v2, now=time.time() + 120)
    assert (e.value.code, e.value.message) == ("AccessDenied", "Request has expired")


def test_refusals() -> None:
    def code(*headers: tuple[str, str], query: str = "") -> str:
        with pytest.raises(S3Error) as e:
            sigv2.verify(Request("GET", "/b/k", query, headers), sign_v2, now=time.time())
        return e.value.code

    now = email.utils.formatdate(usegmt=True)
    assert code(("authorization", "AWS nocolon"), ("date", now)) == "InvalidArgument"
    assert code(("authorization", "AWS AKIDUNKNOWN:abc="), ("date", now)) == "InvalidAccessKeyId"
    assert code(("authorization", f"AWS {ACCESS_KEY}:abc=")) == "AccessDenied"  # no date
    assert code(query=f"AWSAccessKeyId={ACCESS_KEY}&Expires=9999999999") == "AccessDenied"
    assert sigv2.verify(Request("GET", "/b/k"), sign_v2, now=0) is None


def test_two_steps_as_a_gateway_asking_the_master() -> None:
    from shoal.cluster.auth import s3_sign_v2

    request = _botocore("GET", "https://s3.example.com/bucket/key?acl", {})
    claim = sigv2.prepare(request, now=time.time())
    assert claim is not None and claim.access_key == ACCESS_KEY
    assert claim.strings_to_sign[0].endswith(b"\n/bucket/key?acl")
    assert claim.matches(s3_sign_v2(SECRET, claim.strings_to_sign[0]))
    assert not claim.matches(s3_sign_v2("another secret", claim.strings_to_sign[0]))
    assert claim.mismatch().code == "SignatureDoesNotMatch"
