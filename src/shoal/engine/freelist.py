"""FreeList: the free extents of one device, kept in two ordered structures.

`_by_start` (start -> length) finds neighbours for coalescing; `_by_len` ((length, start))
finds the best fit. The FreeList is never the truth on disk: the ObjectStore rebuilds it at
open as the complement of every manifest, so a crash can neither leak a block nor hand one out
twice. Rules kept here: free extents never overlap and never touch (touching ones coalesce);
`allocate` either returns all the blocks asked for or takes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sortedcontainers import SortedDict, SortedList

from shoal.errors import NoSpace

Extent = tuple[int, int]  # (first block, block count)


class FreeList:
    def __init__(self, start: int, end: int) -> None:
        """An empty free list over blocks [start, end); nothing is free until `free`d."""
        self.start = start
        self.end = end
        self._by_start: SortedDict = SortedDict()
        self._by_len: SortedList = SortedList()
        self.free_blocks = 0

    @classmethod
    def complement(cls, start: int, end: int, used: Iterable[Extent]) -> FreeList:
        """The free list of [start, end) when `used` extents are taken (they may overlap)."""
        fl = cls(start, end)
        cursor = start
        for s, n in sorted(used):
            if s > cursor:
                fl._insert(cursor, s - cursor)
            cursor = max(cursor, s + n)
        if cursor < end:
            fl._insert(cursor, end - cursor)
        return fl

    # -- queries ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Extent]:
        return iter(self._by_start.items())

    def __len__(self) -> int:
        return len(self._by_start)

    def largest(self) -> int:
        return self._by_len[-1][0] if self._by_len else 0

    # -- changes ---------------------------------------------------------------------------

    def allocate(self, count: int) -> list[Extent]:
        """Take `count` blocks: one extent if any free extent is big enough (the smallest
        such, best fit), else the largest extents first. Raises NoSpace, taking nothing."""
        if count <= 0:
            return []
        if count > self.free_blocks:
            raise NoSpace(
                f"need {count} blocks, {self.free_blocks} free "
                f"({count * 4096} bytes asked, {self.free_blocks * 4096} free)"
            )
        i = self._by_len.bisect_left((count, -1))
        if i < len(self._by_len):
            length, start = self._by_len[i]
            self._remove(start, length)
            if length > count:
                self._insert(start + count, length - count)
            return [(start, count)]
        taken: list[Extent] = []
        need = count
        while need:
            length, start = self._by_len[-1]
            self._remove(start, length)
            if length > need:
                self._insert(start + need, length - need)
                length = need
            taken.append((start, length))
            need -= length
        taken.sort()
        return taken

    def free(self, start: int, count: int) -> None:
        """Give blocks back, merging with free neighbours. Freeing a block that is already
        free, or outside the device, is a bug upstream and raises ValueError."""
        if count <= 0:
            return
        end = start + count
        if start < self.start or end > self.end:
            raise ValueError(f"free of [{start}, {end}) outside [{self.start}, {self.end})")
        i = self._by_start.bisect_right(start)
        pred = self._by_start.peekitem(i - 1) if i else None
        succ = self._by_start.peekitem(i) if i < len(self._by_start) else None
        for ext in (pred, succ):
            if ext is not None and ext[0] < end and start < ext[0] + ext[1]:
                s, n = ext
                raise ValueError(f"double free: [{start}, {end}) overlaps free [{s}, {s + n})")
        if pred is not None and pred[0] + pred[1] == start:
            self._remove(*pred)
            start, count = pred[0], count + pred[1]
        if succ is not None and succ[0] == end:
            self._remove(*succ)
            count += succ[1]
        self._insert(start, count)

    def free_all(self, extents: Iterable[Extent]) -> None:
        for s, n in extents:
            self.free(s, n)

    def _insert(self, start: int, length: int) -> None:
        self._by_start[start] = length
        self._by_len.add((length, start))
        self.free_blocks += length

    def _remove(self, start: int, length: int) -> None:
        del self._by_start[start]
        self._by_len.remove((length, start))
        self.free_blocks -= length
