"""S3's errors (shoal.proto.s3.errors): the statuses S3 gives its codes, and the XML body."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from shoal.errors import ShoalError
from shoal.proto.s3.errors import CODES, S3Error, expired

STATUSES = {
    "NoSuchBucket": 404, "NoSuchKey": 404, "NoSuchUpload": 404, "NoSuchVersion": 404,
    "BucketAlreadyOwnedByYou": 409, "BucketAlreadyExists": 409, "BucketNotEmpty": 409,
    "InvalidBucketName": 400, "SignatureDoesNotMatch": 403, "InvalidAccessKeyId": 403,
    "RequestTimeTooSkewed": 403, "AccessDenied": 403, "PreconditionFailed": 412,
    "InvalidRange": 416, "MalformedXML": 400, "InvalidArgument": 400, "EntityTooLarge": 400,
    "EntityTooSmall": 400, "InvalidPart": 400, "InvalidPartOrder": 400, "BadDigest": 400,
    "InvalidDigest": 400, "XAmzContentSHA256Mismatch": 400, "MissingContentLength": 411,
    "IncompleteBody": 400, "InvalidRequest": 400, "NotImplemented": 501,
    "MethodNotAllowed": 405, "KeyTooLongError": 400, "MetadataTooLarge": 400,
    "AuthorizationHeaderMalformed": 400, "AuthorizationQueryParametersError": 400,
    "InternalError": 500, "SlowDown": 503, "ServiceUnavailable": 503, "NotModified": 304,
}  # fmt: skip


@pytest.mark.parametrize(("code", "status"), sorted(STATUSES.items()))
def test_statuses(code: str, status: int) -> None:
    assert CODES[code][0] == status
    error = S3Error(code)
    assert (error.status, error.message) == (status, CODES[code][1])
    assert isinstance(error, ShoalError)


def test_body() -> None:
    error = S3Error("NoSuchKey", Key="a<b>&c")
    root = ET.fromstring(error.body("/bucket/a<b>&c", "4442587FB7D0A2F9"))
    assert [child.tag for child in root] == ["Code", "Message", "Key", "Resource", "RequestId"]
    assert root.findtext("Key") == "a<b>&c" and root.findtext("Code") == "NoSuchKey"
    assert ET.fromstring(S3Error("InternalError").body()).findtext("Resource") is None


def test_overrides_and_unknown_codes() -> None:
    assert S3Error("AccessDenied", "Request has expired").message == "Request has expired"
    assert S3Error("Custom", "why", 418).status == 418
    with pytest.raises(KeyError):
        S3Error("NoSuchThing")
    e = expired("2013-05-25T00:00:00Z", "2013-05-25T00:00:01Z", "86400")
    assert (e.code, e.status, e.message) == ("AccessDenied", 403, "Request has expired")
    assert list(e.fields) == ["X-Amz-Expires", "Expires", "ServerTime"]
