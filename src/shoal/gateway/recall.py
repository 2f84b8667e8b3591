"""Answers of the master that a gateway remembers for a while (shoal.gateway.auth's key
checks, shoal.gateway.s3keys' signing keys).

An answer is remembered `good_for` seconds, a refusal (an answer that `refused` says is one)
`bad_for`, and at most `remembered` of them (the least recently used go first). Concurrent
lookups of one key share one question, asked in a task of its own (a request that goes
away does not cancel it for the others). A question that fails (the master unreachable, an
error of the caller's own key) is not remembered: the next lookup asks again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Recall(Generic[K, V]):
    def __init__(
        self,
        *,
        good_for: float,
        bad_for: float,
        remembered: int,
        refused: Callable[[V], bool] = lambda v: False,
    ) -> None:
        self.good_for, self.bad_for, self.remembered = good_for, bad_for, remembered
        self.refused = refused
        self._known: OrderedDict[K, tuple[float, V]] = OrderedDict()  # key: (until, answer)
        self._asking: dict[K, asyncio.Task[V]] = {}

    def peek(self, key: K) -> V | None:
        """The answer remembered for `key`, if it is still good."""
        known = self._known.get(key)
        if known is None or known[0] <= time.monotonic():
            return None
        self._known.move_to_end(key)
        return known[1]

    def remember(self, key: K, value: V) -> None:
        ttl = self.bad_for if self.refused(value) else self.good_for
        self._known[key] = (time.monotonic() + ttl, value)
        self._known.move_to_end(key)
        while len(self._known) > self.remembered:
            self._known.popitem(last=False)

    async def get(self, key: K, ask: Callable[[], Awaitable[V]]) -> V:
        """The answer for `key`: remembered, or `ask()`ed (once for all who want it now)."""
        known = self.peek(key)
        if known is not None:
            return known
        asking = self._asking.get(key)
        if asking is None:
            asking = self._asking[key] = asyncio.ensure_future(self._ask(key, ask))
            asking.add_done_callback(_retrieved)
        return await asyncio.shield(asking)

    async def _ask(self, key: K, ask: Callable[[], Awaitable[V]]) -> V:
        try:
            value = await ask()
        finally:
            del self._asking[key]
        self.remember(key, value)
        return value


def _retrieved(task: asyncio.Task[V]) -> None:
    if not task.cancelled():
        task.exception()  # (seen: no "never retrieved" if every request waiting went away)
