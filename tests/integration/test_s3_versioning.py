"""S3 versioning through the S3 gateway, judged by boto3: versions kept by PUT, read and
deleted by id, delete markers, "null" versions of a Suspended bucket, ListObjectVersions;
against a cluster started as `shoal up` starts it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from shoal.config import CONFIG_NAME
from tests.integration.http_helpers import local_cluster
from tests.integration.test_s3_gateway import S3, _refused, start_s3

boto3 = pytest.importorskip("boto3")
from botocore.exceptions import ClientError  # noqa: E402

MiB = 1 << 20


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    data = tmp_path_factory.mktemp("s3vers")
    with local_cluster(data) as (cluster, http):
        log = data / "s3.log"
        p = start_s3(cluster, http.index, log)
        try:
            cfg = json.loads((data / CONFIG_NAME).read_text())
            s3 = S3(p.address, cfg["access_key"], cfg["secret_key"], log, p.proc, cluster, http)
            yield s3
            s3.close()
        finally:
            p.stop()


def _versioned(s3: S3, bucket: str, status: str = "Enabled") -> Any:
    c = s3.client()
    c.create_bucket(Bucket=bucket)
    c.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": status})
    return c


def _versions(c: Any, bucket: str, **kw: Any) -> list[tuple[str, str, bool, bool]]:
    r = c.list_object_versions(Bucket=bucket, **kw)
    out = [(v["Key"], v["VersionId"], v["IsLatest"], False) for v in r.get("Versions", [])]
    out += [(m["Key"], m["VersionId"], m["IsLatest"], True) for m in r.get("DeleteMarkers", [])]
    return out


def test_every_put_keeps_a_version(s3: S3) -> None:
    c = _versioned(s3, "vers")
    assert c.get_bucket_versioning(Bucket="vers")["Status"] == "Enabled"
    bodies = [b"first", os.urandom(5 * MiB + 11), b"third"]  # (the second one striped)
    ids = [c.put_object(Bucket="vers", Key="k", Body=b)["VersionId"] for b in bodies]
    assert len(set(ids)) == 3 and "null" not in ids
    for vid, body in zip(ids, bodies, strict=True):
        got = c.get_object(Bucket="vers", Key="k", VersionId=vid)
        assert got["Body"].read() == body and got["VersionId"] == vid
    head = c.head_object(Bucket="vers", Key="k")
    assert head["VersionId"] == ids[2] and head["ContentLength"] == 5
    assert c.get_object(Bucket="vers", Key="k")["Body"].read() == b"third"
    # newest first, the current one latest; the plain listing shows the current only
    assert _versions(c, "vers") == [("k", ids[2], True, False), ("k", ids[1], False, False),
                                    ("k", ids[0], False, False)]  # fmt: skip
    assert [o["Key"] for o in c.list_objects_v2(Bucket="vers")["Contents"]] == ["k"]
    _refused(c.get_object, "NoSuchVersion", 404, Bucket="vers", Key="k", VersionId="0" * 24)
    _refused(c.get_object, "InvalidArgument", 400, Bucket="vers", Key="k", VersionId="nope")

    # a delete leaves a marker: the key is gone, its versions are not
    r = c.delete_object(Bucket="vers", Key="k")
    assert r["DeleteMarker"] is True
    marker = r["VersionId"]
    e = _refused(c.get_object, "NoSuchKey", 404, Bucket="vers", Key="k")
    assert e.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-delete-marker"] == "true"
    assert "Contents" not in c.list_objects_v2(Bucket="vers")
    assert _versions(c, "vers")[-1] == ("k", marker, True, True)
    assert c.get_object(Bucket="vers", Key="k", VersionId=ids[1])["Body"].read() == bodies[1]
    with pytest.raises(ClientError) as info:
        c.head_object(Bucket="vers", Key="k", VersionId=marker)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 405

    # the marker deleted: the newest version is current again
    r = c.delete_object(Bucket="vers", Key="k", VersionId=marker)
    assert r["DeleteMarker"] is True and r["VersionId"] == marker
    assert c.get_object(Bucket="vers", Key="k")["Body"].read() == b"third"
    # the current version deleted for good: the striped one before it is current
    c.delete_object(Bucket="vers", Key="k", VersionId=ids[2])
    got = c.get_object(Bucket="vers", Key="k")
    assert got["Body"].read() == bodies[1] and got["VersionId"] == ids[1]
    # a noncurrent one deleted for good
    c.delete_object(Bucket="vers", Key="k", VersionId=ids[0])
    _refused(c.get_object, "NoSuchVersion", 404, Bucket="vers", Key="k", VersionId=ids[0])
    assert _versions(c, "vers") == [("k", ids[1], True, False)]
    # the HTTP gateway over the pool serves the current version
    assert s3.http.get("vers/k").body == bodies[1]


def test_copies_uploads_and_deletes_of_many_in_a_versioned_bucket(s3: S3) -> None:
    c = _versioned(s3, "vcopy")
    v1 = c.put_object(Bucket="vcopy", Key="src", Body=b"one")["VersionId"]
    c.put_object(Bucket="vcopy", Key="src", Body=b"two")
    r = c.copy_object(Bucket="vcopy", Key="dst",
                      CopySource={"Bucket": "vcopy", "Key": "src", "VersionId": v1})  # fmt: skip
    assert r["VersionId"] and c.get_object(Bucket="vcopy", Key="dst")["Body"].read() == b"one"
    up = c.create_multipart_upload(Bucket="vcopy", Key="dst")["UploadId"]
    part = c.upload_part(Bucket="vcopy", Key="dst", UploadId=up, PartNumber=1, Body=b"mp")
    done = c.complete_multipart_upload(Bucket="vcopy", Key="dst", UploadId=up,
                                       MultipartUpload={"Parts": [
                                           {"PartNumber": 1, "ETag": part["ETag"]}]})  # fmt: skip
    assert done["VersionId"] not in (None, r["VersionId"])
    assert c.get_object(Bucket="vcopy", Key="dst", VersionId=r["VersionId"])["Body"].read() == (
        b"one"
    )
    r = c.delete_objects(Bucket="vcopy", Delete={"Objects": [
        {"Key": "src"}, {"Key": "dst", "VersionId": done["VersionId"]}]})  # fmt: skip
    by_key = {d["Key"]: d for d in r["Deleted"]}
    assert by_key["src"]["DeleteMarker"] is True
    assert by_key["dst"]["VersionId"] == done["VersionId"]
    assert c.get_object(Bucket="vcopy", Key="dst")["Body"].read() == b"one"
    _refused(c.head_object, "404", 404, Bucket="vcopy", Key="src")


def test_suspended_buckets_keep_one_null_version(s3: S3) -> None:
    c = _versioned(s3, "vsusp")
    kept = c.put_object(Bucket="vsusp", Key="k", Body=b"enabled")["VersionId"]
    c.put_bucket_versioning(Bucket="vsusp", VersioningConfiguration={"Status": "Suspended"})
    assert c.get_bucket_versioning(Bucket="vsusp")["Status"] == "Suspended"
    assert c.put_object(Bucket="vsusp", Key="k", Body=b"null 1").get("VersionId") == "null"
    c.put_object(Bucket="vsusp", Key="k", Body=b"null 2")
    assert _versions(c, "vsusp") == [("k", "null", True, False), ("k", kept, False, False)]
    assert c.get_object(Bucket="vsusp", Key="k", VersionId="null")["Body"].read() == b"null 2"
    r = c.delete_object(Bucket="vsusp", Key="k")
    assert r["DeleteMarker"] is True and r["VersionId"] == "null"
    assert _versions(c, "vsusp") == [("k", kept, False, False), ("k", "null", True, True)]
    assert c.get_object(Bucket="vsusp", Key="k", VersionId=kept)["Body"].read() == b"enabled"


def test_list_object_versions_pages_and_groups(s3: S3) -> None:
    c = _versioned(s3, "vlist")
    ids: dict[str, list[str]] = {}
    for key in ("a", "b/1", "b/2", "c"):
        ids[key] = [c.put_object(Bucket="vlist", Key=key, Body=key.encode() * n)["VersionId"]
                    for n in (1, 2)]  # fmt: skip
    page = c.list_object_versions(Bucket="vlist", MaxKeys=3)
    assert page["IsTruncated"]
    got = [(v["Key"], v["VersionId"]) for v in page["Versions"]]
    assert got == [("a", ids["a"][1]), ("a", ids["a"][0]), ("b/1", ids["b/1"][1])]
    rest = c.list_object_versions(Bucket="vlist", KeyMarker=page["NextKeyMarker"],
                                  VersionIdMarker=page["NextVersionIdMarker"])  # fmt: skip
    first = rest["Versions"][0]
    assert (first["Key"], first["VersionId"]) == ("b/1", ids["b/1"][0])
    assert len(rest["Versions"]) == 5 and not rest["IsTruncated"]
    grouped = c.list_object_versions(Bucket="vlist", Delimiter="/")
    assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["b/"]
    assert {v["Key"] for v in grouped["Versions"]} == {"a", "c"}
    only = c.list_object_versions(Bucket="vlist", Prefix="b/2")
    assert [v["VersionId"] for v in only["Versions"]] == ids["b/2"][::-1]


def test_a_never_versioned_bucket(s3: S3) -> None:
    c = s3.client()
    c.create_bucket(Bucket="plain")
    assert "Status" not in c.get_bucket_versioning(Bucket="plain")
    r = c.put_object(Bucket="plain", Key="k", Body=b"x")
    assert "VersionId" not in r
    assert c.get_object(Bucket="plain", Key="k", VersionId="null")["Body"].read() == b"x"
    assert _versions(c, "plain") == [("k", "null", True, False)]
    c.delete_object(Bucket="plain", Key="k", VersionId="null")
    _refused(c.head_object, "404", 404, Bucket="plain", Key="k")
    _refused(c.put_bucket_versioning, "MalformedXML", 400, Bucket="plain",
             VersioningConfiguration={"Status": "Sometimes"})  # fmt: skip
