"""The S3 gateway: S3's REST API over one pool of the cluster (the first slice of issue 13).

Addressing: path-style (/BUCKET/KEY) and, with a domain D, virtual-host-style (Host:
BUCKET.D). Bucket B's key K is the pool's object "B/K", the very object the HTTP gateway
over the same pool serves as /B/K; a bucket is listed from the name index with the prefix
"B/". A bucket's record is a small object of its own, BUCKETS + B (".s3/buckets/B"; bucket
names never start with '.', so it is never a bucket's key), its owner (access key), region
and creation time in its metadata: stored first, indexed second, so that `shoal index
rebuild` finds the buckets again with everything else.

Authentication: SigV4 (shoal.proto.s3.sigv4) in the Authorization header or presigned in the
query, with the signing key of (access key, day, region) from the master (shoal.gateway.
s3keys); a payload signed by its SHA-256, UNSIGNED-PAYLOAD, or aws-chunked (chunk
signatures, trailers, the trailing checksum: shoal.proto.s3.chunked); SigV2 in the header
or the query (shoal.proto.s3.sigv2; each string to sign is signed by the master, which keeps
the secrets). A request needs its key's right on the pool: r for GET, HEAD and listings, w for
PUT (a bucket or an object), d for DELETE; and the bucket's owner, its ACL or its policy must
allow it (shoal.gateway.s3access, which also decides anonymous requests and answers ?acl,
?policy, ?cors, ?tagging and CORS preflights).

Operations: ListBuckets (the requester's), CreateBucket (LocationConstraint: the gateway's
region), HeadBucket, DeleteBucket (BucketNotEmpty; uploads under way end with it),
GetBucketLocation; PutObject, GetObject (a single
range, conditions, response-* overrides), HeadObject, DeleteObject (204 whatever there was),
CopyObject (streamed through the gateway), DeleteObjects; ListObjects v1 and v2; multipart
uploads (shoal.gateway.s3multipart: a completion is one head naming the parts' stripes);
browser POST uploads (shoal.gateway.s3post).
ACLs, bucket policies, CORS and tags: shoal.gateway.s3access. Versioning (versionId,
delete markers, ListObjectVersions): shoal.gateway.s3versions. Everything else S3 has
(lifecycle, replication, object lock, ...) is NotImplemented.

The data path is the HTTP gateway's (shoal.gateway.common): bodies streamed with bounded
memory through ClusterClient.put_stream and open(); a PUT's body is decoded and checked as it
comes (aws-chunked, Content-MD5, x-amz-content-sha256, x-amz-checksum-*: runs of it in a
worker thread) and every check is done before the body iterator ends, so a refusal raises
inside put_stream, which then stores nothing (stripes already sent are deleted, no head is
written); the object's metadata (its MD5, the content headers, x-amz-meta-*, the checksum)
goes with it, and the index entry comes last.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import itertools
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from shoal.asgi import Receive, Scope, Send
from shoal.client.client import ObjectInfo
from shoal.client.cluster import ClusterClient, NoDaemon, ObjectReader, S3Grant
from shoal.errors import (
    Forbidden,
    InvalidArgument,
    NoSpace,
    NotAuthenticated,
    NotFound,
    OutcomeUnknown,
    Unavailable,
)
from shoal.gateway.common import (
    BodyTimeout,
    ClientGone,
    Exchange,
    RequestLog,
    http_date,
    receive_body,
    stream_reply,
)
from shoal.gateway.s3access import Access
from shoal.gateway.s3keys import S3Keys, UnknownAccessKey
from shoal.gateway.s3multipart import EXPIRY, MIN_PART, Multipart
from shoal.gateway.s3post import PostUploads
from shoal.gateway.s3versions import MTIME_META, VERSION_META, Versions
from shoal.index import MD5_META, Entry, Index, IndexUnavailable, md5_of
from shoal.proto.s3 import responses, sigv2, sigv4
from shoal.proto.s3.checksums import BodyCheck, Digests
from shoal.proto.s3.chunked import ChunkedDecoder
from shoal.proto.s3.conditions import byte_range, check_copy_source, check_read, check_write
from shoal.proto.s3.errors import S3Error
from shoal.proto.s3.names import check_bucket, check_key, copy_range, copy_source, user_metadata
from shoal.proto.s3.xml import parse_delete, parse_location

log = logging.getLogger("shoal.s3")

BUCKETS = ".s3/buckets/"  # a bucket's record: the object BUCKETS + name
IDLE_TIMEOUT = 60.0
READ_AHEAD = 2  # stripes of a large object fetched ahead of the client
OFF_LOOP = 256 << 10  # bytes of a body decoded and hashed at a time in a worker thread
MAX_SMALL_BODY = 64 << 10  # a request body that is not an object's (CreateBucket's XML)
LIST_MAX = 1000
DRAIN_MAX = 64 << 20  # bytes of a refused body read to its end so that the client hears why
DRAIN_FOR = 10.0  # seconds given to that
MAX_OBJECT = 5 << 30  # bytes of one PUT (S3's limit; larger objects are multipart uploads)
DEFAULT_TYPE = "binary/octet-stream"  # S3's Content-Type for an object stored without one

# the standard headers kept with an object and given back by GET and HEAD
STORED_HEADERS = (
    "content-type", "content-encoding", "content-disposition", "content-language",
    "cache-control", "expires", "x-amz-website-redirect-location",
)  # fmt: skip
OWNER_META = "owner"  # (object and bucket metadata) the access key that wrote it
CHECKSUM_META = "x-amz-checksum-"  # + algorithm: the checksum the client sent, base64
ETAG_META = "s3-etag"  # an ETag that is not the MD5 of the bytes (a multipart upload's)
DIRECTIVES = ("COPY", "REPLACE")

# query names that ask for something other than the plain operation (not implemented yet)
SUBRESOURCES = frozenset({
    "accelerate", "acl", "analytics", "attributes", "cors", "delete", "encryption",
    "intelligent-tiering", "inventory", "legal-hold", "lifecycle", "logging", "metrics",
    "notification", "object-lock", "ownershipControls", "partNumber", "policy", "policyStatus",
    "publicAccessBlock", "replication", "requestPayment", "restore", "retention", "select",
    "tagging", "torrent", "uploadId", "uploads", "versions", "website",
})  # fmt: skip
OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-language": "content-language",
    "response-expires": "expires",
    "response-cache-control": "cache-control",
    "response-content-disposition": "content-disposition",
    "response-content-encoding": "content-encoding",
}


@dataclass
class S3Req:
    """One request, as the routing and the checks need it."""

    method: str
    raw_path: str  # as sent, percent-encoded
    query: str
    headers: list[tuple[str, str]]  # (lowercase name, value)
    hmap: dict[str, str]  # the same, the last value of each name
    params: dict[str, str]  # the query, decoded
    bucket: str
    key: str
    vhost: bool = False  # the bucket came from the Host header
    record: Entry | None = None  # the bucket's record, once looked up for this request

    @property
    def resource(self) -> str:
        return "/" + self.bucket + ("/" + self.key if self.key else "")


class S3Exchange(Exchange):
    """An S3 reply: x-amz-request-id and x-amz-id-2 on every answer; the CORS headers of a
    matching rule on every answer, and `on_success` on a 2xx one (shoal.gateway.s3access)."""

    __slots__ = ("code", "cors", "ids", "on_success", "reading")

    def __init__(self, send: Send, ids: list[tuple[bytes, bytes]]) -> None:
        super().__init__(send)
        self.ids = ids
        self.code = ""
        self.reading = False  # the request's body was being read
        self.cors: list[tuple[bytes, bytes]] = []
        self.on_success: list[tuple[bytes, bytes]] = []

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        found = self.on_success if 200 <= status < 300 else []
        await super().start(status, [*headers, *self.cors, *found, *self.ids])


class _Intake:
    """A PUT's body on its way in: aws-chunked decoding, when it is that, and every digest
    the request declares. `take` is run in a worker thread for large runs (one at a time,
    in order)."""

    def __init__(self, decoder: ChunkedDecoder | None, check: BodyCheck) -> None:
        self.decoder, self.check = decoder, check

    def take(self, pieces: list[bytes]) -> list[bytes | memoryview]:
        out: list[bytes | memoryview] = []
        for data in pieces:
            parts = self.decoder.feed(data) if self.decoder is not None else [data]
            for part in parts:
                self.check.update(part)
                out.append(part)
        return out

    def finish(self) -> tuple[Digests, tuple[str, str] | None]:
        """Everything checked: the digests, and the checksum sent (header or trailer)."""
        if self.decoder is not None:
            self.decoder.end()
        digests = self.check.finish()
        trailing = self.decoder.checksum if self.decoder is not None else None
        return digests, digests.checksum or trailing


class Incoming:
    """A body on its way in (S3Gateway.incoming): `size` bytes taken by `chunks()`, decoded
    and checked as they go; once they are all taken (and checked: a refusal raises from
    `chunks()` before it ends), `digests` and `checksum` (the one sent, header or trailer).
    `after` is awaited then too (a PUT's conditions, checked again)."""

    def __init__(
        self, x: S3Exchange, receive: Receive, size: int, intake: _Intake, idle: float,
        after: Callable[[], Awaitable[None]] | None,
    ) -> None:  # fmt: skip
        self.x, self.receive, self.size, self.intake = x, receive, size, intake
        self.idle, self.after = idle, after
        self.digests = Digests(b"", None)
        self.checksum: tuple[str, str] | None = None

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        batch: list[bytes] = []
        held = 0
        self.x.reading = True
        async for piece in receive_body(self.x, self.receive, self.size, self.idle):
            batch.append(piece)
            held += len(piece)
            if held >= OFF_LOOP:
                for part in await asyncio.to_thread(self.intake.take, batch):
                    yield part
                batch, held = [], 0
        for part in self.intake.take(batch):
            yield part
        self.digests, self.checksum = self.intake.finish()  # (raises: nothing is stored)
        if self.after is not None:
            await self.after()


@dataclass
class Source:
    """The object a copy reads (S3Gateway.copy_source): `length` bytes from `first`."""

    bucket: str
    key: str
    name: str
    reader: ObjectReader
    etag: str
    first: int
    length: int

    @property
    def info(self) -> ObjectInfo:
        return self.reader.info

    @staticmethod
    def md5() -> Any:
        return hashlib.md5(usedforsecurity=False)

    async def pieces(self, md5: Any) -> AsyncIterator[memoryview]:
        """Its bytes, `md5` fed with them."""
        pieces = self.reader.pieces(self.first, self.length, ahead=READ_AHEAD)
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                md5.update(piece)
                yield piece


class S3Gateway:
    """The ASGI application: S3 over `pool`, listed from `index`, keys checked by `keys`."""

    def __init__(
        self,
        client: ClusterClient,
        index: Index,
        pool: str,
        keys: S3Keys,
        *,
        region: str = "us-east-1",
        domain: str | None = None,
        request_log: RequestLog | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        min_part: int = MIN_PART,
        multipart_expiry: float = EXPIRY,
    ) -> None:
        self.client, self.index, self.pool, self.keys = client, index, pool, keys
        self.region, self.domain = region, (domain or "").lower().strip(".") or None
        self.log, self.idle = request_log, idle_timeout
        self._ids = itertools.count(int.from_bytes(os.urandom(5)) << 24)
        self._host = base64.b64encode(os.urandom(24)).decode()
        self.multipart = Multipart(self, min_part=min_part, expiry=multipart_expiry)
        self.post = PostUploads(self)
        self.versions = Versions(self)
        self.access = Access(self)

    # -- the exchange ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        t0 = time.perf_counter()
        rid = f"{next(self._ids):016X}"
        x = S3Exchange(send, [(b"x-amz-request-id", rid.encode()),
                             (b"x-amz-id-2", self._host.encode())])  # fmt: skip
        method = scope["method"]
        req: S3Req | None = None
        access = ""
        try:
            req = self._request(scope)
            x.unread = method in ("PUT", "POST")  # (until its body is read)
            grant, ctx = await self._authenticate(req)
            access = grant.access_key
            await self._route(x, receive, req, grant, ctx)
        except ClientGone:
            x.status = 499
        except Exception as exc:
            error = self._s3_error(exc, method, req)
            x.code = error.code
            if x.started:
                raise  # the reply is under way: the server cuts the connection
            if x.unread and x.reading and await _drained(receive):
                x.unread = False  # (the client hears the error, not a reset connection)
            await self._send_error(x, error, req, rid, method == "HEAD")
        finally:
            if self.log is not None:
                client = scope.get("client")
                remote = f"{client[0]}:{client[1]}" if client else ""
                extra: dict[str, Any] = {"request_id": rid}
                if access:
                    extra["access_key"] = access
                if x.code:
                    extra["error"] = x.code
                what = req.resource if req is not None else scope.get("path", "")
                self.log.write(
                    method, what, x.status, x.nbytes, time.perf_counter() - t0, remote, extra
                )

    def _s3_error(self, exc: Exception, method: str, req: S3Req | None) -> S3Error:
        if isinstance(exc, S3Error):
            return exc
        text = str(exc) or type(exc).__name__
        if isinstance(exc, Forbidden):
            return S3Error("AccessDenied", text)
        if isinstance(exc, BodyTimeout):
            return S3Error("RequestTimeout")
        if isinstance(exc, NoSpace):
            return S3Error("InsufficientStorage", text, status=507)
        if isinstance(
            exc,
            Unavailable | NoDaemon | IndexUnavailable | OutcomeUnknown | TimeoutError
            | ConnectionError,
        ):  # fmt: skip
            return S3Error("ServiceUnavailable", text)
        if isinstance(exc, InvalidArgument):
            return S3Error("InvalidArgument", text)
        what = req.resource if req is not None else ""
        log.error("%s %s", method, what, exc_info=exc)
        return S3Error("InternalError")

    async def _send_error(
        self, x: S3Exchange, error: S3Error, req: S3Req | None, rid: str, head: bool
    ) -> None:
        headers = [(b"content-type", b"application/xml")]
        if error.status == 503:
            headers.append((b"retry-after", b"1"))
        if error.code == "InvalidRange" and "ActualObjectSize" in error.fields:
            headers.append(
                (b"content-range", f"bytes */{error.fields['ActualObjectSize']}".encode())
            )
        resource = req.resource if req is not None else ""
        body = b"" if head else error.body(resource, rid)
        await x.whole(error.status, body, headers)

    def _request(self, scope: Scope) -> S3Req:
        raw = scope.get("raw_path") or scope["path"].encode()
        raw_path = raw.split(b"?", 1)[0].decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        hmap = dict(headers)
        try:
            path = unquote_to_bytes(raw_path).decode()
            params = dict(sigv4.Request("", "", query).params())
        except UnicodeDecodeError:
            raise S3Error("InvalidURI", "Couldn't parse the specified URI.", status=400) from None
        bucket, vhost = "", False
        host = hmap.get("host", "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if self.domain and name.endswith("." + self.domain):
            bucket, vhost = name[: -len(self.domain) - 1], True
            key = path[1:]
        else:
            bucket, _, key = path[1:].partition("/")
        if "\x00" in key or "\x00" in bucket:
            raise S3Error("InvalidURI", "Couldn't parse the specified URI.", status=400)
        req = S3Req(scope["method"], raw_path, query, headers, hmap, params, bucket, key, vhost)
        if key:
            check_key(key)
        return req

    async def _authenticate(self, req: S3Req) -> tuple[S3Grant, sigv4.Context]:
        request = sigv4.Request(req.method, req.raw_path, req.query, req.headers)
        creds = sigv4.parse(request)
        if creds is None:
            return await self._authenticate_v2(req, request)
        grant: S3Grant | None = None
        refused: str | None = None
        try:
            grant = await self.keys.signing_key(creds.access_key, creds.date, creds.region)
        except UnknownAccessKey:
            grant = None
        except InvalidArgument as exc:
            refused = str(exc)
        except Forbidden as exc:
            log.error("this gateway's key may not check S3 signatures: %s", exc)
            raise S3Error("InternalError", "The gateway may not check signatures.") from None

        def signing_key(access: str, date: str, region: str, service: str) -> bytes | None:
            if refused is not None:
                raise S3Error("AccessDenied", refused)
            return grant.value if grant is not None else None

        ctx = sigv4.verify(request, signing_key, now=time.time(), region=self.region)
        assert ctx is not None and grant is not None
        return grant, ctx

    async def _authenticate_v2(
        self, req: S3Req, request: sigv4.Request
    ) -> tuple[S3Grant, sigv4.Context]:
        """SigV2 (header or query): each string to sign is signed by the master (SigV2 signs
        with the secret itself), until one matches."""
        resource = "/" + req.bucket + req.raw_path if req.vhost else None
        if resource is None and req.bucket and not req.key and not req.raw_path.endswith("/"):
            resource = req.raw_path + "/"  # (a bucket's resource ends in '/', as AWS signs it)
        claim = sigv2.prepare(request, now=time.time(), resource=resource)
        if claim is None:  # anonymous: no rights of its own (Access.authorize decides)
            return S3Grant("", {}, b""), sigv4.Context(
                "", self.region, "", "", "", b"", sigv4.Payload.UNSIGNED, None, False
            )
        for text in claim.strings_to_sign:
            try:
                grant = await self.keys.sign_v2(claim.access_key, text)
            except UnknownAccessKey:
                raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=claim.access_key) from None
            except Forbidden as exc:
                log.error("this gateway's key may not check S3 signatures: %s", exc)
                raise S3Error("InternalError", "The gateway may not check signatures.") from None
            if claim.matches(grant.value):
                presigned = "Signature" in req.params
                ctx = sigv4.Context(claim.access_key, self.region, "", "", "", b"",
                                    sigv4.Payload.UNSIGNED, None, presigned)  # fmt: skip
                return grant, ctx
        raise claim.mismatch()

    # -- routing -----------------------------------------------------------------------------

    async def _route(
        self, x: S3Exchange, receive: Receive, req: S3Req, grant: S3Grant, ctx: sigv4.Context
    ) -> None:
        if req.method == "POST" and req.bucket and not req.key and not req.params:
            return await self.post.upload(x, receive, req)  # a browser's form (s3post)
        if self.access.handles(req):  # ?acl ?policy ?cors ?tagging, OPTIONS (s3access)
            return await self.access.route(x, receive, req, grant, ctx)
        grant = await self.access.authorize(x, req, grant)  # owner, ACL, policy
        method, bucket, key = req.method, req.bucket, req.key
        asked = SUBRESOURCES.intersection(req.params)
        if not bucket:
            if method != "GET":
                raise S3Error("MethodNotAllowed", Method=method, ResourceType="SERVICE")
            grant.require(self.pool, "r")
            return await self._list_buckets(x, grant)
        if not key:
            if method == "GET" and "location" in req.params:
                grant.require(self.pool, "r")
                return await self._location(x, bucket)
            if method == "GET" and "uploads" in req.params:
                grant.require(self.pool, "r")
                return await self.multipart.list_uploads(x, req)
            if method == "POST" and "delete" in req.params:
                grant.require(self.pool, "d")
                return await self._delete_objects(x, receive, req, ctx)
            if method == "GET" and "versioning" in req.params:
                grant.require(self.pool, "r")
                return await self.versions.get_config(x, req)
            if method == "PUT" and "versioning" in req.params:
                grant.require(self.pool, "w")
                return await self.versions.put_config(x, receive, req, ctx)
            if method == "GET" and asked == {"versions"}:
                grant.require(self.pool, "r")
                return await self.versions.list_versions(x, req)
            if asked or "versioning" in req.params:
                raise S3Error(
                    "NotImplemented", f"{', '.join(sorted(asked))} is not implemented yet"
                )
            if method == "PUT":
                grant.require(self.pool, "w")
                return await self._create_bucket(x, receive, req, ctx, grant)
            if method == "HEAD":
                grant.require(self.pool, "r")
                record = await self._bucket(bucket, req)
                region = record.meta.get("region", self.region)
                return await x.whole(200, b"", [(b"x-amz-bucket-region", region.encode())])
            if method == "GET":
                grant.require(self.pool, "r")
                return await self._list_objects(x, req)
            if method == "DELETE":
                grant.require(self.pool, "d")
                return await self._delete_bucket(x, bucket)
            raise S3Error("MethodNotAllowed", Method=method, ResourceType="BUCKET")
        if "uploads" in req.params and method == "POST":
            grant.require(self.pool, "w")
            return await self.multipart.create(x, req, grant)
        if "uploadId" in req.params:
            if method == "PUT" and "partNumber" in req.params:
                grant.require(self.pool, "w")
                return await self.multipart.upload_part(x, receive, req, ctx, grant)
            if method == "POST":
                grant.require(self.pool, "w")
                return await self.multipart.complete(x, receive, req, ctx, grant)
            if method == "DELETE":
                grant.require(self.pool, "w")
                return await self.multipart.abort(x, req)
            if method == "GET":
                grant.require(self.pool, "r")
                return await self.multipart.list_parts(x, req)
            raise S3Error("MethodNotAllowed", Method=method, ResourceType="OBJECT")
        if asked:
            raise S3Error("NotImplemented", f"{', '.join(sorted(asked))} is not implemented yet")
        if method == "PUT":
            grant.require(self.pool, "w")
            if "x-amz-copy-source" in req.hmap:
                return await self._copy_object(x, req, grant)
            return await self._put_object(x, receive, req, ctx, grant)
        if method in ("GET", "HEAD"):
            grant.require(self.pool, "r")
            return await self._get_object(x, receive, req, method == "HEAD")
        if method == "DELETE":
            grant.require(self.pool, "d")
            return await self._delete_object(x, req)
        raise S3Error("MethodNotAllowed", Method=method, ResourceType="OBJECT")

    async def _xml(self, x: S3Exchange, body: bytes, status: int = 200) -> None:
        await x.whole(status, body, [(b"content-type", b"application/xml")])

    # -- buckets -----------------------------------------------------------------------------

    async def _bucket_entry(self, bucket: str, req: S3Req | None = None) -> Entry | None:
        """A bucket's record: the one `req` has looked up already (the access checks did),
        else from the index, or from the object itself when the index cannot be reached."""
        if req is not None and req.record is not None and req.bucket == bucket:
            return req.record
        name = BUCKETS + bucket
        try:
            return await self.index.get(self.pool, name)
        except IndexUnavailable as exc:
            log.warning("bucket %s looked up without the index: %s", bucket, exc)
        try:
            info = await self.client.stat(self.pool, name)
        except NotFound:
            return None
        return Entry(info.size, info.hash, info.version, info.mtime, dict(info.meta))

    async def _bucket(self, bucket: str, req: S3Req | None = None) -> Entry:
        if not bucket or "/" in bucket:
            raise S3Error("NoSuchBucket", BucketName=bucket)
        record = await self._bucket_entry(bucket, req)
        if record is None:
            raise S3Error("NoSuchBucket", BucketName=bucket)
        return record

    async def _small_body(
        self,
        x: S3Exchange,
        receive: Receive,
        req: S3Req,
        ctx: sigv4.Context,
        limit: int = MAX_SMALL_BODY,
    ) -> bytes:
        """A request body that is not an object (at most `limit` bytes), checked against
        what the request says of it."""
        if ctx.payload.streaming:
            raise S3Error("NotImplemented", "aws-chunked bodies are for objects")
        check = BodyCheck(req.headers, content_sha256=ctx.content_sha256)
        data = bytearray()
        x.reading = True
        async for piece in receive_body(x, receive, None, self.idle):
            data += piece
            if len(data) > limit:
                raise S3Error("MaxMessageLengthExceeded")
        check.update(bytes(data))
        check.finish()
        return bytes(data)

    async def _create_bucket(
        self, x: S3Exchange, receive: Receive, req: S3Req, ctx: sigv4.Context, grant: S3Grant
    ) -> None:
        bucket = req.bucket
        check_bucket(bucket)
        acl = self.access.bucket_meta(req)  # x-amz-acl, x-amz-grant-*
        body = await self._small_body(x, receive, req, ctx)
        location = parse_location(body)
        if location is not None and location != self.region:
            raise S3Error(
                "IllegalLocationConstraintException",
                f"The {location} location constraint is incompatible for the region specific "
                f"endpoint this request was sent to ({self.region}).",
            )
        existing = await self._bucket_entry(bucket)
        if existing is not None:
            if existing.meta.get(OWNER_META) == grant.access_key:
                raise S3Error("BucketAlreadyOwnedByYou", BucketName=bucket)
            raise S3Error("BucketAlreadyExists", BucketName=bucket)
        now = time.time()
        meta = {OWNER_META: grant.access_key, "region": self.region, "created": f"{now:.3f}",
                **acl}  # fmt: skip
        name = BUCKETS + bucket
        stored = await self.client.put(self.pool, name, b"", meta=meta)
        entry = Entry(0, stored.hash, stored.version or 0, now, meta)
        try:
            await self.index.put(self.pool, name, entry)
        except IndexUnavailable as exc:
            raise IndexUnavailable(
                f"bucket {bucket} is stored, but not listed: {exc} (`shoal index rebuild` lists it)"
            ) from None
        await x.whole(200, b"", [(b"location", f"/{bucket}".encode())])

    async def _location(self, x: S3Exchange, bucket: str) -> None:
        record = await self._bucket(bucket)
        await self._xml(x, responses.location(record.meta.get("region", self.region)))

    async def _list_buckets(self, x: S3Exchange, grant: S3Grant) -> None:
        mine: list[tuple[str, Entry]] = []
        after = ""
        while True:
            page = await self.index.list(self.pool, BUCKETS, after, LIST_MAX)
            mine += [(k[len(BUCKETS) :], e) for k, e in page
                     if e.meta.get(OWNER_META) == grant.access_key]  # fmt: skip
            if len(page) < LIST_MAX:
                break
            after = page[-1][0] + "\x00"
        owner = responses.Owner(grant.access_key, grant.access_key)
        buckets = [
            responses.Bucket(name, float(e.meta.get("created") or e.mtime)) for name, e in mine
        ]
        await self._xml(x, responses.list_buckets(owner, buckets))

    async def _delete_bucket(self, x: S3Exchange, bucket: str) -> None:
        await self._bucket(bucket)
        if await self.index.list(self.pool, bucket + "/", "", 1):
            raise S3Error("BucketNotEmpty", BucketName=bucket)
        await self.multipart.abort_all(bucket)  # (uploads under way end with it)
        await self._delete(BUCKETS + bucket)
        await x.whole(204)

    async def aclose(self) -> None:
        """Stop the background work (the cleaner of abandoned uploads)."""
        await self.multipart.close()

    async def _delete(self, name: str) -> None:
        """Delete an object, as the HTTP gateway does: hidden in the index first, deleted,
        then the deletion recorded at its version (a slower PUT cannot bring it back)."""
        hidden = await self.index.hide(self.pool, name)
        try:
            version = await self.client.delete(self.pool, name)
        except NotFound:
            version = hidden.version if hidden is not None else None
        except (Forbidden, InvalidArgument, NotAuthenticated, NoDaemon):
            # refused before anything changed: listed again (after a failure that may have
            # deleted it on some daemons it stays unlisted, as the HTTP gateway leaves it)
            if hidden is not None:
                with contextlib.suppress(IndexUnavailable):
                    await self.index.restore(self.pool, name, hidden)
            raise
        if version is not None:
            try:
                await self.index.delete(self.pool, name, version)
            except IndexUnavailable as exc:  # (hidden already: not listed)
                log.warning("DELETE %s: %s", name, exc)

    # -- objects -----------------------------------------------------------------------------

    def _object_meta(self, req: S3Req) -> dict[str, str]:
        """What a PUT keeps of its headers: the standard ones and x-amz-meta-*."""
        meta = {"x-amz-meta-" + k: v for k, v in user_metadata(req.headers).items()}
        for name, value in req.headers:
            if name in STORED_HEADERS:
                meta[name] = value.strip()
        encoding = meta.get("content-encoding")
        if encoding is not None:  # (aws-chunked is the transfer's, not the object's)
            rest = [e.strip() for e in encoding.split(",") if e.strip().lower() != "aws-chunked"]
            if rest:
                meta["content-encoding"] = ",".join(rest)
            else:
                del meta["content-encoding"]
        meta.update(self.access.object_meta(req))  # x-amz-acl, x-amz-grant-*, x-amz-tagging
        return meta

    async def _current(self, name: str) -> ObjectInfo | None:
        try:
            return await self.client.stat(self.pool, name)
        except NotFound:
            return None

    async def _check_write_conditions(self, req: S3Req, name: str) -> None:
        if "if-match" not in req.hmap and "if-none-match" not in req.hmap:
            return
        info = await self._current(name)
        current = None if info is None else (await self._etag(name, info), info.mtime)
        try:
            check_write(req.headers, current)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                exc.fields["Key"] = req.key
            raise

    def incoming(
        self, x: S3Exchange, receive: Receive, req: S3Req, ctx: sigv4.Context, *,
        limit: int = MAX_OBJECT, after: Callable[[], Awaitable[None]] | None = None,
    ) -> Incoming:  # fmt: skip
        """The body of a PUT that stores bytes (an object, a part), as it comes."""
        decoder = ChunkedDecoder.for_context(ctx) if ctx.payload.streaming else None
        length = req.hmap.get("content-length")
        if decoder is not None:
            size = ctx.decoded_length
            if size is None:
                raise S3Error("MissingContentLength", "x-amz-decoded-content-length is missing")
        elif length is not None and length.isdigit():
            size = int(length)
        else:
            raise S3Error("MissingContentLength")
        if size > limit:
            raise S3Error("EntityTooLarge", ProposedSize=str(size), MaxSizeAllowed=str(limit))
        check = BodyCheck(req.headers, content_sha256=ctx.content_sha256)
        return Incoming(x, receive, size, _Intake(decoder, check), self.idle, after)

    async def _put_object(
        self, x: S3Exchange, receive: Receive, req: S3Req, ctx: sigv4.Context, grant: S3Grant
    ) -> None:
        record = await self._bucket(req.bucket, req)
        name = f"{req.bucket}/{req.key}"
        meta = self._object_meta(req)
        meta[OWNER_META] = grant.access_key
        await self._check_write_conditions(req, name)
        body = self.incoming(
            x, receive, req, ctx, after=lambda: self._check_write_conditions(req, name)
        )
        async with self.versions.writing(record, req.bucket, req.key) as w:

            def final_meta() -> dict[str, str]:
                out = {**meta, **w.meta, MD5_META: body.digests.md5.hex()}
                if body.checksum is not None:
                    out[CHECKSUM_META + body.checksum[0]] = body.checksum[1]
                return out

            try:
                stored = await self.client.put_stream(
                    self.pool, name, body.size, body.chunks(), meta=final_meta,
                    keep_prev=w.keep_prev,
                )  # fmt: skip
            except ValueError as exc:  # (a body of another length than announced)
                raise S3Error("IncompleteBody", str(exc)) from None
            kept = {k: v for k, v in final_meta().items() if k != MD5_META}
            entry = Entry(stored.size, stored.hash, stored.version or 0, time.time(), kept,
                          md5=body.digests.md5)  # fmt: skip
            await self.listed(req, name, entry)
        x.nbytes = stored.size
        headers = [(b"etag", f'"{body.digests.md5.hex()}"'.encode())]
        if w.version_id is not None:
            headers.append((b"x-amz-version-id", w.version_id.encode()))
        if body.checksum is not None:
            headers.append(
                (f"x-amz-checksum-{body.checksum[0]}".encode(), body.checksum[1].encode())
            )
        await x.whole(200, b"", headers)

    async def listed(self, req: S3Req, name: str, entry: Entry) -> None:
        """An object stored: its index entry, or the error that says it is not listed."""
        try:
            await self.index.put(self.pool, name, entry)
        except IndexUnavailable as exc:
            raise IndexUnavailable(
                f"{req.resource} is stored, but not listed: {exc} (a retry, or `shoal index "
                "rebuild`, lists it)"
            ) from None

    async def copy_source(self, req: S3Req, grant: S3Grant, *, ranged: bool = False) -> Source:
        """The object x-amz-copy-source names, opened, its conditions (x-amz-copy-source-if-*)
        checked, and the range x-amz-copy-source-range asks for when `ranged` (UploadPartCopy):
        the requester needs the right to read it."""
        src = copy_source(req.hmap["x-amz-copy-source"])
        grant.require(self.pool, "r")
        check_key(src.key)
        name = f"{src.bucket}/{src.key}"
        if src.version_id is not None:
            name = await self.versions.name_of(src.bucket, src.key, src.version_id)
        try:
            reader = await self.client.open(self.pool, name)
        except NotFound:
            await self._bucket(src.bucket)
            raise S3Error("NoSuchKey", Key=src.key) from None
        await self._bucket(src.bucket)
        etag = await self._etag(name, reader.info)
        check_copy_source(req.headers, etag, reader.info.mtime)
        first, length = 0, reader.info.size
        wanted = req.hmap.get("x-amz-copy-source-range")
        if wanted is not None:
            if not ranged:
                raise S3Error("InvalidArgument", "Range specified is not valid for source object",
                              ArgumentName="x-amz-copy-source-range")  # fmt: skip
            first, last = copy_range(wanted, reader.info.size)
            length = last - first + 1
        return Source(src.bucket, src.key, name, reader, etag, first, length)

    async def _copy_object(self, x: S3Exchange, req: S3Req, grant: S3Grant) -> None:
        """CopyObject: the source's bytes streamed into the target; its metadata kept (COPY)
        or the request's (REPLACE); onto itself only to change its metadata."""
        record = await self._bucket(req.bucket, req)
        directive = req.hmap.get("x-amz-metadata-directive", "COPY").upper()
        if directive not in DIRECTIVES:
            raise S3Error("InvalidArgument", "Unknown metadata directive.",
                          ArgumentName="x-amz-metadata-directive",
                          ArgumentValue=directive)  # fmt: skip
        source = await self.copy_source(req, grant)
        name = f"{req.bucket}/{req.key}"
        if name == source.name and directive == "COPY":
            raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to "
                          "copy an object to itself without changing the object's metadata, "
                          "storage class, website redirect location or encryption "
                          "attributes.")  # fmt: skip
        info = source.reader.info
        if directive == "COPY":
            meta = {k: v for k, v in info.meta.items()
                    if k in STORED_HEADERS or k.startswith("x-amz-meta-")}  # fmt: skip
        else:
            meta = self._object_meta(req)
        meta[OWNER_META] = grant.access_key
        meta = await self.access.copy_meta(req, source, meta)  # its ACL, its tags
        checksums = {k: v for k, v in info.meta.items() if k.startswith(CHECKSUM_META)}
        if ETAG_META in info.meta and "-" not in info.meta.get("x-amz-checksum-type", "-"):
            checksums = {}  # (a multipart upload's composite checksum is of its parts)
        if info.meta.get("x-amz-checksum-type") == "COMPOSITE":
            checksums = {}
        await self._check_write_conditions(req, name)
        md5 = source.md5()
        async with self.versions.writing(record, req.bucket, req.key) as w:
            kept = {**meta, **checksums, **w.meta}
            stored = await self.client.put_stream(
                self.pool, name, source.length, source.pieces(md5),
                meta=lambda: {**kept, MD5_META: md5.hexdigest()}, keep_prev=w.keep_prev,
            )  # fmt: skip
            now = time.time()
            entry = Entry(stored.size, stored.hash, stored.version or 0, now, kept,
                          md5=md5.digest())  # fmt: skip
            await self.listed(req, name, entry)
        x.nbytes = stored.size
        if w.version_id is not None:
            x.on_success.append((b"x-amz-version-id", w.version_id.encode()))
        sent = {k[len(CHECKSUM_META) :]: v for k, v in checksums.items()}
        await self._xml(x, responses.copy_object(md5.hexdigest(), now, sent))

    async def _delete_objects(
        self, x: S3Exchange, receive: Receive, req: S3Req, ctx: sigv4.Context
    ) -> None:
        """DeleteObjects (POST ?delete): up to 1000 keys, each deleted as DeleteObject does;
        a key that fails is an Error of the answer, not a failure of the request."""
        await self._bucket(req.bucket, req)
        body = await self._small_body(x, receive, req, ctx, limit=2 << 20)
        asked = parse_delete(body)
        deleted: list[responses.Deleted] = []
        errors: list[responses.DeleteError] = []
        for key, version in asked.objects:
            try:
                check_key(key)
                record = await self._bucket(req.bucket, req)
                if version is None and self.versions.state(record) is None:
                    await self._delete(f"{req.bucket}/{key}")
                    deleted.append(responses.Deleted(key, version))
                else:
                    deleted.append(await self.versions.delete_key(req.bucket, key, version,
                                                                  record))  # fmt: skip
            except ClientGone:
                raise
            except Exception as exc:
                error = self._s3_error(exc, "DELETE", req)
                errors.append(responses.DeleteError(key, error.code, error.message, version))
        await self._xml(x, responses.delete_result(deleted, errors, asked.quiet))

    async def _etag(self, name: str, info: ObjectInfo) -> str:
        """An object's ETag (without quotes): its MD5, from its metadata, else the index's
        (objects written before MD5s were kept with them), else its BLAKE3's first half."""
        if ETAG_META in info.meta:
            return info.meta[ETAG_META]
        md5 = md5_of(info.meta)
        if md5 is None:
            try:
                entry = await self.index.get(self.pool, name)
            except IndexUnavailable:
                entry = None
            if entry is not None and entry.version == info.version:
                md5 = entry.md5
        if md5 is not None:
            return md5.hex()
        return info.hash[:16].hex() if info.hash else "0" * 32

    async def _get_object(self, x: S3Exchange, receive: Receive, req: S3Req, head: bool) -> None:
        name = f"{req.bucket}/{req.key}"
        if "versionId" in req.params:
            name = await self.versions.resolve(x, req)
        looked = asyncio.ensure_future(self._bucket_entry(req.bucket, req))
        reader = None
        try:
            if head:
                info = await self.client.stat(self.pool, name)
            else:
                reader = await self.client.open(self.pool, name)
                info = reader.info
        except NotFound:
            record = await looked
            if record is None:
                raise S3Error("NoSuchBucket", BucketName=req.bucket) from None
            if self.versions.state(record) is not None:
                await self.versions.missing(x, req)
            raise S3Error("NoSuchKey", Key=req.key) from None
        except BaseException:
            looked.cancel()
            raise
        if await looked is None:
            raise S3Error("NoSuchBucket", BucketName=req.bucket)
        etag = await self._etag(name, info)
        meta = info.meta
        mtime = float(meta.get(MTIME_META) or info.mtime)
        common = [
            (b"etag", f'"{etag}"'.encode()),
            (b"last-modified", http_date(mtime)),
        ]
        if VERSION_META in meta:
            common.append((b"x-amz-version-id", meta[VERSION_META].encode()))
        try:
            check_read(req.headers, etag, mtime)
        except S3Error as exc:
            if exc.status != 304:
                raise
            await x.whole(304, b"", common)
            return
        headers = [*common, (b"accept-ranges", b"bytes")]
        stored = {k: v for k, v in meta.items() if k in STORED_HEADERS}
        stored.setdefault("content-type", DEFAULT_TYPE)
        for param, name_ in OVERRIDES.items():
            if param in req.params:
                stored[name_] = req.params[param]
        headers += [(k.encode(), v.encode("latin-1", "replace")) for k, v in stored.items()]
        headers += [(k.encode(), v.encode("latin-1", "replace"))
                    for k, v in meta.items() if k.startswith("x-amz-meta-")]  # fmt: skip
        first, length, code = 0, info.size, 200
        rng = byte_range(req.hmap.get("range"), info.size)
        if rng is not None:
            first, length, code = rng.first, rng.length, 206
            headers.append((b"content-range", rng.content_range.encode()))
        elif req.hmap.get("x-amz-checksum-mode", "").upper() == "ENABLED":
            headers += [(k.encode(), v.encode()) for k, v in meta.items()
                        if k.startswith(CHECKSUM_META)]  # fmt: skip
        headers.append((b"content-length", str(length).encode()))
        if reader is None or length == 0:
            await x.start(code, headers)
            await x.body(b"")
            return
        pieces: AsyncGenerator[memoryview, None] = reader.pieces(first, length, ahead=READ_AHEAD)
        await stream_reply(x, receive, pieces, code, headers, self.idle)

    async def _delete_object(self, x: S3Exchange, req: S3Req) -> None:
        record = await self._bucket(req.bucket, req)
        if self.versions.state(record) is not None or "versionId" in req.params:
            return await self.versions.delete(x, req, record)
        await self._delete(f"{req.bucket}/{req.key}")
        await x.whole(204)

    # -- listing -----------------------------------------------------------------------------

    async def _list_objects(self, x: S3Exchange, req: S3Req) -> None:
        record = await self._bucket(req.bucket, req)
        p = req.params
        v2 = p.get("list-type") == "2"
        prefix, delimiter = p.get("prefix", ""), p.get("delimiter", "")
        url = p.get("encoding-type")
        if url not in (None, "url"):
            raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                          ArgumentName="encoding-type", ArgumentValue=url)  # fmt: skip
        try:
            max_keys = int(p.get("max-keys", LIST_MAX))
        except ValueError:
            max_keys = -1
        if max_keys < 0:
            raise S3Error("InvalidArgument", "Provided max-keys not an integer or within "
                          "integer range", ArgumentName="max-keys",
                          ArgumentValue=p.get("max-keys", ""))  # fmt: skip
        max_keys = min(max_keys, LIST_MAX)
        token = p.get("continuation-token")
        if v2 and token is not None:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode()
            except (binascii.Error, ValueError):
                raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                              ArgumentName="continuation-token") from None  # fmt: skip
        else:
            after = p.get("start-after" if v2 else "marker", "")
        keys, prefixes, truncated, last = await self._walk(
            req.bucket, prefix, delimiter, after, max_keys
        )

        owner = record.meta.get(OWNER_META, "")

        def entry(key: str, e: Entry) -> responses.ObjectEntry:
            etag = e.meta.get(ETAG_META) or (
                e.md5.hex() if e.md5 is not None else (e.hash[:16].hex() if e.hash else "")
            )
            who = e.meta.get(OWNER_META, owner)
            return responses.ObjectEntry(key, e.mtime, etag, e.size,
                                         owner=responses.Owner(who, who))  # fmt: skip

        listing = responses.ObjectListing(
            req.bucket, prefix, delimiter or None, max_keys, truncated,
            [entry(k, e) for k, e in keys], common_prefixes=prefixes, encoding_type=url,
            marker=p.get("marker", ""),
            next_marker=last if truncated and delimiter and not v2 else None,
            continuation_token=token if v2 else None,
            next_continuation_token=(
                base64.urlsafe_b64encode(last.encode()).decode() if v2 and truncated else None
            ),
            start_after=p.get("start-after") if v2 else None,
            fetch_owner=p.get("fetch-owner") == "true",
        )  # fmt: skip
        await self._xml(x, responses.list_objects(listing, v2))

    async def _walk(
        self, bucket: str, prefix: str, delimiter: str, after: str, max_keys: int
    ) -> tuple[list[tuple[str, Entry]], list[str], bool, str]:
        """Keys and common prefixes after `after`, in bytewise order, at most `max_keys` of
        them together; whether there are more, and the last one given (where the next page
        starts)."""
        base = bucket + "/"
        keys: list[tuple[str, Entry]] = []
        prefixes: list[str] = []
        start = _after(base, after, prefix, delimiter)
        last = ""
        if max_keys == 0:
            return keys, prefixes, False, last
        while True:
            page = await self.index.list(self.pool, base + prefix, start, LIST_MAX)
            for full, entry in page:
                key = full[len(base) :]
                cp = _common_prefix(key, prefix, delimiter)
                if cp is not None and prefixes and prefixes[-1] == cp:
                    continue
                if len(keys) + len(prefixes) == max_keys:
                    return keys, prefixes, True, last
                if cp is not None:
                    prefixes.append(cp)
                    last = cp
                    nxt = _skip(base + cp)
                    if nxt > full:
                        start = nxt
                        break
                else:
                    keys.append((key, entry))
                    last = key
            else:
                if len(page) < LIST_MAX:
                    return keys, prefixes, False, last
                start = page[-1][0] + "\x00"


async def _drained(receive: Receive) -> bool:
    """Read the rest of a refused body (up to DRAIN_MAX bytes, DRAIN_FOR seconds), so that
    the client, still sending, gets the answer; whether it all came."""
    got = 0
    try:
        async with asyncio.timeout(DRAIN_FOR):
            while got <= DRAIN_MAX:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return False
                got += len(msg.get("body", b""))
                if not msg.get("more_body", False):
                    return True
    except TimeoutError:
        pass
    return False


def _common_prefix(key: str, prefix: str, delimiter: str) -> str | None:
    if not delimiter:
        return None
    at = key.find(delimiter, len(prefix))
    return None if at < 0 else key[: at + len(delimiter)]


def _skip(cp: str) -> str:
    """A start past every key that begins with `cp` (U+10FFFF is the last character)."""
    return cp + "\U0010ffff"


def _after(base: str, after: str, prefix: str, delimiter: str) -> str:
    """The index start (inclusive) of a listing that goes on after `after` (a key, or a
    common prefix given back as the last of a page)."""
    if not after:
        return base
    cp = _common_prefix(after, prefix, delimiter) if after.startswith(prefix) else None
    if cp is not None and cp == after:
        return _skip(base + after)
    return base + after + "\x00"
