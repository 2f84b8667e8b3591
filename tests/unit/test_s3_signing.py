"""What the master computes for an S3 gateway, against AWS's published examples: the SigV4
signing key ("Examples of how to derive a signing key for Signature Version 4") and a SigV2
signature ("Signing and authenticating REST requests", the puppy.jpg example); and the
gateway right g, on "*" only."""

from __future__ import annotations

import base64

import pytest

from shoal.cluster.auth import (
    Ticket,
    check_rights,
    parse_rights,
    s3_sign_v2,
    s3_signing_key,
)
from shoal.errors import Forbidden, InvalidArgument

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def test_signing_key_is_aws_example() -> None:
    key = s3_signing_key(AWS_SECRET, "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_signing_key_depends_on_each_part_of_its_scope() -> None:
    base = s3_signing_key(AWS_SECRET, "20120215", "us-east-1")
    assert base == s3_signing_key(AWS_SECRET, "20120215", "us-east-1", "s3")
    others = {
        s3_signing_key(AWS_SECRET, "20120216", "us-east-1"),
        s3_signing_key(AWS_SECRET, "20120215", "eu-west-1"),
        s3_signing_key(AWS_SECRET, "20120215", "us-east-1", "iam"),
        s3_signing_key(AWS_SECRET[:-1] + "X", "20120215", "us-east-1"),
    }
    assert len(others) == 4 and base not in others and len(base) == 32


def test_sign_v2_is_aws_example() -> None:
    string_to_sign = (
        b"GET\n\n\nTue, 27 Mar 2007 19:36:42 +0000\n/awsexamplebucket1/photos/puppy.jpg"
    )
    sig = s3_sign_v2("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", string_to_sign)
    assert base64.b64encode(sig) == b"qgk2+6Sv9/oM7G3qLEjTH1a1l1g="


def test_gateway_right_on_star_only() -> None:
    assert parse_rights("*=g,photos=rw") == {"*": "g", "photos": "rw"}
    assert check_rights({"*": "rwdag"}) == {"*": "rwdag"}
    with pytest.raises(InvalidArgument, match="on '\\*' only"):
        parse_rights("photos=rwg")
    with pytest.raises(InvalidArgument, match="use r, w, d, a and g"):
        parse_rights("*=x")
    with pytest.raises(Forbidden, match="may not check S3 signatures"):
        Ticket("SKX", {"photos": "rw"}, 0.0).require("*", "g")
