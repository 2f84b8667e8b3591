"""Pins: blocks that readers may still be using are not given to another object yet.

A reader that sends an object's bytes straight from the page cache (a mapping of the device)
verifies them first and sends them after; if the object were overwritten in between, its old
blocks could be reused and rewritten, and the reader would send someone else's bytes. So a
reader pins before it looks the object up, and freed blocks are retired rather than freed:
they go back to the FreeList once every reader pinned before they were freed has finished.

Epochs, as in epoch-based reclamation: each retirement is stamped with the current epoch and
then starts a new one; a reader pins the current epoch. Retired blocks of epoch e are free
when no pin of an epoch <= e is left. Readers that come later never hold them back, so a
steady stream of readers cannot keep blocks from being freed.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from shoal.engine.freelist import Extent


class Pins:
    def __init__(self, free: Callable[[list[Extent]], None]) -> None:
        self._free = free
        self._cond = threading.Condition(threading.Lock())
        self._epoch = 0
        self._active: Counter[int] = Counter()  # epoch -> readers pinned in it
        self._retired: deque[tuple[int, list[Extent]]] = deque()

    @contextmanager
    def held(self) -> Iterator[None]:
        """No block that is part of an object now is freed until this exits. Take it before
        looking the object up."""
        with self._cond:
            epoch = self._epoch
            self._active[epoch] += 1
        try:
            yield
        finally:
            with self._cond:
                self._active[epoch] -= 1
                if not self._active[epoch]:
                    del self._active[epoch]
                    self._cond.notify_all()
                ready = self._ready()
            self._free_all(ready)

    def retire(self, extents: list[Extent]) -> None:
        """`extents` are no longer part of any object: free them once no reader can be using
        them (at once if no reader is pinned)."""
        if not extents:
            return
        with self._cond:
            if self._active:
                self._retired.append((self._epoch, extents))
                self._epoch += 1
                return
        self._free(extents)

    def wait_readers(self) -> None:
        """Return once every reader pinned before this call has finished (for blocks about to
        be zeroed or discarded in place)."""
        with self._cond:
            epoch = self._epoch
            self._epoch += 1
            self._cond.wait_for(lambda: not self._active or min(self._active) > epoch)

    @property
    def retired_blocks(self) -> int:
        with self._cond:
            return sum(n for _, ext in self._retired for _, n in ext)

    def _ready(self) -> list[list[Extent]]:
        """(Under the lock.) The retirements no pinned reader can be using any more."""
        oldest = min(self._active) if self._active else self._epoch
        out = []
        while self._retired and self._retired[0][0] < oldest:
            out.append(self._retired.popleft()[1])
        return out

    def _free_all(self, ready: list[list[Extent]]) -> None:
        for extents in ready:
            self._free(extents)
