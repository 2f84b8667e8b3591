"""The `write`/`read`/`stat`/`rm`/`ls` verbs against a real daemon, each run as a real process,
as the seed's commands are typed (with the daemon's address for 127.0.0.1:4148)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from shoal.client import AsyncClient, Client
from tests.conftest import SHOAL, DaemonProcess
from tests.integration.daemon_helpers import (
    LOG_LEAK,
    MiB,
    Terminal,
    data,
    digest,
    discard_disk,
    free_port_address,
    tidy,
)

pytestmark = pytest.mark.filterwarnings(LOG_LEAK)
PASSWD = Path("/etc/passwd")
_MS = re.compile(rb" in (\d+\.\d) ms")


@pytest.fixture
def daemon(daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """tests/conftest.py's daemon (stopped with SIGTERM after the test, exit status 0)."""
    yield tidy(daemon)
    discard_disk(daemon)


def shoal(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None, ok: bool = True
) -> subprocess.CompletedProcess[bytes]:
    p = subprocess.run(
        [*SHOAL, *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert b"Traceback" not in p.stderr, p.stderr.decode()
    if ok:
        assert p.returncode == 0, p.stderr.decode()
    return p


def one_error_line(p: subprocess.CompletedProcess[bytes]) -> str:
    """The command failed with exit status 1 and said why in one line on stderr."""
    assert p.returncode == 1, p
    text = p.stderr.decode()
    assert text.startswith("shoal: error: ") and text.count("\n") == 1, text
    return text


def test_seed_commands(daemon: DaemonProcess, tmp_path: Path) -> None:
    if not PASSWD.is_file():
        pytest.skip("no /etc/passwd here")
    passwd = PASSWD.read_bytes()
    addr = daemon.address

    # shoal -v write --storage-daemon 127.0.0.1:4148 --pool testpool testobj --data-literal ...
    p = shoal("-v", "write", "--storage-daemon", addr, "--pool", "testpool", "testobj",
              "--data-literal", "hello world")  # fmt: skip
    assert p.stdout == b""
    assert re.fullmatch(rb"wrote testpool/testobj: 11 bytes in [\d.]+ ms, .*\n", p.stderr)
    p = shoal("-v", "write", "--storage-daemon", addr, "--pool", "testpool", "passwd",
              "--data-file", "/etc/passwd")  # fmt: skip
    assert p.stderr.startswith(f"wrote testpool/passwd: {len(passwd)} bytes in ".encode())
    assert blake3.blake3(passwd).hexdigest().encode() in p.stderr

    # shoal -v read --storage-daemon 127.0.0.1:4148 --pool testpool passwd --offset 20 --length 40
    p = shoal("-v", "read", "--storage-daemon", addr, "--pool", "testpool", "passwd",
              "--offset", "20", "--length", "40")  # fmt: skip
    assert p.stdout == passwd[20:60]
    assert re.fullmatch(rb"read testpool/passwd: 40 bytes in [\d.]+ ms\n", p.stderr)
    read = ("read", "--storage-daemon", addr, "--pool", "testpool")
    assert shoal(*read, "testobj").stdout == b"hello world"
    assert shoal(*read, "testobj").stderr == b""  # quiet without -v
    assert shoal(*read, "passwd", "--offset", "20").stdout == passwd[20:]
    assert shoal(*read, "passwd", "--length", "5000000").stdout == passwd
    out = tmp_path / "out"
    p = shoal(*read, "passwd", "-o", str(out))
    assert out.read_bytes() == passwd and p.stdout == b""
    with Client(addr) as c:  # the library sees what the command wrote, and the reverse
        assert c.get("testpool", "passwd") == passwd
        c.put("testpool", "from-library", b"written by Client")
    assert shoal(*read, "from-library").stdout == b"written by Client"

    # the daemon's HTTP endpoint serves the same bytes (the README's curl -r 20-59)
    if shutil.which("curl"):
        c = subprocess.run(["curl", "-sS", "-r", "20-59", f"http://{daemon.http}/testpool/passwd"],
                           capture_output=True, timeout=60)  # fmt: skip
        assert c.returncode == 0 and c.stdout == passwd[20:60]

    # stat, as text and as JSON
    common = ("--storage-daemon", addr, "--pool", "testpool")
    text = shoal("stat", *common, "passwd").stdout.decode()
    assert re.search(rf"^\s+size: {len(passwd)}$", text, re.M), text
    assert re.search(rf"^\s+blake3: {blake3.blake3(passwd).hexdigest()}$", text, re.M), text
    info = json.loads(shoal("stat", *common, "passwd", "--json").stdout)
    assert (info["pool"], info["name"], info["size"]) == ("testpool", "passwd", len(passwd))
    assert info["blake3"] == blake3.blake3(passwd).hexdigest() and info["version"] == 1

    # ls: all, by prefix, long
    assert shoal("ls", *common).stdout.decode().split() == ["from-library", "passwd", "testobj"]
    assert shoal("ls", *common, "pa").stdout.decode().split() == ["passwd"]
    assert shoal("ls", *common, "--start-after", "passwd").stdout == b"testobj\n"
    long = shoal("ls", *common, "-l", "testobj").stdout.decode()
    assert re.fullmatch(r"\s+11 [0-9a-f]{16} v1\s+testobj\n", long), long
    assert shoal("ls", *common, "zzz").stdout == b""
    assert shoal("ls", "--storage-daemon", addr, "--pool", "nopool").stdout == b""

    # rm, then the object is gone
    p = shoal("-v", "rm", *common, "testobj")
    assert p.stderr == b"removed testpool/testobj\n"
    assert "not found" in one_error_line(shoal(*read, "testobj", ok=False))
    assert shoal("ls", *common).stdout.decode().split() == ["from-library", "passwd"]


def test_write_from_stdin_and_default_daemon(daemon: DaemonProcess) -> None:
    env = {"SHOAL_DAEMON": daemon.address}  # --storage-daemon's default
    shoal("write", "--pool", "p", "piped", "--data-file", "-", stdin=b"from a pipe", env=env)
    shoal("write", "--pool", "p", "piped2", stdin=b"no source named", env=env)
    shoal("write", "plain", "--data-literal", "default pool", env=env)
    assert shoal("read", "--pool", "p", "piped", env=env).stdout == b"from a pipe"
    assert shoal("read", "--pool", "p", "piped2", env=env).stdout == b"no source named"
    assert shoal("read", "plain", env=env).stdout == b"default pool"
    body = data("cli-big", 9 * MiB + 1)  # streamed both ways
    shoal("write", "--pool", "p", "big", stdin=body, env=env)
    assert shoal("read", "--pool", "p", "big", env=env).stdout == body
    p = shoal("read", "--pool", "p", "big", "--offset", str(4 * MiB - 1), "--length", str(MiB),
              env=env)  # fmt: skip
    assert p.stdout == body[4 * MiB - 1 : 5 * MiB - 1]


def test_ls_pages_through_more_than_a_thousand(daemon: DaemonProcess) -> None:
    names = [f"n/{i:05d}" for i in range(1001)]

    async def fill() -> None:
        async with AsyncClient(daemon.address, pool_size=1) as c:
            await c.ping()
            await asyncio.gather(*(c.put("many", n, b"") for n in names))
            await c.put("many", "other", b"")

    asyncio.run(fill())
    common = ("--storage-daemon", daemon.address, "--pool", "many")
    assert shoal("ls", *common, "n/").stdout.decode().split() == names
    assert shoal("ls", *common).stdout.decode().split() == [*names, "other"]
    assert shoal("ls", *common, "--start-after", "n/00990").stdout.decode().split() == [
        *names[991:],
        "other",
    ]


def test_errors_are_one_line_with_status_1(daemon: DaemonProcess, tmp_path: Path) -> None:
    nowhere = free_port_address()
    for verb in (
        ["write", "x", "--data-literal", "y"],
        ["read", "x"],
        ["stat", "x"],
        ["rm", "x"],
        ["ls"],
    ):
        p = shoal("-v", verb[0], "--storage-daemon", nowhere, "--pool", "p", *verb[1:], ok=False)
        line = one_error_line(p)
        assert f"cannot reach the daemon at {nowhere}" in line, line
        assert p.stdout == b""

    common = ("--storage-daemon", daemon.address, "--pool", "p")
    assert "not found" in one_error_line(shoal("read", *common, "missing", ok=False))
    assert "not found" in one_error_line(shoal("-v", "stat", *common, "missing", ok=False))
    assert "not found" in one_error_line(shoal("rm", *common, "missing", ok=False))
    shoal("write", *common, "short", "--data-literal", "abc")
    line = one_error_line(shoal("read", *common, "short", "--offset", "4", ok=False))
    assert "beyond the end" in line
    line = one_error_line(shoal("read", "--storage-daemon", "host:port", "x", ok=False))
    assert "HOST[:PORT]" in line
    line = one_error_line(
        shoal("write", *common, "x", "--data-file", str(tmp_path / "no"), ok=False)
    )
    assert "No such file" in line
    p = shoal("read", *common, "short", "--offset", "-1", ok=False)  # bad usage: status 2
    assert p.returncode == 2 and b"must be >= 0" in p.stderr


# -- the progress bar ------------------------------------------------------------------------


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _ms(text: bytes) -> float:
    m = _MS.search(text)
    assert m, text
    return float(m.group(1))


def test_nothing_but_the_verbose_line_without_a_terminal(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    big = _sparse(tmp_path / "big", 64 * MiB)
    common = ("--storage-daemon", daemon.address, "--pool", "p")
    daemon.proc.send_signal(signal.SIGSTOP)  # a transfer of over a second
    try:
        proc = subprocess.Popen([*SHOAL, "-v", "write", *common, "big", "--data-file", str(big)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        time.sleep(2.5)
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out == b""
    assert re.fullmatch(rb"wrote p/big: 67108864 bytes in [\d.]+ ms, .*\n", err), err
    assert _ms(err) > 1000

    p = shoal("-v", "read", *common, "big")
    assert p.stdout == bytes(64 * MiB)
    assert re.fullmatch(rb"read p/big: 67108864 bytes in [\d.]+ ms\n", p.stderr), p.stderr


def test_progress_bar_on_a_terminal_only_after_a_second(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    common = ("--storage-daemon", daemon.address, "--pool", "p")
    write = [*SHOAL, "-v", "write", *common]

    # quick: no bar
    small = _sparse(tmp_path / "small", 8 * MiB)
    term = Terminal([*write, "small", "--data-file", str(small)])
    assert term.wait() == 0
    screen = bytes(term.screen)
    assert b"wrote p/small: 8388608 bytes" in screen
    if _ms(screen) < 900:
        assert b"write small" not in screen and b"MiB" not in screen, screen

    # slow (the daemon stopped for a while): a bar, gone once the transfer is over
    big = _sparse(tmp_path / "big", 128 * MiB)
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        term = Terminal([*write, "big", "--data-file", str(big)])
        time.sleep(2.5)
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    assert term.wait() == 0
    screen = bytes(term.screen)
    assert _ms(screen) > 1000
    assert b"write big" in screen and b"/128.0 MiB" in screen, screen
    assert b"\x1b[?25h" in screen  # the cursor is given back when the bar goes
    assert screen.rstrip().endswith(b"134217728"), screen[-300:]  # the -v line comes last
    with Client(daemon.address) as c:
        assert c.stat("p", "big").size == 128 * MiB


def test_read_to_redirected_stdout_on_a_terminal(daemon: DaemonProcess) -> None:
    body = data("redirect", 64 * MiB)
    with Client(daemon.address) as c:
        c.put("p", "big", body)
    term = Terminal(
        [*SHOAL, "read", "--storage-daemon", daemon.address, "--pool", "p", "big"],
        stdout_pipe=True,
    )
    deadline = time.monotonic() + 30
    while len(term.stdout) < MiB and time.monotonic() < deadline:
        time.sleep(0.005)
    daemon.proc.send_signal(signal.SIGSTOP)  # now the read takes over a second
    try:
        time.sleep(1.3)
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    assert term.wait() == 0
    got = bytes(term.stdout)
    assert len(got) == len(body), f"stdout has {len(got)} bytes for {len(body)}: {got[-8:]!r}"
    assert digest(got) == digest(body)
    assert b"read big" in term.screen and b"/64.0 MiB" in term.screen
