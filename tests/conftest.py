"""Fixtures shared by the test tiers: real shoal processes on 127.0.0.1, port 0."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.daemon.process import DaemonProcess, spawn

__all__ = ["SHOAL", "DaemonProcess", "remove_data", "start_daemon"]

SHOAL = [sys.executable, "-m", "shoal.cli"]

# `shoal up` names its config in ~/.config/shoal/last-up for commands run elsewhere: the tests'
# clusters must not leave that in the user's home (children inherit this).
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="shoal-test-config-")


def start_daemon(directory: Path, *extra: str, size: str = "512M") -> DaemonProcess:
    """`shoal daemon` on port 0 (native and HTTP), ready to serve."""
    return spawn(directory, size=size, extra=extra)


def remove_data(d: DaemonProcess) -> None:
    """Give the data file's space back (pytest keeps recent temporary folders)."""
    (d.dir / "blocks").unlink(missing_ok=True)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path / "daemon")
    yield d
    assert d.stop() == 0, "the daemon should stop cleanly on SIGTERM"
    remove_data(d)
