"""S3 versioning over the pool, for shoal.gateway.s3.

A bucket's versioning state is in its record's metadata ("versioning": Enabled or
Suspended; none if it was never set). The current version of key K is always the pool's
object B/K (so the HTTP gateway and listings see it as before), its version id in its
metadata (VERSION_META; none: "null"). Every other version, and every delete marker, is an
object of its own:

    .s3/versions/B/K/VID        a noncurrent version (its bytes, metadata and the time it
                                was written, MTIME_META) or a delete marker (MARKER_META)

A write over a versioned key first keeps the current version there: a striped object by a
head naming the same stripes (no data moves; the write then leaves those stripes alone,
keep_prev), an object of one stripe by a copy (at most 4 MiB). If the write fails, the kept
copy is taken back. With versioning Enabled each write gets a new id; Suspended, the write is
the "null" version and replaces the one there was. A delete without a versionId leaves a
delete marker (the current version kept as noncurrent); with one it deletes that version for
good, and deleting the current version (or the newest delete marker) makes the newest one
left current again. Writes and deletes of one key are taken one at a time by this gateway
(two gateways writing one versioned key at the same moment may lose a noncurrent version).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shoal.client.client import ObjectInfo
from shoal.errors import NotFound
from shoal.index import Entry, md5_of
from shoal.proto.s3 import responses
from shoal.proto.s3.errors import S3Error
from shoal.proto.s3.xml import parse_versioning

if TYPE_CHECKING:
    from shoal.asgi import Receive
    from shoal.gateway.s3 import S3Exchange, S3Gateway, S3Req
    from shoal.proto.s3.sigv4 import Context

VERSIONS = ".s3/versions/"  # + bucket/key/vid: a noncurrent version or a delete marker
VERSION_META = "s3-version-id"
MTIME_META = "s3-mtime"  # when a version was written (a kept copy's own mtime is later)
MARKER_META = "s3-delete-marker"
STATE_META = "versioning"  # (bucket record) Enabled or Suspended
LIST_MAX = 1000
_VID = re.compile(r"[0-9a-f]{24}")


def new_version_id() -> str:
    return f"{time.time_ns() // 1000:014x}{os.urandom(5).hex()}"


def check_version_id(vid: str) -> str:
    """`vid` if it is "null" or an id this gateway makes (InvalidArgument otherwise, as S3
    answers a malformed one)."""
    if vid != "null" and not _VID.fullmatch(vid):
        raise S3Error("InvalidArgument", "Invalid version id specified",
                      ArgumentName="versionId", ArgumentValue=vid)  # fmt: skip
    return vid


@dataclass
class Write:
    """A write of a key, as versioning shapes it (Versions.writing): the metadata to add to
    the new version, whether the old one's stripes are left to a kept copy, and the id."""

    meta: dict[str, str] = field(default_factory=dict)
    keep_prev: bool = False
    version_id: str | None = None  # None: the bucket was never versioned
    done: bool = False


@dataclass(frozen=True)
class Version:
    key: str
    version_id: str
    mtime: float
    entry: Entry
    current: bool  # the object B/K itself
    marker: bool


class Versions:
    def __init__(self, gw: S3Gateway) -> None:
        self.gw = gw
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, name: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(name) or (asyncio.Lock(), 0)
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users == 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)

    @staticmethod
    def state(record: Entry) -> str | None:
        return record.meta.get(STATE_META) or None

    # -- the bucket's configuration ----------------------------------------------------------

    async def get_config(self, x: S3Exchange, req: S3Req) -> None:
        record = await self.gw._bucket(req.bucket, req)
        await self.gw._xml(x, responses.versioning(self.state(record)))

    async def put_config(self, x: S3Exchange, receive: Receive, req: S3Req, ctx: Context) -> None:
        from shoal.gateway.s3 import BUCKETS

        record = await self.gw._bucket(req.bucket, req)
        wanted = parse_versioning(await self.gw._small_body(x, receive, req, ctx))
        if wanted.mfa_delete == "Enabled":
            raise S3Error("NotImplemented", "MFA delete is not supported")
        if wanted.status is not None and wanted.status != self.state(record):
            meta = {**record.meta, STATE_META: wanted.status}
            name = BUCKETS + req.bucket
            stored = await self.gw.client.put(self.gw.pool, name, b"", meta=meta)
            entry = Entry(0, stored.hash, stored.version or 0, record.mtime, meta)
            await self.gw.listed(req, name, entry)
        await x.whole(200)

    # -- writes ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def writing(self, record: Entry, bucket: str, key: str) -> AsyncIterator[Write]:
        """Around a write of `key`: the current version kept first when versioning asks for
        it (and taken back if the write fails: the body raises out of here)."""
        state = self.state(record)
        if state is None:
            yield Write()
            return
        name = f"{bucket}/{key}"
        async with self._one_at_a_time(name):
            vid = new_version_id() if state == "Enabled" else "null"
            w = Write({VERSION_META: vid, MTIME_META: f"{time.time():.6f}"}, False, vid)
            current = await self._stat(name)
            kept: str | None = None
            if current is not None and (
                state == "Enabled" or current.meta.get(VERSION_META, "null") != "null"
            ):
                kept = await self._keep(bucket, key, name, current)
                w.keep_prev = True
            if state == "Suspended":
                await self._drop(bucket, key, "null")  # (a noncurrent null version goes)
            try:
                yield w
            except BaseException:
                if kept is not None:  # the current one is still current: its copy goes
                    await self._forget(kept, keep_data=w.keep_prev)
                raise

    async def _stat(self, name: str) -> ObjectInfo | None:
        try:
            return await self.gw.client.stat(self.gw.pool, name)
        except NotFound:
            return None

    async def _keep(self, bucket: str, key: str, name: str, info: ObjectInfo) -> str:
        """`name`, the current version, kept as noncurrent; the kept copy's name."""
        vid = info.meta.get(VERSION_META, "null")
        vname = f"{VERSIONS}{bucket}/{key}/{vid}"
        meta = {**info.meta, MTIME_META: info.meta.get(MTIME_META) or f"{info.mtime:.6f}"}
        meta.setdefault(VERSION_META, vid)
        client, pool = self.gw.client, self.gw.pool
        head = await client.head_of(pool, name)
        if head is None:
            stored = await client.put(pool, vname, await client.get(pool, name), meta=meta)
        else:
            stored = await client.put_composed(pool, vname, head.segments(name), meta=meta)
        entry = Entry(info.size, info.hash, stored.version or 0, time.time(), meta,
                      md5=md5_of(meta))  # fmt: skip
        await self.gw.index.put(pool, vname, entry)
        return vname

    async def _forget(self, vname: str, keep_data: bool) -> None:
        """A version's record deleted (its stripes too, unless another head names them)."""
        hidden = await self.gw.index.hide(self.gw.pool, vname)
        try:
            version = await self.gw.client.delete(self.gw.pool, vname, keep_prev=keep_data)
        except NotFound:
            version = hidden.version if hidden is not None else None
        if version is not None:
            await self.gw.index.delete(self.gw.pool, vname, version)

    async def _drop(self, bucket: str, key: str, vid: str) -> bool:
        vname = f"{VERSIONS}{bucket}/{key}/{vid}"
        if await self.gw.index.get(self.gw.pool, vname) is None:
            return False
        await self._forget(vname, keep_data=False)
        return True

    # -- deletes -----------------------------------------------------------------------------

    async def delete(self, x: S3Exchange, req: S3Req, record: Entry) -> None:
        """DeleteObject in a bucket that is or was versioned, or with a versionId."""
        deleted = await self.delete_key(req.bucket, req.key, req.params.get("versionId"),
                                        record)  # fmt: skip
        headers = []
        vid = deleted.delete_marker_version_id or deleted.version_id
        if vid is not None:
            headers.append((b"x-amz-version-id", vid.encode()))
        if deleted.delete_marker:
            headers.append((b"x-amz-delete-marker", b"true"))
        await x.whole(204, b"", headers)

    async def delete_key(
        self, bucket: str, key: str, vid: str | None, record: Entry
    ) -> responses.Deleted:
        name = f"{bucket}/{key}"
        state = self.state(record)
        if vid is not None:
            check_version_id(vid)
        async with self._one_at_a_time(name):
            if vid is None:
                if state is None:
                    await self.gw._delete(name)
                    return responses.Deleted(key)
                return await self._mark(bucket, key, name, state)
            current = await self._stat(name)
            if current is not None and current.meta.get(VERSION_META, "null") == vid:
                await self.gw._delete(name)
                await self._promote(bucket, key, name)
                return responses.Deleted(key, vid)
            vname = f"{VERSIONS}{bucket}/{key}/{vid}"
            entry = await self.gw.index.get(self.gw.pool, vname)
            if entry is None:
                return responses.Deleted(key, vid)  # (as S3: nothing there, nothing to do)
            marker = MARKER_META in entry.meta
            await self._forget(vname, keep_data=False)
            if marker and current is None:  # the newest marker gone: the next one is current
                await self._promote(bucket, key, name)
            return responses.Deleted(key, vid, marker, vid if marker else None)

    async def _mark(self, bucket: str, key: str, name: str, state: str) -> responses.Deleted:
        """A delete marker over `key` (its current version kept as noncurrent first)."""
        current = await self._stat(name)
        vid = new_version_id() if state == "Enabled" else "null"
        keep = False
        if current is not None and (
            state == "Enabled" or current.meta.get(VERSION_META, "null") != "null"
        ):
            await self._keep(bucket, key, name, current)
            keep = True
        if state == "Suspended":
            await self._drop(bucket, key, "null")
        if current is not None:
            hidden = await self.gw.index.hide(self.gw.pool, name)
            try:
                version = await self.gw.client.delete(self.gw.pool, name, keep_prev=keep)
            except NotFound:
                version = hidden.version if hidden is not None else None
            if version is not None:
                await self.gw.index.delete(self.gw.pool, name, version)
        meta = {VERSION_META: vid, MTIME_META: f"{time.time():.6f}", MARKER_META: "true"}
        vname = f"{VERSIONS}{bucket}/{key}/{vid}"
        stored = await self.gw.client.put(self.gw.pool, vname, b"", meta=meta)
        entry = Entry(0, stored.hash, stored.version or 0, time.time(), meta)
        await self.gw.index.put(self.gw.pool, vname, entry)
        return responses.Deleted(key, None, True, vid)

    async def _promote(self, bucket: str, key: str, name: str) -> None:
        """The newest noncurrent version of `key` made current again (nothing if the newest
        is a delete marker, or there is none)."""
        versions = [v for v in await self._noncurrent(bucket, key) if v.key == key]
        if not versions or versions[0].marker:
            return
        v = versions[0]
        vname = f"{VERSIONS}{bucket}/{key}/{v.version_id}"
        client, pool = self.gw.client, self.gw.pool
        head = await client.head_of(pool, vname)
        meta = dict(v.entry.meta)
        if head is None:
            stored = await client.put(pool, name, await client.get(pool, vname), meta=meta)
        else:
            stored = await client.put_composed(pool, name, head.segments(vname), meta=meta)
        entry = Entry(v.entry.size, stored.hash, stored.version or 0, time.time(), meta,
                      md5=md5_of(meta))  # fmt: skip
        await self.gw.index.put(pool, name, entry)
        await self._forget(vname, keep_data=head is not None)

    # -- reads -------------------------------------------------------------------------------

    async def resolve(self, x: S3Exchange, req: S3Req) -> str:
        """The pool object that holds `req`'s versionId of its key."""
        vid = check_version_id(req.params["versionId"])
        name = f"{req.bucket}/{req.key}"
        current = await self._stat(name)
        if current is not None and current.meta.get(VERSION_META, "null") == vid:
            return name
        vname = f"{VERSIONS}{req.bucket}/{req.key}/{vid}"
        entry = await self.gw.index.get(self.gw.pool, vname)
        if entry is None or "/" in vid:
            await self.gw._bucket(req.bucket, req)
            raise S3Error("NoSuchVersion", Key=req.key, VersionId=vid)
        if MARKER_META in entry.meta:
            x.cors += [(b"x-amz-delete-marker", b"true"), (b"x-amz-version-id", vid.encode())]
            raise S3Error("MethodNotAllowed", Method=req.method, ResourceType="DeleteMarker")
        return vname

    async def name_of(self, bucket: str, key: str, vid: str) -> str:
        """The pool object that holds version `vid` of `key` (a copy's source)."""
        check_version_id(vid)
        name = f"{bucket}/{key}"
        current = await self._stat(name)
        if current is not None and current.meta.get(VERSION_META, "null") == vid:
            return name
        vname = f"{VERSIONS}{bucket}/{key}/{vid}"
        entry = None if "/" in vid else await self.gw.index.get(self.gw.pool, vname)
        if entry is None:
            raise S3Error("NoSuchVersion", Key=key, VersionId=vid)
        if MARKER_META in entry.meta:
            raise S3Error("InvalidRequest", "The source of a copy request may not "
                          "specifically refer to a delete marker by version id.")  # fmt: skip
        return vname

    async def missing(self, x: S3Exchange, req: S3Req) -> None:
        """A GET or HEAD found no current version: say so if its newest is a marker."""
        versions = [v for v in await self._noncurrent(req.bucket, req.key) if v.key == req.key]
        if versions and versions[0].marker:
            x.cors += [(b"x-amz-delete-marker", b"true"),
                       (b"x-amz-version-id", versions[0].version_id.encode())]  # fmt: skip

    async def _noncurrent(self, bucket: str, prefix: str) -> list[Version]:
        """The noncurrent versions and markers of keys starting with `prefix`, by key, then
        newest first."""
        base = f"{VERSIONS}{bucket}/"
        out: list[Version] = []
        start = ""
        while True:
            page = await self.gw.index.list(self.gw.pool, base + prefix, start, LIST_MAX)
            for full, e in page:
                key, _, vid = full[len(base) :].rpartition("/")
                mtime = float(e.meta.get(MTIME_META) or e.mtime)
                out.append(Version(key, vid, mtime, e, False, MARKER_META in e.meta))
            if len(page) < LIST_MAX:
                break
            start = page[-1][0] + "\x00"
        out.sort(key=lambda v: (v.key.encode(), -v.mtime))
        return out

    async def list_versions(self, x: S3Exchange, req: S3Req) -> None:
        """ListObjectVersions (GET ?versions): every version and marker, by key (bytewise),
        the current one first, then newest first; prefix, delimiter, key-marker,
        version-id-marker, max-keys."""
        from shoal.gateway.s3 import ETAG_META, OWNER_META, _common_prefix

        await self.gw._bucket(req.bucket, req)
        p = req.params
        prefix, delimiter = p.get("prefix", ""), p.get("delimiter", "")
        try:
            max_keys = min(int(p.get("max-keys", LIST_MAX)), LIST_MAX)
        except ValueError:
            max_keys = -1
        if max_keys < 0:
            raise S3Error("InvalidArgument", "Provided max-keys not an integer or within "
                          "integer range", ArgumentName="max-keys")  # fmt: skip
        url = p.get("encoding-type")
        if url not in (None, "url"):
            raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                          ArgumentName="encoding-type", ArgumentValue=url)  # fmt: skip
        key_marker, vid_marker = p.get("key-marker", ""), p.get("version-id-marker", "")
        everything = await self._noncurrent(req.bucket, prefix)
        base = req.bucket + "/"
        start = ""
        while True:  # the current versions (B/K), merged in
            page = await self.gw.index.list(self.gw.pool, base + prefix, start, LIST_MAX)
            for full, e in page:
                vid = e.meta.get(VERSION_META, "null")
                mtime = float(e.meta.get(MTIME_META) or e.mtime)
                everything.append(Version(full[len(base) :], vid, mtime, e, True, False))
            if len(page) < LIST_MAX:
                break
            start = page[-1][0] + "\x00"
        everything.sort(key=lambda v: (v.key.encode(), not v.current, -v.mtime))
        firsts = {id(v) for i, v in enumerate(everything)
                  if i == 0 or everything[i - 1].key != v.key}  # (each key's latest)  # fmt: skip
        if key_marker:
            kept: list[Version] = []
            passed = False  # (the version-id-marker seen: that key's older versions follow)
            for v in everything:
                if v.key.encode() < key_marker.encode():
                    continue
                if v.key == key_marker:
                    if not vid_marker:
                        continue
                    if not passed:
                        passed = v.version_id == vid_marker
                        continue
                kept.append(v)
            everything = kept
        entries: list[responses.VersionEntry] = []
        prefixes: list[str] = []
        truncated = False
        last: tuple[str, str] = ("", "")
        for v in everything:
            cp = _common_prefix(v.key, prefix, delimiter)
            if cp is not None and prefixes and prefixes[-1] == cp:
                continue
            if len(entries) + len(prefixes) == max_keys:
                truncated = True
                break
            if cp is not None:
                prefixes.append(cp)
                last = (cp, "")
                continue
            latest = id(v) in firsts
            who = v.entry.meta.get(OWNER_META, "")
            etag = v.entry.meta.get(ETAG_META) or (
                v.entry.md5.hex() if v.entry.md5 is not None else ""
            )
            entries.append(responses.VersionEntry(
                v.key, v.version_id, latest, v.mtime, etag, v.entry.size, v.marker,
                responses.Owner(who, who)))  # fmt: skip
            last = (v.key, v.version_id)
        listing = responses.ObjectListing(
            req.bucket, prefix, delimiter or None, max_keys, truncated, (), entries, prefixes,
            url, key_marker=key_marker, version_id_marker=vid_marker,
            next_key_marker=last[0] if truncated else None,
            next_version_id_marker=last[1] if truncated and last[1] else None,
        )  # fmt: skip
        await self.gw._xml(x, responses.list_versions(listing))


__all__ = ["VERSION_META", "Versions", "Write"]
