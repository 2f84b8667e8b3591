"""`shoal up` as a user runs it, for the tests: a real process in a folder, its output read
until it says it is up, stopped by its PID."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHOAL
from tests.integration.cluster_helpers import (
    all_exited,
    children_of,
    pids_under,
    shoal_env,
    stop_process,
)


class Up:
    """`shoal up` running in a folder; stopped with SIGINT by its PID."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.children: list[int] = []
        self.out = ""

    def start(self, *extra: str, timeout: float = 60.0, ok: bool = True) -> str:
        """Start it and wait until it says it is up (or exits, if not `ok`); what it printed."""
        with open(self.cwd / "up.err", "ab") as err:
            self.proc = subprocess.Popen(
                [*SHOAL, "up", "--base-port", "0", "--size", "256M", "--daemons", "3", *extra],
                cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=err,
                stdin=subprocess.DEVNULL, start_new_session=True,  # (a shell's foreground job)
            )  # fmt: skip
        assert self.proc.stdout is not None
        out, deadline = b"", time.monotonic() + timeout
        while b"Ctrl-C stops it" not in out and time.monotonic() < deadline:
            if select.select([self.proc.stdout], [], [], 0.2)[0]:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
            elif self.proc.poll() is not None:
                break
        self.out = out.decode()
        if not ok:  # (it is to fail: wait for that)
            self.proc.wait(timeout=timeout)
            self.proc.stdout.close()
            return self.out
        assert "Ctrl-C stops it" in self.out, self.out + self.stderr()
        self.children = children_of(self.proc.pid)
        return self.out

    def stderr(self) -> str:
        return (self.cwd / "up.err").read_text(errors="replace")

    def interrupt(self) -> int:
        """Ctrl-C as a terminal sends it (SIGINT to the foreground process group); its exit
        status. Its children must be gone too, stopped by it, not reported as dead."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        rc = stop_process(self.proc, None, timeout=30)
        assert all_exited(self.children), "shoal up left its children running"
        err = self.stderr()
        assert "by itself" not in err and "starting it again" not in err.split("stopping")[-1], err
        return rc

    def kill(self) -> None:
        """Whatever is left (after a failed test): SIGINT to `shoal up`, then SIGKILL to
        those of its children still running in this folder, by PID."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT, timeout=30)
        for pid in set(self.children) & set(pids_under(self.cwd)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    @property
    def data(self) -> Path:
        return self.cwd / "shoal-data"

    def processes(self) -> dict[str, dict[str, Any]]:
        """What DATA/up.json says of each process, by name."""
        try:
            doc = json.loads((self.data / "up.json").read_text())
        except (OSError, ValueError):
            return {}
        return {p["name"]: p for p in doc["processes"]}

    def pid(self, name: str) -> int:
        pid = self.processes()[name]["pid"]
        assert isinstance(pid, int), self.processes()[name]
        return pid


@pytest.fixture(name="up")
def up_fixture(tmp_path: Path) -> Iterator[Up]:
    """`shoal up` in this test's folder, killed (whatever is left of it) at the end."""
    u = Up(tmp_path, shoal_env(tmp_path / "home"))
    yield u
    u.kill()
    for blocks in (tmp_path / "shoal-data").glob("daemon*/blocks"):
        blocks.unlink()
