"""Browser uploads (POST /BUCKET with a signed policy) through the S3 gateway: forms that
boto3's generate_presigned_post signs (SigV4 and SigV2), sent by curl -F as a browser sends
them, against a cluster started as `shoal up` starts it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.config import CONFIG_NAME
from tests.integration.http_helpers import local_cluster
from tests.integration.test_s3_gateway import S3, _refused, start_s3

boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402

MiB = 1 << 20


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    data = tmp_path_factory.mktemp("s3post")
    with local_cluster(data) as (cluster, http):
        log = data / "s3.log"
        p = start_s3(cluster, http.index, log)
        try:
            cfg = json.loads((data / CONFIG_NAME).read_text())
            s3 = S3(p.address, cfg["access_key"], cfg["secret_key"], log, p.proc, cluster, http)
            s3.client().create_bucket(Bucket="forms")
            yield s3
            s3.close()
        finally:
            p.stop()


def _post(
    s3: S3, url: str, fields: dict[str, str], file: Path | None, *extra: str
) -> tuple[int, bytes, dict[str, str]]:
    args = [a for k, v in fields.items() for a in ("-F", f"{k}={v}")]
    if file is not None:
        args += ["-F", f"file=@{file};type=text/x-upload"]
    return s3.curl(*args, *extra, url)


def _code(body: bytes) -> str:
    m = re.search(rb"<Code>([^<]*)</Code>", body)
    return m.group(1).decode() if m else ""


def test_a_signed_form_stores_its_file(s3: S3, tmp_path: Path) -> None:
    c = s3.client()
    body = os.urandom(3 * MiB + 7)  # (more than one read of the form)
    f = tmp_path / "photo.bin"
    f.write_bytes(body)
    form = c.generate_presigned_post(
        "forms", "up/${filename}",
        Fields={"x-amz-meta-camera": "x100", "success_action_status": "201"},
        Conditions=[["starts-with", "$key", "up/"], ["content-length-range", 1, 8 * MiB],
                    {"x-amz-meta-camera": "x100"}, {"success_action_status": "201"}],
        ExpiresIn=300,
    )  # fmt: skip
    assert form["fields"]["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    status, answer, headers = _post(s3, form["url"], form["fields"], f)
    assert status == 201, answer
    assert b"<Key>up/photo.bin</Key>" in answer and b"<Bucket>forms</Bucket>" in answer
    got = c.get_object(Bucket="forms", Key="up/photo.bin")
    assert got["Body"].read() == body
    assert got["ContentType"] == "text/x-upload" and got["Metadata"] == {"camera": "x100"}
    assert headers["etag"] == got["ETag"]
    listed = c.list_objects_v2(Bucket="forms", Prefix="up/")["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("up/photo.bin", len(body))]


def test_redirect_and_the_default_status(s3: S3, tmp_path: Path) -> None:
    c = s3.client()
    f = tmp_path / "a.txt"
    f.write_bytes(b"hello form")
    form = c.generate_presigned_post("forms", "plain.txt")
    status, answer, _ = _post(s3, form["url"], form["fields"], f)
    assert status == 204, answer
    assert c.get_object(Bucket="forms", Key="plain.txt")["Body"].read() == b"hello form"
    back = "https://example.test/done?x=1"
    form = c.generate_presigned_post(
        "forms", "redirected.txt", Fields={"success_action_redirect": back},
        Conditions=[{"success_action_redirect": back}],
    )  # fmt: skip
    status, _, headers = _post(s3, form["url"], form["fields"], f)
    assert status == 303
    assert headers["location"].startswith(back + "&bucket=forms&key=redirected.txt&etag=")


def test_forms_that_are_refused_store_nothing(s3: S3, tmp_path: Path) -> None:
    c = s3.client()
    f = tmp_path / "big.bin"
    f.write_bytes(os.urandom(2 * MiB))
    form = c.generate_presigned_post("forms", "refused/too-big",
                                     Conditions=[["content-length-range", 1, MiB]])  # fmt: skip
    status, answer, _ = _post(s3, form["url"], form["fields"], f)
    assert (status, _code(answer)) == (400, "EntityTooLarge"), answer

    form = c.generate_presigned_post("forms", "refused/tampered")
    fields = {**form["fields"], "key": "refused/elsewhere"}  # (the policy names another key)
    status, answer, _ = _post(s3, form["url"], fields, f)
    assert (status, _code(answer)) == (403, "AccessDenied"), answer
    fields = {**form["fields"], "x-amz-signature": "0" * 64}
    status, answer, _ = _post(s3, form["url"], fields, f)
    assert (status, _code(answer)) == (403, "SignatureDoesNotMatch"), answer

    form = c.generate_presigned_post("forms", "refused/expired", ExpiresIn=-10)
    status, answer, _ = _post(s3, form["url"], form["fields"], f)
    assert (status, _code(answer)) == (403, "AccessDenied") and b"expired" in answer, answer

    fields = {k: v for k, v in c.generate_presigned_post("forms", "x")["fields"].items()
              if k != "key"}  # fmt: skip
    status, answer, _ = _post(s3, form["url"], fields, f)
    assert (status, _code(answer)) == (400, "InvalidArgument"), answer

    status, answer, _ = s3.curl("-X", "POST", "-H", "Content-Type: multipart/form-data; "
                                "boundary=xyz", "--data-binary", "@-", form["url"],
                                data=b"--xyz\r\nthis is no form")  # fmt: skip
    assert status == 400 and _code(answer) in ("MalformedPOSTRequest", "InvalidArgument"), answer

    # anonymous: no policy, into a private bucket
    status, answer, _ = _post(s3, form["url"], {"key": "refused/anonymous"}, f)
    assert (status, _code(answer)) == (403, "AccessDenied"), answer
    assert "Contents" not in c.list_objects_v2(Bucket="forms", Prefix="refused/")
    _refused(c.head_object, "404", 404, Bucket="forms", Key="refused/too-big")


def test_sigv2_forms_and_anonymous_ones_where_the_bucket_allows(s3: S3, tmp_path: Path) -> None:
    f = tmp_path / "v2.txt"
    f.write_bytes(b"signed with v2")
    v2 = s3.client(config=Config(signature_version="s3", retries={"max_attempts": 1}))
    form = v2.generate_presigned_post("forms", "v2/file.txt")
    assert "signature" in form["fields"] and "AWSAccessKeyId" in form["fields"]
    status, answer, _ = _post(s3, form["url"], form["fields"], f)
    assert status == 204, answer
    c = s3.client()
    assert c.get_object(Bucket="forms", Key="v2/file.txt")["Body"].read() == b"signed with v2"

    c.create_bucket(Bucket="dropbox", ACL="public-read-write")
    status, answer, _ = _post(s3, f"{s3.endpoint}/dropbox", {"key": "anon/${filename}"}, f)
    assert status == 204, answer
    assert c.get_object(Bucket="dropbox", Key="anon/v2.txt")["Body"].read() == b"signed with v2"
