"""`shoal up`: a whole local cluster for a new user, in one command, kept running.

    shoal up [--data shoal-data] [--daemons 3] [--size 4G] [--base-port 4140] [--http-port 3000]
             [--s3-port 9000]

starts a master, N daemons (one folder each under --data) and the HTTP gateway (minikeyvalue's
API over the pool `default` on 127.0.0.1:3000, its index in DATA/index.db, its request log in
DATA/http.log) and the S3 gateway (on 127.0.0.1:9000, the same pool and index, its request
log in DATA/s3.log), with TLS on between them: a CA and the certificates of every node are
made on the first start (DATA/tls). The admin key is made by `shoal up` itself and written to
DATA/client.json (mode 0600) before the master first starts (the master takes it from there),
so a first start that fails for any reason loses nothing and can simply be run again. The
`shoal` command reads that config from ./shoal-data/client.json, or, from any other folder,
through ~/.config/shoal/last-up. It also makes the pool `default` (replicas min(3, N), failure
domain daemon: all the daemons are on this machine).

It is a supervisor, not a fuse: a child that dies (kill -9, a crash, OOM) is reported, the
others serve on, a dead daemon is marked down at once (so writes go to the others of its sets
without waiting for missed heartbeats), and the child is started again on the same ports
after a backoff (1 s, doubling to 30 s), as systemd's Restart=on-failure does. A child that
keeps dying at start (5 times in a row, each within 30 s of its start) is left down, with the
end of its log as the reason; so is one that exits cleanly (status 0) by itself. DATA/up.json
says what each process is doing, and `shoal status` shows it. The children end with `shoal
up` however it ends (SIGKILL included: shoal.parent), and Ctrl-C stops the gateway, the
daemons, then the master; everything is kept for the next `shoal up`.

Ports: the master listens on BASE (daemons) and BASE+1 (clients); daemon i on BASE+10+2i
(native), BASE+11+2i (HTTP) and BASE+40+i (other daemons, mutual TLS: replication and
recovery); the gateways on --http-port (3000) and --s3-port (9000; -1: none). --base-port 0
takes free ports, the gateways' too unless --http-port or --s3-port is given (the config is
rewritten at every start); a restarted child gets the ports it had.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.certs import issue
from shoal.cluster.auth import new_key
from shoal.config import (
    CONFIG_NAME,
    STATUS_NAME,
    ClusterConfig,
    find_config,
    read_config,
    remember_up,
    write_config,
)
from shoal.errors import InvalidArgument, ShoalError
from shoal.parent import child_env

_MASTER = re.compile(r"listening on (\S+) \(peer\), (\S+) \(client\)")
_DAEMON = re.compile(r"listening on (\S+) \(native\), (\S+) \(peer\), (\S+) \(http\)")
_HTTP = re.compile(r"shoal http listening on (\S+)")
_S3 = re.compile(r"shoal s3 listening on (\S+)")

START_TIMEOUT = 60.0  # a child that has not said it listens by then has failed to start
STABLE = 30.0  # a child that ran this long before dying was not failing at start
TRIES = 5  # consecutive failures at start before a child is left down
BACKOFF = (1.0, 30.0)  # first delay, longest delay


@dataclass
class Child:
    """One supervised process: how to start it, and what it is doing now."""

    name: str
    argv: Callable[[], list[str]]  # the command line (it may change once ports are known)
    log: Path
    ready: re.Pattern[str]
    on_ready: Callable[[re.Match[str]], None] = lambda m: None
    on_exit: Callable[[], None] = lambda: None
    proc: subprocess.Popen[bytes] | None = None
    state: str = "new"  # starting, up, restarting (waiting to), down (left), stopped
    out: bytes = b""
    started: float = 0.0
    since: float = field(default_factory=time.time)
    failures: int = 0  # consecutive
    restarts: int = 0
    next_start: float = 0.0
    last_exit: str = ""
    reason: str = ""

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name, "state": self.state, "restarts": self.restarts,
            "pid": self.proc.pid if self.proc is not None and self.state in ("up", "starting")
            else None,
            "started": _start_ticks(self.proc.pid) if self.proc is not None else None,
            "since": self.since, "last_exit": self.last_exit, "reason": self.reason,
            "log": str(self.log),
        }  # fmt: skip


class Stopped(ShoalError):
    """Ctrl-C (or SIGTERM) came while the cluster was starting."""


def _start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot): with its pid, who it is."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])


class Supervisor:
    """Starts children, watches them (`step`, called every fraction of a second), restarts them
    with a backoff and says what happens on stderr and in a status file."""

    def __init__(self, status_path: Path, say: Callable[[str], None]) -> None:
        self.children: list[Child] = []
        self.status_path = status_path
        self.say = say
        self.stopping = False

    def add(self, child: Child) -> Child:
        self.children.append(child)
        return child

    def spawn(self, c: Child) -> None:
        with open(c.log, "ab") as err:
            # (a session of its own: a Ctrl-C on the terminal reaches `shoal up` only, which
            # stops its children in order; they end with it however it ends: shoal.parent)
            c.proc = subprocess.Popen(
                c.argv(), stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                env=child_env(), start_new_session=True,
            )  # fmt: skip
        assert c.proc.stdout is not None
        os.set_blocking(c.proc.stdout.fileno(), False)
        c.state, c.out, c.started, c.since = "starting", b"", time.monotonic(), time.time()
        self.write_status()

    def _read(self, c: Child) -> bytes:
        """What the child printed since the last look (its stdout goes to its log once up)."""
        assert c.proc is not None and c.proc.stdout is not None
        got = b""
        with contextlib.suppress(BlockingIOError, ValueError):
            while chunk := os.read(c.proc.stdout.fileno(), 65536):
                got += chunk
        return got

    def step(self) -> None:
        now = time.monotonic()
        for c in self.children:
            if c.state == "starting":
                self._starting(c, now)
            elif c.state == "up":
                assert c.proc is not None
                extra = self._read(c)
                if extra:
                    with open(c.log, "ab") as f:
                        f.write(extra)
                if c.proc.poll() is not None:
                    self._ended(c, _how(c.proc.returncode), now, c.proc.returncode == 0)
            elif c.state == "restarting" and now >= c.next_start and not self.stopping:
                c.restarts += 1
                self.spawn(c)

    def _starting(self, c: Child, now: float) -> None:
        assert c.proc is not None
        c.out += self._read(c)
        m = c.ready.search(c.out.decode(errors="replace"))
        if m is not None:
            c.state, c.since = "up", time.time()
            if c.restarts:
                self.say(f"{c.name} is back (pid {c.proc.pid})")
            c.on_ready(m)
            self.write_status()
        elif c.proc.poll() is not None:
            self._ended(c, _how(c.proc.returncode) + " before it was ready", now, False)
        elif now - c.started > START_TIMEOUT:
            c.proc.kill()
            c.proc.wait()
            self._ended(c, f"did not start within {START_TIMEOUT:g} s", now, False)

    def _ended(self, c: Child, how: str, now: float, clean: bool) -> None:
        assert c.proc is not None
        if c.proc.stdout is not None:
            c.proc.stdout.close()
        c.last_exit, c.since = how, time.time()
        c.on_exit()
        if self.stopping:
            c.state = "stopped"
            return
        c.failures = c.failures + 1 if now - c.started < STABLE else 1
        if clean:
            c.state, c.reason = "down", f"{how} by itself; not restarted"
            self.say(f"{c.name} (pid {c.proc.pid}) {how} by itself; left down (Ctrl-C and "
                     "`shoal up` again to start it)")  # fmt: skip
        elif c.failures >= TRIES:
            c.state = "down"
            c.reason = f"{how}; failed {c.failures} times in a row at start; see {c.log}"
            self.say(f"{c.name} {how}, and failed {c.failures} times in a row at start: left "
                     f"down. The end of {c.log}:\n{_tail(c.log)}")  # fmt: skip
        else:
            delay = min(BACKOFF[0] * 2 ** (c.failures - 1), BACKOFF[1])
            c.state, c.next_start, c.reason = "restarting", now + delay, how
            self.say(f"{c.name} (pid {c.proc.pid}) {how}; the others serve on; starting it "
                     f"again in {delay:g} s (see {c.log})")  # fmt: skip
        self.write_status()

    def wait_ready(self, children: list[Child], stop: Callable[[], bool]) -> None:
        """Step until every one of `children` is up; ShoalError if one is left down."""
        while True:
            self.step()
            failed = [c for c in children if c.state in ("down", "restarting")]
            if failed:  # (at a first start, one try: the cause is most likely still there)
                c = failed[0]
                raise ShoalError(f"{c.name} did not start: it {c.last_exit}\n{_tail(c.log, 12)}")
            if stop():
                raise Stopped("stopped while starting")
            if all(c.state == "up" for c in children):
                return
            time.sleep(0.05)

    def stop(self, order: list[list[Child]]) -> None:
        """Stop the children, one group after the other (SIGTERM, SIGKILL after 20 s)."""
        self.stopping = True
        for group in order:
            live = [c for c in group if c.proc is not None and c.proc.poll() is None]
            for c in live:
                assert c.proc is not None
                c.proc.send_signal(signal.SIGTERM)
            for c in live:
                assert c.proc is not None
                try:
                    c.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    c.proc.kill()
                    c.proc.wait()
            for c in group:
                if c.proc is not None and c.proc.stdout is not None:
                    c.proc.stdout.close()
                c.state = "stopped"
        self.write_status()

    def write_status(self) -> None:
        doc = {"pid": os.getpid(), "updated": time.time(),
               "processes": [c.status() for c in self.children]}  # fmt: skip
        tmp = self.status_path.with_name(self.status_path.name + ".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
            os.replace(tmp, self.status_path)


def _shoal(*args: str) -> list[str]:
    return [sys.executable, "-m", "shoal.cli", *args]


class LocalCluster:
    def __init__(
        self, data: Path, daemons: int, size: str, base_port: int, http_port: int | None = None,
        say: Callable[[str], None] | None = None, s3_port: int | None = None,
    ) -> None:  # fmt: skip
        if daemons < 1:
            raise InvalidArgument("a cluster needs at least one daemon")
        self.data, self.n, self.size, self.base = data, daemons, size, base_port
        self.http_port = (3000 if base_port else 0) if http_port is None else http_port
        self.http_address = ""
        self.s3_port = (9000 if base_port else 0) if s3_port is None else s3_port
        self.s3_address = ""
        self.tls = data / "tls"
        self.config_path = data / CONFIG_NAME
        self.sup = Supervisor(data / STATUS_NAME, say or (lambda text: None))
        self.master_peer = f"127.0.0.1:{self._port(0)}"
        self.master_client = f"127.0.0.1:{self._port(1)}"
        self.cfg: ClusterConfig | None = None
        self.master: Child | None = None
        self.daemons: list[Child] = []
        self.daemon_ids: dict[int, int] = {}  # daemon i (its folder) -> its id in the map
        self.http: Child | None = None
        self.s3: Child | None = None
        self._lock: int | None = None  # DATA/up.lock, held while this supervises the folder

    def _port(self, offset: int) -> int:
        return self.base + offset if self.base else 0

    # -- starting ------------------------------------------------------------------------

    def _admin_key(self) -> None:
        """Make the admin key and keep it in the config before the master first starts."""
        master_db = self.data / "master" / "master.db"
        if self.config_path.exists():
            return
        if master_db.exists():
            raise ShoalError(
                f"{self.config_path} is gone, and with it the admin key of the cluster in "
                f"{self.data}; without it this cluster cannot be administered (move "
                f"{self.data} away to start a new one)"
            )
        access, secret = new_key()
        write_config(self.config_path, ClusterConfig("", access, secret, self._ca()))
        print(f"admin key (shown once; also in {self.config_path}, mode 0600):")
        print(f"  access key: {access}\n  secret key: {secret}", flush=True)

    def _ca(self) -> str:
        return str((self.tls / "ca.crt").resolve())  # (the config works from any folder)

    def start(self, stop: Callable[[], bool] = lambda: False) -> ClusterConfig:
        """Start the master and the daemons and wait until each listens; the client config."""
        self.data.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.data)
        _wait_for_previous(self.data)
        tls = self.tls
        issue(tls, "master", [])
        for i in range(self.n):
            issue(tls, f"daemon{i}", [])
        self._admin_key()

        def master_argv() -> list[str]:
            return _shoal(
                "master", "--dir", str(self.data / "master"),
                "--peer-address", self.master_peer, "--listen-address", self.master_client,
                "--peer-cert", str(tls / "master.crt"), "--peer-key", str(tls / "master.key"),
                "--peer-ca-cert", str(tls / "ca.crt"),
                "--listen-cert", str(tls / "master.crt"), "--listen-key", str(tls / "master.key"),
                "--admin-key-file", str(self.config_path),
                "--failure-domain", "daemon",  # (one machine: any other could never be met)
            )  # fmt: skip

        def master_ready(m: re.Match[str]) -> None:
            self.master_peer, self.master_client = m.group(1), m.group(2)

        self.master = self.sup.add(
            Child("master", master_argv, self.data / "master.log", _MASTER, master_ready)
        )
        self.sup.spawn(self.master)
        self.sup.wait_ready([self.master], stop)
        old = read_config(self.config_path)
        cfg = ClusterConfig(self.master_client, old["access_key"], old["secret_key"], self._ca())
        write_config(self.config_path, cfg)
        self.cfg = cfg
        for i in range(self.n):
            self.daemons.append(self.sup.add(self._daemon(i)))
            self.sup.spawn(self.daemons[-1])
        self.sup.wait_ready(self.daemons, stop)
        return cfg

    def _daemon(self, i: int) -> Child:
        ports = [self._port(10 + 2 * i), self._port(11 + 2 * i), self._port(40 + i)]
        tls = self.tls

        def argv() -> list[str]:
            return _shoal(
                "daemon", "--dir", str(self.data / f"daemon{i}"), "--size", self.size,
                "--listen", f"127.0.0.1:{ports[0]}", "--http", f"127.0.0.1:{ports[1]}",
                "--master", self.master_peer, "--peer-address", f"127.0.0.1:{ports[2]}",
                "--peer-cert", str(tls / f"daemon{i}.crt"),
                "--peer-key", str(tls / f"daemon{i}.key"), "--peer-ca-cert", str(tls / "ca.crt"),
            )  # fmt: skip

        def ready(m: re.Match[str]) -> None:  # the same ports if it is started again
            ports[:] = [int(m.group(g).rsplit(":", 1)[1]) for g in (1, 3, 2)]

        def ended() -> None:
            if not self.sup.stopping:
                self._mark_down(i, f"daemon{i}")

        (self.data / f"daemon{i}").mkdir(parents=True, exist_ok=True)
        log = self.data / f"daemon{i}.log"
        return Child(f"daemon{i}", argv, log, _DAEMON, ready, ended)

    def _mark_down(self, i: int, name: str) -> None:
        """Tell the master that daemon i's process ended (in the background: the master may
        be down too)."""
        cfg, dead_at, child = self.cfg, time.time(), self.daemons[i]

        def go() -> None:
            import asyncio

            async def call() -> None:
                from shoal.client.cluster import ClusterClient

                assert cfg is not None
                c = ClusterClient(cfg.master, cfg.access_key, cfg.secret, ca=cfg.ca)
                try:
                    ids = self.daemon_ids or await self._ids(c)
                    if i in ids and child.state not in ("starting", "up"):
                        await c.admin("daemon_down", id=ids[i], dead_at=dead_at,
                                      why=f"its process ended: shoal up's {name}")  # fmt: skip
                finally:
                    await c.close()

            with contextlib.suppress(Exception):
                asyncio.run(asyncio.wait_for(call(), 10.0))

        if cfg is not None:
            threading.Thread(target=go, name=f"mark-down-{name}", daemon=True).start()

    async def _ids(self, c: Any) -> dict[int, int]:
        """daemon i -> its id in the map, by the daemons' addresses."""
        out = await c.admin("daemon_ls")
        by_address = {d["address"]: int(d["id"]) for d in out["daemons"]}
        ids = {}
        for i, child in enumerate(self.daemons):
            m = child.ready.search(child.out.decode(errors="replace"))
            if m is not None and m.group(1) in by_address:
                ids[i] = by_address[m.group(1)]
        if len(ids) == self.n:
            self.daemon_ids = ids
        return ids

    def wait_ready(self, cfg: ClusterConfig, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until every daemon is up in the map; make the default pool if there is none."""

        async def go() -> dict[str, Any]:
            import asyncio

            from shoal.client.cluster import ClusterClient

            c = ClusterClient(cfg.master, cfg.access_key, cfg.secret, ca=cfg.ca)
            try:
                deadline = time.monotonic() + timeout
                while True:
                    s = await c.admin("status")
                    if s["up"] >= self.n or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
                await self._ids(c)
                if not s["pools"]:
                    await c.admin("pool_create", name="default", replicas=min(3, self.n),
                                  pg_num=128)  # fmt: skip
                while True:  # every daemon current (caught up with the others) at this map
                    s = await c.admin("status")
                    if not s["recovery"]["recovering"] or time.monotonic() > deadline:
                        return s
                    await asyncio.sleep(0.2)
            finally:
                await c.close()

        from shoal.cli.common import run_async

        status: dict[str, Any] = run_async(go())
        return status

    def start_http(self, stop: Callable[[], bool] = lambda: False) -> str:
        """The HTTP gateway over the pool `default` (once the cluster is ready); its address."""
        self.http, self.http_address = self._gateway(
            "http", self.http_port, _HTTP, "the HTTP gateway", "--http-port", stop
        )
        return self.http_address

    def start_s3(self, stop: Callable[[], bool] = lambda: False) -> str:
        """The S3 gateway over the pool `default` and the HTTP gateway's index; its address."""
        self.s3, self.s3_address = self._gateway(
            "s3", self.s3_port, _S3, "the S3 gateway", "--s3-port", stop
        )
        return self.s3_address

    def _gateway(
        self, kind: str, want: int, pattern: re.Pattern[str], what: str, flag: str,
        stop: Callable[[], bool],
    ) -> tuple[Child, str]:  # fmt: skip
        """`shoal KIND` over the pool `default`, with the index in DATA/index.db and its
        request log in DATA/KIND.log, started and waited for; the child and its address (a
        restart keeps the port it got)."""
        port = [want]

        def argv() -> list[str]:
            return _shoal(
                kind, "--port", str(port[0]), "--config", str(self.config_path),
                "--index", f"sqlite:///{(self.data / 'index.db').resolve()}",
                "--log", str(self.data / f"{kind}.log"),
            )  # fmt: skip

        def ready(m: re.Match[str]) -> None:
            port[0] = int(m.group(1).rsplit(":", 1)[1])

        child = self.sup.add(Child(kind, argv, self.data / f"{kind}.err", pattern, ready))
        self.sup.spawn(child)
        try:
            self.sup.wait_ready([child], stop)
        except ShoalError as exc:
            raise ShoalError(f"{what} (port {want}; {flag} chooses another): {exc}") from None
        m = pattern.search(child.out.decode(errors="replace"))
        assert m is not None
        return child, m.group(1)

    # -- running and stopping ------------------------------------------------------------

    def step(self) -> None:
        self.sup.step()

    def stop(self) -> None:
        if self._lock is None:  # (it never started: another `shoal up` may own the folder)
            return
        self.sup.stop([[c for c in (self.http, self.s3) if c], self.daemons,
                       [c for c in (self.master,) if c]])  # fmt: skip
        os.close(self._lock)
        self._lock = None

    def dead(self) -> list[str]:
        """The children that are not running now (restarting or left down)."""
        return [c.name for c in self.sup.children if c.state not in ("up", "starting")]

    def daemon_folders(self) -> dict[str, Path]:
        """Each daemon's native address (as it now listens): its folder."""
        out = {}
        for i, c in enumerate(self.daemons):
            m = c.ready.search(c.out.decode(errors="replace"))
            if m is not None:
                out[m.group(1)] = self.data / f"daemon{i}"
        return out

    def pid(self, name: str) -> int | None:
        for c in self.sup.children:
            if c.name == name and c.proc is not None and c.proc.poll() is None:
                return c.proc.pid
        return None


def _lock(data: Path) -> int:
    """Hold DATA/up.lock for as long as this process supervises `data` (the kernel lets go of
    it however the process ends): a second `shoal up` on the folder is refused."""
    fd = os.open(data / "up.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        try:
            pid = json.loads((data / STATUS_NAME).read_text()).get("pid")
        except (OSError, ValueError, AttributeError):
            pid = None
        who = f" (pid {pid})" if isinstance(pid, int) else ""
        raise ShoalError(f"another `shoal up`{who} is running on {data}") from None
    return fd


def _wait_for_previous(data: Path, timeout: float = 30.0) -> None:
    """Wait for the children of an earlier `shoal up` on `data` that was killed to finish
    stopping (they got SIGTERM when it died); each is known by its pid and start time."""
    try:
        doc = json.loads((data / STATUS_NAME).read_text())
        procs = [(p["pid"], p["started"]) for p in doc["processes"] if p.get("pid")]
    except (OSError, ValueError, KeyError, TypeError):
        return

    def left() -> list[int]:
        return [pid for pid, ticks in procs if ticks and _start_ticks(pid) == ticks]

    deadline = time.monotonic() + timeout
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    if left():
        raise ShoalError(
            f"processes of an earlier `shoal up` on {data} are still running: "
            f"{', '.join(map(str, left()))}"
        )


def _try_lines(cluster: LocalCluster, http: str) -> list[str]:
    """What to try next, as it works from here: with an `export` first when a plain `shoal`
    command here would not find this cluster."""
    out = []
    if http:
        out.append(f"curl -d bar -X PUT http://{http}/foo && curl -L http://{http}/foo")
    try:
        found = find_config(None)
    except ShoalError:
        found = None
    assert cluster.cfg is not None
    if found != cluster.cfg:
        out.append(f"export SHOAL_CONFIG={cluster.config_path.resolve()}")
    out.append("shoal write hello --data-literal 'hello world' && shoal read hello")
    out.append("shoal status")
    return out


def run(
    data: str, daemons: int, size: str, base_port: int, http_port: int | None = None,
    s3_port: int | None = None,
) -> int:  # fmt: skip
    def say(text: str) -> None:
        print(f"shoal up: {text}", file=sys.stderr, flush=True)

    cluster = LocalCluster(Path(data), daemons, size, base_port, http_port, say=say,
                           s3_port=s3_port)  # fmt: skip
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True
        cluster.sup.stopping = True  # (what ends from now on is being stopped, not restarted)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        cfg = cluster.start(lambda: stop)
        remember_up(cluster.config_path)
        s = cluster.wait_ready(cfg)
        http = cluster.start_http(lambda: stop) if cluster.http_port >= 0 else ""
        s3 = cluster.start_s3(lambda: stop) if cluster.s3_port >= 0 else ""
        print(f"shoal is up: master {cfg.master} (TLS), {s['up']} of {s['daemons']} daemons up, "
              f"pools: {', '.join(p['name'] for p in s['pools'])}")  # fmt: skip
        print(f"  data and logs in {data}/; client config {data}/{CONFIG_NAME}")
        if http:
            print(f"  HTTP gateway (minikeyvalue API) on http://{http}/, pool default")
        if s3:
            print(f"  S3 gateway on http://{s3}/ (region us-east-1), pool default: the keys "
                  f"of {data}/{CONFIG_NAME}, or of `shoal key create`")  # fmt: skip
        lines = _try_lines(cluster, http)
        print("  try:  " + "\n        ".join(lines))
        print("Ctrl-C stops it (everything is kept for the next `shoal up`).", flush=True)
        while not stop:
            time.sleep(0.1)
            cluster.step()
    except (ShoalError, OSError) as exc:
        if not stop:
            raise
        say(f"stopped while starting ({exc})")
    finally:
        if cluster.sup.children:
            say("stopping ...")
        cluster.stop()
    return 0
