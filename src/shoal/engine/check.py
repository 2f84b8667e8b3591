"""check: verify every checksum, every content hash and the allocation of one store.

Allocation rules checked: every manifest extent lies in the data area, no block is claimed
by two objects, no block is both used and free, and used + free covers the data area exactly
(no block lost). Meant for a quiescent store: blocks of a write still in flight look lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.engine.freelist import Extent
from shoal.engine.keys import Hasher
from shoal.engine.manifest import HOLE
from shoal.engine.objectstore import ObjectStore

_CHUNK = 256  # blocks read at a time


@dataclass
class CheckReport:
    objects: int = 0
    bytes: int = 0
    used_blocks: int = 0
    free_blocks: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(store: ObjectStore, *, progress: Callable[[int], None] | None = None) -> CheckReport:
    """`progress`, if given, is called with the number of bytes verified so far."""
    report = CheckReport(problems=list(store.problems))
    bs = store.block_size
    used: list[Extent] = []
    done = 0
    for rec in store.keys.scan():
        what = f"{rec.namespace}/{rec.name}"
        m = rec.manifest
        report.objects += 1
        report.bytes += rec.size
        if sum(n for _, n in m.extents) != m.nblocks or m.nblocks != -(-rec.size // bs):
            report.problems.append(
                f"{what}: manifest covers {sum(n for _, n in m.extents)} blocks with "
                f"{m.nblocks} checksums for {rec.size} bytes"
            )
            continue
        used.extend(e for e in m.extents if e[0] != HOLE)
        hasher = Hasher()
        bad: list[int] = []
        for lo in range(0, m.nblocks, _CHUNK):
            hi = min(lo + _CHUNK, m.nblocks)
            buf = store.blocks.read_raw(m, lo, hi)
            bad += store.blocks.bad_blocks(m, lo, buf)
            if rec.hash is not None:
                hasher.update(memoryview(buf)[: max(0, min(len(buf), rec.size - lo * bs))])
            done += len(buf)
            if progress:
                progress(done)
        if bad:
            shown = ", ".join(map(str, bad[:8])) + (" ..." if len(bad) > 8 else "")
            report.problems.append(
                f"{what}: {len(bad)} block(s) fail their checksum (logical blocks {shown})"
            )
        elif rec.hash is not None and hasher.digest() != rec.hash:
            report.problems.append(f"{what}: content does not match its BLAKE3 hash")
    report.problems += _allocation(store, used)
    report.used_blocks = sum(n for _, n in used)
    report.free_blocks = store.free_blocks
    return report


def _allocation(store: ObjectStore, used: list[Extent]) -> list[str]:
    start, end = store.device.data_start, store.device.block_count
    problems: list[str] = []
    free = list(store.placer.freelist)
    marks = sorted([(s, n, "used") for s, n in used] + [(s, n, "free") for s, n in free])
    cursor = start
    for s, n, kind in marks:
        if s < cursor:
            problems.append(f"block {s} is counted twice ({kind} and already taken)")
        elif s > cursor:
            problems.append(f"blocks [{cursor}, {s}) are neither used nor free (lost)")
        cursor = max(cursor, s + n)
    if cursor < end:
        problems.append(f"blocks [{cursor}, {end}) are neither used nor free (lost)")
    elif cursor > end:
        problems.append(f"blocks up to {cursor} lie beyond the device's end {end}")
    return problems
