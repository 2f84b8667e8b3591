"""Group commit: many writers, one data flush and one KeyStore transaction per group.

A large object's data is written by its writer before it submits its Change; a small one's
travels with the change. One writer at a time is the leader: it takes every queued change,
lets each prepare what it carries (`prepare`: allocate, checksum, hash), writes all of it with
as few system calls as the blocks allow (neighbouring blocks in one pwritev), flushes the
device once (all data durable before any commit), reads the rows the changes touch in one
query, works out each change in memory (a change is a pure function from the current row to
the new one, so a refused change leaves the row as it was for the next), writes the results
in one transaction and commits (SQLite fsyncs its WAL). It then wakes exactly the writers it
served. The lead passes to the first writer that queued meanwhile as soon as the data flush is
done, so the next group writes and flushes while this one commits (a two-stage pipeline, in
group order). Under load one pair of flushes serves many writes.

Why the leader does the small writes' work itself: while other threads hold the GIL, each of
the leader's returns from a system call waits for it, and those waits, not the disk, would set
the pace. Writers that sleep until their commit is done leave the leader running uncontended.

A failed data flush is fatal: after it the page cache may lie about the disk, so the store
refuses writes until it is reopened.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from shoal.engine.freelist import Extent
from shoal.engine.keystore import KeyStore, Record
from shoal.errors import NoSpace, ShoalError, StoreFailed

Piece = tuple[int, list[bytes | memoryview]]  # (device block, buffers of whole blocks)


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
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def writes_data(self) -> bool: ...

    def prepare(self) -> list[Piece]:
        """Blocks to write for the data the change carries, if any (run by the leader)."""
        ...

    def apply(self, cur: Record | None) -> Outcome:
        """The outcome of this change on the object's current record (None: absent).
        Raises a ShoalError to refuse, changing nothing."""
        ...


class _Ticket:
    __slots__ = ("change", "done", "error", "outcome", "wake")

    def __init__(self, change: Change) -> None:
        self.change = change
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self.done = False
        self.wake = threading.Lock()
        self.wake.acquire()  # released by the leader: "done" or "you lead now"


@dataclass(slots=True)
class CommitStats:
    groups: int = 0
    changes: int = 0
    flushes: int = 0


class _CommitUnknown(StoreFailed):
    """The key store's COMMIT failed: whether it reached the disk is unknown."""


def committed(exc: BaseException) -> bool | None:
    """For an exception from `GroupCommitter.submit`: is the change committed?"""
    state: bool | None = getattr(exc, "shoal_committed", False)
    return state


def _acquire(lock: threading.Lock) -> BaseException | None:
    """Take `lock` even if interrupted (Ctrl-C): the commit protocol must run to its end.
    Returns the first interrupt, to be raised once it has."""
    interrupted: BaseException | None = None
    while True:
        try:
            lock.acquire()
            return interrupted
        except BaseException as exc:
            interrupted = interrupted or exc


def _fail(batch: list[_Ticket], exc: BaseException, state: bool | None) -> None:
    """Nothing of the batch is committed (`state` False), or maybe it is (None): every
    ticket without an error of its own gets one (its own instance)."""
    for t in batch:
        t.outcome = None
        if t.error is None:
            t.error = type(exc)(str(exc)) if isinstance(exc, ShoalError) else exc
            t.error.shoal_committed = state  # type: ignore[attr-defined]


class GroupCommitter:
    def __init__(
        self,
        keys: KeyStore,
        write: Callable[[list[Piece]], None],
        flush: Callable[[], None],
        after_commit: Callable[[list[Outcome]], None],
    ) -> None:
        self._keys = keys
        self._write = write
        self._flush = flush
        self._after = after_commit
        self._mutex = threading.Lock()
        self._commit_lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._leading = False
        self.failed: str | None = None
        self.stats = CommitStats()

    def submit(self, change: Change) -> Outcome:
        """Commit `change` in the next group. An exception raised from here says in
        `committed(exc)` whether the change is committed all the same (True: an interrupt
        that arrived after it was), is not (False), or is unknown (None: a failed key store
        commit; then the blocks it wrote must stay allocated until the store is reopened)."""
        (ticket,), interrupted = self._run([change])
        if interrupted is not None:
            interrupted.shoal_committed = ticket.error is None  # type: ignore[attr-defined]
            raise interrupted
        if ticket.error is not None:
            raise ticket.error
        assert ticket.outcome is not None
        return ticket.outcome

    def submit_many(self, changes: list[Change]) -> list[Outcome | BaseException]:
        """Commit several changes in the same group; each one's outcome or error (whose
        `committed` says as for `submit`). For a caller that batches requests itself, so that
        many writes cost one thread's turn instead of many threads' hand-offs."""
        tickets, interrupted = self._run(changes)
        if interrupted is not None:
            interrupted.shoal_committed = None  # type: ignore[attr-defined]
            raise interrupted
        out: list[Outcome | BaseException] = []
        for t in tickets:
            assert t.error is not None or t.outcome is not None
            out.append(t.error if t.error is not None else t.outcome)  # type: ignore[arg-type]
        return out

    def _run(self, changes: list[Change]) -> tuple[list[_Ticket], BaseException | None]:
        """Queue the changes together (so they fall in one group) and see them committed,
        leading the group if no one else is. Returns the tickets, and an interrupt that came
        meanwhile (the protocol itself always runs to its end)."""
        tickets = [_Ticket(c) for c in changes]
        if not tickets:
            return tickets, None
        first = tickets[0]
        with self._mutex:
            self._queue += tickets
            lead = not self._leading
            self._leading = True
        interrupted = None if lead else _acquire(first.wake)
        if not first.done:  # leading
            with self._mutex:
                batch, self._queue = self._queue, []
            interrupted = self._lead(batch) or interrupted
        return tickets, interrupted

    def _lead(self, batch: list[_Ticket]) -> BaseException | None:
        """Write and flush the batch, then pass the lead on and commit: the next group's
        data flush overlaps this group's KeyStore commit. Commits stay in group order: the
        commit lock is taken before the lead is passed. The protocol always runs to its end
        (every ticket done, the lead passed on); an interrupt meanwhile is returned."""
        written = False
        try:
            if self.failed is not None:
                raise StoreFailed(self.failed)
            self._write_data(batch)
            written = True
        except BaseException as exc:
            _fail(batch, exc, False)
        interrupted = _acquire(self._commit_lock)
        with self._mutex:
            if self._queue:
                self._queue[0].wake.release()
            else:
                self._leading = False
        committed = False
        try:
            if written:
                self._apply([t for t in batch if t.error is None])
                committed = True
                self.stats.groups += 1
                self.stats.changes += len(batch)
                self._after([t.outcome for t in batch if t.outcome is not None])
        except BaseException as exc:
            if committed:  # the outcomes stand; only the interrupt is left to report
                interrupted = interrupted or exc
            else:
                _fail(batch, exc, None if isinstance(exc, _CommitUnknown) else False)
        finally:
            self._commit_lock.release()
            for t in batch:
                t.done = True
            for t in batch[1:]:  # the first is the leader itself, awake already
                t.wake.release()
        return interrupted

    def _write_data(self, batch: list[_Ticket]) -> None:
        flush = False
        pieces: list[Piece] = []
        owners: list[_Ticket] = []
        for t in batch:
            try:
                mine = t.change.prepare()
            except (OSError, ShoalError) as exc:
                t.error = exc
                continue
            if mine:
                pieces += mine
                owners.append(t)
            flush = flush or t.change.writes_data
        if pieces:
            try:
                self._write(pieces)
            except (OSError, ShoalError) as exc:
                _fail(owners, exc, False)
        if flush:
            try:
                self._flush()
            except OSError as exc:
                self.failed = f"a data flush failed ({exc}); reopen the store"
                raise StoreFailed(self.failed) from exc
            self.stats.flushes += 1

    def _apply(self, batch: list[_Ticket]) -> None:
        keys = self._keys
        try:
            keys.begin()
            state = keys.w_get_many({(t.change.namespace, t.change.name) for t in batch})
            touched: set[tuple[str, str]] = set()
            for t in batch:
                k = (t.change.namespace, t.change.name)
                try:
                    t.outcome = t.change.apply(state.get(k))
                except ShoalError as exc:
                    t.error = exc
                    continue
                state[k] = t.outcome.record
                touched.add(k)
            keys.w_write(
                [r for k in touched if (r := state[k]) is not None],
                [k for k in touched if state[k] is None],
            )
        except BaseException as exc:
            keys.rollback()
            if isinstance(exc, sqlite3.Error):
                if "full" in str(exc):
                    raise NoSpace(f"the key store {keys.path} is full: {exc}") from exc
                raise StoreFailed(f"the key store {keys.path} failed: {exc}") from exc
            raise
        try:
            keys.commit()
        except BaseException as exc:
            # The WAL may hold the commit or not: stop, and let reopening tell.
            self.failed = f"a key store commit failed ({exc}); reopen the store"
            with contextlib.suppress(Exception):
                keys.rollback()
            raise _CommitUnknown(self.failed) from exc
