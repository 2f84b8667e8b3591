"""Helpers for the tests that run a real cluster: a `shoal master` and `shoal daemon`s that
join it, each a child process on 127.0.0.1 with port 0, stopped by PID when a test ends;
certificates; waiting for a condition; the `shoal` command as a child process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from shoal.certs import issue
from shoal.client import AsyncClient
from shoal.client.cluster import ClusterClient
from shoal.client.connection import Connection
from shoal.daemon.process import DaemonProcess, spawn
from tests.conftest import SHOAL

T = TypeVar("T")

# Fast failure detection: a heartbeat every 0.2 s, down after 1 s without one, out 2 s later.
FAST = ("--heartbeat", "0.2", "--down-after", "1", "--out-after", "2")
DAEMON_SIZE = "256M"

_LISTEN = re.compile(r"listening on (\S+) \(peer\), (\S+) \(client\)")
_ADMIN = re.compile(r"admin key: (\S+) (\S+)")


@dataclass
class Tls:
    """A CA and certificates made by shoal.certs in one folder."""

    dir: Path

    @property
    def ca(self) -> str:
        return str(self.dir / "ca.crt")

    def cert(self, name: str) -> tuple[str, str]:
        crt, key = issue(self.dir, name, [])
        return str(crt), str(key)

    def peer_args(self, name: str) -> list[str]:
        """A daemon's (or the master's) --peer-cert/--peer-key/--peer-ca-cert."""
        crt, key = self.cert(name)
        return ["--peer-cert", crt, "--peer-key", key, "--peer-ca-cert", self.ca]


async def wait_closed(conns: Sequence[Connection | None], timeout: float = 5.0) -> None:
    """Wait until the sockets under `conns` are closed. Connection.close() only starts the
    closing; a TLS connection's socket closes after the close_notify exchange, and one left
    to the garbage collector when the test's event loop ends is a ResourceWarning (an error
    here)."""
    socks = []
    for conn in conns:
        if conn is not None and conn.transport is not None:
            sock = conn.transport.get_extra_info("socket")
            if sock is not None:
                socks.append(sock)
            conn.close()
    deadline = time.monotonic() + timeout
    while any(s.fileno() != -1 for s in socks) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


class TidyClusterClient(ClusterClient):
    """A ClusterClient whose close() returns when its connections are closed."""

    async def close(self) -> None:
        conns: list[Connection | None] = [self._master]
        for c in self._daemons.values():
            conns += c._conns
        await super().close()
        await wait_closed(conns)


@dataclass
class MasterProcess:
    proc: subprocess.Popen[bytes]
    dir: Path
    peer: str  # where daemons connect
    client: str  # where clients connect
    access_key: str | None  # the admin key, printed on the first start only
    secret: str | None
    tls: Tls | None = None
    daemons: list[DaemonProcess] = field(default_factory=list)

    @property
    def log(self) -> str:
        return (self.dir / "master.log").read_text(errors="replace")

    @property
    def ca(self) -> str | None:
        return self.tls.ca if self.tls else None

    def client_for(
        self, access: str | None = None, secret: str | None = None, **kw: Any
    ) -> ClusterClient:
        """A ClusterClient (not yet connected) with the admin key or the one given."""
        assert self.access_key and self.secret
        return TidyClusterClient(
            self.client, access or self.access_key, secret or self.secret, ca=self.ca,
            timeout=kw.pop("timeout", 20.0), **kw,
        )  # fmt: skip

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        return stop_process(self.proc, sig, timeout)


def stop_process(
    proc: subprocess.Popen[bytes], sig: int | None = signal.SIGTERM, timeout: float = 20.0
) -> int:
    """Signal the child by its PID (unless `sig` is None: it has been signalled already) and
    wait for it, SIGKILL after `timeout`; its exit status."""
    if proc.poll() is None:
        if sig is not None:
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    for f in (proc.stdout, proc.stderr, proc.stdin):
        if f is not None:
            f.close()
    return proc.returncode


def start_master(
    directory: Path, *extra: str, tls: Tls | None = None, timeout: float = 30.0
) -> MasterProcess:
    """`shoal master` on port 0 (both addresses); with `tls`, mutual TLS on the peer address
    and TLS on the client address, with the master's certificate from `tls`. Its stdout goes
    to DIR/master.out, its stderr to DIR/master.log."""
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [*SHOAL, "master", "--dir", str(directory / "state"),
           "--peer-address", "127.0.0.1:0", "--listen-address", "127.0.0.1:0", *extra]  # fmt: skip
    if tls is not None:
        crt, key = tls.cert("master")
        cmd += [*tls.peer_args("master"), "--listen-cert", crt, "--listen-key", key]
    out_path = directory / "master.out"
    with open(out_path, "ab") as out, open(directory / "master.log", "ab") as err:
        start = out.tell()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    deadline, text = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        with open(out_path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        if _LISTEN.search(text) or proc.poll() is not None:
            break
        time.sleep(0.05)
    m = _LISTEN.search(text)
    if m is None:
        stop_process(proc, signal.SIGKILL)
        log = (directory / "master.log").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"shoal master did not start: {text!r}\n{log}")
    admin = _ADMIN.search(text)
    return MasterProcess(
        proc, directory, m.group(1), m.group(2),
        admin.group(1) if admin else None, admin.group(2) if admin else None, tls,
    )  # fmt: skip


def start_member(
    master: MasterProcess,
    directory: Path,
    host: str,
    *extra: str,
    tls_name: str | None = None,
    size: str = DAEMON_SIZE,
) -> DaemonProcess:
    """A daemon that joins `master` (with the certificate `tls_name`, or the directory's
    name, when the master has TLS). Its stderr goes to DIR/daemon.log. Not waited for: see
    `wait_registered`."""
    args = ["--master", master.peer, "--host", host]
    if master.tls is not None:
        args += master.tls.peer_args(tls_name or directory.name)
    d = spawn(directory, size=size, http="off", extra=[*args, *extra])
    if d.proc.stdout is not None:  # (the one line it prints there is read)
        d.proc.stdout.close()
        d.proc.stdout = None
    master.daemons.append(d)
    return d


def stop_member(d: DaemonProcess, sig: int = signal.SIGTERM) -> int:
    return stop_process(d.proc, sig)


def daemon_log(d: DaemonProcess) -> str:
    return (d.dir / "daemon.log").read_text(errors="replace")


def discard(d: DaemonProcess) -> None:
    (d.dir / "blocks").unlink(missing_ok=True)


def stop_all(master: MasterProcess) -> list[str]:
    """Stop every daemon started for `master` (SIGTERM, by PID), then the master, and give
    back the daemons' disk space. What did not exit cleanly (status 0) of those that were
    still running: a list of complaints, empty if all went well."""
    running = [d for d in master.daemons if d.proc.poll() is None]
    for d in running:
        os.kill(d.proc.pid, signal.SIGTERM)
    bad = []
    for d in master.daemons:
        rc = stop_process(d.proc, None)  # (one SIGTERM: a second may find it without handlers)
        if d in running and rc != 0:
            bad.append(f"daemon {d.dir} exited with {rc}:\n{daemon_log(d)[-2000:]}")
        discard(d)
    was_running = master.proc.poll() is None
    rc = master.stop()
    if was_running and rc != 0:
        bad.append(f"the master exited with {rc}:\n{master.log[-2000:]}")
    return bad


def run_sync(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to the end on a loop of its own, in another thread (for synchronous
    fixtures: the test's own loop, if any, is left alone)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(fn())).result()  # type: ignore[arg-type]


# -- waiting ----------------------------------------------------------------------------------


async def eventually(
    probe: Callable[[], Awaitable[T]],
    ok: Callable[[T], bool],
    timeout: float = 15.0,
    every: float = 0.05,
    what: str = "the condition",
) -> T:
    """`probe()` until `ok` holds of its result; its last result. Fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = await probe()
        if ok(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s; last: {got!r}")
        await asyncio.sleep(every)


def eventually_sync(
    probe: Callable[[], T], ok: Callable[[T], bool], timeout: float = 15.0, every: float = 0.05,
    what: str = "the condition",
) -> T:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if ok(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s; last: {got!r}")
        time.sleep(every)


async def map_at(c: ClusterClient, epoch: int, timeout: float = 10.0) -> None:
    """Wait until `c` (following the map) holds map `epoch` or a newer one. (Not with
    c.refresh(epoch): that waits its whole `wait` when the map is there already.)"""

    async def have() -> int:
        return c.map.epoch

    await eventually(have, lambda e: e >= epoch, timeout, every=0.01, what=f"map {epoch}")


async def daemons_by_id(c: ClusterClient) -> dict[int, dict[str, Any]]:
    return {d["id"]: d for d in (await c.admin("daemon_ls"))["daemons"]}


def state(d: dict[str, Any]) -> str:
    return f"{'up' if d['up'] else 'down'},{'in' if d['in'] else 'out'}"


async def wait_registered(
    c: ClusterClient, n: int, timeout: float = 20.0
) -> dict[int, dict[str, Any]]:
    """Wait until the master's map has `n` daemons, all up; them by id."""
    return await eventually(
        lambda: daemons_by_id(c),
        lambda ds: len(ds) == n and all(d["up"] for d in ds.values()),
        timeout, what=f"{n} daemons up",
    )  # fmt: skip


async def wait_current(c: ClusterClient, timeout: float = 20.0) -> None:
    """Wait until every daemon has caught up with the others at the master's map (a daemon
    answers a client for its copies only then)."""

    async def recovering() -> int:
        return int((await c.admin("status"))["recovery"]["recovering"])

    await eventually(recovering, lambda n: n == 0, timeout, every=0.1, what="daemons current")


def direct(c: ClusterClient, address: str, *, epoch: int | None = None) -> AsyncClient:
    """A plain client of one daemon, carrying `c`'s ticket and map epoch (or `epoch`)."""
    a = AsyncClient(address, pool_size=1, timeout=10)
    a.ticket, a.epoch = c.ticket, c.map.epoch if epoch is None else epoch
    return a


# -- the `shoal` command ------------------------------------------------------------------------


def shoal_env(home: Path, master: MasterProcess | None = None, **more: str) -> dict[str, str]:
    """The environment for a `shoal` child: ours without SHOAL_* and with HOME at `home` (so
    no ~/.config/shoal/client.json of the user's is read), plus the cluster's address and
    admin key if `master`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SHOAL_") and k != "XDG_CONFIG_HOME"}  # fmt: skip
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    if master is not None:
        assert master.access_key and master.secret
        env.update(SHOAL_MASTER=master.client, SHOAL_ACCESS_KEY=master.access_key,
                   SHOAL_SECRET_KEY=master.secret)  # fmt: skip
        if master.ca:
            env["SHOAL_CA_CERT"] = master.ca
    env.update(more)
    return env


def shoal(
    *args: str, env: dict[str, str], cwd: Path, ok: bool = True, stdin: bytes | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    p = subprocess.run([*SHOAL, *args], input=stdin, capture_output=True, timeout=timeout,
                       env=env, cwd=cwd)  # fmt: skip
    assert b"Traceback" not in p.stderr, p.stderr.decode()
    if ok:
        assert p.returncode == 0, (args, p.stdout.decode(), p.stderr.decode())
    return p


def pids_under(root: Path) -> list[int]:
    """Processes that run in `root` or below, or whose command line names it."""
    out, key = [], str(root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd").encode()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cwd == key or cwd.startswith(key + b"/") or key in cmdline:
            out.append(int(entry.name))
    return out


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(") ", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def all_exited(pids: Sequence[int]) -> bool:
    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie (exited, not yet reaped) counts as gone
            return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
        except OSError:
            return False

    return not any(alive(p) for p in pids)
