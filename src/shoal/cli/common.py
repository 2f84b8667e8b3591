"""What the command groups of `shoal` share: argument types, progress bars, output, the
cluster options and the admin call. Imports nothing heavy at the top: every command loads it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from shoal.config import ClusterConfig, find_config
from shoal.errors import InvalidArgument

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}

# Set by `shoal -q`: no progress bars even on a terminal.
QUIET = False


def parse_size(text: str) -> int:
    """'4096', '64M', '1G', '1GiB', '10 TB' (binary units) -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgtp]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 4096, 64M, 1G)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def nonneg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {v}")
    return v


def run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        import asyncio

        return asyncio.run(coro)


def say(args: argparse.Namespace, text: str) -> None:
    if args.verbose:
        print(text, file=sys.stderr)


def show(fields: dict[str, object], as_json: bool, width: int = 10) -> None:
    if as_json:
        print(json.dumps(fields))
    else:
        for k, v in fields.items():
            print(f"{k:>{width}}: {v}")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# -- progress -------------------------------------------------------------------------------


def show_progress() -> bool:
    """Progress is drawn on a terminal only, and not with -q."""
    return not QUIET and sys.stderr.isatty()


@contextmanager
def progress(total: int | None, what: str, unit: str = "bytes") -> Iterator[Callable[[int], None]]:
    """An `advance(n)` callable; a progress bar (rich) appears on a terminal once the work has
    taken a second ($SHOAL_PROGRESS_AFTER seconds), and nothing is drawn in a pipe or with -q.
    `unit` is "bytes" or a noun counted ("keys", "objects")."""
    if not show_progress():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns: list[Any] = ["[progress.description]{task.description}", BarColumn()]
    if unit == "bytes":
        columns += [DownloadColumn(binary_units=True), TransferSpeedColumn()]
    else:
        columns += [MofNCompleteColumn(), f"{unit}"]
    bar = Progress(*columns, TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task(what, total=total)
    started = time.monotonic()
    shown = False
    after = float(os.environ.get("SHOAL_PROGRESS_AFTER") or 1.0)
    if after <= 0:
        bar.start()
        shown = True

    def advance(n: int) -> None:
        nonlocal shown
        bar.advance(task, n)
        if not shown and time.monotonic() - started >= after:
            bar.start()
            shown = True

    try:
        yield advance
    finally:
        if shown:
            bar.stop()


# -- the cluster ----------------------------------------------------------------------------


def add_cluster_options(v: argparse.ArgumentParser) -> None:
    g = v.add_argument_group("cluster (when no --storage-daemon is given)")
    g.add_argument("--master", metavar="HOST:PORT", help="the master's client address")
    g.add_argument("--access-key")
    g.add_argument("--secret-key")
    g.add_argument("--ca-cert", help="the cluster's CA certificate (TLS to the master)")
    g.add_argument("--config", help="a client config file (JSON, as `shoal up` writes)")


def need_config(args: argparse.Namespace) -> ClusterConfig:
    cfg = find_config(args)
    if cfg is None:
        raise InvalidArgument(
            "which cluster? give --master (or SHOAL_MASTER, or a client config; `shoal up` "
            "writes one)"
        )
    return cfg


def cluster_client(cfg: ClusterConfig) -> Any:
    from shoal.client.cluster import ClusterClient

    return ClusterClient(cfg.master, cfg.access_key, cfg.secret, ca=cfg.ca)


def admin(args: argparse.Namespace, cmd: str, **kw: Any) -> dict[str, Any]:
    """One admin command to the master of the cluster `args` names; its answer."""
    cfg = need_config(args)

    async def go() -> dict[str, Any]:
        c = cluster_client(cfg)
        try:
            out: dict[str, Any] = await c.admin(cmd, **kw)
            return out
        finally:
            await c.close()

    out: dict[str, Any] = run_async(go())
    return out
