"""Browser uploads: POST /BUCKET with a multipart/form-data form and a signed policy
("Browser-Based Uploads Using POST"), for shoal.gateway.s3.

The form is parsed as it streams in (python-multipart): its fields, which come first, are
gathered (at most MAX_FIELDS bytes of them); the policy, its conditions and its signature
are checked (shoal.proto.s3.postpolicy; SigV4 with the signing key the master gives, SigV2
with the signature it makes) before a byte of the file is stored; the upload is then
authorized as the PutObject of its key by the form's key (owner, ACL, policy, pool rights,
as any PUT), or, for a form without a policy, as an anonymous one. The file streams into
the pool with bounded memory, its size checked against content-length-range before the
object is committed (a refusal stores nothing), and its index entry comes last. Fields
after the file are ignored, as S3 does.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit, urlunsplit

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError

from shoal.client.cluster import S3Grant
from shoal.gateway.common import receive_body
from shoal.gateway.s3keys import UnknownAccessKey
from shoal.index import MD5_META, Entry
from shoal.proto.s3 import postpolicy
from shoal.proto.s3.errors import S3Error
from shoal.proto.s3.errors import escape as escape_text
from shoal.proto.s3.names import check_key

if TYPE_CHECKING:
    from shoal.asgi import Receive
    from shoal.gateway.s3 import S3Exchange, S3Gateway, S3Req

MAX_FIELDS = 64 << 10  # bytes of the form's fields (its policy included), before the file
# form fields that become the object's headers (as a PUT's would be sent)
AS_HEADERS = (
    "content-type", "content-encoding", "content-disposition", "content-language",
    "cache-control", "expires", "x-amz-website-redirect-location",
)  # fmt: skip


def _malformed(why: str) -> S3Error:
    return S3Error("MalformedPOSTRequest", f"The body of your POST request is not well-formed "
                   f"multipart/form-data. ({why})")  # fmt: skip


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a multipart/form-data Content-Type, or None if it is not one."""
    kind, _, rest = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    for param in rest.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"').encode("latin-1")
    return None


def _disposition(value: str) -> tuple[str, str | None]:
    """(name, filename) of a part's Content-Disposition."""
    name, filename = "", None
    for param in value.split(";")[1:]:
        k, _, v = param.strip().partition("=")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] == '"':
            v = v[1:-1]
        if k.strip().lower() == "name":
            name = v
        elif k.strip().lower() == "filename":
            filename = v
    return name, filename


class _Form:
    """The form as it is parsed: its fields, then the file's bytes as they come."""

    def __init__(self, boundary: bytes) -> None:
        self.fields: dict[str, str] = {}
        self.filename: str | None = None  # set once the file's part has begun
        self.file_type: str | None = None
        self.file_done = False
        self.data: list[bytes] = []  # the file's bytes parsed and not yet taken
        self._headers: dict[str, str] = {}
        self._field: str | None = None
        self._value = bytearray()
        self._name = bytearray()
        self._header_value = bytearray()
        self._size = 0
        self._in_file = False
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._name.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        })  # fmt: skip

    def _part_begin(self) -> None:
        self._headers, self._field, self._value = {}, None, bytearray()

    def _header_end(self) -> None:
        name = self._name.decode("latin-1").strip().lower()
        self._headers[name] = self._header_value.decode("utf-8", "replace").strip()
        self._name, self._header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        if self.filename is not None:  # (after the file: ignored)
            self._field = None
            return
        name, filename = _disposition(self._headers.get("content-disposition", ""))
        if not name:
            raise _malformed("a part without a name")
        if name.lower() == "file":
            self.filename = filename or ""
            self.file_type = self._headers.get("content-type")
            self._in_file = True
        else:
            self._field = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.data.append(bytes(data[start:end]))
        elif self._field is not None:
            self._size += end - start
            if self._size > MAX_FIELDS:
                raise S3Error("MaxPostPreDataLengthExceededError", "Your POST request fields "
                              "preceding the upload file were too large.", 400)  # fmt: skip
            self._value += data[start:end]

    def _part_end(self) -> None:
        if self._in_file:
            self._in_file, self.file_done = False, True
        elif self._field is not None:
            self.fields[self._field] = self._value.decode("utf-8", "replace")
            self._field = None

    def feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except MultipartParseError as exc:
            raise _malformed(str(exc)) from None


class PostUploads:
    """The browser uploads of `gw`'s pool."""

    def __init__(self, gw: S3Gateway) -> None:
        self.gw = gw

    async def upload(self, x: S3Exchange, receive: Receive, req: S3Req) -> None:
        from shoal.gateway.s3 import CHECKSUM_META, OWNER_META, S3Req

        boundary = boundary_of(req.hmap.get("content-type", ""))
        if boundary is None:
            raise S3Error("PreconditionFailed", "Bucket POST must be of the enclosure-type "
                          "multipart/form-data", Condition="Bucket POST must be of the "
                          "enclosure-type multipart/form-data")  # fmt: skip
        length = req.hmap.get("content-length")
        form = _Form(boundary)
        x.reading = True
        chunks = aiter(receive_body(x, receive, int(length) if length and length.isdigit()
                                    else None, self.gw.idle))  # fmt: skip
        while form.filename is None:  # the fields, up to the file
            chunk = await anext(chunks, None)
            if chunk is None:
                raise S3Error("InvalidArgument", "POST requires exactly one file upload per "
                              "request.", ArgumentName="file", ArgumentValue="0")  # fmt: skip
            form.feed(chunk)
        await self.gw._bucket(req.bucket, req)
        claim = postpolicy.prepare(form.fields, req.bucket, now=time.time(),
                                   filename=form.filename)  # fmt: skip
        grant = await self._signer(claim)
        upload = claim.upload
        check_key(upload.key)
        fields = dict(upload.fields)
        if form.file_type and "content-type" not in fields:
            fields["content-type"] = form.file_type
        headers = [(k, v) for k, v in fields.items()
                   if k in AS_HEADERS or k.startswith("x-amz-meta-")]  # fmt: skip
        if "acl" in fields:
            headers.append(("x-amz-acl", fields["acl"]))
        if "tagging" in fields:
            headers.append(("x-amz-tagging", _tagging(fields["tagging"])))
        put = S3Req("PUT", "/" + req.bucket + "/" + upload.key, "", headers, dict(headers), {},
                    req.bucket, upload.key)  # fmt: skip
        grant = await self.gw.access.authorize(x, put, grant)
        grant.require(self.gw.pool, "w")
        meta = self.gw._object_meta(put)
        meta[OWNER_META] = grant.access_key
        name = f"{req.bucket}/{upload.key}"
        md5 = hashlib.md5(usedforsecurity=False)
        size = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal size
            while True:
                for piece in form.data:
                    md5.update(piece)
                    size += len(piece)
                    yield piece
                form.data.clear()
                if form.file_done:
                    break
                chunk = await anext(chunks, None)
                if chunk is None:
                    raise _malformed("the form ends inside the file")
                form.feed(chunk)
            async for chunk in chunks:  # (what follows the file: read, ignored)
                form.feed(chunk)
            upload.check_size(size)  # (raises: nothing is stored)

        try:
            stored = await self.gw.client.put_stream(
                self.gw.pool, name, None, body(),
                meta=lambda: {**meta, MD5_META: md5.hexdigest()},
            )  # fmt: skip
        except ValueError as exc:
            raise S3Error("IncompleteBody", str(exc)) from None
        x.unread = False
        kept = {k: v for k, v in meta.items() if not k.startswith(CHECKSUM_META)}
        entry = Entry(stored.size, stored.hash, stored.version or 0, time.time(), kept,
                      md5=md5.digest())  # fmt: skip
        await self.gw.listed(put, name, entry)
        x.nbytes = stored.size
        await self._answer(x, req, upload.key, md5.hexdigest(), fields)

    async def _signer(self, claim: postpolicy.PostClaim) -> S3Grant:
        """The grant of the form's key (its signature checked), or an anonymous one."""
        if not claim.signed:
            return S3Grant("", {}, b"")
        access = claim.upload.access_key or ""
        try:
            if claim.scope is not None:
                _, date, region, _ = claim.scope
                grant = await self.gw.keys.signing_key(access, date, region)
                claim.verify_v4(grant.value)
            else:
                grant = await self.gw.keys.sign_v2(access, claim.policy)
                claim.verify_v2(grant.value)
        except UnknownAccessKey:
            raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=access) from None
        return grant

    async def _answer(
        self, x: S3Exchange, req: S3Req, key: str, etag: str, fields: dict[str, str]
    ) -> None:
        quoted = f'"{etag}"'.encode()
        redirect = fields.get("success_action_redirect") or fields.get("redirect")
        if redirect:
            parts = urlsplit(redirect)
            if parts.scheme in ("http", "https"):
                extra = urlencode({"bucket": req.bucket, "key": key, "etag": f'"{etag}"'})
                query = f"{parts.query}&{extra}" if parts.query else extra
                target = urlunsplit(parts._replace(query=query))
                await x.whole(303, b"", [(b"location", target.encode()), (b"etag", quoted)])
                return
        status = fields.get("success_action_status", "204")
        location = f"/{req.bucket}/{key}".encode()
        headers = [(b"etag", quoted), (b"location", location)]
        if status == "201":
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<PostResponse>'
                f"<Location>/{escape_text(req.bucket)}/{escape_text(key)}</Location>"
                f"<Bucket>{escape_text(req.bucket)}</Bucket><Key>{escape_text(key)}</Key>"
                f"<ETag>&quot;{etag}&quot;</ETag></PostResponse>"
            ).encode()
            await x.whole(201, body, [*headers, (b"content-type", b"application/xml")])
        else:
            await x.whole(200 if status == "200" else 204, b"", headers)


def _tagging(xml_text: str) -> str:
    """A form's tagging field (Tagging XML) as x-amz-tagging's query form."""
    from shoal.proto.s3.xml import parse_tagging

    tags = parse_tagging(xml_text.encode())
    return urlencode([(t.key, t.value) for t in tags])


__all__ = ["PostUploads", "boundary_of"]
