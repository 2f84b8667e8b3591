"""Real index servers for the tests: redis-server and PostgreSQL on 127.0.0.1, started as
child processes on a free port and stopped by PID. Each can be stopped and started again on
the same port, to test an index whose server goes away and comes back.

A missing server binary fails the test (it is not skipped): `make install-test` installs
both (Debian packages redis-server and postgresql).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

__all__ = ["PostgresServer", "RedisServer", "postgres_server", "redis_server"]

READY_TIMEOUT = 30.0


def free_port() -> int:
    """A port on which nothing listens (bound and released: another process could take it
    before the server does, so a first start that cannot bind is tried on another one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _missing(binary: str, package: str) -> None:
    pytest.fail(
        f"{binary} is not installed: `make install-test` installs it (Debian package {package})"
    )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Server:
    """A server process on a fixed port: start() and stop() as often as wanted."""

    name = "server"
    stop_signal = signal.SIGTERM
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def _spawn(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        self.proc = self._spawn()
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} on port {self.port} did not start:\n{_tail(self.log)}"
                )
            time.sleep(0.05)

    def _first_start(self) -> None:
        for attempt in range(3):
            try:
                self.start()
                return
            except RuntimeError:
                if attempt == 2:
                    raise
                self.port = free_port()  # taken meanwhile by another process: another one

    def stop(self, timeout: float = 30.0) -> None:
        """Signal the server by its PID and wait for it (SIGKILL after `timeout`)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, self.stop_signal)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


class RedisServer(_Server):
    """redis-server without persistence: a restart starts empty."""

    name = "redis-server"

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _missing("redis-server", "redis-server")
        self.binary = str(binary)
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = directory / "redis.log"
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _spawn(self) -> subprocess.Popen[bytes]:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        args += ["--logfile", str(self.log), "--daemonize", "no"]
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False


class PostgresServer(_Server):
    """A PostgreSQL cluster made by initdb in a directory of its own under /tmp (as root, the
    server runs as the postgres user, which must be able to reach it), removed by cleanup()."""

    name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown
    user = "shoal"
    database = "shoal"

    def __init__(self, directory: Path) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_pg_version)
        if not found:
            _missing("the PostgreSQL server (/usr/lib/postgresql/*/bin/postgres)", "postgresql")
        self.bin = Path(found[-1]).parent
        self.logs = directory
        self.logs.mkdir(parents=True, exist_ok=True)
        self.home = Path(tempfile.mkdtemp(prefix="shoal-pg-", dir="/tmp"))
        self.data = self.home / "data"
        self.log = self.home / "postgres.log"
        self.as_user: dict[str, Any] = {}
        if os.getuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.home, "postgres", "postgres")
            self.as_user = {"user": "postgres", "group": "postgres", "extra_groups": []}
        self.port = free_port()
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
            "-E", "UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip

    def _run(self, *args: str) -> None:
        done = subprocess.run(args, capture_output=True, cwd=self.home, **self.as_user)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr.decode(errors='replace')}")

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _admin_url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _spawn(self) -> subprocess.Popen[bytes]:
        args = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        args += ["-c", "listen_addresses=127.0.0.1", "-k", str(self.home)]
        args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with open(self.log, "ab") as log:
            return subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.home,
                **self.as_user,
            )  # fmt: skip

    def _ready(self) -> bool:
        try:
            with psycopg.connect(self._admin_url(), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def create_database(self) -> None:
        with psycopg.connect(self._admin_url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{self.database}"')

    def cleanup(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            shutil.copy(self.log, self.logs / "postgres.log")
        shutil.rmtree(self.home, ignore_errors=True)


def _pg_version(path: str) -> int:
    version = Path(path).parent.parent.name
    return int(version) if version.isdigit() else 0


@contextlib.contextmanager
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server on 127.0.0.1 (a free port), stopped at the end."""
    server = RedisServer(tmp_path / "redis")
    server._first_start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def postgres_server(tmp_path: Path) -> Iterator[PostgresServer]:
    """A running PostgreSQL on 127.0.0.1 (a free port) with an empty database; its files are
    removed at the end (the server's log is copied to tmp_path/postgres)."""
    server = PostgresServer(tmp_path / "postgres")
    try:
        server._first_start()
        server.create_database()
        yield server
    finally:
        server.cleanup()
