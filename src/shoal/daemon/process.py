"""Start `shoal daemon` as a child process and learn where it listens (port 0 welcome).

The daemon prints one line when it is ready, `shoal daemon listening on H:P (native), H:P
(peer), H:P (http)`; `spawn` waits for it (or for the child to die) and returns the addresses.
Used by the tests' fixtures, the benchmarks and, later, `shoal up`.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

_ROLE = re.compile(rb"(\S+) \((native|peer|http)\)")


@dataclass
class DaemonProcess:
    proc: subprocess.Popen[bytes]
    dir: Path
    address: str  # native protocol, HOST:PORT
    http: str | None = None  # read-only HTTP endpoint, HOST:PORT
    peer: str | None = None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the daemon and wait for it (SIGKILL after `timeout`); its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def read_until(
    proc: subprocess.Popen[bytes], done: Callable[[bytes], bool], timeout: float
) -> bytes:
    """What the child prints on stdout until `done(all of it)`, it exits, or time is up."""
    assert proc.stdout is not None
    deadline, out = time.monotonic() + timeout, b""
    while time.monotonic() < deadline and not done(out):
        if select.select([proc.stdout], [], [], 0.2)[0]:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def spawn(
    directory: Path,
    *,
    size: str = "512M",
    listen: str = "127.0.0.1:0",
    http: str = "127.0.0.1:0",
    extra: Sequence[str] = (),
    log: Path | None = None,
    timeout: float = 60.0,
) -> DaemonProcess:
    """Start a daemon on `directory` and wait until it listens. Its stderr goes to `log`
    (default: DIR/daemon.log)."""
    directory.mkdir(parents=True, exist_ok=True)
    log = log or directory / "daemon.log"
    cmd = [sys.executable, "-m", "shoal.cli", "daemon", "--dir", str(directory), "--size", size,
           "--listen", listen, "--http", http, *extra]  # fmt: skip
    with open(log, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
    assert proc.stdout is not None
    line = read_until(proc, lambda out: b"\n" in out, timeout)
    roles = {role.decode(): addr.decode() for addr, role in _ROLE.findall(line)}
    if "native" not in roles:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        text = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"shoal daemon did not start: {line!r}\n{text}")
    return DaemonProcess(proc, directory, roles["native"], roles.get("http"), roles.get("peer"))
