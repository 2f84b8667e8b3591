"""Fixtures shared by the test tiers: real shoal processes on 127.0.0.1, port 0."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SHOAL = [sys.executable, "-m", "shoal.cli"]


@dataclass
class DaemonProcess:
    proc: subprocess.Popen[bytes]
    dir: Path
    address: str  # native protocol HOST:PORT
    http: str  # HTTP read endpoint HOST:PORT

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def remove_data(self) -> None:
        """Give the data file's space back (pytest keeps recent temporary folders)."""
        (self.dir / "blocks").unlink(missing_ok=True)


def start_daemon(directory: Path, *extra: str, size: str = "512M") -> DaemonProcess:
    """Start `shoal daemon` on port 0 and wait for its listening line."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "daemon.log", "ab") as log:
        proc = subprocess.Popen(
            [*SHOAL, "daemon", "--dir", str(directory), "--size", size, "--listen", "127.0.0.1:0",
             "--http", "127.0.0.1:0", *extra],
            stdout=subprocess.PIPE,
            stderr=log,
        )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    line = b""
    while time.monotonic() < deadline and b"\n" not in line:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
        elif proc.poll() is not None:
            break
    m = re.search(rb"listening on (\S+) \(native\).*?(\S+) \(http\)", line)
    if not m:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        text = (directory / "daemon.log").read_text(errors="replace")
        raise RuntimeError(f"daemon did not start: {line!r}\n{text}")
    return DaemonProcess(proc, directory, m.group(1).decode(), m.group(2).decode())


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path / "daemon")
    yield d
    assert d.stop() == 0, "the daemon should stop cleanly on SIGTERM"
    d.remove_data()
