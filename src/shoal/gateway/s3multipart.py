"""S3 multipart uploads over the pool, for shoal.gateway.s3.

An upload is a record and its parts, all small objects of the pool beside the buckets':

    .s3/uploads/BUCKET/UPLOADID     the upload: its key, owner, start, the object's metadata
                                    (content headers, x-amz-meta-*) and checksum algorithm
    .s3/parts/UPLOADID/NNNNN        part NNNNN: its segment (the stripes that hold its bytes,
                                    ClusterClient.put_segment), size, MD5 and checksum

A part's bytes are stored as a segment of stripes and no object: completing the upload is one
small write, a composed head (ClusterClient.put_composed) that names the parts' segments in
order under the object's name, so no byte is copied and a reader sees the old object or the
whole new one. The records go after it: the parts' first, the upload's last.

Cleaning up an upload (abort, or abandoned past the expiry) deletes its record first (no
part or completion is taken after that), then each part's segment, unless the object at the
upload's key is made of it (a completion that was cut short before its records went), then
the part's record. Calls on one upload are taken one at a time by this gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shoal.client.stripes import Segment
from shoal.errors import NotFound
from shoal.index import Entry
from shoal.proto.s3 import responses
from shoal.proto.s3.checksums import ALGORITHMS, composite, full_object, multipart_etag
from shoal.proto.s3.errors import S3Error
from shoal.proto.s3.xml import MAX_PARTS, parse_complete

if TYPE_CHECKING:
    from shoal.asgi import Receive
    from shoal.client.cluster import S3Grant
    from shoal.gateway.s3 import S3Exchange, S3Gateway, S3Req
    from shoal.proto.s3.sigv4 import Context

log = logging.getLogger("shoal.s3")

UPLOADS = ".s3/uploads/"  # + bucket + "/" + upload id: an upload's record
PARTS = ".s3/parts/"  # + upload id + "/" + part number (5 digits): a part's record
MIN_PART = 5 << 20  # bytes of every part but the last (S3's EntityTooSmall)
MAX_PART = 5 << 30
EXPIRY = 24 * 3600.0  # seconds after which an upload not completed is cleaned up
OBJECT_META = "o:"  # (upload record) + a metadata name of the object to be
LIST_MAX = 1000


@dataclass(frozen=True)
class Upload:
    bucket: str
    key: str
    upload_id: str
    owner: str
    initiated: float
    meta: dict[str, str]  # the object's, as it will be stored
    algorithm: str | None  # x-amz-checksum-algorithm, lowercase
    checksum_type: str  # COMPOSITE or FULL_OBJECT

    @property
    def name(self) -> str:
        return f"{UPLOADS}{self.bucket}/{self.upload_id}"

    @classmethod
    def of(cls, bucket: str, upload_id: str, meta: dict[str, str], mtime: float) -> Upload:
        obj = {k[len(OBJECT_META) :]: v for k, v in meta.items() if k.startswith(OBJECT_META)}
        return cls(bucket, meta.get("key", ""), upload_id, meta.get("owner", ""),
                   float(meta.get("initiated") or mtime), obj, meta.get("algorithm") or None,
                   meta.get("checksum-type", "COMPOSITE"))  # fmt: skip

    def record(self) -> dict[str, str]:
        out = {"key": self.key, "owner": self.owner, "initiated": f"{self.initiated:.3f}",
               "checksum-type": self.checksum_type}  # fmt: skip
        if self.algorithm:
            out["algorithm"] = self.algorithm
        out.update({OBJECT_META + k: v for k, v in self.meta.items()})
        return out


@dataclass(frozen=True)
class Part:
    number: int
    segment: Segment
    md5: str  # hex
    checksum: tuple[str, str] | None  # (algorithm, base64)
    mtime: float

    def record(self) -> dict[str, str]:
        seg = self.segment
        out = {"base": seg.base, "wid": seg.wid, "size": str(seg.size),
               "stripe": str(seg.stripe), "hash": seg.hash.hex(), "md5": self.md5}  # fmt: skip
        if self.checksum is not None:
            out["checksum"] = f"{self.checksum[0]}:{self.checksum[1]}"
        return out

    @classmethod
    def of(cls, number: int, meta: dict[str, str], mtime: float) -> Part:
        seg = Segment(meta["base"], meta["wid"], int(meta["size"]), int(meta["stripe"]),
                      bytes.fromhex(meta["hash"]))  # fmt: skip
        checksum = None
        if "checksum" in meta:
            algorithm, _, value = meta["checksum"].partition(":")
            checksum = (algorithm, value)
        return cls(number, seg, meta["md5"], checksum, mtime)


def _part_number(value: str | None) -> int:
    try:
        n = int(value or "")
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_PARTS:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, "
                      "inclusive", ArgumentName="partNumber",
                      ArgumentValue=value or "")  # fmt: skip
    return n


def _non_negative(req: S3Req, name: str, default: int) -> int:
    value = req.params.get(name)
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise S3Error("InvalidArgument", f"Provided {name} not an integer or within integer "
                      "range", ArgumentName=name, ArgumentValue=value)  # fmt: skip
    return n


class Multipart:
    """The multipart calls of `gw`'s pool."""

    def __init__(self, gw: S3Gateway, *, min_part: int = MIN_PART, expiry: float = EXPIRY) -> None:
        self.gw, self.min_part, self.expiry = gw, min_part, expiry
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # upload id: (lock, users)
        self._sweeper: asyncio.Task[None] | None = None

    # -- records ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, upload_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(upload_id) or (asyncio.Lock(), 0)
        self._locks[upload_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[upload_id]
            if users == 1:
                del self._locks[upload_id]
            else:
                self._locks[upload_id] = (lock, users - 1)

    async def _put_record(self, name: str, meta: dict[str, str]) -> Entry:
        stored = await self.gw.client.put(self.gw.pool, name, b"", meta=meta)
        entry = Entry(0, stored.hash, stored.version or 0, time.time(), meta)
        await self.gw.index.put(self.gw.pool, name, entry)
        return entry

    async def _upload(self, req: S3Req) -> Upload:
        upload_id = req.params.get("uploadId", "")
        if not upload_id or "/" in upload_id:
            raise S3Error("NoSuchUpload", UploadId=upload_id)
        entry = await self.gw.index.get(self.gw.pool, f"{UPLOADS}{req.bucket}/{upload_id}")
        if entry is None:
            raise S3Error("NoSuchUpload", UploadId=upload_id)
        upload = Upload.of(req.bucket, upload_id, entry.meta, entry.mtime)
        if upload.key != req.key:
            raise S3Error("NoSuchUpload", UploadId=upload_id)
        return upload

    async def _parts(self, upload_id: str, after: int = 0, limit: int | None = None) -> list[Part]:
        prefix = f"{PARTS}{upload_id}/"
        out: list[Part] = []
        start = f"{prefix}{after + 1:05d}" if after else ""
        while limit is None or len(out) < limit:
            want = LIST_MAX if limit is None else min(LIST_MAX, limit - len(out))
            page = await self.gw.index.list(self.gw.pool, prefix, start, want)
            out += [Part.of(int(k[len(prefix) :]), e.meta, e.mtime) for k, e in page]
            if len(page) < want:
                break
            start = page[-1][0] + "\x00"
        return out

    # -- the calls -------------------------------------------------------------------------

    async def create(self, x: S3Exchange, req: S3Req, grant: S3Grant) -> None:
        """CreateMultipartUpload (POST ?uploads)."""
        from shoal.gateway.s3 import OWNER_META

        self.start_sweeping()
        await self.gw._bucket(req.bucket, req)
        meta = self.gw._object_meta(req)
        meta[OWNER_META] = grant.access_key
        algorithm = req.hmap.get("x-amz-checksum-algorithm", "").lower() or None
        if algorithm is not None and algorithm not in ALGORITHMS:
            raise S3Error("InvalidRequest", "Checksum algorithm provided is unsupported. Please "
                          "try again with any of the valid types: [CRC32, CRC32C, CRC64NVME, "
                          "SHA1, SHA256]")  # fmt: skip
        kind = req.hmap.get("x-amz-checksum-type", "").upper()
        if kind not in ("", "COMPOSITE", "FULL_OBJECT"):
            raise S3Error("InvalidRequest", f"Value for x-amz-checksum-type header is invalid: "
                          f"{kind}")  # fmt: skip
        if not kind:
            kind = "FULL_OBJECT" if algorithm == "crc64nvme" else "COMPOSITE"
        if kind == "FULL_OBJECT" and algorithm is not None and algorithm.startswith("sha"):
            raise S3Error("InvalidRequest", f"The FULL_OBJECT checksum type cannot be used "
                          f"with the {algorithm} checksum algorithm.")  # fmt: skip
        upload_id = f"{int(time.time() * 1000):011x}" + os.urandom(12).hex()
        upload = Upload(req.bucket, req.key, upload_id, grant.access_key, time.time(), meta,
                        algorithm, kind)  # fmt: skip
        await self._put_record(upload.name, upload.record())
        headers = [(b"content-type", b"application/xml")]
        if algorithm is not None:
            headers += [(b"x-amz-checksum-algorithm", algorithm.upper().encode()),
                        (b"x-amz-checksum-type", kind.encode())]  # fmt: skip
        await x.whole(200, responses.initiate_multipart(req.bucket, req.key, upload_id), headers)

    async def upload_part(
        self, x: S3Exchange, receive: Receive, req: S3Req, ctx: Context, grant: S3Grant
    ) -> None:
        """UploadPart (PUT ?partNumber&uploadId), or UploadPartCopy with x-amz-copy-source."""
        number = _part_number(req.params.get("partNumber"))
        upload = await self._upload(req)
        base = f"{PARTS}{upload.upload_id}/{number:05d}"
        copied: float | None = None
        if "x-amz-copy-source" in req.hmap:
            source = await self.gw.copy_source(req, grant, ranged=True)
            md5 = source.md5()
            seg = await self.gw.client.put_segment(self.gw.pool, base, source.length,
                                                   source.pieces(md5))  # fmt: skip
            part = Part(number, seg, md5.hexdigest(), None, time.time())
            copied = source.info.mtime
        else:
            body = self.gw.incoming(x, receive, req, ctx, limit=MAX_PART)
            try:
                seg = await self.gw.client.put_segment(self.gw.pool, base, body.size,
                                                       body.chunks())  # fmt: skip
            except ValueError as exc:
                raise S3Error("IncompleteBody", str(exc)) from None
            part = Part(number, seg, body.digests.md5.hex(), body.checksum, time.time())
        async with self._one_at_a_time(upload.upload_id):
            try:
                await self._upload(req)  # (not aborted or completed meanwhile)
                name = f"{PARTS}{upload.upload_id}/{number:05d}"
                old = await self.gw.index.get(self.gw.pool, name)
                await self._put_record(name, part.record())
            except BaseException:
                await self.gw.client.drop_segment(self.gw.pool, seg)
                raise
        if old is not None:  # the part sent again: the first one's bytes go
            with contextlib.suppress(KeyError, ValueError):
                replaced = Part.of(number, old.meta, old.mtime).segment
                await self.gw.client.drop_segment(self.gw.pool, replaced)
        x.nbytes = seg.size
        if copied is not None:
            body_xml = responses.copy_part(part.md5, part.mtime)
            await x.whole(200, body_xml, [(b"content-type", b"application/xml")])
            return
        headers = [(b"etag", f'"{part.md5}"'.encode())]
        if part.checksum is not None:
            headers.append(
                (f"x-amz-checksum-{part.checksum[0]}".encode(), part.checksum[1].encode())
            )
        await x.whole(200, b"", headers)

    async def complete(
        self, x: S3Exchange, receive: Receive, req: S3Req, ctx: Context, grant: S3Grant
    ) -> None:
        """CompleteMultipartUpload (POST ?uploadId): the object made of the parts named."""
        from shoal.gateway.s3 import CHECKSUM_META, ETAG_META

        upload = await self._upload(req)
        asked = parse_complete(await self.gw._small_body(x, receive, req, ctx, limit=4 << 20))
        async with self._one_at_a_time(upload.upload_id):
            upload = await self._upload(req)
            have = {p.number: p for p in await self._parts(upload.upload_id)}
            parts: list[Part] = []
            for i, want in enumerate(asked):
                part = have.get(want.part_number)
                if part is None or part.md5 != want.etag.lower() or any(
                    part.checksum is None or part.checksum[0] != alg or part.checksum[1] != v
                    for alg, v in want.checksums.items()
                ):  # fmt: skip
                    raise S3Error("InvalidPart", UploadId=upload.upload_id,
                                  PartNumber=str(want.part_number), ETag=want.etag)  # fmt: skip
                if i < len(asked) - 1 and part.segment.size < self.min_part:
                    raise S3Error("EntityTooSmall", ProposedSize=str(part.segment.size),
                                  MinSizeAllowed=str(self.min_part),
                                  PartNumber=str(part.number), ETag=part.md5)  # fmt: skip
                parts.append(part)
            name = f"{req.bucket}/{req.key}"
            await self.gw._check_write_conditions(req, name)
            etag = multipart_etag([bytes.fromhex(p.md5) for p in parts])
            meta = {**upload.meta, ETAG_META: etag}
            checksums: dict[str, str] = {}
            algorithm = upload.algorithm
            if algorithm is not None and all(
                p.checksum is not None and p.checksum[0] == algorithm for p in parts
            ):
                value = self._checksum(upload, algorithm, parts)
                meta[CHECKSUM_META + algorithm] = value
                meta["x-amz-checksum-type"] = upload.checksum_type
                checksums[algorithm] = value
            segs = [p.segment for p in parts]
            record = await self.gw._bucket(req.bucket, req)
            async with self.gw.versions.writing(record, req.bucket, req.key) as w:
                meta.update(w.meta)
                stored = await self.gw.client.put_composed(self.gw.pool, name, segs, meta=meta,
                                                           keep_prev=w.keep_prev)  # fmt: skip
            entry = Entry(stored.size, stored.hash, stored.version or 0, time.time(), meta)
            try:
                await self.gw.listed(req, name, entry)
            finally:
                await self._forget(upload, keep={p.number for p in parts}, dropped=have)
            if w.version_id is not None:
                x.on_success.append((b"x-amz-version-id", w.version_id.encode()))
        location = f"/{req.bucket}/{req.key}"
        body = responses.complete_multipart(
            location, req.bucket, req.key, etag, checksums,
            upload.checksum_type if checksums else None,
        )  # fmt: skip
        await self.gw._xml(x, body)

    @staticmethod
    def _checksum(upload: Upload, algorithm: str, parts: list[Part]) -> str:
        import base64

        digests = [base64.b64decode(p.checksum[1]) for p in parts if p.checksum is not None]
        if upload.checksum_type == "FULL_OBJECT":
            return full_object(
                algorithm, [(d, p.segment.size) for d, p in zip(digests, parts, strict=True)]
            )
        return composite(algorithm, digests)

    async def _forget(self, upload: Upload, keep: set[int], dropped: dict[int, Part]) -> None:
        """After a completion: the records go, and the segments of parts sent but not named
        (`dropped` less `keep`), which nothing is made of."""
        for number, part in dropped.items():
            if number not in keep:
                await self.gw.client.drop_segment(self.gw.pool, part.segment)
            await self._delete_record(f"{PARTS}{upload.upload_id}/{number:05d}")
        await self._delete_record(upload.name)

    async def _delete_record(self, name: str) -> None:
        await self.gw._delete(name)

    async def abort(self, x: S3Exchange, req: S3Req) -> None:
        """AbortMultipartUpload (DELETE ?uploadId)."""
        upload = await self._upload(req)
        async with self._one_at_a_time(upload.upload_id):
            upload = await self._upload(req)
            await self._clean(upload)
        await x.whole(204)

    async def _clean(self, upload: Upload) -> None:
        """An upload ended without a completion: its record first, then its parts (their
        segments unless the object at its key is made of them)."""
        await self._delete_record(upload.name)
        await self._clean_parts(upload.upload_id, f"{upload.bucket}/{upload.key}")

    async def _clean_parts(self, upload_id: str, target: str) -> None:
        used: set[tuple[str, str]] = set()
        try:
            head = await self.gw.client.head_of(self.gw.pool, target)
        except NotFound:
            head = None
        if head is not None:
            used = {(s.base, s.wid) for s in head.segments(target)}
        for part in await self._parts(upload_id):
            seg = part.segment
            if (seg.base, seg.wid) not in used:
                await self.gw.client.drop_segment(self.gw.pool, seg)
            await self._delete_record(f"{PARTS}{upload_id}/{part.number:05d}")

    async def list_parts(self, x: S3Exchange, req: S3Req) -> None:
        """ListParts (GET ?uploadId)."""
        upload = await self._upload(req)
        max_parts = min(_non_negative(req, "max-parts", LIST_MAX), LIST_MAX)
        marker = _non_negative(req, "part-number-marker", 0)
        parts = await self._parts(upload.upload_id, marker, max_parts + 1)
        truncated = len(parts) > max_parts
        parts = parts[:max_parts]
        owner = responses.Owner(upload.owner, upload.owner)
        entries = [
            responses.PartEntry(
                p.number, p.mtime, p.md5, p.segment.size, dict([p.checksum]) if p.checksum else {}
            )
            for p in parts
        ]
        listing = responses.PartListing(
            req.bucket, req.key, upload.upload_id, owner, entries, marker,
            parts[-1].number if parts else None, max_parts, truncated,
        )  # fmt: skip
        await self.gw._xml(x, responses.list_parts(listing))

    async def list_uploads(self, x: S3Exchange, req: S3Req) -> None:
        """ListMultipartUploads (GET ?uploads): by key, then by start, paged by key-marker and
        upload-id-marker, with prefix and delimiter."""
        from shoal.gateway.s3 import _common_prefix

        await self.gw._bucket(req.bucket, req)
        p = req.params
        prefix, delimiter = p.get("prefix", ""), p.get("delimiter", "")
        max_uploads = min(_non_negative(req, "max-uploads", LIST_MAX), LIST_MAX)
        key_marker, id_marker = p.get("key-marker", ""), p.get("upload-id-marker", "")
        url = p.get("encoding-type")
        if url not in (None, "url"):
            raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                          ArgumentName="encoding-type", ArgumentValue=url)  # fmt: skip
        uploads = [u for u in await self._all_uploads(req.bucket) if u.key.startswith(prefix)]
        uploads.sort(key=lambda u: (u.key.encode(), u.initiated, u.upload_id))
        if key_marker:
            uploads = [u for u in uploads if u.key > key_marker or (
                u.key == key_marker and id_marker and u.upload_id > id_marker)]  # fmt: skip
        entries: list[responses.UploadEntry] = []
        prefixes: list[str] = []
        truncated = False
        last: tuple[str, str] = ("", "")
        for u in uploads:
            cp = _common_prefix(u.key, prefix, delimiter)
            if cp is not None and prefixes and prefixes[-1] == cp:
                continue
            if len(entries) + len(prefixes) == max_uploads:
                truncated = True
                break
            if cp is not None:
                prefixes.append(cp)
                last = (cp, "")
            else:
                owner = responses.Owner(u.owner, u.owner)
                entries.append(responses.UploadEntry(u.key, u.upload_id, u.initiated, owner))
                last = (u.key, u.upload_id)
        listing = responses.UploadListing(
            req.bucket, entries, prefixes, prefix, delimiter or None, key_marker, id_marker,
            last[0] if truncated else None, last[1] if truncated else None, max_uploads,
            truncated, url,
        )  # fmt: skip
        await self.gw._xml(x, responses.list_uploads(listing))

    async def _all_uploads(self, bucket: str) -> list[Upload]:
        prefix = f"{UPLOADS}{bucket}/"
        out: list[Upload] = []
        start = ""
        while True:
            page = await self.gw.index.list(self.gw.pool, prefix, start, LIST_MAX)
            out += [Upload.of(bucket, k[len(prefix) :], e.meta, e.mtime) for k, e in page]
            if len(page) < LIST_MAX:
                return out
            start = page[-1][0] + "\x00"

    async def abort_all(self, bucket: str) -> None:
        """Every upload under way in `bucket` cleaned up (the bucket is being deleted)."""
        for upload in await self._all_uploads(bucket):
            async with self._one_at_a_time(upload.upload_id):
                await self._clean(upload)

    # -- the cleaner -----------------------------------------------------------------------

    def start_sweeping(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep_forever(self) -> None:
        every = min(max(self.expiry / 4, 1.0), 3600.0)
        while True:
            await asyncio.sleep(every)
            try:
                await self.sweep()
            except Exception as exc:  # (the next round tries again)
                log.warning("cleaning up abandoned multipart uploads: %s", exc)

    async def sweep(self, now: float | None = None) -> int:
        """Clean up every upload started more than `expiry` seconds ago; how many."""
        now = time.time() if now is None else now
        cleaned = 0
        start = ""
        while True:
            page = await self.gw.index.list(self.gw.pool, UPLOADS, start, LIST_MAX)
            for name, entry in page:
                bucket, _, upload_id = name[len(UPLOADS) :].rpartition("/")
                upload = Upload.of(bucket, upload_id, entry.meta, entry.mtime)
                if upload.initiated + self.expiry > now:
                    continue
                async with self._one_at_a_time(upload_id):
                    if await self.gw.index.get(self.gw.pool, name) is None:
                        continue
                    when = time.ctime(upload.initiated)
                    log.info("multipart upload %s of %s/%s abandoned since %s: cleaned up",
                             upload_id, bucket, upload.key, when)  # fmt: skip
                    await self._clean(upload)
                    cleaned += 1
            if len(page) < LIST_MAX:
                break
            start = page[-1][0] + "\x00"
        return cleaned


__all__ = ["EXPIRY", "MIN_PART", "Multipart"]
