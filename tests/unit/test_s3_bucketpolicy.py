"""Bucket policies (shoal.proto.s3.bucketpolicy): the common allow and deny."""

from __future__ import annotations

import json

import pytest

from shoal.proto.s3.bucketpolicy import decide, parse_policy
from shoal.proto.s3.errors import S3Error

from .s3_helpers import boto_request

PUBLIC_READ = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "PublicRead",
            "Effect": "Allow",
            "Principal": "*",
            "Action": ["s3:GetObject"],
            "Resource": ["arn:aws:s3:::photos/*"],
        }
    ],
}


def test_public_read_as_boto3_sends_it() -> None:
    _, body = boto_request("put_bucket_policy", Bucket="photos", Policy=json.dumps(PUBLIC_READ))
    policy = parse_policy(body, "photos")
    assert decide(policy, None, "s3:GetObject", "arn:aws:s3:::photos/cat.jpg") == "allow"
    assert decide(policy, None, "s3:PutObject", "arn:aws:s3:::photos/cat.jpg") is None
    assert decide(policy, None, "s3:ListBucket", "arn:aws:s3:::photos") is None
    assert json.loads(policy.text) == PUBLIC_READ


def test_deny_wins_and_principals() -> None:
    document = {
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": ["AKIDREADER", "arn:aws:iam::1:user/AKIDW"]},
             "Action": "s3:*", "Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b/*"]},
            {"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "s3:Delete*",
             "Resource": "arn:aws:s3:::b/keep/*"},
        ]
    }  # fmt: skip
    policy = parse_policy(json.dumps(document).encode(), "b")
    assert decide(policy, "AKIDREADER", "s3:ListBucket", "arn:aws:s3:::b") == "allow"
    assert decide(policy, "AKIDW", "s3:PutObject", "arn:aws:s3:::b/x") == "allow"
    assert decide(policy, "AKIDW", "s3:DeleteObject", "arn:aws:s3:::b/x") == "allow"
    assert decide(policy, "AKIDW", "s3:deleteobject", "arn:aws:s3:::b/keep/x") == "deny"
    assert decide(policy, "AKIDOTHER", "s3:GetObject", "arn:aws:s3:::b/x") is None
    assert decide(policy, None, "s3:GetObject", "arn:aws:s3:::b/x") is None
    assert decide(None, None, "s3:GetObject", "arn:aws:s3:::b/x") is None


def _code(document: object, bucket: str = "b") -> str:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    with pytest.raises(S3Error) as e:
        parse_policy(body, bucket)
    return e.value.code


def test_refusals() -> None:
    statement = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                 "Resource": "arn:aws:s3:::b/*"}  # fmt: skip
    assert _code(b"not json") == "MalformedPolicy"
    assert _code([]) == "MalformedPolicy"
    assert _code({"Statement": []}) == "MalformedPolicy"
    assert _code({"Version": "2020-01-01", "Statement": statement}) == "MalformedPolicy"
    assert _code({"Statement": {**statement, "Effect": "Maybe"}}) == "MalformedPolicy"
    assert _code({"Statement": {**statement, "Action": "iam:PassRole"}}) == "MalformedPolicy"
    assert _code({"Statement": {**statement, "Resource": "arn:aws:s3:::other/*"}}) == (
        "MalformedPolicy"
    )
    assert _code({"Statement": {**statement, "Principal": {"Service": "x"}}}) == ("MalformedPolicy")
    condition = {"Bool": {"aws:SecureTransport": "false"}}
    assert _code({"Statement": {**statement, "Condition": condition}}) == "NotImplemented"
    assert _code(b"{" + b" " * 30000 + b"}") == "MalformedPolicy"
