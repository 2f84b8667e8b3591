"""What the daemons say about recovery and scrub, summed up for `shoal status`.

Each daemon puts its figures in its heartbeats (objects and bytes it still has to fetch or
hand over, what it has recovered so far, whether its copies are current, what its scrub
found). The master keeps the latest from each and a few seconds of history, so that status
can show totals, a recovery rate and an ETA. It also hands out requests the daemons act on:
a scrub now (`shoal scrub`), a recovery pass now (`shoal rebalance`), as counters in the
heartbeat reply.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from shoal.cluster.map import ClusterMap

RATE_WINDOW = 10.0  # seconds of history for the rate
_COUNTS = ("degraded_objects", "degraded_bytes", "misplaced_objects", "misplaced_bytes",
           "recovered_objects", "recovered_bytes")  # fmt: skip
_SCRUB = ("objects", "errors", "repaired")


class RecoveryReports:
    def __init__(self) -> None:
        self.latest: dict[int, dict[str, Any]] = {}
        self.history: dict[int, deque[tuple[float, int]]] = {}
        self.requests: dict[str, Any] = {"scrub": 0, "scrub_pool": "", "rebalance": 0}

    def report(self, daemon_id: int, figures: dict[str, Any]) -> None:
        now = time.monotonic()
        self.latest[daemon_id] = {**figures, "at": now}
        h = self.history.setdefault(daemon_id, deque())
        done = int(figures.get("recovered_bytes", 0))
        if h and done < h[-1][1]:  # the daemon restarted: its counts began again
            h.clear()
        h.append((now, done))
        while len(h) > 2 and now - h[1][0] > RATE_WINDOW:
            h.popleft()

    def forget(self, daemon_id: int) -> None:
        self.latest.pop(daemon_id, None)
        self.history.pop(daemon_id, None)

    def scrub(self, pool: str = "") -> int:
        self.requests["scrub"] += 1
        self.requests["scrub_pool"] = pool
        return int(self.requests["scrub"])

    def rebalance(self) -> int:
        self.requests["rebalance"] += 1
        return int(self.requests["rebalance"])

    def summary(self, m: ClusterMap) -> tuple[dict[str, Any], dict[str, Any]]:
        """(recovery, scrub) totals over the daemons that are up."""
        rec: dict[str, Any] = dict.fromkeys(_COUNTS, 0)
        scrub: dict[str, Any] = dict.fromkeys(_SCRUB, 0)
        rate, recovering, scrubbing, unknown = 0.0, 0, 0, 0
        done: list[int] = []  # the last scrub request each daemon up has answered
        for i, d in m.daemons.items():
            f = self.latest.get(i)
            if not d.up:
                continue
            if f is None:
                unknown += 1
                continue
            for k in _COUNTS:
                rec[k] += int(f.get(k, 0))
            for k in _SCRUB:
                scrub[k] += int(f.get("scrub", {}).get(k, 0))
            recovering += 0 if f.get("current") and f.get("epoch") == m.epoch else 1
            scrubbing += 1 if f.get("scrub", {}).get("running") else 0
            scrub["pass"] = scrub.get("pass", 0) + int(f.get("scrub", {}).get("pass", 0))
            done.append(int(f.get("scrub", {}).get("done", 0)))
            h = self.history.get(i)
            if h and len(h) > 1 and h[-1][0] > h[0][0]:
                rate += max(0, h[-1][1] - h[0][1]) / (h[-1][0] - h[0][0])
        left = rec["degraded_bytes"] + rec["misplaced_bytes"]
        rec["rate"] = round(rate)
        rec["eta"] = round(left / rate, 1) if rate > 0 and left else (0.0 if not left else None)
        rec["recovering"] = recovering + unknown
        scrub["running"] = scrubbing
        scrub["pass"] = scrub.get("pass", 0)
        scrub["done"] = min(done) if done and not unknown else 0
        return rec, scrub
