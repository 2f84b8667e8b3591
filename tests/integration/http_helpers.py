"""Helpers for the HTTP gateway's tests: a local cluster started the way `shoal up` starts it
(shoal.up.LocalCluster: a master, 3 daemons, TLS, the gateway over the pool `default` with
its SQLite index), more `shoal http` gateways on other pools and other indexes, real curl,
and raw sockets for what curl will not send."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from shoal.config import CONFIG_NAME
from shoal.daemon.process import read_until
from shoal.up import LocalCluster

_HTTP = re.compile(r"shoal http listening on (\S+)")


@dataclass
class Gateway:
    """One `shoal http` process (or the one `shoal up` started)."""

    address: str  # HOST:PORT
    pool: str
    index: str  # its --index URL
    log: Path  # its request log
    proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def url(self, key: str, query: str = "") -> str:
        return f"http://{self.address}/{quote(key)}" + (f"?{query}" if query else "")

    def curl(self, *args: str, data: bytes | None = None, timeout: float = 60) -> CurlResult:
        """curl -sS with `args`; the body, the status and the headers."""
        p = subprocess.run(
            ["curl", "-sS", "-D", "/dev/stderr", *args, "-w", "\n%{http_code}"],
            input=data, capture_output=True, timeout=timeout,
        )  # fmt: skip
        body, _, code = p.stdout.rpartition(b"\n")
        return CurlResult(p.returncode, int(code or 0), body, _headers(p.stderr), p.stderr)

    def put(self, key: str, body: bytes, *extra: str) -> CurlResult:
        return self.curl("-X", "PUT", "--data-binary", "@-", *extra, self.url(key), data=body)

    def get(self, key: str, *extra: str) -> CurlResult:
        return self.curl(*extra, self.url(key))

    def delete(self, key: str) -> CurlResult:
        return self.curl("-X", "DELETE", self.url(key))

    def list(self, prefix: str = "", **params: str | int) -> dict[str, object]:
        query = "&".join(["list", *(f"{k}={quote(str(v))}" for k, v in params.items())])
        r = self.curl(self.url(prefix, query))
        assert r.status == 200, (r.status, r.body)
        out: dict[str, object] = json.loads(r.body)
        return out

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under `prefix`, page by page (limit 7: several pages)."""
        keys: list[str] = []
        start = ""
        while True:
            page = self.list(prefix, limit=7, **({"start": start} if start else {}))
            keys.extend(page["keys"])  # type: ignore[arg-type]
            if not page["next"]:
                return keys
            start = str(page["next"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class CurlResult:
    rc: int
    status: int
    body: bytes
    headers: dict[str, str]
    stderr: bytes


def _headers(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.decode("latin-1").splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("curl:"):
            out[name.strip().lower()] = value.strip()
    return out


def start_cluster(data: Path) -> tuple[LocalCluster, Gateway]:
    """A local cluster as `shoal up` starts it (free ports), and its gateway."""
    cluster = LocalCluster(data, 3, "256M", 0)
    try:
        cfg = cluster.start()
        cluster.wait_ready(cfg)
        address = cluster.start_http()
    except BaseException:
        cluster.stop()
        raise
    index = f"sqlite:///{(data / 'index.db').resolve()}"
    assert cluster.http is not None
    return cluster, Gateway(address, "default", index, data / "http.log", cluster.http.proc)


@contextlib.contextmanager
def local_cluster(data: Path) -> Iterator[tuple[LocalCluster, Gateway]]:
    """`start_cluster`, stopped (and its data files removed) at the end."""
    cluster, gateway = start_cluster(data)
    try:
        yield cluster, gateway
    finally:
        cluster.stop()
        for i in range(cluster.n):
            (data / f"daemon{i}" / "blocks").unlink(missing_ok=True)


def live_stripes(cluster: LocalCluster, key: str, pool: str = "default") -> int:
    """Stripe copies of `key` that are not tombstones, over every daemon's key store."""
    n = 0
    for i in range(cluster.n):
        db = sqlite3.connect(f"file:{cluster.data / f'daemon{i}' / 'keys.db'}?mode=ro", uri=True)
        with contextlib.closing(db):
            (count,) = db.execute(
                "SELECT count(*) FROM objects WHERE namespace = ?"
                " AND substr(name, 1, ?) = ? AND (flags & 2) = 0",
                (f"{pool}#stripes", len(key) + 1, key + "/"),
            ).fetchone()
        n += count
    return n


def start_gateway(cluster: LocalCluster, pool: str, index: str, log: Path, *extra: str) -> Gateway:
    """One more `shoal http` over `pool` of `cluster`, with `index`."""
    cmd = [
        sys.executable, "-m", "shoal.cli", "http", "--port", "0",
        "--config", str(cluster.data / CONFIG_NAME), "--pool", pool, "--index", index,
        "--log", str(log), *extra,
    ]  # fmt: skip
    with open(log.with_suffix(".err"), "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
    out = read_until(proc, lambda o: bool(_HTTP.search(o.decode(errors="replace"))), 30.0)
    m = _HTTP.search(out.decode(errors="replace"))
    if m is None:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        raise AssertionError(
            f"shoal http did not start: {out!r}\n{log.with_suffix('.err').read_text()[-3000:]}"
        )
    return Gateway(m.group(1), pool, index, log, proc)


def raw_request(
    address: str, data: bytes, *, then_close: bool = False, timeout: float = 20.0
) -> bytes:
    """Send `data` on a new connection; what comes back until the server closes or pauses
    (or nothing, with `then_close`: the request is cut off there)."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        if then_close:
            return b""
        out = b""
        try:
            while b"\r\n\r\n" not in out or not _complete(out):
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except TimeoutError:
            pass
        return out


def _complete(reply: bytes) -> bool:
    head, _, body = reply.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    return m is not None and len(body) >= int(m.group(1))


def status_of(reply: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", reply)
    return int(m.group(1)) if m else 0
