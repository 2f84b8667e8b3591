"""Browser POST uploads (shoal.proto.s3.postpolicy): botocore's generate_presigned_post (SigV4
and SigV2), expiry, conditions and refusals."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from shoal.proto.s3 import postpolicy
from shoal.proto.s3.errors import S3Error

from .s3_helpers import ACCESS_KEY, SECRET, keys, sign_v2


def _presigned_post(signature_version: str, **kw: Any) -> dict[str, str]:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url="https://s3.example.com",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(signature_version=signature_version, s3={"addressing_style": "path"}),
    )
    post = client.generate_presigned_post(Bucket="photos", **kw)
    fields: dict[str, str] = post["fields"]
    return fields


def _verify(fields: dict[str, str], now: float | None = None, **kw: Any) -> postpolicy.PostUpload:
    return postpolicy.verify(
        fields,
        "photos",
        signing_key=keys,
        sign=sign_v2,
        now=time.time() if now is None else now,
        **kw,
    )


@pytest.mark.parametrize("version", ["s3v4", "s3"])
def test_botocore_presigned_post(version: str) -> None:
    fields = _presigned_post(
        version,
        Key="uploads/${filename}",
        Fields={"Content-Type": "image/png", "x-amz-meta-who": "me"},
        Conditions=[
            ["starts-with", "$key", "uploads/"],
            {"Content-Type": "image/png"},
            {"x-amz-meta-who": "me"},
            ["content-length-range", 1, 1000],
        ],
        ExpiresIn=60,
    )
    upload = _verify(fields, filename="cat.png")
    assert upload.access_key == ACCESS_KEY and upload.key == "uploads/cat.png"
    assert upload.fields["content-type"] == "image/png"
    assert upload.fields["x-amz-meta-who"] == "me"
    assert "policy" not in upload.fields and "x-amz-signature" not in upload.fields
    upload.check_size(1000)
    with pytest.raises(S3Error) as e:
        upload.check_size(1001)
    assert e.value.code == "EntityTooLarge"
    with pytest.raises(S3Error) as e:
        upload.check_size(0)
    assert e.value.code == "EntityTooSmall"
    with pytest.raises(S3Error) as e:
        _verify(fields, now=time.time() + 120)
    assert (e.value.code, e.value.message) == (
        "AccessDenied",
        "Invalid according to Policy: Policy expired.",
    )


def _code(fields: dict[str, str], **kw: Any) -> str:
    with pytest.raises(S3Error) as e:
        _verify(fields, **kw)
    return e.value.code


def test_refusals() -> None:
    fields = _presigned_post(
        "s3v4", Key="k", Fields={"acl": "public-read"}, Conditions=[{"acl": "public-read"}]
    )
    assert _code({**fields, "acl": "private"}) == "AccessDenied"  # condition failed
    assert _code({**fields, "x-amz-meta-extra": "1"}) == "AccessDenied"  # not covered
    assert _verify({**fields, "x-ignore-me": "1"}).key == "k"
    assert _code({**fields, "x-amz-signature": "0" * 64}) == "SignatureDoesNotMatch"
    other = fields["x-amz-credential"].replace(ACCESS_KEY, "AKIDUNKNOWN")
    assert _code({**fields, "x-amz-credential": other}) == "AccessDenied"  # the policy names it
    with pytest.raises(S3Error) as e:
        postpolicy.verify(fields, "photos", signing_key=lambda *_: None, now=time.time())
    assert e.value.code == "InvalidAccessKeyId"
    assert _code({k: v for k, v in fields.items() if k != "key"}) == "InvalidArgument"
    assert _code_bucket(fields) == "AccessDenied"  # the policy names the bucket


def _code_bucket(fields: dict[str, str]) -> str:
    with pytest.raises(S3Error) as e:
        postpolicy.verify(fields, "other-bucket", signing_key=keys, now=time.time())
    return e.value.code


def test_bad_policy_documents() -> None:
    fields = _presigned_post("s3v4", Key="k")
    from shoal.proto.s3.sigv4 import derive_signing_key

    def signed(document: bytes) -> dict[str, str]:
        import hashlib
        import hmac

        policy = base64.b64encode(document).decode()
        date = fields["x-amz-date"][:8]
        key = derive_signing_key(SECRET, date, "us-east-1", "s3")
        signature = hmac.new(key, policy.encode(), hashlib.sha256).hexdigest()
        return {**fields, "policy": policy, "x-amz-signature": signature}

    assert _code(signed(b"not json")) == "InvalidPolicyDocument"
    assert _code(signed(json.dumps({"conditions": []}).encode())) == "InvalidPolicyDocument"
    bad_op = {"expiration": "2999-01-01T00:00:00.000Z", "conditions": [["gt", "$key", "a"]]}
    assert _code(signed(json.dumps(bad_op).encode())) == "InvalidPolicyDocument"


def test_anonymous_post() -> None:
    upload = postpolicy.verify({"key": "a/${filename}"}, "photos", now=0, filename="x.txt")
    assert upload.access_key is None and upload.key == "a/x.txt"


def test_two_steps_as_a_gateway_asking_the_master() -> None:
    from shoal.cluster.auth import s3_sign_v2, s3_signing_key

    v4 = postpolicy.prepare(_presigned_post("s3v4", Key="k"), "photos", now=time.time())
    assert v4.signed and v4.scope is not None and v4.scope[0] == ACCESS_KEY
    assert v4.verify_v4(s3_signing_key(SECRET, v4.scope[1], v4.scope[2])).key == "k"
    v2 = postpolicy.prepare(_presigned_post("s3", Key="k"), "photos", now=time.time())
    assert v2.signed and v2.scope is None
    assert v2.verify_v2(s3_sign_v2(SECRET, v2.policy)).access_key == ACCESS_KEY
    with pytest.raises(S3Error):
        v2.verify_v2(s3_sign_v2("another secret", v2.policy))
