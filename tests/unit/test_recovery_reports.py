"""The master's sum of the daemons' recovery figures: totals over the daemons that are up,
a rate from each daemon's recent history, an ETA, and who is still catching up."""

from __future__ import annotations

import pytest

from shoal.cluster.map import ClusterMap, DaemonInfo
from shoal.master import recovery
from shoal.master.recovery import RecoveryReports


def cmap(epoch: int, up: dict[int, bool]) -> ClusterMap:
    ds = {i: DaemonInfo(i, f"127.0.0.1:{4000 + i}", f"h{i}", up=u) for i, u in up.items()}
    return ClusterMap(epoch, ds, {})


def figures(done: int, left: int, current: bool = True, epoch: int = 7, **scrub: int) -> dict:
    counts = {"objects": 0, "errors": 0, "repaired": 0, "running": False, **scrub}
    return {"degraded_objects": 1 if left else 0, "degraded_bytes": left,
            "misplaced_objects": 0, "misplaced_bytes": 0, "recovered_objects": done // 100,
            "recovered_bytes": done, "current": current, "epoch": epoch,
            "scrub": counts}  # fmt: skip


def test_totals_rate_eta_and_who_is_catching_up(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(recovery.time, "monotonic", lambda: now[0])
    r = RecoveryReports()
    m = cmap(7, {0: True, 1: True, 2: False, 3: True})
    r.report(0, figures(0, 1000, current=False, errors=2, repaired=1))
    r.report(1, figures(0, 0))
    r.report(2, figures(0, 5000))  # down: not counted
    now[0] += 2.0
    r.report(0, figures(400, 600, current=False))
    r.report(1, figures(0, 0, epoch=6))  # current, but at an older map
    rec, scrub = r.summary(m)
    assert rec["degraded_bytes"] == 600 and rec["recovered_bytes"] == 400
    assert rec["rate"] == 200 and rec["eta"] == 3.0
    assert rec["recovering"] == 3, "daemon 0 (not current), 1 (old epoch), 3 (never reported)"
    assert scrub["errors"] == 0, "the latest report counts, not a sum over time"
    # a daemon that restarted reports from zero: its history starts again, no negative rate
    now[0] += 1.0
    r.report(0, figures(10, 590))
    rec, _ = r.summary(m)
    assert rec["rate"] == 0 and rec["eta"] is None
    # all done: nothing left, ETA 0
    r.report(0, figures(600, 0))
    r.report(1, figures(0, 0))
    r.report(3, figures(0, 0))
    rec, _ = r.summary(m)
    assert rec["degraded_bytes"] == 0 and rec["eta"] == 0.0 and rec["recovering"] == 0


def test_scrub_and_rebalance_requests_are_counters() -> None:
    r = RecoveryReports()
    assert r.requests == {"scrub": 0, "scrub_pool": "", "rebalance": 0}
    assert r.scrub("photos") == 1 and r.requests["scrub_pool"] == "photos"
    assert r.scrub() == 2 and r.requests["scrub_pool"] == ""
    assert r.rebalance() == 1
