"""`shoal up`: a whole local cluster for a new user, in one command.

    shoal up [--data shoal-data] [--daemons 3] [--size 4G] [--base-port 4140] [--http-port 3000]

starts a master, N daemons (one folder each under --data) and the HTTP gateway (minikeyvalue's
API over the pool `default` on 127.0.0.1:3000, its index in DATA/index.db, its request log
in DATA/http.log), with TLS on between them: a CA and the
certificates of every node are made on the first start (DATA/tls). On the first start the
master makes an admin key, printed once, and `shoal up` writes DATA/client.json (mode 0600):
the master's address, that key and the CA, which the `shoal` command reads from
./shoal-data/client.json, so that `shoal write NAME --data-literal hi` just works from there.
It also makes the pool `default` (replicas min(3, N), failure domain daemon: all the daemons
are on this machine). Ctrl-C stops the daemons, then the master; everything is kept for the
next `shoal up`.

Ports: the master listens on BASE (daemons) and BASE+1 (clients); daemon i on BASE+10+2i
(native), BASE+11+2i (HTTP) and BASE+40+i (other daemons, mutual TLS: replication and
recovery); the gateway on --http-port (3000; -1: none). --base-port 0 takes free ports,
the gateway's too unless --http-port is given (the config is rewritten at every start).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shoal.certs import issue
from shoal.config import CONFIG_NAME, ClusterConfig, write_config
from shoal.daemon.process import DaemonProcess, read_until, spawn
from shoal.errors import InvalidArgument, ShoalError

_LISTEN = re.compile(r"listening on (\S+) \(peer\), (\S+) \(client\)")
_ADMIN = re.compile(r"admin key: (\S+) (\S+)")
_HTTP = re.compile(r"shoal http listening on (\S+)")


def _start(
    cmd: list[str], log: Path, ready: re.Pattern[str], what: str
) -> tuple[subprocess.Popen[bytes], re.Match[str], str]:
    """Start a child (its stderr to `log`) and wait until its stdout says `ready`: the child,
    the match and all it printed."""
    with open(log, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
    out = read_until(proc, lambda o: bool(ready.search(o.decode(errors="replace"))), 30.0)
    text = out.decode(errors="replace")
    m = ready.search(text)
    if m is None:
        _stop(proc)
        tail = log.read_text(errors="replace")[-3000:]
        raise ShoalError(f"{what} did not start:\n{text}{tail}")
    return proc, m, text


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it is still there 20 s later."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


class LocalCluster:
    def __init__(
        self, data: Path, daemons: int, size: str, base_port: int, http_port: int | None = None
    ) -> None:
        if daemons < 1:
            raise InvalidArgument("a cluster needs at least one daemon")
        self.data, self.n, self.size, self.base = data, daemons, size, base_port
        self.http_port = (3000 if base_port else 0) if http_port is None else http_port
        self.master: subprocess.Popen[bytes] | None = None
        self.http: subprocess.Popen[bytes] | None = None
        self.http_address = ""
        self.daemons: list[DaemonProcess] = []
        self.tls = data / "tls"

    def _port(self, offset: int) -> int:
        return self.base + offset if self.base else 0

    def start(self) -> ClusterConfig:
        self.data.mkdir(parents=True, exist_ok=True)
        tls = self.tls
        issue(tls, "master", [])
        for i in range(self.n):
            issue(tls, f"daemon{i}", [])
        cmd = [
            sys.executable, "-m", "shoal.cli", "master", "--dir", str(self.data / "master"),
            "--peer-address", f"127.0.0.1:{self._port(0)}",
            "--listen-address", f"127.0.0.1:{self._port(1)}",
            "--peer-cert", str(tls / "master.crt"), "--peer-key", str(tls / "master.key"),
            "--peer-ca-cert", str(tls / "ca.crt"),
            "--listen-cert", str(tls / "master.crt"), "--listen-key", str(tls / "master.key"),
        ]  # fmt: skip
        self.master, m, text = _start(cmd, self.data / "master.log", _LISTEN, "the master")
        peer, client = m.group(1), m.group(2)
        config_path = self.data / CONFIG_NAME
        admin = _ADMIN.search(text)
        if admin is not None:
            ca = str((tls / "ca.crt").resolve())  # (the config works from any folder)
            cfg = ClusterConfig(client, admin.group(1), admin.group(2), ca)
            print(f"admin key (shown once; also in {config_path}, mode 0600):")
            print(f"  access key: {cfg.access_key}\n  secret key: {cfg.secret}")
        elif config_path.exists():
            import json

            old = json.loads(config_path.read_text())
            ca = str((tls / "ca.crt").resolve())
            cfg = ClusterConfig(client, old["access_key"], old["secret_key"], ca)
        else:
            self.stop()
            raise ShoalError(f"{config_path} is gone, and with it the admin key")
        write_config(config_path, cfg)
        for i in range(self.n):
            d = self.data / f"daemon{i}"
            self.daemons.append(
                spawn(
                    d, size=self.size, listen=f"127.0.0.1:{self._port(10 + 2 * i)}",
                    http=f"127.0.0.1:{self._port(11 + 2 * i)}", log=self.data / f"daemon{i}.log",
                    extra=["--master", peer, "--peer-address", f"127.0.0.1:{self._port(40 + i)}",
                           "--peer-cert", str(tls / f"daemon{i}.crt"),
                           "--peer-key", str(tls / f"daemon{i}.key"),
                           "--peer-ca-cert", str(tls / "ca.crt")],
                )
            )  # fmt: skip
        return cfg

    def wait_ready(self, cfg: ClusterConfig, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until every daemon is up in the map; make the default pool if there is none."""
        from shoal.cli.common import run_async

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
                if not s["pools"]:
                    await c.admin("pool_create", name="default", replicas=min(3, self.n),
                                  pg_num=128, failure_domain="daemon")  # fmt: skip
                while True:  # every daemon current (caught up with the others) at this map
                    s = await c.admin("status")
                    if not s["recovery"]["recovering"] or time.monotonic() > deadline:
                        return s
                    await asyncio.sleep(0.2)
            finally:
                await c.close()

        status: dict[str, Any] = run_async(go())
        return status

    def start_http(self) -> str:
        """The HTTP gateway over the pool `default` (once the cluster is ready); its address."""
        cmd = [
            sys.executable, "-m", "shoal.cli", "http", "--port", str(self.http_port),
            "--config", str(self.data / CONFIG_NAME),
            "--index", f"sqlite:///{(self.data / 'index.db').resolve()}",
            "--log", str(self.data / "http.log"),
        ]  # fmt: skip
        what = f"the HTTP gateway (port {self.http_port}; --http-port chooses another)"
        self.http, m, _ = _start(cmd, self.data / "http.err", _HTTP, what)
        self.http_address = m.group(1)
        return self.http_address

    def stop(self) -> None:
        if self.http is not None:
            _stop(self.http)
        for d in self.daemons:
            if d.proc.poll() is None:
                d.proc.send_signal(signal.SIGTERM)
        for d in self.daemons:
            d.stop()
        if self.master is not None:
            _stop(self.master)

    def dead(self) -> list[str]:
        out = [f"daemon{i}" for i, d in enumerate(self.daemons) if d.proc.poll() is not None]
        if self.master is not None and self.master.poll() is not None:
            out.append("master")
        if self.http is not None and self.http.poll() is not None:
            out.append("the HTTP gateway")
        return out


def run(data: str, daemons: int, size: str, base_port: int, http_port: int | None = None) -> int:
    cluster = LocalCluster(Path(data), daemons, size, base_port, http_port)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        cfg = cluster.start()
        s = cluster.wait_ready(cfg)
        http = cluster.start_http() if cluster.http_port >= 0 else ""
        print(f"shoal is up: master {cfg.master} (TLS), {s['up']} of {s['daemons']} daemons up, "
              f"pools: {', '.join(p['name'] for p in s['pools'])}")  # fmt: skip
        print(f"  data and logs in {data}/; client config {data}/{CONFIG_NAME}")
        if http:
            print(f"  HTTP gateway (minikeyvalue API) on http://{http}/, pool default")
            print(f"  try:  curl -d bar -X PUT http://{http}/foo && curl -L http://{http}/foo")
        print("  try:  shoal write hello --data-literal 'hello world' && shoal read hello")
        print("        shoal status")
        print("Ctrl-C stops it (everything is kept for the next `shoal up`).", flush=True)
        while not stop:
            time.sleep(0.2)
            dead = cluster.dead()
            if dead and not stop:  # (Ctrl-C reaches the children too: they stop themselves)
                print(f"shoal up: {', '.join(dead)} exited; see the logs in {data}/",
                      file=sys.stderr)  # fmt: skip
                break
    finally:
        print("stopping ...", file=sys.stderr, flush=True)
        cluster.stop()
    return 0 if stop else 1
