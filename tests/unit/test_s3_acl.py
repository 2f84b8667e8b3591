"""S3's ACLs (shoal.proto.s3.acl): canned ACLs and grant headers as boto3 sends them."""

from __future__ import annotations

import pytest

from shoal.proto.s3 import acl
from shoal.proto.s3.errors import S3Error
from shoal.proto.s3.responses import access_control_policy
from shoal.proto.s3.xml import parse_acl

from .s3_helpers import boto_request

OWNER, OTHER = "owner-id", "other-id"


@pytest.mark.parametrize(
    ("name", "anonymous_read", "anonymous_write", "signed_in_read"),
    [
        ("private", False, False, False),
        ("public-read", True, False, True),
        ("public-read-write", True, True, True),
        ("authenticated-read", False, False, True),
    ],
)
def test_canned_acls(
    name: str, anonymous_read: bool, anonymous_write: bool, signed_in_read: bool
) -> None:
    request, _ = boto_request("put_bucket_acl", Bucket="b", ACL=name)
    policy = acl.from_headers(request.headers, OWNER)
    assert policy is not None
    assert acl.allows(policy, None, "READ") is anonymous_read
    assert acl.allows(policy, None, "WRITE") is anonymous_write
    assert acl.allows(policy, OTHER, "READ") is signed_in_read
    assert acl.allows(policy, OWNER, "WRITE") and acl.allows(policy, OWNER, "WRITE_ACP")
    assert not acl.allows(policy, OTHER, "WRITE_ACP")
    assert parse_acl(access_control_policy(policy)) == policy  # it renders and reads back


def test_bucket_owner_canned_acls() -> None:
    read = acl.canned("bucket-owner-read", OTHER, OWNER)
    assert acl.allows(read, OWNER, "READ") and not acl.allows(read, OWNER, "WRITE")
    full = acl.canned("bucket-owner-full-control", OTHER, OWNER)
    assert acl.allows(full, OWNER, "WRITE")
    with pytest.raises(S3Error) as e:
        acl.canned("everyone-everything", OWNER)
    assert e.value.code == "InvalidArgument"


def test_grant_headers() -> None:
    request, _ = boto_request(
        "put_object_acl",
        Bucket="b",
        Key="k",
        GrantRead=f'id="{OTHER}", uri="{acl.AUTHENTICATED_USERS}"',
        GrantWriteACP=f'id="{OTHER}"',
    )
    policy = acl.from_headers(request.headers, OWNER)
    assert policy is not None
    assert acl.allows(policy, "someone", "READ")  # any signed-in user
    assert not acl.allows(policy, None, "READ")
    assert acl.allows(policy, OTHER, "WRITE_ACP") and not acl.allows(policy, OTHER, "WRITE")
    assert acl.from_headers([], OWNER) is None
    with pytest.raises(S3Error) as e:
        acl.from_headers([("x-amz-acl", "private"), ("x-amz-grant-read", 'id="x"')], OWNER)
    assert e.value.code == "InvalidRequest"
    with pytest.raises(S3Error) as e:
        acl.from_headers([("x-amz-grant-read", "nobody")], OWNER)
    assert e.value.code == "InvalidArgument"
