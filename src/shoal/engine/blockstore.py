"""BlockStore: reads and writes an object's blocks on the BlockDevice by manifest.

Every read is checked against the manifest's per-block crc32c before a byte of it is returned;
a mismatch raises IntegrityError naming the logical and the device block. Writes go only to
blocks the caller has just been given by the Placer (copy-on-write: live blocks are never
overwritten), padded with zeros to whole blocks.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from array import array
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

import crc32c

from shoal.engine.device import BlockDevice
from shoal.engine.freelist import Extent
from shoal.engine.manifest import HOLE, Manifest, block_crcs, runs
from shoal.errors import IntegrityError

_DIRECT_MIN = 256 << 10  # pieces this large bypass the page cache, checksummed meanwhile
_DIRECT_CHUNK = 4 << 20
_IOV_MAX = 1024
_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14
# Bytes mapped between two drops of the mapping's page-table entries: a hot set this large is
# sent without being mapped in again. A 16th of the memory, at most 1 GiB.
MAP_BUDGET = min(1 << 30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 16)
Data = bytes | memoryview
T = TypeVar("T")
_local = threading.local()


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def while_writing(nbytes: int, compute: Callable[[], T], write: Callable[[], None]) -> T:
    """`compute()` (checksums, hashing: C code that lets go of the GIL) on a helper thread
    while `write()` (a system call that lets go of it too) runs here, when there are enough
    bytes for the overlap to pay; one after the other otherwise."""
    global _pool
    if nbytes < _DIRECT_MIN:
        write()
        return compute()
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shoal-sums")
    future = _pool.submit(compute)
    try:
        write()
    finally:
        wait([future])  # the data must not be released while it is being read
    return future.result()


def _aligned_buffer() -> mmap.mmap:
    """This thread's page-aligned staging buffer for O_DIRECT writes."""
    buf: mmap.mmap | None = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = mmap.mmap(-1, _DIRECT_CHUNK)
    return buf


class BlockStore:
    def __init__(self, device: BlockDevice) -> None:
        self.device = device
        self.bs = device.block_size
        self._map: mmap.mmap | None = None
        self._mapview: memoryview | None = None
        self._map_lock = threading.Lock()
        self.mappable = True
        self._mapped = 0  # bytes mapped in since the page-table entries were last dropped

    def close(self) -> None:
        """Unmap the device (after the last reader of a mapped view is done)."""
        with self._map_lock:
            view, mapping, self._mapview, self._map = self._mapview, self._map, None, None
            if view is not None:
                view.release()
            if mapping is not None:
                with contextlib.suppress(BufferError):  # a view is still out: it unmaps last
                    mapping.close()

    def mapped(self, manifest: Manifest, lo: int, hi: int) -> list[memoryview] | None:
        """Logical blocks [lo, hi) as views of a read-only shared mapping of the device (the
        page cache itself, no copy), unverified, their pages read in; holes as zeros. None if
        the device cannot be mapped here (then `read_raw_into`). A read error of the device
        is an IntegrityError, not a SIGBUS later: the pages are read in up front."""
        view = self._mapview if self._mapview is not None else self._mapping()
        if view is None:
            return None
        bs = self.bs
        self._keep_resident_small((hi - lo) * bs)
        out = []
        for _, start, count in manifest.runs(lo, hi):
            if start == HOLE:
                out.append(memoryview(bytes(count * bs)))
                continue
            try:
                self._map.madvise(_POPULATE_READ, start * bs, count * bs)  # type: ignore[union-attr]
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS):  # an older kernel
                    self.mappable = False
                    return None
                raise IntegrityError(
                    f"device blocks {start}..{start + count - 1} could not be read: {exc}"
                ) from exc
            out.append(view[start * bs : (start + count) * bs])
        return out

    def _keep_resident_small(self, nbytes: int) -> None:
        """Mapped pages count in the process's resident size (and its OOM score) although
        they are the page cache's: once about MAP_BUDGET bytes have been mapped, drop every
        page-table entry of the mapping (the pages stay cached; a view still in use faults
        them back in)."""
        with self._map_lock:
            self._mapped += nbytes
            if self._mapped <= MAP_BUDGET or self._map is None:
                return
            self._mapped = nbytes
            self._map.madvise(mmap.MADV_DONTNEED)

    def _mapping(self) -> memoryview | None:
        with self._map_lock:
            if self._mapview is None and self.mappable:
                size = self.device.block_count * self.bs
                try:
                    self._map = mmap.mmap(self.device.fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
                except (OSError, ValueError):
                    self.mappable = False
                    return None
                self._mapview = memoryview(self._map)
            return self._mapview

    def write(self, extents: list[Extent], data: bytes | bytearray | memoryview) -> array[int]:
        """Write `data` over `extents` (in logical order, enough blocks for it; a short last
        block is zero-padded) and return the crc32c of each block written."""
        mv = memoryview(data).cast("B")
        return while_writing(
            len(mv), lambda: block_crcs(mv, self.bs), lambda: self.write_runs(extents, 0, mv)
        )

    def pieces(self, extents: list[Extent], mv: memoryview) -> list[tuple[int, list[Data]]]:
        """`mv` cut along `extents` as (device block, buffers), the last block zero-padded."""
        bs = self.bs
        out: list[tuple[int, list[Data]]] = []
        pos = 0
        for start, count in extents:
            piece = mv[pos : pos + count * bs]
            pad = count * bs - len(piece)
            out.append((start, [piece, self.device.zero_block[:pad]] if pad else [piece]))
            pos += count * bs
        return out

    def write_gathered(self, pieces: list[tuple[int, list[Data]]]) -> None:
        """Write many small pieces, joining those that neighbour on the device into one
        pwritev (the group commit leader's many small puts)."""
        bs = self.bs
        pieces = sorted(pieces, key=lambda p: p[0])
        run_bufs: list[Data] = []
        run_start = run_end = -1
        for start, bufs in pieces:
            size = sum(len(b) for b in bufs) // bs
            if start == run_end and len(run_bufs) + len(bufs) <= _IOV_MAX:
                run_bufs += bufs
                run_end += size
                continue
            if run_bufs:
                self.device.pwritev(run_bufs, run_start)
            run_start, run_bufs, run_end = start, list(bufs), start + size
        if run_bufs:
            self.device.pwritev(run_bufs, run_start)

    def _write_piece(self, start: int, piece: memoryview) -> None:
        """Write `piece` at device block `start`, zero-padding its last block. Large pieces go
        through an aligned buffer and O_DIRECT: a copy in memory is cheaper than pushing
        megabytes through the page cache and then flushing them."""
        bs = self.bs
        if len(piece) < _DIRECT_MIN or self.device.direct_fd < 0:
            pad = -len(piece) % bs
            self.device.pwritev([piece, self.device.zero_block[:pad]] if pad else [piece], start)
            return
        buf = _aligned_buffer()
        for pos in range(0, len(piece), _DIRECT_CHUNK):
            part = piece[pos : pos + _DIRECT_CHUNK]
            whole = len(part) + (-len(part) % bs)
            buf[: len(part)] = part
            buf[len(part) : whole] = self.device.zero_block[: whole - len(part)]
            self.device.pwrite_direct(memoryview(buf)[:whole], start + pos // bs)

    def write_runs(
        self, extents: list[Extent], lo: int, data: bytes | bytearray | memoryview
    ) -> None:
        """Write `data` at logical blocks [lo, ...) of the allocation `extents` (a short last
        block is zero-padded)."""
        mv = memoryview(data).cast("B")
        bs = self.bs
        hi = lo + -(-len(mv) // bs)
        for logical, start, count in runs(extents, lo, hi):
            off = (logical - lo) * bs
            self._write_piece(start, mv[off : off + count * bs])

    def read_raw(self, manifest: Manifest, lo: int, hi: int) -> bytearray:
        """Logical blocks [lo, hi) as stored, unverified (holes read as zeros)."""
        buf = bytearray((hi - lo) * self.bs)
        self.read_raw_into(manifest, lo, hi, memoryview(buf), zero_holes=False)
        return buf

    def read_raw_into(
        self, manifest: Manifest, lo: int, hi: int, mv: memoryview, *, zero_holes: bool = True
    ) -> None:
        """`read_raw` into the caller's buffer (a reused one: holes are zeroed in it)."""
        bs = self.bs
        for logical, start, count in manifest.runs(lo, hi):
            off = (logical - lo) * bs
            if start != HOLE:
                self.device.preadv([mv[off : off + count * bs]], start)
            elif zero_holes:
                mv[off : off + count * bs] = bytes(count * bs)

    def bad_blocks(self, manifest: Manifest, lo: int, buf: bytearray | memoryview) -> list[int]:
        """Logical blocks of `buf` (read from block `lo` on) that fail their checksum."""
        bs = self.bs
        mv = memoryview(buf)
        crc = crc32c.crc32c
        crcs = manifest.crcs
        return [
            lo + i for i in range(len(buf) // bs) if crc(mv[i * bs : (i + 1) * bs]) != crcs[lo + i]
        ]

    def read(self, manifest: Manifest, lo: int, hi: int, what: str) -> bytearray:
        """Logical blocks [lo, hi), verified: IntegrityError rather than a corrupt byte."""
        buf = self.read_raw(manifest, lo, hi)
        bad = self.bad_blocks(manifest, lo, buf)
        if bad:
            raise IntegrityError(
                f"{what}: block {bad[0]} (device block {physical_block(manifest, bad[0])}) "
                f"does not match its checksum ({len(bad)} bad block(s) read)"
            )
        return buf

    def release_blocks(self, extents: Iterable[Extent], *, zero: bool, discard: bool) -> None:
        """Zero or discard freed blocks (delete's optional steps), made durable."""
        extents = list(extents)
        if not (zero or discard) or not extents:
            return
        for start, count in extents:
            if discard:
                self.device.discard(start, count)
            else:
                self.device.zero(start, count)
        self.device.flush()


def physical_block(manifest: Manifest, logical: int) -> int:
    for _, start, _ in manifest.runs(logical, logical + 1):
        return start
    return HOLE
