"""The S3 gateway (`shoal s3`) judged by real clients: boto3 (its current version, default
settings unless a test says otherwise) and curl with presigned URLs, against a cluster
started as `shoal up` starts it (LocalCluster: a master, 3 daemons, TLS, the HTTP gateway
with its SQLite index) and a `shoal s3` process over the same pool and index."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from shoal.config import CONFIG_NAME
from shoal.daemon.process import read_until
from shoal.up import LocalCluster
from tests.integration.http_helpers import Gateway, live_stripes, local_cluster

boto3 = pytest.importorskip("boto3")
from boto3.s3.transfer import TransferConfig  # noqa: E402
from botocore import UNSIGNED  # noqa: E402
from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

_S3 = re.compile(r"shoal s3 listening on (\S+)")
DOMAIN = "s3.test"
MiB = 1 << 20


@dataclass
class S3:
    """One `shoal s3` process and what reaching it takes."""

    address: str
    access: str
    secret: str
    log: Path
    proc: subprocess.Popen[bytes]
    cluster: LocalCluster
    http: Gateway
    clients: list[Any] = field(default_factory=list)  # (closed with the fixture)

    def close(self) -> None:
        """Close every client made: a client left to the garbage collector closes its
        sockets with a ResourceWarning, in whichever test happens to run then."""
        for c in self.clients:
            c.close()
        self.clients.clear()

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}"

    def client(self, **kw: Any) -> Any:
        # (s3v4: boto3 presigns with SigV2 by default, which the gateway does not take yet)
        config = kw.pop("config", None) or Config(
            signature_version="s3v4", retries={"max_attempts": 1}
        )
        c = boto3.client(
            "s3", endpoint_url=kw.pop("endpoint_url", self.endpoint),
            aws_access_key_id=kw.pop("access", self.access),
            aws_secret_access_key=kw.pop("secret", self.secret),
            region_name=kw.pop("region", "us-east-1"), config=config, **kw,
        )  # fmt: skip
        self.clients.append(c)
        return c

    def curl(self, *args: str, data: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:
        r = self.http.curl(*args, data=data)
        return r.status, r.body, r.headers

    def shoal(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        cmd = [sys.executable, "-m", "shoal.cli", *args]
        env = {**os.environ, "SHOAL_CONFIG": str(self.cluster.data / CONFIG_NAME)}
        p = subprocess.run(cmd, capture_output=True, timeout=60, env=env)
        assert p.returncode == 0, p.stderr
        return p


def start_s3(cluster: LocalCluster, index: str, log: Path, *extra: str) -> S3Process:
    cmd = [
        sys.executable, "-m", "shoal.cli", "s3", "--port", "0",
        "--config", str(cluster.data / CONFIG_NAME), "--index", index, "--log", str(log), *extra,
    ]  # fmt: skip
    with open(log.with_suffix(".err"), "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
    out = read_until(proc, lambda o: bool(_S3.search(o.decode(errors="replace"))), 30.0)
    m = _S3.search(out.decode(errors="replace"))
    if m is None:
        proc.kill()
        proc.wait()
        raise AssertionError(
            f"shoal s3 did not start: {out!r}\n{log.with_suffix('.err').read_text()}"
        )
    return S3Process(m.group(1), proc)


@dataclass
class S3Process:
    address: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    data = tmp_path_factory.mktemp("s3")
    with local_cluster(data) as (cluster, http):
        log = data / "s3.log"
        p = start_s3(cluster, http.index, log, "--domain", DOMAIN)
        try:
            cfg = json.loads((data / CONFIG_NAME).read_text())
            s3 = S3(p.address, cfg["access_key"], cfg["secret_key"], log, p.proc, cluster, http)
            yield s3
            s3.close()
        finally:
            p.stop()


def _code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def _refused(call: Any, code: str, status: int, **kw: Any) -> ClientError:
    with pytest.raises(ClientError) as info:
        call(**kw)
    e = info.value
    assert (_code(e), e.response["ResponseMetadata"]["HTTPStatusCode"]) == (code, status), (
        e.response
    )
    assert e.response["ResponseMetadata"]["HTTPHeaders"].get("x-amz-request-id")
    return e


def _bucket(s3: S3, name: str) -> Any:
    c = s3.client()
    c.create_bucket(Bucket=name)
    return c


# -- buckets -----------------------------------------------------------------------------------


def test_bucket_lifecycle_and_its_errors(s3: S3) -> None:
    c = s3.client()
    r = c.create_bucket(Bucket="life")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert r["Location"] == "/life"
    _refused(c.create_bucket, "BucketAlreadyOwnedByYou", 409, Bucket="life")
    for bad in ("ab", "Upper", "under_score", "-dash", "dots..two", "192.168.5.4", "xn--abc",
                "a" * 64, "end-"):  # fmt: skip
        e = _refused(c.create_bucket, "InvalidBucketName", 400, Bucket=bad)
        assert e.response["Error"]["BucketName"] == bad
    _refused(c.create_bucket, "IllegalLocationConstraintException", 400, Bucket="elsewhere",
             CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})  # fmt: skip
    c.create_bucket(Bucket="here", CreateBucketConfiguration={"LocationConstraint": "us-east-1"})
    assert (
        c.head_bucket(Bucket="life")["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"]
        == "us-east-1"
    )
    assert c.get_bucket_location(Bucket="life").get("LocationConstraint") is None  # us-east-1
    names = [b["Name"] for b in c.list_buckets()["Buckets"]]
    assert {"life", "here"} <= set(names) and names == sorted(names)
    assert c.get_bucket_versioning(Bucket="life").get("Status") is None

    c.put_object(Bucket="life", Key="k", Body=b"v")
    _refused(c.delete_bucket, "BucketNotEmpty", 409, Bucket="life")
    c.delete_object(Bucket="life", Key="k")
    assert c.delete_bucket(Bucket="life")["ResponseMetadata"]["HTTPStatusCode"] == 204
    _refused(c.head_bucket, "404", 404, Bucket="life")
    e = _refused(c.get_object, "NoSuchBucket", 404, Bucket="life", Key="k")
    assert e.response["Error"]["BucketName"] == "life"
    _refused(c.put_object, "NoSuchBucket", 404, Bucket="life", Key="k", Body=b"v")
    _refused(c.list_objects_v2, "NoSuchBucket", 404, Bucket="life")
    _refused(c.delete_bucket, "NoSuchBucket", 404, Bucket="life")
    assert "life" not in [b["Name"] for b in c.list_buckets()["Buckets"]]


def test_the_error_body_is_s3s_xml(s3: S3) -> None:
    status, body, headers = s3.curl(
        s3.client().generate_presigned_url(
            "get_object", Params={"Bucket": "nowhere", "Key": "a b"}, ExpiresIn=60
        )
    )
    assert status == 404
    assert headers["content-type"] == "application/xml"
    rid = headers["x-amz-request-id"]
    assert headers["x-amz-id-2"]
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert b"<Code>NoSuchBucket</Code>" in body
    assert b"<Message>The specified bucket does not exist</Message>" in body
    assert b"<BucketName>nowhere</BucketName>" in body
    assert b"<Resource>/nowhere/a b</Resource>" in body
    assert f"<RequestId>{rid}</RequestId>".encode() in body


def test_buckets_survive_an_index_drop_and_rebuild(s3: S3) -> None:
    c = _bucket(s3, "kept")
    c.put_object(Bucket="kept", Key="x/y", Body=b"data", ContentType="text/x-kept",
                 Metadata={"colour": "blue"})  # fmt: skip
    before = c.list_objects_v2(Bucket="kept")["Contents"]
    idx = ["--index", s3.http.index]
    s3.shoal("index", "drop", *idx)
    _refused(c.head_bucket, "404", 404, Bucket="kept")
    s3.shoal("index", "rebuild", *idx)
    assert "kept" in [b["Name"] for b in c.list_buckets()["Buckets"]]
    after = c.list_objects_v2(Bucket="kept")["Contents"]
    assert [(o["Key"], o["ETag"], o["Size"]) for o in after] == [
        (o["Key"], o["ETag"], o["Size"]) for o in before
    ]
    _refused(c.create_bucket, "BucketAlreadyOwnedByYou", 409, Bucket="kept")


# -- objects -----------------------------------------------------------------------------------


def test_put_get_head_delete_with_metadata(s3: S3) -> None:
    c = _bucket(s3, "objects")
    body = os.urandom(100_000)
    md5 = hashlib.md5(body)
    r = c.put_object(
        Bucket="objects", Key="dir/photo.jpg", Body=body, ContentType="image/jpeg",
        ContentMD5=base64.b64encode(md5.digest()).decode(), ContentDisposition="inline",
        CacheControl="max-age=60", ContentLanguage="fr", ContentEncoding="identity",
        Metadata={"camera": "X100", "Mixed-Case": "v"},
    )  # fmt: skip
    assert r["ETag"] == f'"{md5.hexdigest()}"'
    g = c.get_object(Bucket="objects", Key="dir/photo.jpg")
    assert g["Body"].read() == body
    assert g["ETag"] == f'"{md5.hexdigest()}"'
    assert g["ContentLength"] == len(body)
    assert g["ContentType"] == "image/jpeg"
    assert (g["ContentDisposition"], g["CacheControl"], g["ContentLanguage"]) == (
        "inline", "max-age=60", "fr",
    )  # fmt: skip
    assert g["ContentEncoding"] == "identity"
    assert g["Metadata"] == {"camera": "X100", "mixed-case": "v"}
    assert g["AcceptRanges"] == "bytes"
    assert abs(g["LastModified"].timestamp() - time.time()) < 60
    h = c.head_object(Bucket="objects", Key="dir/photo.jpg")
    assert (h["ContentLength"], h["ETag"], h["Metadata"]) == (len(body), g["ETag"], g["Metadata"])
    o = c.get_object(Bucket="objects", Key="dir/photo.jpg", ResponseContentType="text/plain",
                     ResponseContentDisposition="attachment; filename=x.jpg",
                     ResponseCacheControl="no-cache")  # fmt: skip
    assert (o["ContentType"], o["ContentDisposition"], o["CacheControl"]) == (
        "text/plain", "attachment; filename=x.jpg", "no-cache",
    )  # fmt: skip
    # stored as B/K: the HTTP gateway reads the same object
    r2 = s3.http.get("objects/dir/photo.jpg")
    assert (r2.status, r2.body) == (200, body)
    # no Content-Type given: S3's default
    c.put_object(Bucket="objects", Key="plain", Body=b"")
    p = c.get_object(Bucket="objects", Key="plain")
    assert (p["ContentType"], p["ContentLength"], p["Body"].read()) == (
        "binary/octet-stream", 0, b"",
    )  # fmt: skip
    assert p["ETag"] == f'"{hashlib.md5(b"").hexdigest()}"'
    # delete: 204, and again 204 (S3 does not say whether there was one)
    for _ in range(2):
        d = c.delete_object(Bucket="objects", Key="dir/photo.jpg")
        assert d["ResponseMetadata"]["HTTPStatusCode"] == 204
    e = _refused(c.get_object, "NoSuchKey", 404, Bucket="objects", Key="dir/photo.jpg")
    assert e.response["Error"]["Key"] == "dir/photo.jpg"
    _refused(c.head_object, "404", 404, Bucket="objects", Key="dir/photo.jpg")
    assert s3.http.get("objects/dir/photo.jpg").status == 404


def test_a_wrong_content_md5_stores_nothing(s3: S3) -> None:
    c = _bucket(s3, "digests")
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    e = _refused(c.put_object, "BadDigest", 400, Bucket="digests", Key="k", Body=b"body",
                 ContentMD5=wrong)  # fmt: skip
    assert "CalculatedDigest" in e.response["Error"] or e.response["Error"]["Message"]
    _refused(c.put_object, "InvalidDigest", 400, Bucket="digests", Key="k", Body=b"body",
             ContentMD5="not-base64")  # fmt: skip
    _refused(c.head_object, "404", 404, Bucket="digests", Key="k")
    assert c.list_objects_v2(Bucket="digests")["KeyCount"] == 0
    # a striped body with a wrong MD5: no object, and its stripes are gone too
    big = os.urandom(9 * MiB)
    _refused(c.put_object, "BadDigest", 400, Bucket="digests", Key="big", Body=big,
             ContentMD5=wrong)  # fmt: skip
    _refused(c.head_object, "404", 404, Bucket="digests", Key="big")
    assert live_stripes(s3.cluster, "digests/big") == 0


def test_keys_and_metadata_out_of_the_rules(s3: S3) -> None:
    c = _bucket(s3, "rules")
    e = _refused(c.put_object, "KeyTooLongError", 400, Bucket="rules", Key="k" * 1025, Body=b"")
    assert e.response["Error"]["MaxSizeAllowed"] == "1024"
    c.put_object(Bucket="rules", Key="é" * 512, Body=b"1024 bytes of UTF-8")
    _refused(c.put_object, "MetadataTooLarge", 400, Bucket="rules", Key="meta", Body=b"x",
             Metadata={"big": "x" * 2100})  # fmt: skip
    _refused(c.head_object, "404", 404, Bucket="rules", Key="meta")
    assert [o["Key"] for o in c.list_objects_v2(Bucket="rules")["Contents"]] == ["é" * 512]


def test_ranges(s3: S3) -> None:
    c = _bucket(s3, "ranges")
    body = bytes(range(256)) * 40  # 10240 bytes
    c.put_object(Bucket="ranges", Key="r", Body=body)
    for rng, first, last in (("bytes=0-9", 0, 9), ("bytes=10-", 10, 10239),
                             ("bytes=-100", 10140, 10239), ("bytes=10000-99999", 10000, 10239),
                             ("bytes=-99999", 0, 10239)):  # fmt: skip
        g = c.get_object(Bucket="ranges", Key="r", Range=rng)
        assert g["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert g["ContentRange"] == f"bytes {first}-{last}/10240"
        assert g["Body"].read() == body[first : last + 1]
        assert g["ContentLength"] == last - first + 1
    e = _refused(c.get_object, "InvalidRange", 416, Bucket="ranges", Key="r", Range="bytes=10240-")
    assert e.response["ResponseMetadata"]["HTTPHeaders"]["content-range"] == "bytes */10240"
    assert e.response["Error"]["ActualObjectSize"] == "10240"
    g = c.get_object(Bucket="ranges", Key="r", Range="bytes=5-1")  # not a range: ignored
    assert g["ResponseMetadata"]["HTTPStatusCode"] == 200 and g["Body"].read() == body
    # a range of a striped object, across a stripe's end
    big = os.urandom(9 * MiB)
    c.put_object(Bucket="ranges", Key="big", Body=big)
    g = c.get_object(Bucket="ranges", Key="big", Range=f"bytes={4 * MiB - 10}-{4 * MiB + 9}")
    assert g["Body"].read() == big[4 * MiB - 10 : 4 * MiB + 10]


def test_conditional_requests(s3: S3) -> None:
    c = _bucket(s3, "conditions")
    etag = c.put_object(Bucket="conditions", Key="k", Body=b"one")["ETag"]
    past = datetime.now(UTC) - timedelta(days=1)
    future = datetime.now(UTC) + timedelta(days=1)
    kw: dict[str, Any] = {"Bucket": "conditions", "Key": "k"}
    assert c.get_object(**kw, IfMatch=etag)["Body"].read() == b"one"
    assert c.get_object(**kw, IfMatch="*")["Body"].read() == b"one"
    e = _refused(c.get_object, "PreconditionFailed", 412, **kw, IfMatch='"00"')
    assert e.response["Error"]["Condition"] == "If-Match"
    _refused(c.get_object, "304", 304, **kw, IfNoneMatch=etag)
    _refused(c.head_object, "304", 304, **kw, IfNoneMatch=etag)
    assert c.get_object(**kw, IfNoneMatch='"00"')["Body"].read() == b"one"
    time.sleep(1.1)  # (HTTP dates are whole seconds)
    _refused(c.get_object, "304", 304, **kw, IfModifiedSince=datetime.now(UTC))
    assert c.get_object(**kw, IfModifiedSince=past)["Body"].read() == b"one"
    _refused(c.get_object, "PreconditionFailed", 412, **kw, IfUnmodifiedSince=past)
    assert c.get_object(**kw, IfUnmodifiedSince=future)["Body"].read() == b"one"
    # RFC 9110's order, as S3 documents it: If-Match true wins over If-Unmodified-Since
    assert c.get_object(**kw, IfMatch=etag, IfUnmodifiedSince=past)["Body"].read() == b"one"
    # ... and If-None-Match false gives 304 whatever If-Modified-Since says
    _refused(c.get_object, "304", 304, **kw, IfNoneMatch=etag, IfModifiedSince=past)
    _refused(c.head_object, "412", 412, **kw, IfMatch='"00"')
    # create-only writes
    e = _refused(c.put_object, "PreconditionFailed", 412, **kw, Body=b"two", IfNoneMatch="*")
    assert c.get_object(**kw)["Body"].read() == b"one"
    c.put_object(Bucket="conditions", Key="new", Body=b"n", IfNoneMatch="*")
    assert c.get_object(Bucket="conditions", Key="new")["Body"].read() == b"n"
    # If-Match on PUT: replaced only if it is that version
    _refused(c.put_object, "PreconditionFailed", 412, **kw, Body=b"two", IfMatch='"00"')
    c.put_object(**kw, Body=b"two", IfMatch=etag)
    assert c.get_object(**kw)["Body"].read() == b"two"


def test_a_striped_object_through_upload_fileobj(s3: S3) -> None:
    c = _bucket(s3, "striped")
    body = os.urandom(9 * MiB + 12345)
    single = TransferConfig(multipart_threshold=1 << 40)  # (multipart: a later slice)
    c.upload_fileobj(io.BytesIO(body), "striped", "big.bin", Config=single)
    h = c.head_object(Bucket="striped", Key="big.bin")
    assert h["ContentLength"] == len(body)
    assert h["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    out = io.BytesIO()
    c.download_fileobj("striped", "big.bin", out, Config=single)
    assert out.getvalue() == body
    assert s3.http.get("striped/big.bin").body == body
    assert live_stripes(s3.cluster, "striped/big.bin") >= 3 * 3


def test_boto3s_default_checksums(s3: S3) -> None:
    """boto3 sends a CRC32 of every PUT by default (over plain http, as a header beside a
    signed payload; over https, as a trailer of an aws-chunked body): it is checked, kept,
    and given back when asked."""
    c = _bucket(s3, "checksums")
    sent: list[dict[str, str]] = []
    c.meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: sent.append(dict(request.headers))
    )
    body = b"checksummed " * 1000
    r = c.put_object(Bucket="checksums", Key="k", Body=body)
    crc = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    assert r["ChecksumCRC32"] == crc
    headers = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in sent[0].items()}
    assert headers.get("x-amz-checksum-crc32") == crc or "x-amz-trailer" in headers
    h = c.head_object(Bucket="checksums", Key="k", ChecksumMode="ENABLED")
    assert h["ChecksumCRC32"] == crc
    g = c.get_object(Bucket="checksums", Key="k", ChecksumMode="ENABLED")
    assert g["Body"].read() == body  # (botocore checks the CRC32 it is given)
    # what boto3 sends over https by default (STREAMING-UNSIGNED-PAYLOAD-TRAILER, HTTP
    # chunked, the CRC32 as a trailer), taken as it leaves boto3 and sent over http
    captured: list[Any] = []

    def capture(request: Any, **_: Any) -> Any:
        captured.append(request)
        raise _Captured

    tls = s3.client(endpoint_url=f"https://{s3.address}")
    tls.meta.events.register("before-send.s3.PutObject", capture)
    with pytest.raises(_Captured):
        tls.put_object(Bucket="checksums", Key="over-https", Body=body)
    sent_tls = captured[0]
    hdrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in sent_tls.headers.items()}
    assert hdrs["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert hdrs["Transfer-Encoding"] == "chunked"
    wire = sent_tls.body.read()
    path = sent_tls.url.split(s3.address, 1)[1]
    status, answer = _raw(s3, "PUT", path, hdrs, wire)
    assert status == 200, answer
    h = c.head_object(Bucket="checksums", Key="over-https", ChecksumMode="ENABLED")
    assert (h["ContentLength"], h["ChecksumCRC32"]) == (len(body), crc)
    assert c.get_object(Bucket="checksums", Key="over-https")["Body"].read() == body
    bad = wire.replace(crc.encode(), base64.b64encode(b"\0\0\0\0"))
    status, answer = _raw(s3, "PUT", path.replace("over-https", "bad-trailer"), hdrs, bad)
    assert status in (400, 403), answer  # (the path is signed: SignatureDoesNotMatch)
    status, answer = _raw(s3, "PUT", path, hdrs, bad)
    assert status == 400 and b"<Code>BadDigest</Code>" in answer
    assert c.get_object(Bucket="checksums", Key="over-https")["Body"].read() == body

    for algorithm in ("CRC32C", "SHA256", "SHA1", "CRC64NVME"):
        r = c.put_object(Bucket="checksums", Key=algorithm, Body=body,
                         ChecksumAlgorithm=algorithm)  # fmt: skip
        h = c.head_object(Bucket="checksums", Key=algorithm, ChecksumMode="ENABLED")
        assert h[f"Checksum{algorithm}"] == r[f"Checksum{algorithm}"]


class _Captured(Exception):
    pass


def _signed(
    s3: S3, method: str, path: str, headers: dict[str, str], payload_hash: str
) -> dict[str, str]:
    """Headers of a request signed by botocore's SigV4 signer with `payload_hash` as its
    x-amz-content-sha256 (S3SigV4Auth would put the hash of the body there)."""
    request = AWSRequest(method=method, url=s3.endpoint + path, headers={
        **headers, "x-amz-content-sha256": payload_hash,
    })  # fmt: skip
    SigV4Auth(Credentials(s3.access, s3.secret), "s3", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def _raw(s3: S3, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    host, _, port = s3.address.rpartition(":")
    lines = [f"{method} {path} HTTP/1.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"]
    if any(k.lower() == "transfer-encoding" for k in headers):  # (one HTTP chunk)
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    while out.startswith(b"HTTP/1.1 100"):  # (Expect: 100-continue)
        out = out.partition(b"\r\n\r\n")[2]
    head, _, rest = out.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def _aws_chunked(
    s3: S3, key: str, payload: bytes, *, signed: bool, trailer: tuple[str, str] | None,
    tamper: bool = False, sizes: int = 64 << 10,
) -> tuple[int, bytes]:  # fmt: skip
    from tests.unit.s3_helpers import encode_chunked

    mode = ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD" if signed
            else "STREAMING-UNSIGNED-PAYLOAD-TRAILER")  # fmt: skip
    if signed and trailer is not None:
        mode += "-TRAILER"
    headers = {"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(payload)),
               "Host": s3.address}  # fmt: skip
    if trailer is not None:
        headers["x-amz-trailer"] = trailer[0]
    path = f"/chunked/{quote(key)}"
    hdrs = _signed(s3, "PUT", path, headers, mode)
    seed = hdrs["Authorization"].rpartition("Signature=")[2]
    ts = hdrs["X-Amz-Date"]
    scope = f"{ts[:8]}/us-east-1/s3/aws4_request"
    from shoal.proto.s3.sigv4 import derive_signing_key

    key_bytes = derive_signing_key(s3.secret, ts[:8], "us-east-1", "s3") if signed else None
    body = encode_chunked(payload, [sizes] * (len(payload) // sizes + 1), key=key_bytes,
                          seed=seed, timestamp=ts, scope=scope, trailer=trailer)  # fmt: skip
    if tamper:
        at = body.index(payload[:16]) + 5
        body = body[:at] + bytes([body[at] ^ 1]) + body[at + 1 :]
    return _raw(s3, "PUT", path, hdrs, body)


def test_aws_chunked_bodies(s3: S3) -> None:
    c = _bucket(s3, "chunked")
    payload = os.urandom(300_000)
    crc = ("x-amz-checksum-crc32",
           base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode())  # fmt: skip
    for name, signed, trailer in (("unsigned-trailer", False, crc), ("signed", True, None),
                                  ("signed-trailer", True, crc)):  # fmt: skip
        status, body = _aws_chunked(s3, name, payload, signed=signed, trailer=trailer)
        assert status == 200, body
        assert c.get_object(Bucket="chunked", Key=name)["Body"].read() == payload
    # a wrong trailing checksum, a changed byte under a chunk signature: nothing stored
    bad = (crc[0], base64.b64encode(b"\0\0\0\0").decode())
    status, body = _aws_chunked(s3, "bad-crc", payload, signed=False, trailer=bad)
    assert status == 400 and b"<Code>BadDigest</Code>" in body
    status, body = _aws_chunked(s3, "tampered", payload, signed=True, trailer=None, tamper=True)
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body
    # striped: stripes sent before the end are thrown away
    big = os.urandom(9 * MiB)
    status, body = _aws_chunked(s3, "big-bad", big, signed=False, trailer=bad, sizes=1 << 20)
    assert status == 400 and b"<Code>BadDigest</Code>" in body
    status, body = _aws_chunked(s3, "big-tampered", big, signed=True, trailer=None, tamper=True,
                                sizes=1 << 20)  # fmt: skip
    assert status == 403, body
    for key in ("bad-crc", "tampered", "big-bad", "big-tampered"):
        _refused(c.head_object, "404", 404, Bucket="chunked", Key=key)
        assert live_stripes(s3.cluster, f"chunked/{key}") == 0
    status, body = _aws_chunked(
        s3,
        "big-good",
        big,
        signed=True,
        trailer=(crc[0], base64.b64encode(zlib.crc32(big).to_bytes(4, "big")).decode()),
        sizes=1 << 20,
    )
    assert status == 200, body
    assert c.get_object(Bucket="chunked", Key="big-good")["Body"].read() == big


def test_a_signed_payload_that_does_not_match(s3: S3) -> None:
    _bucket(s3, "sha")
    path = "/sha/k"
    hdrs = _signed(s3, "PUT", path, {"Host": s3.address},
                   hashlib.sha256(b"what was signed").hexdigest())  # fmt: skip
    status, body = _raw(s3, "PUT", path, hdrs, b"what was sent")
    assert status == 400 and b"<Code>XAmzContentSHA256Mismatch</Code>" in body
    status, body = _raw(s3, "PUT", path, hdrs, b"what was signed")
    assert status == 200, body


# -- who may ---------------------------------------------------------------------------------


def test_presigned_get_and_put_through_curl(s3: S3) -> None:
    c = _bucket(s3, "presigned")
    put = c.generate_presigned_url("put_object", Params={"Bucket": "presigned", "Key": "a b/ü"},
                                   ExpiresIn=300)  # fmt: skip
    status, body, _ = s3.curl("-X", "PUT", "--data-binary", "@-", put, data=b"from curl")
    assert status == 200, body
    get = c.generate_presigned_url(
        "get_object", ExpiresIn=300, Params={
            "Bucket": "presigned", "Key": "a b/ü", "ResponseContentType": "text/plain"},
    )  # fmt: skip
    status, body, headers = s3.curl(get)
    assert (status, body, headers["content-type"]) == (200, b"from curl", "text/plain")
    tampered = re.sub(r"X-Amz-Signature=([0-9a-f])", lambda m: "X-Amz-Signature="
                      + ("0" if m.group(1) != "0" else "1"), get)  # fmt: skip
    status, body, _ = s3.curl(tampered)
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body
    other = get.replace("presigned/a%20b", "presigned/a%20c")
    status, body, _ = s3.curl(other)
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body
    short = c.generate_presigned_url("get_object", Params={"Bucket": "presigned",
                                     "Key": "a b/ü"}, ExpiresIn=1)  # fmt: skip
    time.sleep(2.1)
    status, body, _ = s3.curl(short)
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    assert b"Request has expired" in body


def test_sigv2_presigned_urls_and_headers(s3: S3) -> None:
    """boto3 (and `aws s3 presign`) presign with SigV2 unless told otherwise; older clients
    sign headers with it."""
    v2 = s3.client(config=Config(signature_version="s3", retries={"max_attempts": 1}))
    v2.create_bucket(Bucket="sigv2")
    v2.put_object(Bucket="sigv2", Key="k/1", Body=b"v2 header", ContentType="text/x-v2",
                  Metadata={"m": "1"})  # fmt: skip
    g = v2.get_object(Bucket="sigv2", Key="k/1")
    assert (g["Body"].read(), g["ContentType"], g["Metadata"]) == (
        b"v2 header", "text/x-v2", {"m": "1"},
    )  # fmt: skip
    assert [o["Key"] for o in v2.list_objects(Bucket="sigv2")["Contents"]] == ["k/1"]
    default = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access,
                           aws_secret_access_key=s3.secret, region_name="us-east-1")  # fmt: skip
    put = default.generate_presigned_url("put_object", Params={"Bucket": "sigv2", "Key": "p q"})
    assert "Signature=" in put and "X-Amz-Signature" not in put  # (SigV2, as boto3 does)
    status, body, _ = s3.curl("-X", "PUT", "-H", "Content-Type:", "--data-binary", "@-", put,
                              data=b"presigned v2")  # fmt: skip
    assert status == 200, body
    get = default.generate_presigned_url(
        "get_object", Params={"Bucket": "sigv2", "Key": "p q", "ResponseContentType": "a/b"}
    )
    status, body, headers = s3.curl(get)
    assert (status, body, headers["content-type"]) == (200, b"presigned v2", "a/b")
    status, body, _ = s3.curl(get.replace("p%20q", "p%20r"))
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body
    short = default.generate_presigned_url("get_object", Params={"Bucket": "sigv2",
                                           "Key": "p q"}, ExpiresIn=1)  # fmt: skip
    time.sleep(2.1)
    status, body, _ = s3.curl(short)
    assert status == 403 and b"Request has expired" in body
    wrong = s3.client(secret="y" * 40, config=Config(signature_version="s3",
                                                     retries={"max_attempts": 1}))  # fmt: skip
    _refused(wrong.get_object, "SignatureDoesNotMatch", 403, Bucket="sigv2", Key="k/1")
    unknown = s3.client(
        access="AKIANOSUCHKEY0000001",
        config=Config(signature_version="s3", retries={"max_attempts": 1}),
    )
    _refused(unknown.get_object, "InvalidAccessKeyId", 403, Bucket="sigv2", Key="k/1")


def test_wrong_secret_unknown_key_and_anonymous(s3: S3) -> None:
    _bucket(s3, "who")
    wrong = s3.client(secret="x" * 40)
    e = _refused(wrong.list_objects_v2, "SignatureDoesNotMatch", 403, Bucket="who")
    assert e.response["Error"]["AWSAccessKeyId"] == s3.access
    unknown = s3.client(access="AKIANOSUCHKEY0000000")
    _refused(unknown.list_buckets, "InvalidAccessKeyId", 403)
    anonymous = s3.client(config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}))
    _refused(anonymous.list_objects_v2, "AccessDenied", 403, Bucket="who")
    _refused(s3.client(region="eu-west-1").list_buckets, "AuthorizationHeaderMalformed", 400)


def test_a_key_with_read_rights_only(s3: S3) -> None:
    # (the bucket is another key's: its ACLs let anyone write it and read k; the rights cap)
    c = s3.client()
    c.create_bucket(Bucket="rights", ACL="public-read-write")
    c.put_object(Bucket="rights", Key="k", Body=b"v", ACL="public-read")
    out = s3.shoal("key", "create", "--rights", "default=r").stdout.decode()
    access = re.search(r"access key:\s*(\S+)", out)
    secret = re.search(r"secret key:\s*(\S+)", out)
    assert access and secret, out
    reader = s3.client(access=access.group(1), secret=secret.group(1))
    assert reader.get_object(Bucket="rights", Key="k")["Body"].read() == b"v"
    _refused(reader.put_object, "AccessDenied", 403, Bucket="rights", Key="k", Body=b"w")
    _refused(reader.delete_object, "AccessDenied", 403, Bucket="rights", Key="k")
    _refused(reader.create_bucket, "AccessDenied", 403, Bucket="rights-2")
    assert c.get_object(Bucket="rights", Key="k")["Body"].read() == b"v"
    assert reader.list_buckets()["Buckets"] == []  # (S3 lists the requester's own)


# -- listing -----------------------------------------------------------------------------------


KEYS = ["a/1", "a/2", "a/b/3", "b/x", "c", "c+d e", "d%25", "z/ü/1", "ü", "~tilde"]


def test_listing_with_delimiter_and_paging(s3: S3) -> None:
    c = _bucket(s3, "listing")
    for k in KEYS:
        c.put_object(Bucket="listing", Key=k, Body=k.encode())
    everything = sorted(KEYS, key=lambda k: k.encode())
    r = c.list_objects_v2(Bucket="listing")
    assert [o["Key"] for o in r["Contents"]] == everything
    assert r["KeyCount"] == len(KEYS) and r["IsTruncated"] is False
    assert r["Contents"][0]["Size"] == 3
    assert r["Contents"][0]["ETag"] == f'"{hashlib.md5(b"a/1").hexdigest()}"'
    r = c.list_objects_v2(Bucket="listing", Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["a/", "b/", "z/"]
    assert [o["Key"] for o in r["Contents"]] == ["c", "c+d e", "d%25", "~tilde", "ü"]
    r = c.list_objects_v2(Bucket="listing", Delimiter="/", Prefix="a/")
    assert [o["Key"] for o in r["Contents"]] == ["a/1", "a/2"]
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["a/b/"]
    r = c.list_objects_v2(Bucket="listing", StartAfter="c+d e")
    assert [o["Key"] for o in r["Contents"]] == everything[everything.index("c+d e") + 1 :]

    def pages(op: str, **kw: Any) -> tuple[list[str], list[str], int]:
        keys, prefixes, n = [], [], 0
        for page in c.get_paginator(op).paginate(Bucket="listing", **kw):
            n += 1
            keys += [o["Key"] for o in page.get("Contents", [])]
            prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        return keys, prefixes, n

    for op in ("list_objects_v2", "list_objects"):
        keys, prefixes, n = pages(op, PaginationConfig={"PageSize": 3})
        assert (keys, prefixes, n) == (everything, [], 4)
        keys, prefixes, n = pages(op, Delimiter="/", PaginationConfig={"PageSize": 2})
        assert keys == ["c", "c+d e", "d%25", "~tilde", "ü"]
        assert prefixes == ["a/", "b/", "z/"] and n == 4
    r = c.list_objects_v2(Bucket="listing", MaxKeys=2)
    assert r["IsTruncated"] is True and r["KeyCount"] == 2 and r["MaxKeys"] == 2
    r2 = c.list_objects_v2(Bucket="listing", ContinuationToken=r["NextContinuationToken"],
                           MaxKeys=2)  # fmt: skip
    assert [o["Key"] for o in r2["Contents"]] == everything[2:4]
    r = c.list_objects(Bucket="listing", Marker="b/x")
    assert [o["Key"] for o in r["Contents"]] == everything[everything.index("b/x") + 1 :]
    assert r["Contents"][0]["Owner"]["ID"] == s3.access
    assert c.list_objects_v2(Bucket="listing", MaxKeys=0)["KeyCount"] == 0
    _refused(c.list_objects_v2, "InvalidArgument", 400, Bucket="listing", MaxKeys=-1)
    # encoding-type=url, by hand (boto3 asks for it and decodes it without telling)
    url = c.generate_presigned_url("list_objects_v2", Params={
        "Bucket": "listing", "Prefix": "c", "EncodingType": "url"}, ExpiresIn=60)  # fmt: skip
    status, body, _ = s3.curl(url)
    assert status == 200
    assert b"<Key>c%2Bd%20e</Key>" in body and b"<EncodingType>url</EncodingType>" in body


def test_virtual_host_style(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(host, str) and (host == DOMAIN or host.endswith("." + DOMAIN)):
            host = "127.0.0.1"
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    port = s3.address.rpartition(":")[2]
    virtual = Config(s3={"addressing_style": "virtual"}, signature_version="s3v4",
                     retries={"max_attempts": 1})  # fmt: skip
    v = s3.client(endpoint_url=f"http://{DOMAIN}:{port}", config=virtual)
    sent: list[str] = []
    v.meta.events.register("before-send.s3.*", lambda request, **_: sent.append(request.url))
    v.create_bucket(Bucket="vhost")
    v.put_object(Bucket="vhost", Key="k/1", Body=b"virtual")
    assert sent[-1].startswith(f"http://vhost.{DOMAIN}:{port}/k/1")
    assert v.get_object(Bucket="vhost", Key="k/1")["Body"].read() == b"virtual"
    assert [o["Key"] for o in v.list_objects_v2(Bucket="vhost")["Contents"]] == ["k/1"]
    v2 = s3.client(
        endpoint_url=f"http://{DOMAIN}:{port}",
        config=Config(
            s3={"addressing_style": "virtual"}, signature_version="s3", retries={"max_attempts": 1}
        ),
    )
    v2.put_object(Bucket="vhost", Key="k/2", Body=b"virtual, SigV2")
    assert v2.get_object(Bucket="vhost", Key="k/2")["Body"].read() == b"virtual, SigV2"
    assert len(v2.list_objects(Bucket="vhost")["Contents"]) == 2
    v2.delete_object(Bucket="vhost", Key="k/2")
    # the same bucket path-style, and through the HTTP gateway
    assert s3.client().get_object(Bucket="vhost", Key="k/1")["Body"].read() == b"virtual"
    assert s3.http.get("vhost/k/1").body == b"virtual"


def test_an_object_written_through_the_http_gateway(s3: S3) -> None:
    c = _bucket(s3, "shared")
    assert s3.http.put("shared/from/http", b"minikeyvalue").status == 201
    g = c.get_object(Bucket="shared", Key="from/http")
    assert g["Body"].read() == b"minikeyvalue"
    assert g["ETag"] == f'"{hashlib.md5(b"minikeyvalue").hexdigest()}"'
    r = c.list_objects_v2(Bucket="shared", Prefix="from/")
    assert [o["Key"] for o in r["Contents"]] == ["from/http"]


def test_the_request_log(s3: S3) -> None:
    c = _bucket(s3, "logged")
    c.put_object(Bucket="logged", Key="k", Body=b"12345")
    with pytest.raises(ClientError):
        c.get_object(Bucket="logged", Key="missing")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in s3.log.read_text().splitlines()]
        wanted = [x for x in lines if x["key"] in ("/logged/k", "/logged/missing")]
        if len(wanted) >= 2:
            break
        time.sleep(0.1)
    put = next(x for x in wanted if x["key"] == "/logged/k")
    assert (put["method"], put["status"], put["bytes"]) == ("PUT", 200, 5)
    assert put["access_key"] == s3.access and re.fullmatch(r"[0-9A-F]{16}", put["request_id"])
    miss = next(x for x in wanted if x["key"] == "/logged/missing")
    assert (miss["status"], miss["error"]) == (404, "NoSuchKey")
