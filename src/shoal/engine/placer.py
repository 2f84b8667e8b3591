"""Placer: turns "N bytes" into extents taken from the FreeList, under one lock.

The FreeList itself is single-threaded; every thread that allocates or frees goes through here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from shoal.engine.freelist import Extent, FreeList


class Placer:
    def __init__(self, freelist: FreeList, block_size: int) -> None:
        self.freelist = freelist
        self.block_size = block_size
        self._lock = threading.Lock()

    def blocks_for(self, nbytes: int) -> int:
        return -(-nbytes // self.block_size)

    def place(self, nblocks: int) -> list[Extent]:
        """Extents for `nblocks` blocks, or NoSpace with nothing taken."""
        with self._lock:
            return self.freelist.allocate(nblocks)

    def release(self, extents: Iterable[Extent]) -> None:
        with self._lock:
            self.freelist.free_all(extents)

    @property
    def free_blocks(self) -> int:
        return self.freelist.free_blocks
