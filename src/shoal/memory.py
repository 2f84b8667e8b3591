"""Process-wide memory settings for the servers that move large buffers (the gateways).

glibc gives each allocation over its mmap threshold (128 KiB at first) fresh pages from the
kernel and returns them on free, and trims the heap's top as soon as it is free: a server that
takes a 1 MiB body, sends it and drops it then pays a page fault and a kernel zeroing for
every 4 KiB of every request (measured: a third of the HTTP gateway's CPU on 1 MiB GETs).
Raising both thresholds keeps such buffers in the heap, whose pages stay mapped and are reused.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 << 20  # larger than any buffer a request holds (a stripe is 4 MiB)
TRIM_THRESHOLD = 256 << 20  # free heap kept at its top before it goes back to the kernel


def keep_heap() -> bool:
    """Apply the settings (glibc only); whether they were applied."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    return False
