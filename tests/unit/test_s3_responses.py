"""S3's response bodies (shoal.proto.s3.responses), read back by botocore's own parser."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.proto.s3 import responses as r
from shoal.proto.s3.errors import S3Error
from shoal.proto.s3.xml import NS, AccessControlPolicy, CORSRule, Grant, Tag, parse_acl

from .s3_helpers import boto_parse

T = 1_700_000_000.25
WHEN = dt.datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=dt.UTC)
OWNER = r.Owner("owner-id", "me")


def test_timestamp() -> None:
    assert r.timestamp(T) == "2023-11-14T22:13:20.250Z"
    assert r.timestamp(0) == "1970-01-01T00:00:00.000Z"


def test_documents_are_in_s3_namespace() -> None:
    root = ET.fromstring(r.location("eu-west-1"))
    assert root.tag == f"{{{NS}}}LocationConstraint" and root.text == "eu-west-1"
    assert ET.fromstring(r.location("us-east-1")).text is None
    assert r.versioning(None).startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')


def test_list_buckets() -> None:
    body = r.list_buckets(OWNER, [r.Bucket("a", T), r.Bucket("b", T)])
    got = boto_parse("ListBuckets", body)
    assert [b["Name"] for b in got["Buckets"]] == ["a", "b"]
    assert got["Buckets"][0]["CreationDate"] == WHEN
    assert got["Owner"] == {"ID": "owner-id", "DisplayName": "me"}


def _listing(**kw: object) -> r.ObjectListing:
    return r.ObjectListing(
        bucket="bkt",
        contents=[r.ObjectEntry("a b+c&<é", T, "abc", 5, owner=OWNER)],
        common_prefixes=["dir one/"],
        delimiter="/",
        **kw,  # type: ignore[arg-type]
    )


def test_list_objects_v2() -> None:
    body = r.list_objects(
        _listing(continuation_token="t1", next_continuation_token="t2", is_truncated=True),
        v2=True,
    )
    got = boto_parse("ListObjectsV2", body)
    assert got["Contents"][0]["Key"] == "a b+c&<é"
    assert got["Contents"][0]["ETag"] == '"abc"' and got["Contents"][0]["Size"] == 5
    assert got["Contents"][0]["LastModified"] == WHEN
    assert "Owner" not in got["Contents"][0]  # only with fetch-owner
    assert got["CommonPrefixes"] == [{"Prefix": "dir one/"}]
    assert (got["KeyCount"], got["IsTruncated"], got["NextContinuationToken"]) == (2, True, "t2")


def test_list_objects_url_encoding() -> None:
    body = r.list_objects(_listing(encoding_type="url", start_after="x y"), v2=True)
    assert b"<Key>a%20b%2Bc%26%3C%C3%A9</Key>" in body
    got = boto_parse("ListObjectsV2", body)
    # botocore decodes url-encoded listings in a handler of its own: unquote_plus
    from urllib.parse import unquote_plus

    assert unquote_plus(got["Contents"][0]["Key"]) == "a b+c&<é"
    assert unquote_plus(got["CommonPrefixes"][0]["Prefix"]) == "dir one/"


def test_list_objects_v1() -> None:
    got = boto_parse(
        "ListObjects", r.list_objects(_listing(marker="m", next_marker="n", is_truncated=True))
    )
    assert (got["Marker"], got["NextMarker"], got["Delimiter"]) == ("m", "n", "/")
    assert got["Contents"][0]["Owner"]["ID"] == "owner-id"


def test_list_versions() -> None:
    listing = r.ObjectListing(
        bucket="bkt",
        versions=[
            r.VersionEntry("k", "v2", True, T, delete_marker=True, owner=OWNER),
            r.VersionEntry("k", "v1", False, T, "abc", 3, owner=OWNER),
        ],
        next_key_marker="k",
        next_version_id_marker="v1",
        is_truncated=True,
    )
    got = boto_parse("ListObjectVersions", r.list_versions(listing))
    assert got["DeleteMarkers"][0]["VersionId"] == "v2" and got["DeleteMarkers"][0]["IsLatest"]
    assert got["Versions"][0]["Size"] == 3 and not got["Versions"][0]["IsLatest"]
    assert got["NextVersionIdMarker"] == "v1"


def test_multipart_documents() -> None:
    got = boto_parse("CreateMultipartUpload", r.initiate_multipart("b", "k", "u1"))
    assert got["UploadId"] == "u1"
    got = boto_parse(
        "CompleteMultipartUpload",
        r.complete_multipart("http://h/b/k", "b", "k", "abc-2", {"crc32": "AAAAAA=="}),
    )
    assert (got["ETag"], got["ChecksumCRC32"]) == ('"abc-2"', "AAAAAA==")
    parts = r.PartListing(
        "b",
        "k",
        "u1",
        OWNER,
        [r.PartEntry(1, T, "e1", 5 << 20), r.PartEntry(2, T, "e2", 1)],
        next_part_number_marker=2,
        is_truncated=True,
    )
    got = boto_parse("ListParts", r.list_parts(parts))
    assert [p["PartNumber"] for p in got["Parts"]] == [1, 2]
    assert got["NextPartNumberMarker"] == 2 and got["Initiator"]["ID"] == "owner-id"
    uploads = r.UploadListing("b", [r.UploadEntry("k", "u1", T, OWNER)], ["d/"], delimiter="/")
    got = boto_parse("ListMultipartUploads", r.list_uploads(uploads))
    assert got["Uploads"][0]["UploadId"] == "u1" and got["Uploads"][0]["Initiated"] == WHEN
    assert got["CommonPrefixes"] == [{"Prefix": "d/"}]


def test_delete_result() -> None:
    deleted = [r.Deleted("a"), r.Deleted("b", "v1", True, "dm1")]
    errors = [r.DeleteError("c", "AccessDenied", "Access Denied")]
    got = boto_parse("DeleteObjects", r.delete_result(deleted, errors))
    assert got["Deleted"][1] == {
        "Key": "b",
        "VersionId": "v1",
        "DeleteMarker": True,
        "DeleteMarkerVersionId": "dm1",
    }
    assert got["Errors"] == [{"Key": "c", "Code": "AccessDenied", "Message": "Access Denied"}]
    quiet = boto_parse("DeleteObjects", r.delete_result(deleted, [], quiet=True))
    assert "Deleted" not in quiet


def test_copy_results() -> None:
    got = boto_parse("CopyObject", r.copy_object("abc", T))
    assert got["CopyObjectResult"]["ETag"] == '"abc"'
    got = boto_parse("UploadPartCopy", r.copy_part("abc", T, {"sha256": "x"}))
    assert got["CopyPartResult"]["ChecksumSHA256"] == "x"


def test_bucket_configuration_documents() -> None:
    assert boto_parse("GetBucketVersioning", r.versioning("Enabled"))["Status"] == "Enabled"
    assert "Status" not in boto_parse("GetBucketVersioning", r.versioning(None))
    got = boto_parse("GetObjectTagging", r.tagging([Tag("a", "1"), Tag("b", "")]))
    assert got["TagSet"] == [{"Key": "a", "Value": "1"}, {"Key": "b", "Value": ""}]
    rule = CORSRule(("GET",), ("*",), ("*",), ("ETag",), 60, "r1")
    got = boto_parse("GetBucketCors", r.cors([rule]))
    assert got["CORSRules"][0]["AllowedMethods"] == ["GET"]
    assert got["CORSRules"][0]["MaxAgeSeconds"] == 60
    assert boto_parse("GetBucketLocation", r.location("eu-west-1"))  # (botocore reads it aside)


def test_access_control_policy_round_trip() -> None:
    policy = AccessControlPolicy(
        "owner-id",
        "me",
        [
            Grant("CanonicalUser", "owner-id", "FULL_CONTROL", "me"),
            Grant("Group", "http://acs.amazonaws.com/groups/global/AllUsers", "READ"),
        ],
    )
    body = r.access_control_policy(policy)
    assert parse_acl(body) == policy
    got = boto_parse("GetBucketAcl", body)
    assert got["Grants"][1]["Grantee"]["Type"] == "Group"
    assert got["Grants"][0]["Grantee"]["ID"] == "owner-id"


def test_error_body_as_botocore_reads_it() -> None:
    from botocore.parsers import RestXMLParser

    error = S3Error("NoSuchKey", Key="a&b")
    body = error.body("/bkt/a&b", "req-1")
    parsed = RestXMLParser().parse(
        {"body": body, "headers": {}, "status_code": error.status, "context": {}}, None
    )
    assert parsed["Error"]["Code"] == "NoSuchKey"
    assert parsed["Error"]["Key"] == "a&b"
    assert b"<Resource>/bkt/a&amp;b</Resource><RequestId>req-1</RequestId>" in body


_TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r"), max_size=20
)


@settings(max_examples=100, deadline=None)
@given(tags=st.lists(st.tuples(_TEXT.filter(bool), _TEXT), max_size=10, unique_by=lambda t: t[0]))
def test_tagging_round_trip(tags: list[tuple[str, str]]) -> None:
    from shoal.proto.s3.xml import parse_tagging

    values = [Tag(k, v) for k, v in tags if not k.lower().startswith("aws:")]
    assert parse_tagging(r.tagging(values)) == values


@settings(max_examples=100, deadline=None)
@given(
    owner=_TEXT.map(str.strip).filter(bool),
    ids=st.lists(_TEXT.map(str.strip).filter(bool), max_size=4),
)
def test_acl_round_trip(owner: str, ids: list[str]) -> None:
    grants = [Grant("CanonicalUser", i, "READ") for i in ids]
    policy = AccessControlPolicy(owner, None, grants)
    assert parse_acl(r.access_control_policy(policy)) == policy


def test_boto3_lists_with_encoding_type_url_and_gets_names_back() -> None:
    from .s3_helpers import boto_answer

    name = "a b+c&<é%41\t"
    listing = r.ObjectListing(
        bucket="bkt",
        prefix="a b",
        delimiter="/",
        contents=[r.ObjectEntry(name, T, "abc", 5)],
        common_prefixes=["a b/sub dir/"],
    )
    request, _ = boto_answer("list_objects_v2", b"", Bucket="bkt", Prefix="a b", Delimiter="/")
    listing.encoding_type = request.param("encoding-type")
    assert listing.encoding_type == "url"  # boto3 asks for it by itself
    _, got = boto_answer(
        "list_objects_v2",
        r.list_objects(listing, v2=True),
        Bucket="bkt",
        Prefix="a b",
        Delimiter="/",
    )
    assert got["Contents"][0]["Key"] == name
    assert got["CommonPrefixes"] == [{"Prefix": "a b/sub dir/"}]
    assert got["Prefix"] == "a b" and got["Delimiter"] == "/"
    versions = r.ObjectListing(
        bucket="bkt",
        versions=[r.VersionEntry(name, "v1", True, T, "abc", 5)],
        encoding_type="url",
    )
    _, got = boto_answer("list_object_versions", r.list_versions(versions), Bucket="bkt")
    assert got["Versions"][0]["Key"] == name


@pytest.mark.parametrize(
    ("error", "operation", "params"),
    [
        (S3Error("NoSuchKey", Key="k"), "get_object", {"Bucket": "b", "Key": "k"}),
        (S3Error("BucketNotEmpty", BucketName="b"), "delete_bucket", {"Bucket": "b"}),
        (S3Error("SignatureDoesNotMatch"), "list_buckets", {}),
        (S3Error("InvalidRange", RangeRequested="bytes=9-", ActualObjectSize="3"),
         "get_object", {"Bucket": "b", "Key": "k", "Range": "bytes=9-"}),
    ],
)  # fmt: skip
def test_boto3_raises_our_errors(error: S3Error, operation: str, params: dict[str, str]) -> None:
    from botocore.exceptions import ClientError

    from .s3_helpers import boto_answer

    with pytest.raises(ClientError) as e:
        boto_answer(operation, error.body("/b/k", "RID"), error.status, **params)
    assert e.value.response["Error"]["Code"] == error.code
    assert e.value.response["Error"]["Message"] == error.message
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == error.status
