"""Long work shows progress on a terminal and is quiet in a pipe or with -q: `shoal write` and
`read` of a large file, `shoal index rebuild`, `shoal rebalance` and `shoal scrub`, each run
as a real process whose stderr is a pseudo-terminal (or a pipe). SHOAL_PROGRESS_AFTER=0 draws
a bar at once, where a user's bar waits a second: these runs are short."""

from __future__ import annotations

import os
import pty
import select
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.up import LocalCluster
from tests.conftest import SHOAL
from tests.integration.cluster_helpers import shoal_env

BIG = 24 << 20  # striped: 6 stripes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data = tmp_path_factory.mktemp("progress") / "shoal-data"
    lc = LocalCluster(data, 3, "256M", 0, http_port=-1)
    try:
        lc.wait_ready(lc.start())
        yield lc
    finally:
        lc.stop()
        for blocks in data.glob("daemon*/blocks"):
            blocks.unlink()


def run(lc: LocalCluster, *args: str, tty: bool) -> tuple[int, bytes]:
    """`shoal ARGS` with the cluster's config; its exit status and what it wrote on stderr
    (a pseudo-terminal if `tty`, else a pipe)."""
    env = shoal_env(lc.data.parent / "home", SHOAL_CONFIG=str(lc.config_path),
                    SHOAL_PROGRESS_AFTER="0", COLUMNS="100")  # fmt: skip
    cmd = [*SHOAL, *args]
    if not tty:
        p = subprocess.run(cmd, env=env, cwd=lc.data.parent, capture_output=True, timeout=120)
        return p.returncode, p.stderr
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, env=env, cwd=lc.data.parent, stdout=subprocess.DEVNULL,
                                stderr=slave, stdin=subprocess.DEVNULL)  # fmt: skip
        os.close(slave)
        out = b""
        while True:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # (the child closed its end)
                    chunk = b""
                if chunk:
                    out += chunk
                    continue
            if proc.poll() is not None:
                break
        return proc.wait(timeout=120), out
    finally:
        os.close(master)


def drawn(err: bytes, what: str) -> bool:
    """A rich progress bar for `what` was drawn."""
    return what.encode() in err and "━".encode() in err


def test_write_and_read_of_a_large_file(cluster: LocalCluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "big.bin", tmp_path / "back.bin"
    src.write_bytes(os.urandom(BIG))
    rc, err = run(cluster, "write", "big", "--data-file", str(src), tty=True)
    assert rc == 0 and drawn(err, "write big"), err[-2000:]
    assert b"MiB" in err
    rc, err = run(cluster, "read", "big", "-o", str(dst), tty=True)
    assert rc == 0 and drawn(err, "read big"), err[-2000:]
    assert dst.read_bytes() == src.read_bytes()
    # quiet in a pipe, and with -q on a terminal
    assert run(cluster, "write", "big", "--data-file", str(src), tty=False) == (0, b"")
    rc, err = run(cluster, "-q", "read", "big", "-o", str(dst), tty=True)
    assert rc == 0 and not drawn(err, "read big") and b"\x1b[" not in err, err


def test_index_rebuild(cluster: LocalCluster, tmp_path: Path) -> None:
    index = f"sqlite:///{tmp_path / 'index.db'}"
    for i in range(20):
        rc, _ = run(cluster, "write", f"k{i}", "--data-literal", "v", tty=False)
        assert rc == 0
    rc, err = run(cluster, "index", "rebuild", "--index", index, tty=True)
    assert rc == 0 and drawn(err, "rebuild default") and b"keys" in err, err[-2000:]
    rc, err = run(cluster, "index", "rebuild", "--index", index, tty=False)
    assert rc == 0 and err == b"", err


def test_rebalance(cluster: LocalCluster) -> None:
    rc, err = run(cluster, "rebalance", tty=True)
    assert rc == 0 and drawn(err, "rebalance"), err[-2000:]
    rc, err = run(cluster, "rebalance", tty=False)
    assert rc == 0 and err == b"", err


def test_scrub(cluster: LocalCluster) -> None:
    rc, err = run(cluster, "scrub", tty=True)
    assert rc == 0 and drawn(err, "scrub") and b"objects" in err, err[-2000:]
    rc, err = run(cluster, "scrub", tty=False)
    assert rc == 0 and err == b"", err
