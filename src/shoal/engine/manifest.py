"""Manifest: where an object's bytes live, and the crc32c of each of its blocks.

An object of N logical blocks is a run of extents (physical first block, count) in logical
order; an extent whose start is HOLE is a run of never-written blocks that read as zeros (thin
provisioning for block images). `crcs[i]` is the crc32c of logical block i as stored, a full
block with zeros after the object's end, so growing an object never has to rewrite a checksum.
Manifests are values: every change makes a new one.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import crc32c

from shoal.engine.device import BLOCK_SIZE
from shoal.engine.freelist import Extent

HOLE = -1
ZERO_CRC: int = crc32c.crc32c(bytes(BLOCK_SIZE))
_SWAP = sys.byteorder != "little"  # stored little-endian whatever the host


@dataclass(frozen=True, slots=True)
class Manifest:
    extents: tuple[Extent, ...]
    crcs: array[int]  # type "I": one crc32c per logical block

    @classmethod
    def empty(cls) -> Manifest:
        return cls((), array("I"))

    @property
    def nblocks(self) -> int:
        return len(self.crcs)

    def physical(self) -> Iterator[Extent]:
        """The extents that hold blocks on the device (holes left out)."""
        return (e for e in self.extents if e[0] != HOLE)

    def runs(self, lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
        """(logical block, physical block or HOLE, count) covering logical blocks [lo, hi)."""
        return runs(self.extents, lo, hi)

    def splice(self, lo: int, hi: int, new: list[Extent], new_crcs: array[int]) -> Manifest:
        """A manifest with logical blocks [lo, hi) replaced by `new` (and holes before `lo`
        if the object was shorter)."""
        assert sum(n for _, n in new) == hi - lo == len(new_crcs)
        n = self.nblocks
        out: list[Extent] = []
        out.extend((s, c) for _, s, c in self.runs(0, min(lo, n)))
        if lo > n:
            out.append((HOLE, lo - n))
        out.extend(new)
        if hi < n:
            out.extend((s, c) for _, s, c in self.runs(hi, n))
        crcs = array("I", self.crcs[: min(lo, n)])
        if lo > n:
            crcs.extend([ZERO_CRC] * (lo - n))
        crcs.extend(new_crcs)
        crcs.extend(self.crcs[hi:])
        return Manifest(_merged(out), crcs)

    # -- storage ---------------------------------------------------------------------------

    def encode(self) -> tuple[bytes, bytes]:
        ext = array("q", [v for e in self.extents for v in e])
        crcs = array("I", self.crcs)
        if _SWAP:
            ext.byteswap()
            crcs.byteswap()
        return ext.tobytes(), crcs.tobytes()

    @classmethod
    def decode(cls, ext_raw: bytes, crc_raw: bytes) -> Manifest:
        ext = array("q")
        ext.frombytes(ext_raw)
        crcs = array("I")
        crcs.frombytes(crc_raw)
        if _SWAP:
            ext.byteswap()
            crcs.byteswap()
        return cls(tuple(zip(ext[::2], ext[1::2], strict=True)), crcs)


def runs(extents: Sequence[Extent], lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
    """(logical block, physical block or HOLE, count) of `extents` covering [lo, hi)."""
    pos = 0
    for start, count in extents:
        end = pos + count
        if end > lo and pos < hi:
            a, b = max(pos, lo), min(end, hi)
            yield a, (HOLE if start == HOLE else start + a - pos), b - a
        if end >= hi:
            return
        pos = end


def block_crcs(data: bytes | bytearray | memoryview, block_size: int = BLOCK_SIZE) -> array[int]:
    """crc32c of each block of `data`; a short last block is counted as if zero-padded."""
    mv = memoryview(data)
    out = array("I")
    full = len(mv) - len(mv) % block_size
    crc = crc32c.crc32c
    out.extend([crc(mv[i : i + block_size]) for i in range(0, full, block_size)])
    if full < len(mv):
        out.append(crc(bytes(block_size - (len(mv) - full)), crc(mv[full:])))
    return out


def _merged(extents: list[Extent]) -> tuple[Extent, ...]:
    """Join neighbours that continue each other (two holes, or physically adjacent runs)."""
    out: list[Extent] = []
    for s, n in extents:
        if n == 0:
            continue
        if out:
            ps, pn = out[-1]
            if (ps == HOLE and s == HOLE) or (ps != HOLE and s == ps + pn):
                out[-1] = (ps, pn + n)
                continue
        out.append((s, n))
    return tuple(out)
