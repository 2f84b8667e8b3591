"""S3 multipart uploads, CopyObject and DeleteObjects through the S3 gateway, judged by
boto3 (its current version and default checksum settings unless a test says otherwise),
against a cluster started as `shoal up` starts it."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.config import CONFIG_NAME
from tests.integration.http_helpers import live_stripes, local_cluster
from tests.integration.test_s3_gateway import S3, _raw, _refused, _signed, start_s3

boto3 = pytest.importorskip("boto3")
from boto3.s3.transfer import TransferConfig  # noqa: E402

MiB = 1 << 20


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    data = tmp_path_factory.mktemp("s3mp")
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


def _bucket(s3: S3, name: str) -> Any:
    c = s3.client()
    c.create_bucket(Bucket=name)
    return c


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def test_upload_file_in_parts_with_default_checksums(s3: S3, tmp_path: Path) -> None:
    c = _bucket(s3, "mpart")
    body = os.urandom(13 * MiB + 12345)
    src = tmp_path / "big.bin"
    src.write_bytes(body)
    parts = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    c.upload_file(str(src), "mpart", "dir/big.bin", Config=parts, ExtraArgs={
        "ContentType": "application/x-test", "Metadata": {"color": "blue"}})  # fmt: skip

    want = _md5(b"".join(_md5(body[i : i + 5 * MiB]) for i in range(0, len(body), 5 * MiB)))
    etag = f'"{want.hex()}-3"'
    head = c.head_object(Bucket="mpart", Key="dir/big.bin")
    assert head["ContentLength"] == len(body) and head["ETag"] == etag
    assert head["ContentType"] == "application/x-test" and head["Metadata"] == {"color": "blue"}
    got = c.get_object(Bucket="mpart", Key="dir/big.bin", ChecksumMode="ENABLED")
    assert got["Body"].read() == body
    part = c.get_object(Bucket="mpart", Key="dir/big.bin", Range="bytes=5242870-5242889")
    assert part["Body"].read() == body[5242870:5242890]
    (listed,) = c.list_objects_v2(Bucket="mpart", Prefix="dir/")["Contents"]
    assert (listed["Key"], listed["Size"], listed["ETag"]) == ("dir/big.bin", len(body), etag)
    out = tmp_path / "back.bin"
    c.download_file("mpart", "dir/big.bin", str(out), Config=parts)
    assert out.read_bytes() == body
    # the HTTP gateway over the same pool serves the same bytes
    r = s3.http.get("mpart/dir/big.bin")
    assert r.status == 200 and r.body == body
    # nothing of the upload is left but the object
    assert c.list_multipart_uploads(Bucket="mpart").get("Uploads", []) == []
    c.delete_object(Bucket="mpart", Key="dir/big.bin")
    deadline = time.monotonic() + 60
    while live_stripes(s3.cluster, ".s3/parts") and time.monotonic() < deadline:
        time.sleep(0.5)  # (a replaced object's stripes go after a grace)
    assert live_stripes(s3.cluster, ".s3/parts") == 0


def test_the_calls_one_by_one_and_their_errors(s3: S3) -> None:
    c = _bucket(s3, "calls")
    key = "one/by/one"
    up = c.create_multipart_upload(Bucket="calls", Key=key, Metadata={"m": "1"})["UploadId"]
    p2 = os.urandom(1000)
    p1 = os.urandom(5 * MiB)
    p1b = os.urandom(5 * MiB + 1)
    e2 = c.upload_part(Bucket="calls", Key=key, UploadId=up, PartNumber=2, Body=p2)["ETag"]
    c.upload_part(Bucket="calls", Key=key, UploadId=up, PartNumber=1, Body=p1)
    e1 = c.upload_part(Bucket="calls", Key=key, UploadId=up, PartNumber=1, Body=p1b)["ETag"]
    assert e1 == f'"{_md5(p1b).hex()}"' and e2 == f'"{_md5(p2).hex()}"'

    page = c.list_parts(Bucket="calls", Key=key, UploadId=up, MaxParts=1)
    assert [p["PartNumber"] for p in page["Parts"]] == [1] and page["IsTruncated"]
    assert page["Parts"][0]["Size"] == len(p1b) and page["Parts"][0]["ETag"] == e1
    rest = c.list_parts(Bucket="calls", Key=key, UploadId=up,
                        PartNumberMarker=page["NextPartNumberMarker"])  # fmt: skip
    assert [p["PartNumber"] for p in rest["Parts"]] == [2] and not rest["IsTruncated"]

    other = c.create_multipart_upload(Bucket="calls", Key="one/else")["UploadId"]
    c.create_multipart_upload(Bucket="calls", Key="two")
    ups = c.list_multipart_uploads(Bucket="calls", Prefix="one/")["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in ups] == [(key, up), ("one/else", other)]
    grouped = c.list_multipart_uploads(Bucket="calls", Delimiter="/")
    assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["one/"]
    assert [u["Key"] for u in grouped["Uploads"]] == ["two"]
    paged = c.list_multipart_uploads(Bucket="calls", MaxUploads=1)
    assert paged["IsTruncated"] and [u["Key"] for u in paged["Uploads"]] == [key]
    after = c.list_multipart_uploads(Bucket="calls", KeyMarker=paged["NextKeyMarker"],
                                     UploadIdMarker=paged["NextUploadIdMarker"])  # fmt: skip
    assert [u["Key"] for u in after["Uploads"]] == ["one/else", "two"]

    def complete(parts: list[dict[str, Any]], **kw: Any) -> Any:
        return c.complete_multipart_upload(
            Bucket="calls", Key=key, UploadId=up, MultipartUpload={"Parts": parts}, **kw
        )

    _refused(complete, "InvalidPart", 400, parts=[{"PartNumber": 1, "ETag": e2}])
    _refused(complete, "InvalidPart", 400, parts=[{"PartNumber": 3, "ETag": e2}])
    _refused(complete, "InvalidPartOrder", 400,
             parts=[{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}])  # fmt: skip
    _refused(c.upload_part, "InvalidArgument", 400, Bucket="calls", Key=key, UploadId=up,
             PartNumber=10001, Body=b"x")  # fmt: skip
    _refused(c.upload_part, "NoSuchUpload", 404, Bucket="calls", Key=key, UploadId="nope",
             PartNumber=1, Body=b"x")  # fmt: skip
    _refused(c.upload_part, "NoSuchUpload", 404, Bucket="calls", Key="elsewhere", UploadId=up,
             PartNumber=1, Body=b"x")  # fmt: skip
    # a small part that is not the last
    small = c.create_multipart_upload(Bucket="calls", Key="small")["UploadId"]
    es = [c.upload_part(Bucket="calls", Key="small", UploadId=small, PartNumber=n,
                        Body=b"tiny")["ETag"] for n in (1, 2)]  # fmt: skip
    named = [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), es, strict=True)]
    _refused(c.complete_multipart_upload, "EntityTooSmall", 400, Bucket="calls", Key="small",
             UploadId=small, MultipartUpload={"Parts": named})  # fmt: skip
    # create-only: If-None-Match on the completion
    c.put_object(Bucket="calls", Key=key, Body=b"there already")
    _refused(complete, "PreconditionFailed", 412,
             parts=[{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}],
             IfNoneMatch="*")  # fmt: skip
    assert c.get_object(Bucket="calls", Key=key)["Body"].read() == b"there already"

    done = complete([{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}])
    assert done["ETag"].endswith('-2"') and done["Key"] == key
    got = c.get_object(Bucket="calls", Key=key)
    assert got["Body"].read() == p1b + p2 and got["Metadata"] == {"m": "1"}
    _refused(c.list_parts, "NoSuchUpload", 404, Bucket="calls", Key=key, UploadId=up)
    _refused(c.abort_multipart_upload, "NoSuchUpload", 404, Bucket="calls", Key=key,
             UploadId=up)  # fmt: skip
    assert live_stripes(s3.cluster, f".s3/parts/{up}") >= 3  # (the object's: 2 + 1 stripes)


def test_abort_leaves_nothing_and_a_deleted_bucket_takes_its_uploads(s3: S3) -> None:
    c = _bucket(s3, "aborts")
    up = c.create_multipart_upload(Bucket="aborts", Key="k")["UploadId"]
    for n in (1, 2):
        c.upload_part(Bucket="aborts", Key="k", UploadId=up, PartNumber=n, Body=os.urandom(MiB))
    assert live_stripes(s3.cluster, f".s3/parts/{up}") == 2 * 3  # (3 replicas)
    assert c.abort_multipart_upload(Bucket="aborts", Key="k", UploadId=up)[
        "ResponseMetadata"]["HTTPStatusCode"] == 204  # fmt: skip
    assert live_stripes(s3.cluster, f".s3/parts/{up}") == 0
    _refused(c.list_parts, "NoSuchUpload", 404, Bucket="aborts", Key="k", UploadId=up)
    _refused(c.head_object, "404", 404, Bucket="aborts", Key="k")

    left = c.create_multipart_upload(Bucket="aborts", Key="left")["UploadId"]
    c.upload_part(Bucket="aborts", Key="left", UploadId=left, PartNumber=1, Body=b"abc")
    c.delete_bucket(Bucket="aborts")
    assert live_stripes(s3.cluster, f".s3/parts/{left}") == 0
    _refused(c.list_multipart_uploads, "NoSuchBucket", 404, Bucket="aborts")


def test_an_abandoned_upload_is_cleaned_up(s3: S3, tmp_path: Path) -> None:
    quick = start_s3(s3.cluster, s3.http.index, tmp_path / "quick.log",
                     "--multipart-expiry", str(2 / 3600))  # fmt: skip
    try:
        c = s3.client(endpoint_url=f"http://{quick.address}")
        c.create_bucket(Bucket="abandon")
        up = c.create_multipart_upload(Bucket="abandon", Key="k")["UploadId"]
        c.upload_part(Bucket="abandon", Key="k", UploadId=up, PartNumber=1, Body=b"x" * 100)
        assert live_stripes(s3.cluster, f".s3/parts/{up}") == 3
        deadline = time.monotonic() + 20
        # (the record goes first, then the parts: both are waited for)
        while c.list_multipart_uploads(Bucket="abandon").get("Uploads") or live_stripes(
            s3.cluster, f".s3/parts/{up}"
        ):
            assert time.monotonic() < deadline, "the abandoned upload was not cleaned up"
            time.sleep(0.5)
        _refused(c.upload_part, "NoSuchUpload", 404, Bucket="abandon", Key="k", UploadId=up,
                 PartNumber=2, Body=b"late")  # fmt: skip
    finally:
        quick.stop()


def test_upload_part_copy_with_a_range(s3: S3) -> None:
    c = _bucket(s3, "pcopy")
    src = os.urandom(7 * MiB)
    c.put_object(Bucket="pcopy", Key="src", Body=src)
    up = c.create_multipart_upload(Bucket="pcopy", Key="dst")["UploadId"]
    r1 = c.upload_part_copy(Bucket="pcopy", Key="dst", UploadId=up, PartNumber=1,
                            CopySource={"Bucket": "pcopy", "Key": "src"},
                            CopySourceRange=f"bytes=0-{5 * MiB - 1}")  # fmt: skip
    r2 = c.upload_part_copy(Bucket="pcopy", Key="dst", UploadId=up, PartNumber=2,
                            CopySource="pcopy/src", CopySourceRange="bytes=100-199")  # fmt: skip
    assert r1["CopyPartResult"]["ETag"] == f'"{_md5(src[: 5 * MiB]).hex()}"'
    _refused(c.upload_part_copy, "InvalidRange", 416, Bucket="pcopy", Key="dst", UploadId=up,
             PartNumber=3, CopySource="pcopy/src",
             CopySourceRange=f"bytes=0-{len(src)}")  # fmt: skip
    _refused(c.upload_part_copy, "NoSuchKey", 404, Bucket="pcopy", Key="dst", UploadId=up,
             PartNumber=3, CopySource="pcopy/missing")  # fmt: skip
    parts = [{"PartNumber": 1, "ETag": r1["CopyPartResult"]["ETag"]},
             {"PartNumber": 2, "ETag": r2["CopyPartResult"]["ETag"]}]  # fmt: skip
    c.complete_multipart_upload(Bucket="pcopy", Key="dst", UploadId=up,
                                MultipartUpload={"Parts": parts})  # fmt: skip
    assert c.get_object(Bucket="pcopy", Key="dst")["Body"].read() == src[: 5 * MiB] + src[100:200]


def test_copy_object(s3: S3) -> None:
    c = _bucket(s3, "copies")
    _bucket(s3, "copies2")
    body = os.urandom(5 * MiB + 3)  # (striped)
    put = c.put_object(Bucket="copies", Key="a", Body=body, ContentType="text/x-a",
                       Metadata={"k": "v"})  # fmt: skip
    r = c.copy_object(Bucket="copies2", Key="b", CopySource={"Bucket": "copies", "Key": "a"})
    assert r["CopyObjectResult"]["ETag"] == put["ETag"]
    got = c.get_object(Bucket="copies2", Key="b")
    assert got["Body"].read() == body
    assert got["ContentType"] == "text/x-a" and got["Metadata"] == {"k": "v"}

    c.copy_object(Bucket="copies", Key="c", CopySource="copies/a", MetadataDirective="REPLACE",
                  ContentType="text/x-c", Metadata={"new": "1"})  # fmt: skip
    head = c.head_object(Bucket="copies", Key="c")
    assert head["ContentType"] == "text/x-c" and head["Metadata"] == {"new": "1"}

    _refused(c.copy_object, "InvalidRequest", 400, Bucket="copies", Key="a",
             CopySource="copies/a")  # fmt: skip
    c.copy_object(Bucket="copies", Key="a", CopySource="copies/a", MetadataDirective="REPLACE",
                  Metadata={"changed": "yes"})  # fmt: skip
    head = c.head_object(Bucket="copies", Key="a")
    assert head["Metadata"] == {"changed": "yes"} and head["ContentLength"] == len(body)
    assert c.get_object(Bucket="copies", Key="a")["Body"].read() == body

    _refused(c.copy_object, "PreconditionFailed", 412, Bucket="copies", Key="d",
             CopySource="copies/a", CopySourceIfMatch='"0123"')  # fmt: skip
    _refused(c.copy_object, "NoSuchKey", 404, Bucket="copies", Key="d", CopySource="copies/none")
    _refused(c.copy_object, "NoSuchBucket", 404, Bucket="copies", Key="d",
             CopySource="nowhere/a")  # fmt: skip
    _refused(c.copy_object, "NoSuchBucket", 404, Bucket="nowhere", Key="d",
             CopySource="copies/a")  # fmt: skip
    _refused(c.head_object, "404", 404, Bucket="copies", Key="d")

    # a multipart object copied: the bytes, with an ordinary ETag now
    up = c.create_multipart_upload(Bucket="copies", Key="mpart")["UploadId"]
    e = c.upload_part(Bucket="copies", Key="mpart", UploadId=up, PartNumber=1, Body=b"mp!")["ETag"]
    one = {"Parts": [{"PartNumber": 1, "ETag": e}]}
    c.complete_multipart_upload(Bucket="copies", Key="mpart", UploadId=up, MultipartUpload=one)
    r = c.copy_object(Bucket="copies", Key="mp2", CopySource="copies/mpart")
    assert r["CopyObjectResult"]["ETag"] == f'"{_md5(b"mp!").hex()}"'
    assert c.get_object(Bucket="copies", Key="mp2", ChecksumMode="ENABLED")["Body"].read() == b"mp!"


def test_delete_objects_quiet_and_verbose(s3: S3) -> None:
    c = _bucket(s3, "many")
    for i in range(5):
        c.put_object(Bucket="many", Key=f"k{i}", Body=b"x")
    r = c.delete_objects(Bucket="many", Delete={"Objects": [
        {"Key": "k0"}, {"Key": "k1"}, {"Key": "absent"}]})  # fmt: skip
    assert sorted(d["Key"] for d in r["Deleted"]) == ["absent", "k0", "k1"]
    assert not r.get("Errors")
    r = c.delete_objects(Bucket="many", Delete={"Objects": [
        {"Key": "k2"}, {"Key": "k3", "VersionId": "123"}], "Quiet": True})  # fmt: skip
    assert not r.get("Deleted")
    assert [(e["Key"], e["Code"]) for e in r["Errors"]] == [("k3", "InvalidArgument")]
    left = [o["Key"] for o in c.list_objects_v2(Bucket="many")["Contents"]]
    assert left == ["k3", "k4"]
    # malformed XML: refused whole, nothing deleted
    bad = b"<Delete><Object><Key>k4</Key>"
    headers = _signed(s3, "POST", "/many?delete", {"host": s3.address},
                      hashlib.sha256(bad).hexdigest())  # fmt: skip
    status, answer = _raw(s3, "POST", "/many?delete", headers, bad)
    assert status == 400 and b"<Code>MalformedXML</Code>" in answer, answer
    assert [o["Key"] for o in c.list_objects_v2(Bucket="many")["Contents"]] == ["k3", "k4"]
