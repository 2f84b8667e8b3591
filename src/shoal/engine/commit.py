"""Group commit: many writers, one data flush and one KeyStore transaction per group.

A writer has put its data in fresh blocks before it submits a Change. The first waiting writer
becomes the leader: it takes every queued change, flushes the device once (data durable before
its commit), applies each change in a savepoint of one transaction, commits (SQLite fsyncs its
WAL) and wakes the others. Writers that arrive meanwhile queue for the next group, so under
load one pair of flushes serves many writes. A failed change rolls back to its savepoint and
does not disturb the rest of its group. A failed data flush is fatal: after it the page cache
may lie about what is on disk, so the store refuses writes until reopened.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from shoal.engine.freelist import Extent
from shoal.engine.keystore import KeyStore, Record
from shoal.errors import NoSpace, ShoalError, StoreFailed


@dataclass(slots=True)
class Outcome:
    """What a committed change did: the object's new record (None if it is gone) and the
    blocks it no longer needs, to be freed by the caller now that the commit is durable."""

    namespace: str
    name: str
    record: Record | None
    freed: list[Extent] = field(default_factory=list)
    previous: Record | None = None


class Change(Protocol):
    writes_data: bool

    def apply(self, keys: KeyStore) -> Outcome: ...


class _Ticket:
    __slots__ = ("change", "done", "error", "outcome")

    def __init__(self, change: Change) -> None:
        self.change = change
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self.done = False


@dataclass(slots=True)
class CommitStats:
    groups: int = 0
    changes: int = 0
    flushes: int = 0


class GroupCommitter:
    def __init__(
        self,
        keys: KeyStore,
        flush_data: Callable[[], None],
        after_commit: Callable[[list[Outcome]], None],
    ) -> None:
        self._keys = keys
        self._flush = flush_data
        self._after = after_commit
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Ticket] = []
        self._leading = False
        self.failed: str | None = None
        self.stats = CommitStats()

    def submit(self, change: Change) -> Outcome:
        ticket = _Ticket(change)
        with self._cond:
            self._queue.append(ticket)
            while not ticket.done:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                batch, self._queue = self._queue, []
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._leading = False
                    self._cond.notify_all()
        if ticket.error is not None:
            raise ticket.error
        assert ticket.outcome is not None
        return ticket.outcome

    def _run(self, batch: list[_Ticket]) -> None:
        try:
            if self.failed is not None:
                raise StoreFailed(self.failed)
            if any(t.change.writes_data for t in batch):
                try:
                    self._flush()
                except OSError as exc:
                    self.failed = f"a data flush failed ({exc}); reopen the store"
                    raise StoreFailed(self.failed) from exc
                self.stats.flushes += 1
            self._apply(batch)
            self.stats.groups += 1
            self.stats.changes += len(batch)
            self._after([t.outcome for t in batch if t.outcome is not None])
        except BaseException as exc:
            for t in batch:
                t.outcome = None
                if t.error is None:
                    t.error = exc
        finally:
            for t in batch:
                t.done = True

    def _apply(self, batch: list[_Ticket]) -> None:
        keys = self._keys
        try:
            keys.begin()
            for t in batch:
                keys.savepoint()
                try:
                    t.outcome = t.change.apply(keys)
                except ShoalError as exc:
                    keys.rollback_to()
                    t.error = exc
                else:
                    keys.release()
            keys.commit()
        except sqlite3.Error as exc:
            keys.rollback()
            if "full" in str(exc):
                raise NoSpace(f"the key store {keys.path} is full: {exc}") from exc
            raise StoreFailed(f"the key store {keys.path} failed: {exc}") from exc
