"""The XML request bodies S3 takes (shoal.proto.s3.xml): as boto3 writes them, and refusals."""

from __future__ import annotations

import pytest

from shoal.proto.s3 import xml
from shoal.proto.s3.errors import S3Error

from .s3_helpers import boto_request

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


def _code(parse: object, body: bytes) -> str:
    with pytest.raises(S3Error) as e:
        parse(body)  # type: ignore[operator]
    return e.value.code


def test_boto3_bodies_parse() -> None:
    _, body = boto_request(
        "create_bucket",
        Bucket="b",
        CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
    )
    assert xml.parse_location(body) == "eu-west-1"
    assert xml.parse_location(b"") is None
    _, body = boto_request(
        "complete_multipart_upload",
        Bucket="b",
        Key="k",
        UploadId="u",
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": '"aaa"', "ChecksumCRC32": "AAAAAA=="},
                {"PartNumber": 3, "ETag": '"bbb"'},
            ]
        },
    )
    parts = xml.parse_complete(body)
    assert parts == [
        xml.CompletedPart(1, "aaa", {"crc32": "AAAAAA=="}),
        xml.CompletedPart(3, "bbb", {}),
    ]
    _, body = boto_request(
        "delete_objects",
        Bucket="b",
        Delete={"Objects": [{"Key": "a&b<c"}, {"Key": "d", "VersionId": "v1"}], "Quiet": True},
    )
    assert xml.parse_delete(body) == xml.DeleteRequest([("a&b<c", None), ("d", "v1")], True)
    _, body = boto_request(
        "put_object_tagging",
        Bucket="b",
        Key="k",
        Tagging={"TagSet": [{"Key": "color", "Value": "blue"}, {"Key": "empty", "Value": ""}]},
    )
    assert xml.parse_tagging(body) == [xml.Tag("color", "blue"), xml.Tag("empty", "")]
    _, body = boto_request(
        "put_bucket_versioning", Bucket="b", VersioningConfiguration={"Status": "Suspended"}
    )
    assert xml.parse_versioning(body) == xml.Versioning("Suspended", None)
    _, body = boto_request(
        "put_bucket_cors",
        Bucket="b",
        CORSConfiguration={
            "CORSRules": [
                {
                    "AllowedMethods": ["GET", "PUT"],
                    "AllowedOrigins": ["https://example.com"],
                    "AllowedHeaders": ["*"],
                    "ExposeHeaders": ["ETag"],
                    "MaxAgeSeconds": 3000,
                }
            ]
        },
    )
    assert xml.parse_cors(body) == [
        xml.CORSRule(("GET", "PUT"), ("https://example.com",), ("*",), ("ETag",), 3000, None)
    ]
    _, body = boto_request(
        "put_bucket_acl",
        Bucket="b",
        AccessControlPolicy={
            "Owner": {"ID": "owner-id", "DisplayName": "me"},
            "Grants": [
                {
                    "Grantee": {"Type": "CanonicalUser", "ID": "owner-id"},
                    "Permission": "FULL_CONTROL",
                },
                {"Grantee": {"Type": "Group", "URI": ALL_USERS}, "Permission": "READ"},
            ],
        },
    )
    policy = xml.parse_acl(body)
    assert policy.owner_id == "owner-id" and policy.owner_name == "me"
    assert [(g.grantee_type, g.permission) for g in policy.grants] == [
        ("CanonicalUser", "FULL_CONTROL"),
        ("Group", "READ"),
    ]


def test_no_dtd_no_entities() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;">]><Delete><Object><Key>&lol2;</Key></Object></Delete>'
    )
    assert _code(xml.parse_delete, bomb) == "MalformedXML"
    external = (
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<Delete><Object><Key>&x;</Key></Object></Delete>"
    )
    assert _code(xml.parse_delete, external) == "MalformedXML"


def test_refusals() -> None:
    assert _code(xml.parse_delete, b"<Delete>") == "MalformedXML"
    assert _code(xml.parse_delete, b"<Other/>") == "MalformedXML"
    assert _code(xml.parse_delete, b"<Delete></Delete>") == "MalformedXML"
    many = b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>"
    assert _code(xml.parse_delete, many) == "MalformedXML"
    quiet = b"<Delete><Quiet>yes</Quiet><Object><Key>k</Key></Object></Delete>"
    assert _code(xml.parse_delete, quiet) == "MalformedXML"
    part = b"<Part><PartNumber>%d</PartNumber><ETag>e</ETag></Part>"
    complete = b"<CompleteMultipartUpload>%s</CompleteMultipartUpload>"
    assert _code(xml.parse_complete, complete % (part % 2 + part % 1)) == "InvalidPartOrder"
    assert _code(xml.parse_complete, complete % (part % 1 + part % 1)) == "InvalidPartOrder"
    assert _code(xml.parse_complete, complete % (part % 10001)) == "InvalidArgument"
    assert _code(xml.parse_complete, complete % b"") == "MalformedXML"
    assert _code(xml.parse_complete, complete % b"<Part><PartNumber>1</PartNumber></Part>") == (
        "MalformedXML"
    )
    on = b"<VersioningConfiguration><Status>On</Status></VersioningConfiguration>"
    assert _code(xml.parse_versioning, on) == "MalformedXML"
    tag = b"<Tag><Key>%s</Key><Value>v</Value></Tag>"
    tagging = b"<Tagging><TagSet>%s</TagSet></Tagging>"
    assert _code(xml.parse_tagging, tagging % (tag % b"a" + tag % b"a")) == "InvalidTag"
    assert _code(xml.parse_tagging, tagging % (tag % (b"k" * 129))) == "InvalidTag"
    assert _code(xml.parse_tagging, tagging % (tag % b"aws:x")) == "InvalidTag"
    eleven = b"".join(tag % b"%d" % i for i in range(11))
    assert _code(xml.parse_tagging, tagging % eleven) == "BadRequest"
    assert len(xml.parse_tagging(tagging % eleven, max_tags=50)) == 11
    cors = b"<CORSConfiguration><CORSRule><AllowedMethod>PATCH</AllowedMethod><AllowedOrigin>*</AllowedOrigin></CORSRule></CORSConfiguration>"  # noqa: E501
    assert _code(xml.parse_cors, cors) == "InvalidRequest"


def test_namespace_is_optional() -> None:
    plain = b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>"
    spaced = plain.replace(
        b"<VersioningConfiguration>",
        b'<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
    )
    assert xml.parse_versioning(plain) == xml.parse_versioning(spaced)
