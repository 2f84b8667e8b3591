"""Who may do what through the S3 gateway (shoal.gateway.s3access): bucket owners, other keys
and anonymous requests under ACLs and bucket policies, CORS (preflights and the headers of
answers), bucket and object tags; boto3 for keys, curl for anonymous requests and browsers'
preflights, against a cluster started as `shoal up` starts it."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from shoal.config import CONFIG_NAME
from tests.integration.http_helpers import local_cluster
from tests.integration.test_s3_gateway import S3, _refused, start_s3

boto3 = pytest.importorskip("boto3")
from boto3.s3.transfer import TransferConfig  # noqa: E402

MiB = 1 << 20


@dataclass
class Keys:
    """The gateway, its admin key's client (`admin`, who makes most buckets), a key with
    rights rwd on the pool (`other`) and one with r only (`reader`)."""

    s3: S3
    admin: Any
    other: Any
    other_key: str
    reader: Any
    reader_key: str

    def anonymous(self, method: str, path: str, *headers: str,
                  data: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:  # fmt: skip
        """A request with no signature, by curl."""
        args = ["-I"] if method == "HEAD" else ["-X", method]
        args += [a for h in headers for a in ("-H", h)]
        if data is not None:
            args += ["--data-binary", "@-"]
        return self.s3.curl(*args, self.s3.endpoint + path, data=data)


def _key(s3: S3, rights: str) -> tuple[str, str]:
    out = s3.shoal("key", "create", "--rights", rights).stdout.decode()
    access = re.search(r"access key:\s*(\S+)", out)
    secret = re.search(r"secret key:\s*(\S+)", out)
    assert access and secret, out
    return access.group(1), secret.group(1)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    data = tmp_path_factory.mktemp("s3access")
    with local_cluster(data) as (cluster, http):
        log = data / "s3.log"
        p = start_s3(cluster, http.index, log)
        try:
            cfg = json.loads((data / CONFIG_NAME).read_text())
            s3 = S3(p.address, cfg["access_key"], cfg["secret_key"], log, p.proc, cluster, http)
            other, other_secret = _key(s3, "default=rwd")
            reader, reader_secret = _key(s3, "default=r")
            yield Keys(s3, s3.client(), s3.client(access=other, secret=other_secret), other,
                       s3.client(access=reader, secret=reader_secret), reader)  # fmt: skip
            s3.close()
        finally:
            p.stop()


def _code(body: bytes) -> str:
    m = re.search(rb"<Code>([^<]*)</Code>", body)
    return m.group(1).decode() if m else ""


# -- ownership and ACLs ------------------------------------------------------------------------


def test_a_bucket_is_its_owners(keys: Keys) -> None:
    a, o = keys.admin, keys.other
    o.create_bucket(Bucket="others")
    o.put_object(Bucket="others", Key="k", Body=b"mine")
    acl = o.get_bucket_acl(Bucket="others")
    assert acl["Owner"]["ID"] == keys.other_key
    assert [(g["Grantee"]["ID"], g["Permission"]) for g in acl["Grants"]] == [
        (keys.other_key, "FULL_CONTROL")
    ]
    assert [b["Name"] for b in o.list_buckets()["Buckets"]] == ["others"]
    # another key with rights on the pool may not touch it ...
    r = keys.reader
    for call, kw in ((r.get_object, {"Key": "k"}), (r.list_objects_v2, {}),
                     (r.get_bucket_acl, {}), (r.get_bucket_location, {})):  # fmt: skip
        _refused(call, "AccessDenied", 403, Bucket="others", **kw)
    _refused(r.head_object, "403", 403, Bucket="others", Key="k")
    _refused(r.head_bucket, "403", 403, Bucket="others")
    # ... but the admin key acts as the owner of every bucket
    assert a.get_object(Bucket="others", Key="k")["Body"].read() == b"mine"
    assert a.get_bucket_acl(Bucket="others")["Owner"]["ID"] == keys.other_key
    a.create_bucket(Bucket="admins")
    a.put_object(Bucket="admins", Key="k", Body=b"admin's")
    for call, kw in ((o.get_object, {"Key": "k"}), (o.put_object, {"Key": "k", "Body": b"x"}),
                     (o.delete_object, {"Key": "k"}), (o.list_objects_v2, {}),
                     (o.delete_bucket, {}), (o.put_bucket_acl, {"ACL": "public-read"}),
                     (o.get_bucket_policy, {})):  # fmt: skip
        _refused(call, "AccessDenied", 403, Bucket="admins", **kw)
    assert a.get_object(Bucket="admins", Key="k")["Body"].read() == b"admin's"
    _refused(o.create_bucket, "BucketAlreadyExists", 409, Bucket="admins")


def test_anonymous_requests_only_where_granted(keys: Keys) -> None:
    a = keys.admin
    a.create_bucket(Bucket="closed")
    a.put_object(Bucket="closed", Key="k", Body=b"closed", ACL="public-read")
    for method, path in (("GET", "/closed"), ("GET", "/"), ("PUT", "/closed/new"),
                         ("DELETE", "/closed/k"), ("PUT", "/anon-bucket"),
                         ("GET", "/closed?acl"), ("GET", "/closed?policy")):  # fmt: skip
        status, body, _ = keys.anonymous(method, path, data=b"x" if method == "PUT" else None)
        assert (status, _code(body)) == (403, "AccessDenied"), (method, path, body)
    # an object ACL is enough to read the object, not to list the bucket
    status, body, headers = keys.anonymous("GET", "/closed/k")
    assert (status, body) == (200, b"closed") and headers["etag"]
    status, body, _ = keys.anonymous("GET", "/closed/missing")  # (not listable: 403, not 404)
    assert (status, _code(body)) == (403, "AccessDenied")
    status, body, _ = keys.anonymous("GET", "/nowhere/k")
    assert (status, _code(body)) == (404, "NoSuchBucket")


def test_canned_acls(keys: Keys) -> None:
    a, o = keys.admin, keys.other
    a.create_bucket(Bucket="public", ACL="public-read")
    a.put_object(Bucket="public", Key="private", Body=b"p")
    a.put_object(Bucket="public", Key="open", Body=b"o", ACL="public-read")
    a.put_object(Bucket="public", Key="members", Body=b"m", ACL="authenticated-read")
    status, body, _ = keys.anonymous("GET", "/public?list-type=2")
    assert status == 200 and body.count(b"<Key>") == 3
    assert keys.anonymous("HEAD", "/public")[0] == 200
    assert keys.anonymous("GET", "/public/open")[:2] == (200, b"o")
    assert keys.anonymous("GET", "/public/private")[0] == 403
    assert keys.anonymous("GET", "/public/members")[0] == 403
    status, body, _ = keys.anonymous("GET", "/public/missing")  # (listable: NoSuchKey)
    assert (status, _code(body)) == (404, "NoSuchKey")
    assert keys.anonymous("PUT", "/public/new", data=b"n")[0] == 403
    assert o.get_object(Bucket="public", Key="members")["Body"].read() == b"m"
    _refused(o.get_object, "AccessDenied", 403, Bucket="public", Key="private")
    _refused(o.put_object, "AccessDenied", 403, Bucket="public", Key="new", Body=b"n")
    grants = a.get_bucket_acl(Bucket="public")["Grants"]
    assert {"Grantee": {"Type": "Group", "URI": "http://acs.amazonaws.com/groups/global/AllUsers"},
            "Permission": "READ"} in grants  # fmt: skip
    obj = a.get_object_acl(Bucket="public", Key="members")
    assert obj["Owner"]["ID"] == keys.s3.access
    assert [g["Grantee"].get("URI") for g in obj["Grants"]] == [
        None, "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
    ]  # fmt: skip
    # changed: by x-amz-acl, by x-amz-grant-*, by an AccessControlPolicy body
    a.put_bucket_acl(Bucket="public", ACL="private")
    assert keys.anonymous("GET", "/public")[0] == 403
    a.put_object_acl(Bucket="public", Key="private", GrantRead=f'id="{keys.other_key}"')
    assert o.get_object(Bucket="public", Key="private")["Body"].read() == b"p"
    _refused(o.get_object_acl, "AccessDenied", 403, Bucket="public", Key="private")
    owner = {"ID": keys.s3.access}
    a.put_bucket_acl(Bucket="public", AccessControlPolicy={"Owner": owner, "Grants": [
        {"Grantee": {"Type": "CanonicalUser", "ID": keys.other_key}, "Permission": "WRITE"},
        {"Grantee": {"Type": "CanonicalUser", "ID": keys.other_key}, "Permission": "READ"},
    ]})  # fmt: skip
    o.put_object(Bucket="public", Key="by-other", Body=b"other's")
    assert [x["Key"] for x in o.list_objects_v2(Bucket="public")["Contents"]] == [
        "by-other", "members", "open", "private",
    ]  # fmt: skip
    # the writer owns its object's ACL; the bucket's owner may do anything with it
    assert o.get_object_acl(Bucket="public", Key="by-other")["Owner"]["ID"] == keys.other_key
    assert a.get_object(Bucket="public", Key="by-other")["Body"].read() == b"other's"
    # only the owner reads or changes a bucket's ACL; wrong values
    _refused(o.get_bucket_acl, "AccessDenied", 403, Bucket="public")
    _refused(o.put_bucket_acl, "AccessDenied", 403, Bucket="public", ACL="public-read")
    _refused(a.put_bucket_acl, "InvalidArgument", 400, Bucket="public", ACL="everyone")
    _refused(a.create_bucket, "InvalidArgument", 400, Bucket="bad-acl", ACL="everyone")
    _refused(a.put_object, "InvalidArgument", 400, Bucket="public", Key="x", Body=b"",
             ACL="everyone")  # fmt: skip
    _refused(a.put_bucket_acl, "AccessDenied", 403, Bucket="public",
             AccessControlPolicy={"Owner": {"ID": keys.other_key}, "Grants": []})  # fmt: skip


def test_pool_rights_stay_the_ceiling(keys: Keys) -> None:
    a, r = keys.admin, keys.reader
    a.create_bucket(Bucket="open-rw", ACL="public-read-write")
    status, _, _ = keys.anonymous("PUT", "/open-rw/anon", data=b"from nobody")
    assert status == 200
    g = a.get_object(Bucket="open-rw", Key="anon")
    assert g["Body"].read() == b"from nobody"
    assert keys.anonymous("DELETE", "/open-rw/anon")[0] == 204
    # a key with r only: the ACL would let it write, its rights do not
    _refused(r.put_object, "AccessDenied", 403, Bucket="open-rw", Key="k", Body=b"v")
    _refused(r.delete_object, "AccessDenied", 403, Bucket="open-rw", Key="k")
    assert r.list_objects_v2(Bucket="open-rw")["KeyCount"] == 0


def test_anonymous_multipart_upload_into_a_public_read_write_bucket(keys: Keys) -> None:
    a = keys.admin
    a.create_bucket(Bucket="drop-box", ACL="public-read-write")
    status, body, _ = keys.anonymous("POST", "/drop-box/up?uploads", "x-amz-acl: public-read")
    assert status == 200, body
    upload = re.search(rb"<UploadId>([^<]+)</UploadId>", body)
    assert upload
    uid = upload.group(1).decode()
    status, _, h = keys.anonymous("PUT", f"/drop-box/up?partNumber=1&uploadId={uid}", data=b"p1")
    assert status == 200
    assert keys.anonymous("GET", f"/drop-box/up?uploadId={uid}")[0] == 200
    done = (f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{h['etag']}</ETag>"
            "</Part></CompleteMultipartUpload>").encode()  # fmt: skip
    status, body, _ = keys.anonymous("POST", f"/drop-box/up?uploadId={uid}", data=done)
    assert status == 200, body
    assert keys.anonymous("GET", "/drop-box/up")[:2] == (200, b"p1")  # (its x-amz-acl)
    assert a.get_object(Bucket="drop-box", Key="up")["Body"].read() == b"p1"


def test_grants_by_header_on_a_new_bucket(keys: Keys) -> None:
    a, o = keys.admin, keys.other
    everyone = "http://acs.amazonaws.com/groups/global/AllUsers"
    a.create_bucket(Bucket="granted", GrantRead=f'id="{keys.other_key}"',
                    GrantWrite=f'id="{keys.other_key}", uri="{everyone}"')  # fmt: skip
    grants = a.get_bucket_acl(Bucket="granted")["Grants"]
    assert sorted(g["Permission"] for g in grants) == ["READ", "WRITE", "WRITE"]
    o.put_object(Bucket="granted", Key="k", Body=b"v")
    assert o.list_objects_v2(Bucket="granted")["KeyCount"] == 1
    assert keys.anonymous("PUT", "/granted/anon", data=b"a")[0] == 200
    assert keys.anonymous("GET", "/granted")[0] == 403
    _refused(a.create_bucket, "InvalidRequest", 400, Bucket="both", ACL="private",
             GrantRead=f'id="{keys.other_key}"')  # fmt: skip
    _refused(a.create_bucket, "InvalidArgument", 400, Bucket="bad-grant", GrantRead="someone")


# -- policies ----------------------------------------------------------------------------------


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def test_bucket_policies(keys: Keys) -> None:
    a, o = keys.admin, keys.other
    a.create_bucket(Bucket="pol")
    for k in ("pub/1", "priv/1", "secret/1", "drop/1", "drop/2"):
        a.put_object(Bucket="pol", Key=k, Body=k.encode())
    _refused(a.get_bucket_policy, "NoSuchBucketPolicy", 404, Bucket="pol")
    a.delete_bucket_policy(Bucket="pol")  # (204 whether there was one)
    policy = _policy(
        {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
         "Resource": "arn:aws:s3:::pol/pub/*"},
        {"Effect": "Allow", "Principal": {"AWS": [f"arn:aws:iam::shoal:user/{keys.other_key}"]},
         "Action": ["s3:PutObject", "s3:Get*", "s3:ListBucket", "s3:DeleteObject"],
         "Resource": ["arn:aws:s3:::pol", "arn:aws:s3:::pol/*"]},
        {"Effect": "Deny", "Principal": "*", "Action": "s3:*",
         "Resource": "arn:aws:s3:::pol/secret/*"},
    )  # fmt: skip
    r = a.put_bucket_policy(Bucket="pol", Policy=policy)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert json.loads(a.get_bucket_policy(Bucket="pol")["Policy"]) == json.loads(policy)
    assert keys.anonymous("GET", "/pol/pub/1")[:2] == (200, b"pub/1")
    assert keys.anonymous("GET", "/pol/priv/1")[0] == 403
    assert keys.anonymous("GET", "/pol")[0] == 403
    assert o.get_object(Bucket="pol", Key="priv/1")["Body"].read() == b"priv/1"
    o.put_object(Bucket="pol", Key="from-other", Body=b"o")
    assert o.list_objects_v2(Bucket="pol", Prefix="from")["KeyCount"] == 1
    # a Deny wins over the owner too, and over every Allow
    _refused(a.get_object, "AccessDenied", 403, Bucket="pol", Key="secret/1")
    _refused(o.get_object, "AccessDenied", 403, Bucket="pol", Key="secret/1")
    _refused(o.delete_object, "AccessDenied", 403, Bucket="pol", Key="secret/1")
    # DeleteObjects: refused whole when a Deny could apply to one of its keys
    _refused(o.delete_objects, "AccessDenied", 403, Bucket="pol",
             Delete={"Objects": [{"Key": "drop/1"}]})  # fmt: skip
    # the policy says nothing of another key's settings, and the owner may always change it
    _refused(o.get_bucket_policy, "AccessDenied", 403, Bucket="pol")
    _refused(o.put_bucket_policy, "AccessDenied", 403, Bucket="pol", Policy=policy)
    a.put_bucket_policy(Bucket="pol", Policy=_policy(
        {"Effect": "Allow", "Principal": {"AWS": keys.other_key}, "Action": "s3:DeleteObject",
         "Resource": "arn:aws:s3:::pol/*"},
        {"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "s3:GetBucketPolicy",
         "Resource": "arn:aws:s3:::pol"},
    ))  # fmt: skip
    assert a.get_bucket_policy(Bucket="pol")["Policy"]
    done = o.delete_objects(Bucket="pol", Delete={"Objects": [{"Key": "drop/1"},
                                                             {"Key": "drop/2"}]})  # fmt: skip
    assert sorted(d["Key"] for d in done["Deleted"]) == ["drop/1", "drop/2"]
    _refused(o.get_object, "AccessDenied", 403, Bucket="pol", Key="pub/1")
    # wrong documents
    elsewhere = _policy({"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                         "Resource": "arn:aws:s3:::elsewhere/*"})  # fmt: skip
    for bad in ("not json", "{}", elsewhere):
        _refused(a.put_bucket_policy, "MalformedPolicy", 400, Bucket="pol", Policy=bad)
    a.delete_bucket_policy(Bucket="pol")
    _refused(a.get_bucket_policy, "NoSuchBucketPolicy", 404, Bucket="pol")
    _refused(o.get_object, "AccessDenied", 403, Bucket="pol", Key="priv/1")
    assert a.get_object(Bucket="pol", Key="secret/1")["Body"].read() == b"secret/1"


def test_a_copy_needs_the_right_to_read_its_source(keys: Keys) -> None:
    a, o = keys.admin, keys.other
    a.create_bucket(Bucket="src-private")
    a.put_object(Bucket="src-private", Key="k", Body=b"secret", ACL="private")
    a.put_object(Bucket="src-private", Key="shared", Body=b"shared", ACL="authenticated-read")
    o.create_bucket(Bucket="dst-other")
    _refused(o.copy_object, "AccessDenied", 403, Bucket="dst-other", Key="k",
             CopySource={"Bucket": "src-private", "Key": "k"})  # fmt: skip
    o.copy_object(Bucket="dst-other", Key="s", CopySource={"Bucket": "src-private",
                                                           "Key": "shared"})  # fmt: skip
    assert o.get_object(Bucket="dst-other", Key="s")["Body"].read() == b"shared"


def test_settings_of_a_deleted_bucket_are_not_inherited(keys: Keys) -> None:
    a, o = keys.admin, keys.other
    a.create_bucket(Bucket="reborn", ACL="public-read")
    a.put_bucket_policy(Bucket="reborn", Policy=_policy(
        {"Effect": "Allow", "Principal": "*", "Action": "s3:*", "Resource": "arn:aws:s3:::reborn/*"}
    ))  # fmt: skip
    a.put_bucket_tagging(Bucket="reborn", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})
    a.delete_bucket(Bucket="reborn")
    o.create_bucket(Bucket="reborn")
    _refused(o.get_bucket_policy, "NoSuchBucketPolicy", 404, Bucket="reborn")
    _refused(o.get_bucket_tagging, "NoSuchTagSet", 404, Bucket="reborn")
    assert keys.anonymous("GET", "/reborn")[0] == 403
    assert keys.anonymous("PUT", "/reborn/x", data=b"x")[0] == 403


# -- CORS --------------------------------------------------------------------------------------


def test_cors(keys: Keys) -> None:
    a, o = keys.admin, keys.other
    a.create_bucket(Bucket="web", ACL="public-read")
    a.put_object(Bucket="web", Key="page", Body=b"<p>", ACL="public-read")
    _refused(a.get_bucket_cors, "NoSuchCORSConfiguration", 404, Bucket="web")
    ask = ("Origin: https://app.example", "Access-Control-Request-Method: GET")
    status, body, _ = keys.anonymous("OPTIONS", "/web/page", *ask)
    assert (status, _code(body)) == (403, "AccessDenied") and b"not enabled" in body
    assert keys.anonymous("OPTIONS", "/no-such-bucket/page", *ask)[0] == 403
    rules = [
        {"AllowedOrigins": ["https://*.example"], "AllowedMethods": ["GET", "PUT"],
         "AllowedHeaders": ["x-amz-*", "content-type"], "ExposeHeaders": ["ETag"],
         "MaxAgeSeconds": 600, "ID": "app"},
        {"AllowedOrigins": ["*"], "AllowedMethods": ["HEAD"]},
    ]  # fmt: skip
    a.put_bucket_cors(Bucket="web", CORSConfiguration={"CORSRules": rules})
    got = a.get_bucket_cors(Bucket="web")["CORSRules"]
    assert got[0]["AllowedOrigins"] == ["https://*.example"] and got[0]["MaxAgeSeconds"] == 600
    assert got[0]["ID"] == "app" and got[1]["AllowedMethods"] == ["HEAD"]
    _refused(o.get_bucket_cors, "AccessDenied", 403, Bucket="web")
    _refused(o.put_bucket_cors, "AccessDenied", 403, Bucket="web",
             CORSConfiguration={"CORSRules": rules})  # fmt: skip
    # preflights: no signature
    status, _, h = keys.anonymous(
        "OPTIONS", "/web/page", *ask, "Access-Control-Request-Headers: X-Amz-Date, Content-Type"
    )
    assert status == 200
    assert h["access-control-allow-origin"] == "https://app.example"
    assert h["access-control-allow-methods"] == "GET, PUT"
    assert h["access-control-allow-headers"] == "X-Amz-Date, Content-Type"
    assert h["access-control-max-age"] == "600"
    assert h["access-control-expose-headers"] == "ETag"
    assert h["access-control-allow-credentials"] == "true"
    for refused in (("Origin: https://evil.test", "Access-Control-Request-Method: GET"),
                    ("Origin: https://app.example", "Access-Control-Request-Method: DELETE"),
                    (*ask, "Access-Control-Request-Headers: authorization")):  # fmt: skip
        status, body, h = keys.anonymous("OPTIONS", "/web/page", *refused)
        assert (status, _code(body)) == (403, "AccessDenied"), refused
        assert "access-control-allow-origin" not in h
    status, body, _ = keys.anonymous("OPTIONS", "/web/page", "Origin: https://app.example")
    assert (status, _code(body)) == (400, "BadRequest")
    status, _, h = keys.anonymous("OPTIONS", "/web/page", "Origin: https://any.where",
                                  "Access-Control-Request-Method: HEAD")  # fmt: skip
    assert status == 200 and h["access-control-allow-origin"] == "*"
    # the answers themselves: a GET, a signed one, an error
    status, body, h = keys.anonymous("GET", "/web/page", "Origin: https://app.example")
    assert (status, body) == (200, b"<p>")
    assert h["access-control-allow-origin"] == "https://app.example"
    assert h["access-control-expose-headers"] == "ETag" and "origin" in h["vary"].lower()
    assert "access-control-allow-origin" not in keys.anonymous("GET", "/web/page")[2]
    status, _, h = keys.anonymous("GET", "/web/missing", "Origin: https://app.example")
    assert status == 404 and h["access-control-allow-origin"] == "https://app.example"
    status, _, h = keys.anonymous("DELETE", "/web/page", "Origin: https://app.example")
    assert status == 403 and "access-control-allow-origin" not in h  # (no rule for DELETE)
    url = a.generate_presigned_url("get_object", Params={"Bucket": "web", "Key": "page"})
    status, _, h = keys.s3.curl("-H", "Origin: https://app.example", url)
    assert status == 200 and h["access-control-allow-origin"] == "https://app.example"
    a.delete_bucket_cors(Bucket="web")
    _refused(a.get_bucket_cors, "NoSuchCORSConfiguration", 404, Bucket="web")
    assert keys.anonymous("OPTIONS", "/web/page", *ask)[0] == 403
    _refused(a.put_bucket_cors, "InvalidRequest", 400, Bucket="web", CORSConfiguration={
        "CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["PATCH"]}]})  # fmt: skip


# -- tags --------------------------------------------------------------------------------------


def test_bucket_tagging(keys: Keys) -> None:
    a, o = keys.admin, keys.other
    a.create_bucket(Bucket="tagged-bucket")
    _refused(a.get_bucket_tagging, "NoSuchTagSet", 404, Bucket="tagged-bucket")
    tags = [{"Key": f"k{i}", "Value": f"v {i} & <{i}>"} for i in range(50)]
    r = a.put_bucket_tagging(Bucket="tagged-bucket", Tagging={"TagSet": tags})
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert a.get_bucket_tagging(Bucket="tagged-bucket")["TagSet"] == tags
    _refused(o.get_bucket_tagging, "AccessDenied", 403, Bucket="tagged-bucket")
    _refused(a.put_bucket_tagging, "InvalidTag", 400, Bucket="tagged-bucket",
             Tagging={"TagSet": [{"Key": "aws:no", "Value": ""}]})  # fmt: skip
    _refused(a.put_bucket_tagging, "BadRequest", 400, Bucket="tagged-bucket",
             Tagging={"TagSet": [*tags, {"Key": "one-more", "Value": ""}]})  # fmt: skip
    assert a.get_bucket_tagging(Bucket="tagged-bucket")["TagSet"] == tags
    a.delete_bucket_tagging(Bucket="tagged-bucket")
    _refused(a.get_bucket_tagging, "NoSuchTagSet", 404, Bucket="tagged-bucket")


def _tags(c: Any, key: str, bucket: str = "otags") -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in c.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}


def test_object_tagging(keys: Keys) -> None:
    a, o = keys.admin, keys.other
    a.create_bucket(Bucket="otags")
    a.put_object(Bucket="otags", Key="plain", Body=b"p")
    assert "TagCount" not in a.get_object(Bucket="otags", Key="plain")
    a.put_object(Bucket="otags", Key="k", Body=b"v", Tagging="a=1&b=x%20y%26z")
    assert _tags(a, "k") == {"a": "1", "b": "x y&z"}
    assert a.get_object(Bucket="otags", Key="k")["TagCount"] == 2
    head = a.head_object(Bucket="otags", Key="k")["ResponseMetadata"]["HTTPHeaders"]
    assert head["x-amz-tagging-count"] == "2"
    r = a.put_object_tagging(Bucket="otags", Key="k", Tagging={"TagSet": [
        {"Key": "only", "Value": "one"}]})  # fmt: skip
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert _tags(a, "k") == {"only": "one"}
    assert a.get_object(Bucket="otags", Key="k")["TagCount"] == 1
    r = a.delete_object_tagging(Bucket="otags", Key="k")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert _tags(a, "k") == {} and "TagCount" not in a.get_object(Bucket="otags", Key="k")
    # a new PUT of the key starts from its own tags (the later ones were the old object's)
    a.put_object_tagging(Bucket="otags", Key="k", Tagging={"TagSet": [{"Key": "t", "Value": ""}]})
    a.put_object(Bucket="otags", Key="k", Body=b"v2")
    assert _tags(a, "k") == {}
    # copies: the source's tags (the default directive), or the request's (REPLACE)
    a.put_object_tagging(Bucket="otags", Key="k", Tagging={"TagSet": [{"Key": "c", "Value": "1"}]})
    a.copy_object(Bucket="otags", Key="copy", CopySource={"Bucket": "otags", "Key": "k"})
    assert _tags(a, "copy") == {"c": "1"}
    a.create_bucket(Bucket="otags-2")
    a.copy_object(Bucket="otags-2", Key="copy", CopySource={"Bucket": "otags", "Key": "k"})
    assert a.get_object(Bucket="otags-2", Key="copy")["TagCount"] == 1
    a.copy_object(Bucket="otags", Key="copy", CopySource={"Bucket": "otags", "Key": "k"},
                  TaggingDirective="REPLACE", Tagging="r=2&s=3")  # fmt: skip
    assert _tags(a, "copy") == {"r": "2", "s": "3"}
    # a multipart upload's
    parts = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    a.upload_fileobj(io.BytesIO(b"m" * (6 * MiB)), "otags", "multi", Config=parts,
                     ExtraArgs={"Tagging": "m=1"})  # fmt: skip
    assert _tags(a, "multi") == {"m": "1"}
    # refusals
    _refused(a.get_object_tagging, "NoSuchKey", 404, Bucket="otags", Key="missing")
    _refused(a.put_object, "InvalidTag", 400, Bucket="otags", Key="bad", Body=b"",
             Tagging="aws:x=1")  # fmt: skip
    _refused(a.put_object_tagging, "BadRequest", 400, Bucket="otags", Key="k", Tagging={
        "TagSet": [{"Key": f"k{i}", "Value": ""} for i in range(11)]})  # fmt: skip
    _refused(o.get_object_tagging, "AccessDenied", 403, Bucket="otags", Key="k")
    _refused(o.put_object_tagging, "AccessDenied", 403, Bucket="otags", Key="k",
             Tagging={"TagSet": []})  # fmt: skip
    assert _tags(a, "k") == {"c": "1"}
