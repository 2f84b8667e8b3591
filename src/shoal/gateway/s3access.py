"""Who may do what in the S3 gateway, and the bucket and object settings that say so (ACLs,
bucket policies, CORS, tags), for shoal.gateway.s3.

Deciding (Access.authorize, before every operation): a bucket belongs to the key that made it
(its record's "owner"); a key with the admin right on the pool acts as the owner of every
bucket. A request is allowed when its requester owns the bucket, or the bucket policy allows
it, or a grant of the ACL allows it: the bucket's ACL for listings and writes, the object's
for object reads (as in S3, a public-read bucket lets anyone list it, not read its objects).
A Deny of the policy always wins (but never keeps the owner from the policy itself). The
bucket owner has every right on every object of the bucket; an object's writer owns its ACL.
The key's own pool rights (r for reads and listings, w for writes, d for deletes) stay a
ceiling: a grant or a policy never gives a key more than its rights. An anonymous request
(no signature) has no rights of its own: it is allowed exactly where an ACL grant to AllUsers
or a policy statement with Principal "*" allows, and then given the rights of that one
operation. A policy's principals are access keys: "*", {"AWS": "SK..."} or an ARN whose last
part is the access key ("arn:aws:iam::shoal:user/SK..."). ACL grantees are access keys too
(the CanonicalUser ID; the groups AllUsers and AuthenticatedUsers); grants by e-mail are
NotImplemented. Bucket ACLs, policies, CORS and tags are the owner's alone to read and change.
No ACL grant gives GetBucketLocation, DeleteBucket or versioning (the owner or a policy
does); an object's tags are read with READ on it and changed with WRITE_ACP on it.
DeleteObjects by a non-owner needs a grant for every key (WRITE on the bucket, or a policy
allowing s3:DeleteObject on "B/*"), and is refused whole when a Deny could apply to some key.

Where settings live, each a small object of the pool, stored first and indexed second:

    .s3/buckets/B "acl"           (record meta) the ACL CreateBucket's x-amz-acl or
                                  x-amz-grant-* asked for: a canned name, or JSON grants
    .s3/config/B/acl              PutBucketAcl's ACL (meta "acl", as above)
    .s3/config/B/policy           the policy, as given (body: up to 20 KiB, more than a
    .s3/config/B/cors             record's metadata holds), the CORS rules and the bucket's
    .s3/config/B/tagging          tags (body: canonical XML, up to ~20 KiB for 50 tags)
    .s3/config/B/tagged           (empty) some object of B may have tags
    object B/K meta "s3-acl", "s3-tags"   x-amz-acl / x-amz-tagging of its PUT, copy or upload
    .s3/objects/B/H/acl, .../tagging      PutObjectAcl's and PutObjectTagging's (meta; H is
                                  the SHA-256 of K: a longest key would not fit the index)

Side objects rather than the bucket record: each setting is written whole by one request, so
two changes never race over one read-modify-write of a shared record, and a policy or 50 tags
do not fit a record's 16 KiB of metadata. Each config is bound to its bucket's "created"
stamp and each object record to its object's version and hash, so a setting left behind by a
deleted bucket or a replaced object is ignored, not inherited. An object is immutable: its
ACL and tags changed later live in the side record, which wins over its own metadata while it
names that version; a new PUT of the key starts from its own headers again, as in S3. One
index listing of .s3/config/B/ (beside the bucket record's lookup) gives every setting of a
bucket, per request; bodies are read once and kept parsed, keyed by version.
x-amz-tagging-count (GET, HEAD) needs a stat of the object and is looked for only in buckets
marked "tagged". Per-version ACLs and tags are not kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from shoal.client.client import ObjectInfo
from shoal.client.cluster import S3Grant
from shoal.errors import NotFound
from shoal.index import Entry, IndexUnavailable
from shoal.proto.s3 import acl, cors, responses
from shoal.proto.s3.bucketpolicy import MAX_POLICY, BucketPolicy, decide, parse_policy
from shoal.proto.s3.errors import S3Error
from shoal.proto.s3.names import copy_source
from shoal.proto.s3.xml import (
    AccessControlPolicy,
    CORSRule,
    Grant,
    Tag,
    check_tags,
    parse_acl,
    parse_cors,
    parse_tagging,
)

if TYPE_CHECKING:
    from shoal.asgi import Receive
    from shoal.gateway.s3 import S3Exchange, S3Gateway, S3Req, Source
    from shoal.proto.s3.sigv4 import Context

CONFIG = ".s3/config/"  # + bucket + "/" + kind: a bucket's setting
OBJECTS = ".s3/objects/"  # + bucket + "/" + SHA-256(key) + "/" + kind: an object's
KINDS = ("acl", "cors", "policy", "tagged", "tagging")
ACL_META, TAGS_META = "s3-acl", "s3-tags"  # (object metadata) x-amz-acl, x-amz-tagging
MAX_GRANTS = 100
MAX_BUCKET_TAGS = 50
CACHED = 1024  # parsed bodies kept
SUBRESOURCES = ("acl", "cors", "policy", "tagging")
DENIED = "Access Denied"
# actions on a bucket's settings that its owner may always take, whatever the policy says
OWNERS_OWN = ("s3:GetBucketPolicy", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy")
T = TypeVar("T")


@dataclass(frozen=True)
class Action:
    """What a request does, as a policy names it and an ACL grants it."""

    name: str  # "s3:GetObject"
    rights: str  # the pool rights it needs (those an allowed anonymous request is given)
    grant: str | None = None  # the ACL permission that allows it; None: owner or policy only
    on_object: bool = False  # that permission is the object's ACL's (else the bucket's)
    owner_only: bool = False  # neither an ACL nor a policy allows it


def action(req: S3Req) -> Action | None:
    """The action of a request on a bucket (None: ListBuckets, CreateBucket). Query names
    that are no subresource (x-id, list-type, prefix, ...) do not change it."""
    from shoal.gateway.s3 import SUBRESOURCES as ASKED

    m, p = req.method, req.params
    asked = (ASKED.intersection(p) | ({"location", "versioning"} & p.keys())) - {"versionId"}
    if not req.bucket or (not req.key and m == "PUT" and not asked):
        return None
    config = next((s for s in SUBRESOURCES if s in p), None)
    verb = {"GET": "Get", "HEAD": "Get", "PUT": "Put", "DELETE": "Delete"}.get(m, m.title())
    right = "r" if verb == "Get" else "w"
    if not req.key:
        if config is not None:
            what = {"acl": "BucketAcl", "cors": "BucketCORS", "policy": "BucketPolicy",
                    "tagging": "BucketTagging"}[config]  # fmt: skip
            return Action(f"s3:{verb}{what}", right, owner_only=True)
        if asked == {"delete"} and m == "POST":
            return Action("s3:DeleteObject", "d", "WRITE")
        if asked == {"location"} and m == "GET":
            return Action("s3:GetBucketLocation", "r")
        if asked == {"uploads"} and m == "GET":
            return Action("s3:ListBucketMultipartUploads", "r", "READ")
        if asked == {"versions"} and m == "GET":
            return Action("s3:ListBucketVersions", "r", "READ")
        if asked == {"versioning"} and m in ("GET", "PUT"):
            return Action(f"s3:{verb}BucketVersioning", right)
        if not asked and m in ("GET", "HEAD"):
            return Action("s3:ListBucket", "r", "READ")
        if not asked and m == "DELETE":
            return Action("s3:DeleteBucket", "d")
        return Action(f"s3:{verb}Bucket", right, owner_only=True)
    versioned = p.get("versionId", "null") != "null"
    if config == "acl":
        return Action(f"s3:{verb}ObjectAcl", right, "READ_ACP" if right == "r" else "WRITE_ACP",
                      on_object=True)  # fmt: skip
    if config == "tagging":
        return Action(f"s3:{verb}ObjectTagging", right, "READ" if right == "r" else "WRITE_ACP",
                      on_object=True)  # fmt: skip
    copy = "x-amz-copy-source" in req.hmap
    if asked == {"uploads"} and m == "POST":
        return Action("s3:PutObject", "w", "WRITE")
    if "uploadId" in asked and asked <= {"uploadId", "partNumber"}:
        if m == "DELETE":
            return Action("s3:AbortMultipartUpload", "w", "WRITE")
        if m == "GET":
            return Action("s3:ListMultipartUploadParts", "r", "WRITE")
        return Action("s3:PutObject", "rw" if copy and m == "PUT" else "w", "WRITE")
    if not asked and m in ("GET", "HEAD"):
        return Action("s3:GetObjectVersion" if versioned else "s3:GetObject", "r", "READ",
                      on_object=True)  # fmt: skip
    if not asked and m == "PUT":
        return Action("s3:PutObject", "rw" if copy else "w", "WRITE")
    if not asked and m == "DELETE":
        return Action("s3:DeleteObjectVersion" if versioned else "s3:DeleteObject", "d", "WRITE")
    return Action(f"s3:{verb}Object", right, owner_only=True)


@dataclass
class Bucket:
    """A bucket's record and its settings (the config records bound to it)."""

    name: str
    record: Entry
    configs: dict[str, Entry]

    @property
    def owner(self) -> str:
        return self.record.meta.get("owner", "")

    @property
    def arn(self) -> str:
        return "arn:aws:s3:::" + self.name


@dataclass
class Obj:
    """An object as the checks see it: its info and its side records (bound to it)."""

    key: str
    info: ObjectInfo
    records: dict[str, Entry] = field(default_factory=dict)


def _stamp(record: Entry) -> str:
    return record.meta.get("created") or f"{record.mtime:.3f}"


def _binding(info: ObjectInfo) -> str:
    return f"{info.version}:{info.hash.hex() if info.hash else ''}"


def _object_prefix(bucket: str, key: str) -> str:
    return f"{OBJECTS}{bucket}/{hashlib.sha256(key.encode()).hexdigest()}/"


def encode_acl(policy: AccessControlPolicy) -> str:
    """An ACL's grants as metadata (the owner is the record's, not the document's)."""
    if any(g.grantee_type == "AmazonCustomerByEmail" for g in policy.grants):
        raise S3Error("NotImplemented", "grants to an e-mail address are not implemented")
    if len(policy.grants) > MAX_GRANTS:
        raise S3Error("MalformedACLError", f"An ACL holds at most {MAX_GRANTS} grants",
                      status=400)  # fmt: skip
    return json.dumps([[g.grantee_type, g.grantee, g.permission] for g in policy.grants],
                      separators=(",", ":"))  # fmt: skip


def decode_acl(
    value: str | None, owner: str, bucket_owner: str | None = None
) -> AccessControlPolicy:
    """The ACL metadata holds (a canned name or JSON grants); private when none."""
    if value and value.startswith("["):
        grants = [Grant(*g) for g in json.loads(value)]
    else:
        grants = acl.canned(value or "private", owner, bucket_owner).grants
    return AccessControlPolicy(owner, owner, grants)


def _headers_acl(req: S3Req) -> str | None:
    """x-amz-acl (its canned name) or x-amz-grant-* (JSON grants), checked; None if neither."""
    policy = acl.from_headers(req.headers, "")
    if policy is None:
        return None
    canned = req.hmap.get("x-amz-acl")
    return canned.strip() if canned is not None else encode_acl(policy)


def _header_tags(value: str) -> list[Tag]:
    """x-amz-tagging: URL-encoded Key=Value pairs, held to S3's rules of tags."""
    try:
        pairs = parse_qsl(value, keep_blank_values=True, strict_parsing=bool(value))
    except ValueError:
        raise S3Error("InvalidArgument", "The header 'x-amz-tagging' shall be encoded as "
                      "UTF-8 then URLEncoded URL query parameters without tag name duplicates.",
                      ArgumentName="x-amz-tagging", ArgumentValue=value) from None  # fmt: skip
    return check_tags([Tag(k, v) for k, v in pairs], 10)


def _encode_tags(tags: list[Tag]) -> str:
    return urlencode([(t.key, t.value) for t in tags])


def _decode_tags(value: str | None) -> list[Tag]:
    return [Tag(k, v) for k, v in parse_qsl(value or "", keep_blank_values=True)]


def _denied() -> S3Error:
    return S3Error("AccessDenied", DENIED)


class Access:
    """The access checks and the acl, policy, cors and tagging calls of `gw`'s pool."""

    def __init__(self, gw: S3Gateway) -> None:
        self.gw = gw
        self._parsed: OrderedDict[str, tuple[tuple[int, bytes | None], Any]] = OrderedDict()

    # -- records ---------------------------------------------------------------------------

    async def _entries(self, prefix: str, kinds: tuple[str, ...]) -> dict[str, Entry]:
        """The records under `prefix`: from the index, else (unreachable) from the pool."""
        try:
            page = await self.gw.index.list(self.gw.pool, prefix, "", 16)
            return {k[len(prefix) :]: e for k, e in page}
        except IndexUnavailable:
            pass
        out = {}
        for kind in kinds:
            try:
                info = await self.gw.client.stat(self.gw.pool, prefix + kind)
            except NotFound:
                continue
            out[kind] = Entry(info.size, info.hash, info.version, info.mtime, dict(info.meta))
        return out

    async def bucket(self, name: str) -> Bucket | None:
        if not name or "/" in name:
            return None
        record, configs = await asyncio.gather(
            self.gw._bucket_entry(name), self._entries(f"{CONFIG}{name}/", KINDS)
        )
        if record is None:
            return None
        stamp = _stamp(record)
        return Bucket(name, record, {k: e for k, e in configs.items()
                                     if e.meta.get("bucket") == stamp})  # fmt: skip

    async def object(self, bucket: Bucket, key: str) -> Obj | None:
        try:
            info = await self.gw.client.stat(self.gw.pool, f"{bucket.name}/{key}")
        except NotFound:
            return None
        records = await self._entries(_object_prefix(bucket.name, key), ("acl", "tagging"))
        bound = _binding(info)
        return Obj(key, info, {k: e for k, e in records.items() if e.meta.get("object") == bound})

    async def _put_record(self, name: str, body: bytes, meta: dict[str, str]) -> Entry:
        stored = await self.gw.client.put(self.gw.pool, name, body, meta=meta)
        entry = Entry(len(body), stored.hash, stored.version or 0, time.time(), meta)
        try:
            await self.gw.index.put(self.gw.pool, name, entry)
        except IndexUnavailable as exc:
            raise IndexUnavailable(
                f"{name} is stored, but not listed: {exc} (a retry, or `shoal index rebuild`, "
                "lists it)"
            ) from None
        return entry

    async def _put_config(self, bucket: Bucket, kind: str, body: bytes = b"",
                          **meta: str) -> None:  # fmt: skip
        bucket.configs[kind] = await self._put_record(
            f"{CONFIG}{bucket.name}/{kind}", body, {"bucket": _stamp(bucket.record), **meta}
        )

    async def _parsed_body(self, name: str, entry: Entry, parse: Callable[[bytes], T]) -> T:
        """A record's body, parsed: read once per version of it."""
        got = self._parsed.get(name)
        if got is not None and got[0] == (entry.version, entry.hash):
            self._parsed.move_to_end(name)
            value: T = got[1]
            return value
        value = parse(await self.gw.client.get(self.gw.pool, name))
        self._parsed[name] = ((entry.version, entry.hash), value)
        while len(self._parsed) > CACHED:
            self._parsed.popitem(last=False)
        return value

    async def _config(self, bucket: Bucket, kind: str, parse: Callable[[bytes], T]) -> T | None:
        entry = bucket.configs.get(kind)
        if entry is None:
            return None
        try:
            return await self._parsed_body(f"{CONFIG}{bucket.name}/{kind}", entry, parse)
        except NotFound:  # (deleted since it was listed)
            return None

    async def policy(self, bucket: Bucket) -> BucketPolicy | None:
        return await self._config(bucket, "policy", lambda b: parse_policy(b, bucket.name))

    async def cors_rules(self, bucket: Bucket) -> list[CORSRule] | None:
        return await self._config(bucket, "cors", parse_cors)

    def bucket_acl(self, bucket: Bucket) -> AccessControlPolicy:
        entry = bucket.configs.get("acl")
        value = entry.meta.get("acl") if entry is not None else bucket.record.meta.get("acl")
        return decode_acl(value, bucket.owner)

    def object_acl(self, bucket: Bucket, obj: Obj) -> AccessControlPolicy:
        entry = obj.records.get("acl")
        value = entry.meta.get("acl") if entry is not None else obj.info.meta.get(ACL_META)
        writer = obj.info.meta.get("owner", bucket.owner)
        return decode_acl(value, writer, bucket.owner)

    @staticmethod
    def object_tags(obj: Obj) -> list[Tag]:
        entry = obj.records.get("tagging")
        return _decode_tags(entry.meta.get("tags") if entry is not None
                            else obj.info.meta.get(TAGS_META))  # fmt: skip

    # -- deciding --------------------------------------------------------------------------

    async def authorize(self, x: S3Exchange, req: S3Req, grant: S3Grant) -> S3Grant:
        """Whether `grant`'s requester may do `req` (AccessDenied if not); the grant that the
        operation then runs with (an anonymous request's: the rights of its one action). CORS
        headers for the answer and x-amz-tagging-count are found here too."""
        return (await self._authorize(x, req, grant))[0]

    async def _authorize(
        self, x: S3Exchange, req: S3Req, grant: S3Grant
    ) -> tuple[S3Grant, Bucket | None]:
        anonymous = not grant.access_key
        act = action(req)
        if act is None:  # ListBuckets, CreateBucket: the key's own rights decide
            if anonymous:
                raise _denied()
            return grant, None
        bucket = await self.bucket(req.bucket)
        if bucket is not None:
            req.record = bucket.record  # (the operation needs it too: looked up once)
            await self._cors_headers(x, req, bucket)  # (refusals carry them too)
        if not anonymous:
            for right in act.rights:
                grant.require(self.gw.pool, right)
        if bucket is None:
            if anonymous:
                raise S3Error("NoSuchBucket", BucketName=req.bucket)
            return grant, None  # (the operation says NoSuchBucket)
        obj = await self._check(bucket, req.key, act, grant)
        if "x-amz-copy-source" in req.hmap and req.method == "PUT" and req.key:
            await self._check_source(req, grant, bucket)
        if req.key and req.method in ("GET", "HEAD") and not req.params.keys() & {
            *SUBRESOURCES, "uploadId", "versionId"
        }:  # fmt: skip
            await self._tag_count(x, bucket, req.key, obj)
        elif req.key and req.method in ("PUT", "POST") and req.hmap.get("x-amz-tagging"):
            await self._mark_tagged(bucket)
        if anonymous:
            grant = S3Grant("", {self.gw.pool: act.rights}, b"")
        return grant, bucket

    async def _check(
        self, bucket: Bucket, key: str, act: Action, grant: S3Grant, obj: Obj | None = None
    ) -> Obj | None:
        """AccessDenied unless the requester may take `act` on `bucket` (or its `key`); the
        object, when it had to be looked at."""
        who = grant.access_key or None
        owner = who is not None and (who == bucket.owner or grant.allows(self.gw.pool, "a"))
        resource = f"{bucket.arn}/{key}" if key else bucket.arn
        policy = await self.policy(bucket)
        said = decide(policy, who, act.name, resource)
        if act.name == "s3:DeleteObject" and not key and policy is not None:
            said = "deny" if _denies_a_key(policy, who, act.name) else (
                decide(policy, who, act.name, bucket.arn + "/*"))  # fmt: skip
        if said == "deny" and not (owner and act.name in OWNERS_OWN):
            raise _denied()
        if owner:
            return obj
        if act.owner_only:
            raise _denied()
        if said == "allow":
            return obj
        if act.grant is None:
            raise _denied()
        if not act.on_object:
            if acl.allows(self.bucket_acl(bucket), who, act.grant):
                return obj
            raise _denied()
        obj = obj or await self.object(bucket, key)
        if obj is None:  # (whoever may list the bucket hears NoSuchKey, the others not)
            listing = Action("s3:ListBucket", "r", "READ")
            await self._check(bucket, "", listing, grant)
            return None
        if acl.allows(self.object_acl(bucket, obj), who, act.grant):
            return obj
        raise _denied()

    async def _check_source(self, req: S3Req, grant: S3Grant, target: Bucket) -> None:
        """A copy reads its source: GetObject on it, and the target's tagged mark when the
        source's tags come along."""
        src = copy_source(req.hmap["x-amz-copy-source"])
        source = target if src.bucket == target.name else await self.bucket(src.bucket)
        if source is None:
            return  # (the copy says NoSuchBucket)
        await self._check(source, src.key, Action("s3:GetObject", "r", "READ", on_object=True),
                          grant)  # fmt: skip
        replace = req.hmap.get("x-amz-tagging-directive", "COPY").upper() == "REPLACE"
        if "tagged" in source.configs and not replace and "uploadId" not in req.params:
            await self._mark_tagged(target)

    async def _mark_tagged(self, bucket: Bucket) -> None:
        if "tagged" not in bucket.configs:
            await self._put_config(bucket, "tagged")

    async def _tag_count(self, x: S3Exchange, bucket: Bucket, key: str, obj: Obj | None) -> None:
        if "tagged" not in bucket.configs:
            return
        obj = obj or await self.object(bucket, key)
        count = len(self.object_tags(obj)) if obj is not None else 0
        if count:
            x.on_success.append((b"x-amz-tagging-count", str(count).encode()))

    async def _cors_headers(self, x: S3Exchange, req: S3Req, bucket: Bucket) -> None:
        if "origin" in req.hmap and "cors" in bucket.configs:
            found = cors.actual(await self.cors_rules(bucket), req.headers, req.method)
            x.cors = [(k.lower().encode(), v.encode("latin-1", "replace")) for k, v in found]

    # -- what PUTs keep --------------------------------------------------------------------

    @staticmethod
    def bucket_meta(req: S3Req) -> dict[str, str]:
        """CreateBucket's ACL (x-amz-acl or x-amz-grant-*), for its record."""
        value = _headers_acl(req)
        return {} if value is None else {"acl": value}

    @staticmethod
    def object_meta(req: S3Req) -> dict[str, str]:
        """The ACL and tags a PUT (an upload, a copy with REPLACE) asks for, for the object's
        metadata."""
        meta = {}
        value = _headers_acl(req)
        if value is not None:
            meta[ACL_META] = value
        tagging = req.hmap.get("x-amz-tagging")
        if tagging:
            meta[TAGS_META] = _encode_tags(_header_tags(tagging))
        return meta

    async def copy_meta(self, req: S3Req, source: Source, meta: dict[str, str]) -> dict[str, str]:
        """A copy's metadata with its ACL (the request's, never the source's) and its tags
        (the source's, or x-amz-tagging's with x-amz-tagging-directive: REPLACE)."""
        out = {k: v for k, v in meta.items() if k not in (ACL_META, TAGS_META)}
        out.update(self.object_meta(req))
        directive = req.hmap.get("x-amz-tagging-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "Unknown tagging directive.",
                          ArgumentName="x-amz-tagging-directive",
                          ArgumentValue=directive)  # fmt: skip
        if directive == "COPY":
            out.pop(TAGS_META, None)
            prefix = _object_prefix(source.bucket, source.key)
            records = await self._entries(prefix, ("acl", "tagging"))
            bound = _binding(source.info)
            obj = Obj(
                source.key,
                source.info,
                {k: e for k, e in records.items() if e.meta.get("object") == bound},
            )
            tags = self.object_tags(obj)
            if tags:
                out[TAGS_META] = _encode_tags(tags)
        return out

    # -- the calls -------------------------------------------------------------------------

    @staticmethod
    def handles(req: S3Req) -> bool:
        """Whether `req` is one of this module's calls (see route)."""
        if req.method == "OPTIONS":
            return True
        if not req.bucket:
            return False
        asked = [s for s in SUBRESOURCES if s in req.params]
        return bool(asked) and (not req.key or asked[0] in ("acl", "tagging"))

    async def route(
        self, x: S3Exchange, receive: Receive, req: S3Req, grant: S3Grant, ctx: Context
    ) -> None:
        """OPTIONS (a CORS preflight: no signature needed) and ?acl, ?policy, ?cors and
        ?tagging of a bucket, ?acl and ?tagging of an object."""
        if req.method == "OPTIONS":
            return await self._preflight(x, req)
        if req.method not in ("GET", "PUT", "DELETE") or (
            req.method == "DELETE" and "acl" in req.params
        ):
            raise S3Error("MethodNotAllowed", Method=req.method,
                          ResourceType="OBJECT" if req.key else "BUCKET")  # fmt: skip
        if req.params.get("versionId", "null") != "null":
            raise S3Error("NotImplemented", "ACLs and tags of a version are not implemented")
        grant, bucket = await self._authorize(x, req, grant)
        if bucket is None:
            raise S3Error("NoSuchBucket", BucketName=req.bucket)
        kind = next(s for s in SUBRESOURCES if s in req.params)
        if req.key:
            obj = await self.object(bucket, req.key)
            if obj is None:
                raise S3Error("NoSuchKey", Key=req.key)
            if kind == "acl":
                return await self._object_acl(x, receive, req, ctx, bucket, obj)
            return await self._object_tagging(x, receive, req, ctx, bucket, obj)
        call = {"acl": self._bucket_acl, "policy": self._policy, "cors": self._cors,
                "tagging": self._bucket_tagging}[kind]  # fmt: skip
        await call(x, receive, req, ctx, bucket)

    async def _preflight(self, x: S3Exchange, req: S3Req) -> None:
        bucket = await self.bucket(req.bucket)
        if bucket is None:
            raise S3Error("AccessDenied", "CORSResponse: Bucket not found")
        found = cors.preflight(await self.cors_rules(bucket), req.headers)
        await x.whole(200, b"", [(k.lower().encode(), v.encode("latin-1", "replace"))
                                 for k, v in found])  # fmt: skip

    async def _acl_asked(
        self, x: S3Exchange, receive: Receive, req: S3Req, ctx: Context, owner: str
    ) -> str:
        """A PutBucketAcl's or PutObjectAcl's ACL, as metadata: from its headers or its body
        (an AccessControlPolicy whose Owner must be the resource's)."""
        body = await self.gw._small_body(x, receive, req, ctx)
        value = _headers_acl(req)
        if value is not None:
            if body.strip():
                raise S3Error("UnexpectedContent", "This request does not support content",
                              status=400)  # fmt: skip
            return value
        if not body.strip():
            raise S3Error("MissingRequestBodyError")
        policy = parse_acl(body)
        if policy.owner_id != owner:
            raise _denied()
        return encode_acl(policy)

    async def _bucket_acl(
        self, x: S3Exchange, receive: Receive, req: S3Req, ctx: Context, bucket: Bucket
    ) -> None:
        if req.method == "GET":
            return await self.gw._xml(x, responses.access_control_policy(self.bucket_acl(bucket)))
        value = await self._acl_asked(x, receive, req, ctx, bucket.owner)
        await self._put_config(bucket, "acl", acl=value)
        await x.whole(200)

    async def _object_acl(
        self, x: S3Exchange, receive: Receive, req: S3Req, ctx: Context, bucket: Bucket, obj: Obj
    ) -> None:
        current = self.object_acl(bucket, obj)
        if req.method == "GET":
            return await self.gw._xml(x, responses.access_control_policy(current))
        value = await self._acl_asked(x, receive, req, ctx, current.owner_id)
        meta = {"object": _binding(obj.info), "acl": value}
        await self._put_record(_object_prefix(bucket.name, obj.key) + "acl", b"", meta)
        await x.whole(200)

    async def _policy(
        self, x: S3Exchange, receive: Receive, req: S3Req, ctx: Context, bucket: Bucket
    ) -> None:
        if req.method == "GET":
            policy = await self.policy(bucket)
            if policy is None:
                raise S3Error("NoSuchBucketPolicy", BucketName=bucket.name)
            return await x.whole(200, policy.text.encode(), [(b"content-type",
                                                              b"application/json")])  # fmt: skip
        if req.method == "DELETE":
            return await self._delete_config(x, bucket, "policy")
        body = await self.gw._small_body(x, receive, req, ctx, limit=MAX_POLICY + 1)
        parse_policy(body, bucket.name)
        await self._put_config(bucket, "policy", body)
        await x.whole(204)

    async def _cors(
        self, x: S3Exchange, receive: Receive, req: S3Req, ctx: Context, bucket: Bucket
    ) -> None:
        if req.method == "GET":
            rules = await self.cors_rules(bucket)
            if rules is None:
                raise S3Error("NoSuchCORSConfiguration", BucketName=bucket.name)
            return await self.gw._xml(x, responses.cors(rules))
        if req.method == "DELETE":
            return await self._delete_config(x, bucket, "cors")
        rules = parse_cors(await self.gw._small_body(x, receive, req, ctx))
        await self._put_config(bucket, "cors", responses.cors(rules))
        await x.whole(200)

    async def _bucket_tagging(
        self, x: S3Exchange, receive: Receive, req: S3Req, ctx: Context, bucket: Bucket
    ) -> None:
        if req.method == "GET":
            tags = await self._config(bucket, "tagging", _parse_bucket_tags)
            if tags is None:
                raise S3Error("NoSuchTagSet", BucketName=bucket.name)
            return await self.gw._xml(x, responses.tagging(tags))
        if req.method == "DELETE":
            return await self._delete_config(x, bucket, "tagging")
        tags = _parse_bucket_tags(await self.gw._small_body(x, receive, req, ctx))
        await self._put_config(bucket, "tagging", responses.tagging(tags))
        await x.whole(204)

    async def _object_tagging(
        self, x: S3Exchange, receive: Receive, req: S3Req, ctx: Context, bucket: Bucket, obj: Obj
    ) -> None:
        if req.method == "GET":
            return await self.gw._xml(x, responses.tagging(self.object_tags(obj)))
        if req.method == "DELETE":
            tags: list[Tag] = []
        else:
            tags = parse_tagging(await self.gw._small_body(x, receive, req, ctx))
            await self._mark_tagged(bucket)
        meta = {"object": _binding(obj.info), "tags": _encode_tags(tags)}
        await self._put_record(_object_prefix(bucket.name, obj.key) + "tagging", b"", meta)
        await x.whole(200 if req.method == "PUT" else 204)

    async def _delete_config(self, x: S3Exchange, bucket: Bucket, kind: str) -> None:
        if kind in bucket.configs:
            await self.gw._delete(f"{CONFIG}{bucket.name}/{kind}")
        await x.whole(204)


def _parse_bucket_tags(body: bytes) -> list[Tag]:
    return parse_tagging(body, MAX_BUCKET_TAGS)


def _denies_a_key(policy: BucketPolicy, who: str | None, name: str) -> bool:
    """Whether a Deny of `policy` may apply to `who` doing `name` on some key of the bucket
    (each of its object resources, wildcards and all, is a key it matches)."""
    for statement in policy.statements:
        if statement.effect != "Deny":
            continue
        one = BucketPolicy((statement,), "")
        for resource in statement.resources:
            if "/" in resource and decide(one, who, name, resource) == "deny":
                return True
    return False
