"""Helpers for the tests that talk to a real `shoal daemon` process: raw sockets speaking (or
not speaking) the native protocol, deterministic data, and a witness set of objects whose
content must survive whatever a test throws at the daemon."""

from __future__ import annotations

import os
import pty
import random
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from shoal.client import Client
from shoal.errors import NotFound
from shoal.proto.frames import FrameEnd, FrameReader, FrameStart, Header, Payload, encode
from tests.conftest import SHOAL, DaemonProcess

MiB = 1 << 20

# tests/conftest.py's start_daemon leaves the file it opens for the daemon's stderr to the
# garbage collector: a ResourceWarning, an error in this suite. Exactly that one is ignored by
# the modules that start daemons (`pytestmark = pytest.mark.filterwarnings(LOG_LEAK)`).
LOG_LEAK = r"ignore:unclosed file <_io.BufferedWriter name='[^']*daemon\.log'>:ResourceWarning"


def discard_disk(d: DaemonProcess) -> None:
    """Unlink the daemon's data file (its space comes back once the daemon has exited): each
    daemon reserves its whole size up front, and pytest keeps the last runs' temporary
    folders, which would otherwise hold tens of GiB."""
    (d.dir / "blocks").unlink(missing_ok=True)


def tidy(d: DaemonProcess) -> DaemonProcess:
    """Close our end of the daemon's stdout pipe (start_daemon has read the one line the
    daemon prints there), which start_daemon would leave to the garbage collector."""
    if d.proc.stdout is not None:
        d.proc.stdout.close()
    return d


def data(seed: int | str, size: int) -> bytes:
    """`size` bytes that depend only on `seed`."""
    return random.Random(seed).randbytes(size)


def digest(b: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(b).digest()


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


@dataclass
class Reply:
    header: Header
    meta: dict[str, Any]
    payload: bytes


@dataclass
class RawConn:
    """A plain TCP socket to the daemon's native port, for crafting frames by hand."""

    sock: socket.socket
    reader: FrameReader = field(default_factory=FrameReader)
    replies: list[Reply] = field(default_factory=list)
    _cur: dict[int, tuple[FrameStart, bytearray]] = field(default_factory=dict)

    @classmethod
    def open(cls, daemon: DaemonProcess, timeout: float = 10.0) -> RawConn:
        sock = socket.create_connection(host_port(daemon.address), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def send(self, raw: bytes | bytearray | memoryview) -> None:
        self.sock.sendall(raw)

    def send_frame(self, op: int, rid: int, meta: dict[str, Any], payload: bytes = b"") -> None:
        self.send(encode(op, rid, meta, len(payload)) + payload)

    def _feed(self, chunk: bytes) -> None:
        for ev in self.reader.feed(chunk):
            if isinstance(ev, FrameStart):
                self._cur[ev.header.request_id] = (ev, bytearray())
            elif isinstance(ev, Payload):
                self._cur[ev.request_id][1].extend(ev.data)
            elif isinstance(ev, FrameEnd):
                start, body = self._cur.pop(ev.request_id)
                self.replies.append(Reply(start.header, start.meta, bytes(body)))

    def recv_reply(self, rid: int) -> Reply:
        """The reply to request `rid` (replies to others are kept); fails if the daemon hangs
        up first."""
        while True:
            for r in self.replies:
                if r.header.request_id == rid:
                    self.replies.remove(r)
                    return r
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError(f"the daemon closed the connection; got {self.replies}")
            self._feed(chunk)

    def call(self, op: int, rid: int, meta: dict[str, Any], payload: bytes = b"") -> Reply:
        self.send_frame(op, rid, meta, payload)
        return self.recv_reply(rid)

    def wait_closed(self, timeout: float = 10.0) -> list[Reply]:
        """Read until the daemon closes the connection; returns the frames it sent first.
        Fails if it keeps the connection open for `timeout` seconds."""
        self.sock.settimeout(timeout)
        try:
            while chunk := self.sock.recv(1 << 20):
                self._feed(chunk)
        except ConnectionResetError:
            pass  # closed with our unread bytes in its buffer: a reset instead of a FIN
        except TimeoutError:
            raise AssertionError(f"the daemon kept the connection open for {timeout} s") from None
        return self.replies

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Witness:
    """Objects written before a test's mischief, read back (and hashed) after it."""

    def __init__(self, daemon: DaemonProcess, pool: str = "witness") -> None:
        self.pool = pool
        self.client = Client(daemon.address, timeout=30)
        self.hashes: dict[str, bytes] = {}

    def seed(self) -> Witness:
        sizes = {"tiny": 1, "small": 4096 + 7, "medium": 300_000, "large": 3 * MiB + 5}
        for name, size in sizes.items():
            body = data(f"{self.pool}/{name}", size)
            key = self.client.put(self.pool, name, body)
            assert key.hash == digest(body)
            self.hashes[name] = key.hash
        return self

    def check(self) -> None:
        """Every object reads back whole with its old hash, and the daemon answers a fresh
        request (this client's connections may be new or old)."""
        assert self.client.ping()
        for name, h in self.hashes.items():
            got = self.client.get(self.pool, name)
            assert digest(got) == h, f"{self.pool}/{name} changed"
            info = self.client.stat(self.pool, name)
            assert info.hash == h and info.version == 1

    def close(self) -> None:
        self.client.close()


def assert_absent(client: Client, pool: str, name: str) -> None:
    try:
        info = client.stat(pool, name)
    except NotFound:
        return
    raise AssertionError(f"{pool}/{name} should not exist, but is stored: {info}")


def check_disk(daemon: DaemonProcess) -> None:
    """Stop the daemon (cleanly: exit status 0) and verify its whole disk offline."""
    assert daemon.stop() == 0, "the daemon should stop cleanly on SIGTERM"
    p = subprocess.run(
        [
            *SHOAL,
            "disk",
            "check",
            str(daemon.dir / "blocks"),
            "--keys",
            str(daemon.dir / "keys.db"),
        ],
        capture_output=True,
        timeout=120,
    )
    assert p.returncode == 0 and b": ok" in p.stdout, p.stdout + p.stderr


def daemon_log(daemon: DaemonProcess) -> str:
    return (daemon.dir / "daemon.log").read_text(errors="replace")


def chunked(seed: int, total: int, chunk: int = 4 * MiB) -> Iterator[bytes]:
    """`total` deterministic bytes in `chunk`-sized pieces without holding them all: a random
    block, each piece stamped with its index so no two are alike."""
    block = data(seed, chunk)
    for i, pos in enumerate(range(0, total, chunk)):
        piece = i.to_bytes(8, "little") + block[8:]
        yield piece[: min(chunk, total - pos)]


def free_port_address() -> str:
    """An address on which nothing listens (a port just bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def read_proc_status(pid: int, field_name: str) -> int:
    """A `VmXXX:  N kB` field of /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field_name)


class Terminal:
    """A command run with its stderr (and, unless `stdout_pipe`, its stdout) on a pseudo-
    terminal, as from a user's shell; what it draws there is collected, and its stdout when
    that is a pipe."""

    def __init__(self, argv: list[str], *, stdout_pipe: bool = False) -> None:
        master, slave = pty.openpty()
        env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else slave,
                stderr=slave,
                env=env,
            )
        finally:
            os.close(slave)
        self._master = master
        self.screen = bytearray()
        self.stdout = bytearray()
        self._threads = [threading.Thread(target=self._drain_pty, daemon=True)]
        if self.proc.stdout is not None:
            self._threads.append(threading.Thread(target=self._drain_stdout, daemon=True))
        for t in self._threads:
            t.start()

    def _drain_pty(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: the other side is closed
                return
            if not chunk:
                return
            self.screen += chunk

    def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(1 << 20):
            self.stdout += chunk

    def wait(self, timeout: float = 120) -> int:
        rc = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=10)
        os.close(self._master)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return rc
