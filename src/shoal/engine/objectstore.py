"""ObjectStore: one disk's objects: put, get, stat, list, delete, write-at-offset, references.

The seed's flows, with DESIGN.md's crash rules:
1. Copy-on-write: a write lands in blocks fresh from the Placer; live blocks are never
   overwritten. The data is flushed, then one KeyStore transaction switches the manifest, then
   the blocks the object no longer uses go back to the FreeList. After a crash an object is
   wholly old or wholly new, and the FreeList (rebuilt from the manifests) has no leak.
2. A write is acknowledged after its data flush and its commit; concurrent writers share both
   (GroupCommitter).
3. 0-stor's metadata: references (16-byte consumer ids; removing the last deletes the object)
   and a permanent flag (the object cannot be deleted or replaced).

Reads take no lock. A reader holding an old manifest may meet blocks that a later commit has
freed and reused; their checksums then fail, the reader looks the object up again and, if it
changed, reads the new version. Only a mismatch on an unchanged object is an IntegrityError.
"""

from __future__ import annotations

import builtins
import os
import stat as statmod
import threading
import time
import uuid as uuidlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import ClassVar, NoReturn

import crc32c

from shoal.engine.blockstore import BlockStore, physical_block, while_writing
from shoal.engine.commit import GroupCommitter, Outcome, Piece, committed
from shoal.engine.device import BlockDevice, make_parent
from shoal.engine.freelist import Extent, FreeList
from shoal.engine.keys import Hasher, KeyGen, ObjKey
from shoal.engine.keystore import (
    FLAG_DELETED,
    FLAG_PERMANENT,
    REF_SIZE,
    KeyStore,
    Record,
    check_meta,
    check_name,
)
from shoal.engine.manifest import HOLE, Manifest, block_crcs
from shoal.engine.pins import Pins
from shoal.engine.placer import Placer
from shoal.errors import (
    Conflict,
    Forbidden,
    IntegrityError,
    InvalidArgument,
    NoSpace,
    NotFound,
    ShoalError,
    StoreFailed,
    Superseded,
)

DEFAULT_NAMESPACE = "default"
_CACHE_SIZE = 65536
_SPAN_CACHE = 65536  # spans of >= 64 blocks whose crc32c is known (x ~200 bytes)
_LOCK_STRIPES = 256
_NOWAIT_MAX = 256 << 10  # get_cached serves at most this much without a thread
MAX_OBJECT_SIZE = 1 << 36  # 64 GiB: one object's manifest stays a few MiB at most
_LEADER_WRITES = 64 << 10  # puts up to this size hand their data to the group commit leader
_GROW_MIN, _GROW_MAX = 256, 16384  # blocks reserved at a time by a writer of unknown size

Data = bytes | bytearray | memoryview
_crc = crc32c.crc32c


def default_keys_path(device: str) -> str:
    """Where the KeyStore lives unless told: beside a device file, never beside /dev/..."""
    if os.path.exists(device) and statmod.S_ISBLK(os.stat(device).st_mode):
        raise InvalidArgument(f"{device} is a block device: give the key store's path (--keys)")
    return device + ".keys"


# -- changes: pure functions of the object's current record, run by the group commit ------
# Versions: a change made here takes the next version after the row's (a tombstone's too), and
# at least `floor` (a replicated store's primary puts the map epoch there, so that a newer
# primary's writes outrank an older one's). A replicated change carries its `version` from the
# primary and is refused as Superseded by a row that already has it or a newer one (`force`:
# a repair, which also replaces the same version).


def _next_version(cur: Record | None, floor: int) -> int:
    return max(cur.version + 1 if cur is not None else 1, floor)


def _live(cur: Record | None) -> Record | None:
    return None if cur is None or cur.deleted else cur


def _check_newer(cur: Record | None, version: int, force: bool = False) -> None:
    if cur is not None and (cur.version > version or (cur.version == version and not force)):
        raise Superseded(
            f"{cur.namespace}/{cur.name} is at version {cur.version} already", cur.version
        )


def tombstone(namespace: str, name: str, version: int) -> Record:
    """The row that says `namespace/name` was deleted at `version`."""
    now = time.time()
    return Record(
        namespace, name, KeyGen.uuid().bytes, 0, None, version, FLAG_DELETED, (),
        Manifest.empty(), now, now,
    )  # fmt: skip


class _OfRecord:
    """A change that carries the object's new record, and is named by it."""

    record: Record

    @property
    def namespace(self) -> str:
        return self.record.namespace

    @property
    def name(self) -> str:
        return self.record.name


@dataclass(slots=True)
class _Put(_OfRecord):
    """A new object. With `small` set, the group commit leader allocates, checksums, hashes
    and writes its data (`write`), then fills in the record's manifest and hash."""

    record: Record
    small: tuple[ObjectStore, memoryview] | None = None
    extents: list[Extent] = field(default_factory=list)
    version: int | None = None  # replicated: exactly this version
    floor: int = 0
    force: bool = False
    writes_data = True

    def prepare(self) -> list[Piece]:
        if self.small is None:
            return []
        store, data = self.small
        self.extents = store.placer.place(-(-len(data) // store.block_size))
        r = self.record
        self.record = Record(
            r.namespace, r.name, r.uuid, r.size, KeyGen.hash(data), r.version, r.flags, r.refs,
            Manifest(tuple(self.extents), block_crcs(data, store.block_size)), r.ctime, r.mtime,
            r.meta,
        )  # fmt: skip
        return store.blocks.pieces(self.extents, data)

    def apply(self, cur: Record | None) -> Outcome:
        rec, live = self.record, _live(cur)
        if self.version is not None:
            _check_newer(cur, self.version, self.force)
            version = self.version
        else:
            if live is not None and live.permanent:
                raise Forbidden(f"{rec.namespace}/{rec.name} is permanent: it cannot be replaced")
            version = _next_version(cur, self.floor)
        rec = replace(rec, version=version)
        freed = list(cur.manifest.physical()) if cur is not None else []
        return Outcome(rec.namespace, rec.name, rec, freed, live)


@dataclass(slots=True)
class _WriteAt(_OfRecord):
    """A patch of blocks [lo, hi) of the object `expect` (uuid, version) as it was read; if
    the object is not that one any more (changed, or deleted and made anew) it is refused."""

    record: Record
    lo: int
    hi: int
    expect: tuple[bytes, int] | None
    extents: list[Extent]
    floor: int = 0
    writes_data = True

    def prepare(self) -> list[Piece]:
        return []

    def apply(self, cur: Record | None) -> Outcome:
        rec, dead, cur = self.record, cur, _live(cur)
        if ((cur.uuid, cur.version) if cur else None) != self.expect:
            raise Conflict(f"{rec.namespace}/{rec.name} changed during write-at-offset")
        rec = replace(rec, version=_next_version(dead, self.floor))
        freed: list[Extent] = []
        if cur is not None:
            n = cur.manifest.nblocks
            freed = [(s, c) for _, s, c in cur.manifest.runs(self.lo, min(self.hi, n)) if s != HOLE]
        return Outcome(rec.namespace, rec.name, rec, freed, cur)


@dataclass(slots=True)
class _Delete:
    """A delete; with `tombstone` the row stays as a tombstone at the delete's version. A
    replicated one (`version`) is recorded even where the object is absent."""

    namespace: str
    name: str
    tombstone: bool = False
    version: int | None = None
    floor: int = 0
    writes_data = False
    extents: ClassVar[list[Extent]] = []

    def prepare(self) -> list[Piece]:
        return []

    def apply(self, cur: Record | None) -> Outcome:
        live = _live(cur)
        if self.version is not None:
            _check_newer(cur, self.version)
            version = self.version
        else:
            if live is None:
                raise NotFound(f"{self.namespace}/{self.name} not found")
            if live.permanent:
                raise Forbidden(f"{self.namespace}/{self.name} is permanent: it cannot be deleted")
            version = _next_version(cur, self.floor)
        rec = tombstone(self.namespace, self.name, version) if self.tombstone else None
        freed = list(cur.manifest.physical()) if cur is not None else []
        return Outcome(self.namespace, self.name, rec, freed, live)


@dataclass(slots=True)
class _Drop:
    """Forget this copy of an object (or tombstone) at `version`, leaving no tombstone: a copy
    that has moved to other daemons, or a tombstone no longer needed."""

    namespace: str
    name: str
    version: int
    writes_data = False
    extents: ClassVar[list[Extent]] = []

    def prepare(self) -> list[Piece]:
        return []

    def apply(self, cur: Record | None) -> Outcome:
        if cur is None or cur.version != self.version:
            raise Conflict(f"{self.namespace}/{self.name} is not at version {self.version}")
        return Outcome(self.namespace, self.name, None, list(cur.manifest.physical()), cur)


@dataclass(slots=True)
class _Refs:
    namespace: str
    name: str
    add: tuple[bytes, ...]
    remove: tuple[bytes, ...]
    tombstone: bool = False
    floor: int = 0
    writes_data = False
    extents: ClassVar[list[Extent]] = []

    def prepare(self) -> list[Piece]:
        return []

    def apply(self, cur: Record | None) -> Outcome:
        if cur is None or cur.deleted:
            raise NotFound(f"{self.namespace}/{self.name} not found")
        version = _next_version(cur, self.floor)
        refs, gone = changed_refs(cur, self.add, self.remove)
        if gone:
            rec = tombstone(self.namespace, self.name, version) if self.tombstone else None
            return Outcome(self.namespace, self.name, rec, list(cur.manifest.physical()), cur)
        new = cur.changed(refs=tuple(refs), version=version)
        return Outcome(self.namespace, self.name, new, [], cur)


def changed_refs(
    cur: Record, add: Sequence[bytes], remove: Sequence[bytes]
) -> tuple[list[bytes], bool]:
    """The object's reference list with `add` and `remove` applied, and whether that removed
    the last one, which deletes the object (unless it is permanent)."""
    refs = [r for r in cur.refs if r not in remove]
    refs += [r for r in dict.fromkeys(add) if r not in refs]
    return refs, bool(cur.refs and not refs and remove and not cur.permanent)


def _check_refs(refs: Iterable[bytes]) -> tuple[bytes, ...]:
    out = tuple(bytes(r) for r in refs)
    for r in out:
        if len(r) != REF_SIZE:
            raise InvalidArgument(f"a reference id is {REF_SIZE} bytes, not {len(r)}")
    return out


class ObjectWriter:
    """Streams one object to disk: `write` chunks of any size, then `commit` (or `abort`).

    With the size known up front the blocks are reserved at once (NoSpace before a byte is
    written); otherwise they are reserved in growing steps and the unused rest is given back."""

    def __init__(
        self,
        store: ObjectStore,
        namespace: str,
        name: str | None,
        size: int | None,
        refs: tuple[bytes, ...],
        permanent: bool,
        version: int | None = None,
        force: bool = False,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        self._store = store
        self._version, self._force = version, force
        self._meta = check_meta(meta)
        self.record: Record | None = None  # once committed
        self._uuid = KeyGen.uuid()
        self.namespace = namespace
        self.name = name if name is not None else str(self._uuid)
        check_name(namespace, self.name)
        if size is not None and size < 0:
            raise InvalidArgument("size must be >= 0")
        self._refs = refs
        self._flags = FLAG_PERMANENT if permanent else 0
        self._expected = size
        self._bs = store.block_size
        self._extents: list[Extent] = []
        self._reserved = 0
        self._written = 0  # whole blocks on disk
        self._tail = bytearray()
        self._crcs: list[int] = []
        self._hasher = Hasher()
        self._size = 0
        self._closed = False
        self._broken = False  # a write failed part-way: the object cannot be finished
        if size is not None and size > MAX_OBJECT_SIZE:
            raise InvalidArgument(f"{size} bytes is over the largest object, {MAX_OBJECT_SIZE}")
        if size:
            self._reserve(-(-size // self._bs))

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._closed:
            self.abort()

    def _reserve(self, nblocks: int) -> None:
        got = self._store.placer.place(nblocks)
        self._extents.extend(got)
        self._reserved += nblocks

    def write(self, data: Data) -> None:
        if self._closed or self._broken:
            raise InvalidArgument("write to a closed or failed writer")
        mv = memoryview(data).cast("B")
        if self._size + len(mv) > MAX_OBJECT_SIZE:
            raise InvalidArgument(f"an object is at most {MAX_OBJECT_SIZE} bytes")
        if self._expected is not None and self._size + len(mv) > self._expected:
            raise InvalidArgument(
                f"{self.namespace}/{self.name}: more data than the announced {self._expected} bytes"
            )
        try:
            while_writing(len(mv), lambda: self._hasher.update(mv), lambda: self._write(mv))
        except BaseException:
            self._broken = True  # the hash and the tail have taken part of it
            raise
        self._size += len(mv)

    def _write(self, mv: memoryview) -> None:
        bs = self._bs
        if self._tail:
            take = bs - len(self._tail)
            self._tail += mv[:take]
            mv = mv[take:]
            if len(self._tail) < bs:
                return
            self._emit(self._tail)
            self._tail = bytearray()
        full = len(mv) - len(mv) % bs
        if full:
            self._emit(mv[:full])
        if full < len(mv):
            self._tail = bytearray(mv[full:])

    def _emit(self, blocks: Data) -> None:
        n = len(blocks) // self._bs
        short = self._written + n - self._reserved
        if short > 0:
            try:
                self._reserve(max(short, min(max(self._reserved, _GROW_MIN), _GROW_MAX)))
            except NoSpace:
                self._reserve(short)  # the generous step did not fit; the exact need may
        written = self._written
        crcs = while_writing(
            len(blocks),
            lambda: block_crcs(blocks, self._bs),
            lambda: self._store.blocks.write_runs(self._extents, written, blocks),
        )
        self._crcs.extend(crcs)
        self._written += n

    def set_version(self, version: int | None, force: bool = False) -> None:
        """Commit at exactly `version` (a replicated write: see `ObjectStore.writer`)."""
        self._version, self._force = version, force

    def set_meta(self, meta: Mapping[str, str] | None) -> None:
        """The object's metadata, replacing what the writer was made with (for metadata known
        only once the bytes are in: their MD5, say). InvalidArgument as `put`'s `meta`."""
        self._meta = check_meta(meta)

    def commit(self) -> ObjKey:
        if self._closed:
            raise InvalidArgument("commit of a closed writer")
        if self._broken:
            self.abort()
            raise InvalidArgument(f"{self.namespace}/{self.name}: a write failed; nothing stored")
        try:
            if self._expected is not None and self._size != self._expected:
                raise InvalidArgument(
                    f"{self.namespace}/{self.name}: got {self._size} of {self._expected} bytes; "
                    "nothing was stored"
                )
            if self._tail:
                self._emit(self._tail.ljust(self._bs, b"\x00"))
                self._tail = bytearray()
            self._give_back_unused()
            manifest = Manifest(tuple(self._extents), array("I", self._crcs))
            key = ObjKey(self._uuid, self._hasher.digest(), self._size)
            now = time.time()
            rec = Record(
                self.namespace, self.name, self._uuid.bytes, self._size, key.hash, 1,
                self._flags, self._refs, manifest, now, now, self._meta,
            )  # fmt: skip
        except BaseException:
            self.abort()
            raise
        store = self._store
        change = _Put(rec, None, self._extents, self._version, store.floor(), self._force)
        self._closed, self._extents = True, []  # the blocks are the commit's now
        self.record = store._commit(change).record
        return key

    def _give_back_unused(self) -> None:
        keep, spare = self._written, []
        out: list[Extent] = []
        for s, n in self._extents:
            if keep >= n:
                out.append((s, n))
                keep -= n
            elif keep > 0:
                out.append((s, keep))
                spare.append((s + keep, n - keep))
                keep = 0
            else:
                spare.append((s, n))
        self._extents = out
        self._reserved = self._written
        self._store.placer.release(spare)

    def abort(self) -> None:
        """Forget the object: its blocks go back to the FreeList (nothing was committed)."""
        if not self._closed:
            self._closed = True
            self._store.placer.release(self._extents)
            self._extents = []


class ObjectStore:
    def __init__(self, device: BlockDevice, keys: KeyStore, cache_size: int = _CACHE_SIZE) -> None:
        self.device = device
        self.keys = keys
        self.block_size = device.block_size
        self.blocks = BlockStore(device)
        self.problems: list[str] = []
        self.placer = Placer(self._rebuild_freelist(), device.block_size)
        self.pins = Pins(self.placer.release)  # blocks a commit frees are retired through it
        self._committer = GroupCommitter(
            keys, self.blocks.write_gathered, device.flush, self._after_commit
        )
        # Recently used records. Objects of one stored block are also in `_small`, namespace ->
        # name -> (byte offset << 64 | crc << 32 | size): one int, so that `get` of a small
        # object is two dict lookups, a pread and a crc, with no further objects to chase.
        self._cache: dict[tuple[str, str], Record] = {}
        self._small: dict[str, dict[str, int]] = {}
        self._fd = device.fd
        self._nowait = hasattr(os, "RWF_NOWAIT")
        self._cache_size = cache_size
        self._cache_gen = 0
        self._cache_lock = threading.Lock()
        # (uuid, version, first block, end block) -> crc32c of those blocks, verified block by
        # block once: a span read again (a hot large object) is verified by one crc call.
        self._span_crcs: dict[tuple[bytes, int, int, int], int] = {}
        self._obj_locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        # A replicated store (a cluster daemon's) keeps a tombstone for each delete, and takes
        # its versions from at least `version_floor()`.
        self.tombstones = False
        self.version_floor: Callable[[], int] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def format(
        cls,
        device: str,
        keys: str | None = None,
        *,
        size: int | None = None,
        force: bool = False,
        sparse: bool = False,
    ) -> ObjectStore:
        """Make a new, empty store on `device` (a file, created with `size` if new, or a block
        device) with its KeyStore at `keys`; missing folders above either file are made."""
        if keys:  # (before the device is touched: a bad --keys changes nothing)
            make_parent(keys)
        keys = keys or default_keys_path(device)  # (beside the device: made with it)
        if os.path.exists(keys) and not force:
            raise InvalidArgument(f"key store {keys} already exists; use --force to replace it")
        dev = BlockDevice.format(device, size, force=force, sparse=sparse)
        try:
            ks = KeyStore.create(keys, dev.superblock.device_uuid, force=True)
        except BaseException:
            dev.close()
            raise
        return cls(dev, ks)

    @classmethod
    def open(cls, device: str, keys: str | None = None) -> ObjectStore:
        keys = keys or default_keys_path(device)
        dev = BlockDevice.open(device)
        try:
            ks = KeyStore.open(keys, dev.superblock.device_uuid)
        except BaseException:
            dev.close()
            raise
        try:
            return cls(dev, ks)
        except BaseException:
            ks.close()
            dev.close()
            raise

    def close(self) -> None:
        self.blocks.close()
        self.keys.close()
        self.device.close()

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _rebuild_freelist(self) -> FreeList:
        """The FreeList is the complement of every manifest; overlaps are noted as problems."""
        start, end = self.device.data_start, self.device.block_count
        owned: list[tuple[int, int, str]] = []
        for ns, name, ext_raw in self.keys.scan_extents():
            for s, n in Manifest.decode(ext_raw, b"").extents:
                if s == HOLE:
                    continue
                if s < start or s + n > end or n <= 0:
                    self.problems.append(
                        f"{ns}/{name}: extent [{s}, {s + n}) outside the data area [{start}, {end})"
                    )
                owned.append((s, n, f"{ns}/{name}"))
        owned.sort()
        reach, holder = start, ""
        for s, n, who in owned:
            if s < reach:
                self.problems.append(f"{who} and {holder} both claim device block {s}")
            if s + n > reach:
                reach, holder = s + n, who
        return FreeList.complement(start, end, ((s, n) for s, n, _ in owned))

    # -- commit plumbing -------------------------------------------------------------------

    def floor(self) -> int:
        return self.version_floor() if self.version_floor is not None else 0

    def _commit(self, change: _Put | _WriteAt | _Delete | _Refs | _Drop) -> Outcome:
        """Commit `change`. If it is surely not committed, the blocks it was given go back to
        the FreeList; if it is (or may be) they stay: a block leaked until the next open is
        harmless, a block freed under a live manifest is not."""
        try:
            out = self._committer.submit(change)
        except BaseException as exc:
            if committed(exc) is False:
                self.placer.release(change.extents)
            raise
        if not isinstance(change, _Delete | _Drop):  # these free after an optional zeroing
            self.pins.retire(out.freed)
        return out

    def _after_commit(self, outcomes: list[Outcome]) -> None:
        with self._cache_lock:
            self._cache_gen += 1
            for o in outcomes:
                if o.record is None or o.record.deleted:
                    self._uncache(o.namespace, o.name)
                else:
                    self._cache_put(o.record)
            self._trim_cache()

    def _trim_cache(self) -> None:
        """(Under the cache lock.) The oldest entries go, down to the cache's size."""
        cache = self._cache
        while len(cache) > self._cache_size:
            self._uncache(*next(iter(cache)))

    def _cache_put(self, rec: Record) -> None:
        """(Under the cache lock.)"""
        self._cache[(rec.namespace, rec.name)] = rec
        small = self._small.setdefault(rec.namespace, {})
        packed = self._packed(rec)
        if packed is not None:
            small[rec.name] = packed
        else:
            small.pop(rec.name, None)

    def _read_packed(self, v: int, flags: int) -> memoryview | None:
        """The bytes of the one-block object whose packed entry is `v`, read with preadv
        `flags`; None if they do not match its crc (the caller looks again the long way)."""
        buf = bytearray(self.block_size)
        n = os.preadv(self._fd, [buf], v >> 64, flags)
        if n != len(buf) or _crc(buf) != (v >> 32) & 0xFFFFFFFF:
            return None
        size = v & 0xFFFFFFFF
        return memoryview(buf) if size == len(buf) else memoryview(buf)[:size]

    def _packed(self, rec: Record) -> int | None:
        """An object of one stored block as one int: byte offset << 64 | crc << 32 | size."""
        ext = rec.manifest.extents
        if len(ext) == 1 and ext[0][1] == 1 and ext[0][0] != HOLE:
            return (ext[0][0] * self.block_size) << 64 | rec.manifest.crcs[0] << 32 | rec.size
        return None

    def _uncache(self, namespace: str, name: str) -> None:
        """(Under the cache lock.)"""
        self._cache.pop((namespace, name), None)
        small = self._small.get(namespace)
        if small is not None:
            small.pop(name, None)

    def _record(self, namespace: str, name: str) -> Record:
        rec = self._cache.get((namespace, name))
        if rec is not None:
            return rec
        gen = self._cache_gen
        rec = self.keys.get(namespace, name)
        if rec is None:
            check_name(namespace, name)
            raise NotFound(f"{namespace}/{name} not found")
        with self._cache_lock:
            if gen == self._cache_gen:  # (else a commit may have changed it meanwhile)
                self._cache_put(rec)
                self._trim_cache()
        return rec

    @property
    def stats(self) -> dict[str, int]:
        s = self._committer.stats
        return {"groups": s.groups, "changes": s.changes, "flushes": s.flushes}

    # -- writes ----------------------------------------------------------------------------

    def writer(
        self,
        namespace: str = DEFAULT_NAMESPACE,
        name: str | None = None,
        *,
        size: int | None = None,
        refs: Iterable[bytes] = (),
        permanent: bool = False,
        version: int | None = None,
        force: bool = False,
        meta: Mapping[str, str] | None = None,
    ) -> ObjectWriter:
        """A writer for a new object (`version`: a replicated one, at exactly that version;
        `force`: replacing a copy of the same version, a repair; `meta`: as for `put`)."""
        return ObjectWriter(
            self, namespace, name, size, _check_refs(refs), permanent, version, force, meta
        )

    def put(
        self,
        data: Data,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        name: str | None = None,
        refs: Iterable[bytes] = (),
        permanent: bool = False,
        version: int | None = None,
        force: bool = False,
        meta: Mapping[str, str] | None = None,
    ) -> ObjKey:
        """Store `data` as a new object; a name that exists is replaced. Returns its ObjKey
        (an unnamed object is named by its uuid). `version`/`force`: as for `writer`. `meta`:
        the object's metadata (str -> str, at most MAX_META bytes encoded), kept with it."""
        mv = memoryview(data).cast("B")
        if len(mv) > MAX_OBJECT_SIZE:
            raise InvalidArgument(f"an object is at most {MAX_OBJECT_SIZE} bytes")
        uid = KeyGen.uuid()
        name = name if name is not None else str(uid)
        check_name(namespace, name)
        now = time.time()
        rec = Record(
            namespace, name, uid.bytes, len(mv), None, 1, FLAG_PERMANENT if permanent else 0,
            _check_refs(refs), Manifest.empty(), now, now, check_meta(meta),
        )  # fmt: skip
        floor = self.floor()
        if len(mv) <= _LEADER_WRITES:
            change = _Put(rec, (self, mv), [], version, floor, force)
        else:
            extents = self.placer.place(-(-len(mv) // self.block_size))
            change = _Put(rec, None, extents, version, floor, force)
        if change.small is None:
            try:
                crcs, digest = while_writing(
                    len(mv),
                    lambda: (block_crcs(mv, self.block_size), KeyGen.hash(mv)),
                    lambda: self.blocks.write_runs(change.extents, 0, mv),
                )
            except BaseException:
                self.placer.release(change.extents)
                raise
            manifest = Manifest(tuple(change.extents), crcs)
            change.record = replace(rec, hash=digest, manifest=manifest)
        self._commit(change)
        return change.record.key

    def put_many(
        self,
        items: Sequence[tuple[str, str | None, Data, Sequence[bytes], bool, int | None]],
        metas: Sequence[Mapping[str, str] | None] | None = None,
    ) -> list[Record | ShoalError]:
        """Store several small objects (namespace, name, data, refs, permanent, version or
        None; `metas`: each one's metadata, if given) in one group commit, from one thread:
        each one's committed record, or the error that refused it. For a server that gathers
        concurrent requests itself (cheaper than a thread each)."""
        results: list[Record | ShoalError | None] = [None] * len(items)
        changes: list[tuple[int, _Put]] = []
        now, floor = time.time(), self.floor()
        for i, (namespace, name, data, refs, permanent, version) in enumerate(items):
            mv = memoryview(data).cast("B")
            uid = KeyGen.uuid()
            name = name if name is not None else str(uid)
            try:
                check_name(namespace, name)
                if len(mv) > _LEADER_WRITES:
                    raise InvalidArgument(
                        f"put_many takes objects of {_LEADER_WRITES} bytes at most"
                    )
                rec = Record(
                    namespace, name, uid.bytes, len(mv), None, 1,
                    FLAG_PERMANENT if permanent else 0, _check_refs(refs), Manifest.empty(),
                    now, now, check_meta(metas[i] if metas is not None else None),
                )  # fmt: skip
            except ShoalError as exc:
                results[i] = exc
                continue
            changes.append((i, _Put(rec, (self, mv), [], version, floor)))
        outcomes = self._committer.submit_many([c for _, c in changes])
        fatal: BaseException | None = None
        for (i, change), out in zip(changes, outcomes, strict=True):
            if isinstance(out, Outcome):
                self.pins.retire(out.freed)
                assert out.record is not None
                results[i] = out.record
                continue
            if committed(out) is False:
                self.placer.release(change.extents)
            if isinstance(out, ShoalError):
                results[i] = out
            else:
                fatal = out  # the disk (OSError) or a bug: not one request's fault
        if fatal is not None:
            raise fatal
        final: list[Record | ShoalError] = []
        for r in results:
            assert r is not None
            final.append(r)
        return final

    def write_at(
        self,
        name: str,
        offset: int,
        data: Data,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        create: bool = True,
    ) -> ObjKey:
        """Write `data` at byte `offset` of the object, growing it if needed (never-written
        gaps read as zeros and take no space). Copy-on-write of the blocks touched."""
        check_name(namespace, name)
        if offset < 0:
            raise InvalidArgument("offset must be >= 0")
        mv = memoryview(data).cast("B")
        if not mv:  # writing nothing changes nothing (and does not grow the object)
            try:
                return self.stat(name, namespace=namespace).key
            except NotFound:
                if not create:
                    raise
                return self.put(b"", namespace=namespace, name=name)
        bs = self.block_size
        end = offset + len(mv)
        if end > MAX_OBJECT_SIZE:
            raise InvalidArgument(f"an object is at most {MAX_OBJECT_SIZE} bytes, not {end}")
        lo, hi = offset // bs, -(-end // bs)
        with self._obj_locks[hash((namespace, name)) % _LOCK_STRIPES]:
            for _ in range(32):
                cur = self.keys.get(namespace, name)
                if cur is None and not create:
                    raise NotFound(f"{namespace}/{name} not found")
                if cur is not None and cur.permanent:
                    raise Forbidden(f"{namespace}/{name} is permanent: it cannot be changed")
                old = cur.manifest if cur is not None else Manifest.empty()
                try:
                    buf = self._patched_blocks(cur, old, lo, hi, offset, mv)
                except IntegrityError:
                    # Unless the object is unchanged, its old blocks were reused under us.
                    if cur is not None and cur.same_revision(self.keys.get(namespace, name)):
                        raise
                    continue
                extents = self.placer.place(hi - lo)
                try:
                    crcs = self.blocks.write(extents, buf)
                except BaseException:
                    self.placer.release(extents)
                    raise
                manifest = old.splice(lo, hi, extents, crcs)
                size = max(cur.size if cur else 0, end)
                if cur is not None:
                    rec = cur.changed(size=size, hash=None, manifest=manifest)
                else:
                    now = time.time()
                    rec = Record(
                        namespace, name, KeyGen.uuid().bytes, size, None, 1, 0, (),
                        manifest, now, now,
                    )  # fmt: skip
                expect = (cur.uuid, cur.version) if cur is not None else None
                try:  # _commit gives the blocks back if this is refused
                    self._commit(_WriteAt(rec, lo, hi, expect, extents, self.floor()))
                except Conflict:
                    continue
                return rec.key
            raise Conflict(f"{namespace}/{name} kept changing during write-at-offset")

    def _patched_blocks(
        self, cur: Record | None, old: Manifest, lo: int, hi: int, offset: int, mv: memoryview
    ) -> Data:
        """The whole blocks [lo, hi) after the write: `mv` itself when aligned, else the old
        edge blocks with `mv` laid over them."""
        bs = self.block_size
        head, tail = offset - lo * bs, hi * bs - (offset + len(mv))
        if not head and not tail:
            return mv
        buf = bytearray((hi - lo) * bs)
        what = f"{cur.namespace}/{cur.name}" if cur else ""
        if head and lo < old.nblocks:
            buf[:bs] = self.blocks.read(old, lo, lo + 1, what)
        if tail and hi - 1 < old.nblocks and (hi - 1 > lo or not head):
            buf[-bs:] = self.blocks.read(old, hi - 1, hi, what)
        buf[head : head + len(mv)] = mv
        return buf

    def delete(
        self,
        name: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        zero: bool = False,
        discard: bool = False,
    ) -> Record:
        """Remove the object. With `zero` or `discard`, its blocks are zeroed or discarded
        (and that made durable) before they can be given to another object. Returns the
        record it had."""
        previous, _ = self.remove(name, namespace=namespace, zero=zero, discard=discard)
        assert previous is not None
        return previous

    def remove(
        self,
        name: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        zero: bool = False,
        discard: bool = False,
        version: int | None = None,
    ) -> tuple[Record | None, Record | None]:
        """`delete`, returning (the record it had, its tombstone if the store keeps them).
        With `version` it is a replicated delete: recorded at that version even if the object
        is absent here, Superseded if this copy is at that version or newer."""
        check_name(namespace, name)
        out = self._commit(_Delete(namespace, name, self.tombstones, version, self.floor()))
        self._free_removed(out, zero, discard)
        return out.previous, out.record

    def drop(self, name: str, *, namespace: str = DEFAULT_NAMESPACE, version: int) -> None:
        """Forget this copy (or tombstone) if it is still at `version` (Conflict if not),
        leaving no tombstone: for a copy that now lives on other daemons."""
        out = self._commit(_Drop(namespace, name, version))
        self._free_removed(out, False, False)

    def head(self, name: str, *, namespace: str = DEFAULT_NAMESPACE) -> Record | None:
        """This store's row for the object, a tombstone included; None if it has none."""
        return self.keys.get(namespace, name, tombstones=True)

    def page(self, after: tuple[str, str] = ("", ""), limit: int = 1000) -> builtins.list[Record]:
        """Rows in (namespace, name) order after `after`, tombstones included."""
        return self.keys.page(after, limit)

    def _free_removed(self, out: Outcome, zero: bool, discard: bool) -> None:
        if zero or discard:
            self.pins.wait_readers()  # not under a reader sending them from the page cache
            try:
                self.blocks.release_blocks(out.freed, zero=zero, discard=discard)
            except OSError as exc:
                # The blocks stay allocated (until reopen); a failed flush stops all writing.
                self._committer.failed = f"zeroing freed blocks failed ({exc}); reopen the store"
                raise StoreFailed(self._committer.failed) from exc
        self.pins.retire(out.freed)

    def add_refs(
        self, name: str, refs: Iterable[bytes], *, namespace: str = DEFAULT_NAMESPACE
    ) -> tuple[bytes, ...]:
        """Add consumer ids to the object's reference list; returns the list."""
        check_name(namespace, name)
        out = self._commit(
            _Refs(namespace, name, _check_refs(refs), (), self.tombstones, self.floor())
        )
        assert out.record is not None
        return out.record.refs

    def remove_refs(
        self, name: str, refs: Iterable[bytes], *, namespace: str = DEFAULT_NAMESPACE
    ) -> tuple[bytes, ...]:
        """Remove consumer ids; when the last goes the object is deleted (unless permanent).
        Returns the remaining list (empty if the object was deleted)."""
        check_name(namespace, name)
        out = self._commit(
            _Refs(namespace, name, (), _check_refs(refs), self.tombstones, self.floor())
        )
        return out.record.refs if out.record is not None and not out.record.deleted else ()

    # -- reads -----------------------------------------------------------------------------

    def stat(self, name: str, *, namespace: str = DEFAULT_NAMESPACE) -> Record:
        return self._record(namespace, name)

    def locate(self, uid: uuidlib.UUID | str) -> Record:
        """The object with this uuid (the seed's GET <uuid>)."""
        try:
            u = uid if isinstance(uid, uuidlib.UUID) else uuidlib.UUID(uid)
        except ValueError:
            raise InvalidArgument(f"{uid!r} is not a uuid") from None
        rec = self.keys.by_uuid(u.bytes)
        if rec is None:
            raise NotFound(f"no object with uuid {u}")
        return rec

    def get(
        self,
        name: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        offset: int = 0,
        length: int | None = None,
    ) -> memoryview:
        """The object's bytes (or `length` bytes from `offset`), checksum-verified."""
        if not offset and length is None:  # the hot path: a whole small object, cached
            small = self._small.get(namespace)
            v = small.get(name) if small is not None else None
            if v is not None:
                hit = self._read_packed(v, 0)
                if hit is not None:
                    return hit
        rec = self._record(namespace, name)
        for _ in range(4):
            try:
                return self._read(rec, offset, length)
            except IntegrityError:
                fresh = self.keys.get(namespace, name)
                if fresh is None:
                    raise NotFound(f"{namespace}/{name} not found") from None
                if rec.same_revision(fresh):
                    raise
                rec = fresh
        raise Conflict(f"{namespace}/{name} kept changing while being read")

    def cached(self, name: str, *, namespace: str = DEFAULT_NAMESPACE) -> Record | None:
        """The object's record if it is in the record cache (no I/O, for an event loop)."""
        return self._cache.get((namespace, name))

    def get_cached(
        self,
        name: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        offset: int = 0,
        length: int | None = None,
    ) -> tuple[Record, memoryview] | None:
        """`get` for callers that must not block (an event loop): the bytes, verified, if the
        object's record is cached and its blocks are in the page cache (RWF_NOWAIT reads), at
        most 256 KiB; otherwise None, and the caller goes the long way (a thread). Raises only
        for a request that cannot succeed at all (a range past the end)."""
        rec = self._cache.get((namespace, name))
        if rec is None or not self._nowait:
            return None
        if not offset and length is None:  # a whole object of one block: the packed entry
            small = self._small.get(namespace)
            v = small.get(name) if small is not None else None
            if v is not None and v == self._packed(rec):  # (both of one revision)
                try:
                    data = self._read_packed(v, os.RWF_NOWAIT)
                except OSError:  # not in the page cache (or no RWF_NOWAIT): the long way
                    return None
                # (None: the long way re-checks the record and reports damage)
                return None if data is None else (rec, data)
        offset, length = self.clip(rec, offset, length)
        if length > _NOWAIT_MAX:
            return None
        bs = self.block_size
        lo, hi = offset // bs, -(-(offset + length) // bs)
        buf = bytearray((hi - lo) * bs)
        mv = memoryview(buf)
        for logical, start, count in rec.manifest.runs(lo, hi):
            if start == HOLE:
                continue
            off = (logical - lo) * bs
            try:
                n = os.preadv(self._fd, [mv[off : off + count * bs]], start * bs, os.RWF_NOWAIT)
            except BlockingIOError:
                return None
            except OSError:  # no RWF_NOWAIT here (an old kernel, another filesystem)
                self._nowait = False
                return None
            if n != count * bs:
                return None
        if self.blocks.bad_blocks(rec.manifest, lo, buf):
            return None  # the long way re-checks the record and reports real damage
        skip = offset - lo * bs
        return rec, mv[skip : skip + length]

    def read_into(self, rec: Record, offset: int, length: int, buf: bytearray) -> memoryview:
        """Bytes [offset, offset + length) of the object as `rec` (from `stat`) describes it,
        read into `buf` (big enough for the blocks that cover them) and verified: a view of
        `buf`. For streaming with reused buffers. Raises Conflict if the object changed since
        `rec` (its blocks may be someone else's now), IntegrityError if it did not."""
        offset, length = self.clip(rec, offset, length)
        bs = self.block_size
        lo, hi = offset // bs, -(-(offset + length) // bs)
        mv = memoryview(buf)[: (hi - lo) * bs]
        self.blocks.read_raw_into(rec.manifest, lo, hi, mv)
        bad = self.blocks.bad_blocks(rec.manifest, lo, mv)
        if bad:
            self._bad(rec, bad)
        skip = offset - lo * bs
        return mv[skip : skip + length]

    def _bad(self, rec: Record, bad: list[int]) -> NoReturn:
        """Blocks `bad` of `rec` failed their checksums: Conflict if the object changed since
        `rec` was looked up (its blocks may be someone else's now), IntegrityError if not."""
        if not rec.same_revision(self.keys.get(rec.namespace, rec.name)):
            raise Conflict(f"{rec.namespace}/{rec.name} changed while being read")
        raise IntegrityError(
            f"{rec.namespace}/{rec.name}: block {bad[0]} (device block "
            f"{physical_block(rec.manifest, bad[0])}) does not match its checksum "
            f"({len(bad)} bad block(s) read)"
        )

    def pinned(self) -> AbstractContextManager[None]:
        """While this is held, no block of any object as it is now is freed (an overwrite or
        a delete retires the old blocks until it exits). Take it before looking an object up
        for `read_mapped`; hold it for seconds at most (frees wait for it)."""
        return self.pins.held()

    def read_mapped(self, rec: Record, offset: int, length: int) -> list[memoryview] | None:
        """Bytes [offset, offset + length) of the object as `rec` describes it, verified, as
        views of the page cache (a read-only mapping of the device): nothing copied. Only
        under `pinned()`, with `rec` looked up under that pin; the views are good while it is
        held. None if the device cannot be mapped here (use `read_into`)."""
        offset, length = self.clip(rec, offset, length)
        bs = self.block_size
        lo, hi = offset // bs, -(-(offset + length) // bs)
        views = self.blocks.mapped(rec.manifest, lo, hi)
        if views is None:
            return None
        span = (rec.uuid, rec.version, lo, hi) if len(views) == 1 and hi - lo >= 64 else None
        want = self._span_crcs.get(span) if span is not None else None
        if want is None or _crc(views[0]) != want:
            block, bad = lo, []
            for v in views:
                bad += self.blocks.bad_blocks(rec.manifest, block, v)
                block += len(v) // bs
            if bad:
                self._bad(rec, bad)
            if span is not None:  # next time, one call (that lets go of the GIL) verifies it
                with self._cache_lock:
                    self._span_crcs[span] = _crc(views[0])
                    if len(self._span_crcs) > _SPAN_CACHE:
                        del self._span_crcs[next(iter(self._span_crcs))]
        skip, out = offset - lo * bs, []
        for v in views:  # trimmed to [offset, offset + length)
            if skip >= len(v):
                skip -= len(v)
                continue
            v, skip = v[skip : skip + length], 0
            out.append(v)
            length -= len(v)
            if not length:
                break
        return out

    def _read(self, rec: Record, offset: int, length: int | None) -> memoryview:
        offset, length = self.clip(rec, offset, length)
        if length == 0:
            return memoryview(b"")
        bs = self.block_size
        lo, hi = offset // bs, -(-(offset + length) // bs)
        buf = self.blocks.read(rec.manifest, lo, hi, f"{rec.namespace}/{rec.name}")
        skip = offset - lo * bs
        return memoryview(buf)[skip : skip + length]

    @staticmethod
    def clip(rec: Record, offset: int, length: int | None) -> tuple[int, int]:
        """(offset, length) of a read of `rec` clipped to its end; an offset past the end or
        a negative value is InvalidArgument."""
        if offset < 0 or (length is not None and length < 0):
            raise InvalidArgument("offset and length must be >= 0")
        if offset > rec.size:
            raise InvalidArgument(
                f"offset {offset} is beyond the end of {rec.namespace}/{rec.name} "
                f"({rec.size} bytes)"
            )
        avail = rec.size - offset
        return offset, avail if length is None else min(length, avail)

    def iter_read(
        self,
        name: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        offset: int = 0,
        length: int | None = None,
        chunk: int = 1 << 20,
    ) -> Iterator[memoryview]:
        """The object's bytes as verified chunks of about `chunk` bytes, for streaming a large
        object without holding it whole. Raises Conflict if it changes mid-stream."""
        rec = self._record(namespace, name)
        offset, length = self.clip(rec, offset, length)
        end = offset + length
        bs = self.block_size
        step = max(bs, chunk - chunk % bs)
        pos = offset
        while pos < end:
            nxt = min(end, (pos // bs) * bs + step)
            blocks = -(-nxt // bs) - pos // bs
            yield self.read_into(rec, pos, nxt - pos, bytearray(blocks * bs))
            pos = nxt

    def list(
        self,
        namespace: str = DEFAULT_NAMESPACE,
        prefix: str = "",
        *,
        start_after: str = "",
        limit: int = 1000,
    ) -> list[Record]:
        """Objects of `namespace` whose name starts with `prefix`, in name order, after
        `start_after` (the last name of the previous page), at most `limit`."""
        if limit <= 0:
            raise InvalidArgument("limit must be > 0")
        return self.keys.list(namespace, prefix, start_after, limit)

    def namespaces(self) -> builtins.list[str]:
        return self.keys.namespaces()

    # -- space -----------------------------------------------------------------------------

    @property
    def free_blocks(self) -> int:
        return self.placer.free_blocks

    @property
    def data_blocks(self) -> int:
        return self.device.block_count - self.device.data_start
