"""A child that must not outlive its parent: `shoal up`'s master, daemons and gateway.

The parent starts the child with SHOAL_PARENT_PID set to its own pid; the child (the `shoal`
command, before anything else) asks Linux for SIGTERM when that parent ends, however it ends
(SIGKILL included: prctl's PR_SET_PDEATHSIG), so a killed `shoal up` leaves no process holding
its ports or its disks. SIGTERM, not SIGKILL: the child stops cleanly (the engine would survive
either). Elsewhere than Linux this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

ENV = "SHOAL_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """If this process was started by a parent that asked for it, end with that parent."""
    wanted = os.environ.pop(ENV, None)
    if not wanted or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return
    if str(os.getppid()) != wanted:  # the parent ended before prctl: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that must end with this process."""
    out = dict(os.environ if env is None else env)
    out[ENV] = str(os.getpid())
    return out
