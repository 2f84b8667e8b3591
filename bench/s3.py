"""shoal's S3 gateway (`shoal s3`) against shoal's HTTP gateway, Swift's s3api and stock nginx,
over loopback, in one run (issue 13).

Four targets take the same load, all up for the whole run, in one fresh directory under
bench/work/ (deleted at the end; every process stopped by its PID):

- `shoal s3`: a local cluster as `shoal up` starts it (`shoal.up.LocalCluster`: a master and 3
  daemons, TLS to the master and between the daemons), the pool `r3` (`shoal pool create r3
  --replicas 3 --failure-domain daemon`), a key made by `shoal key create --rights r3=rw`, and
  the S3 gateway over `r3` (its request log to a file, its index in one SQLite file);
- `shoal http`: the HTTP gateway over the same pool, index and cluster (proxy mode);
- Swift's s3api, from Debian's packages, configured here: 3 "nodes" on 127.0.0.1, each an
  object, a container and an account server (1 worker each) on its own device (a folder,
  mount_check off), rings of 3 replicas over the 3 devices (`swift-ring-builder`), a proxy (2
  workers, nproc) whose pipeline is s3api + tempauth (the user test:tester) and memcached;
- stock nginx with its DAV module (the one bench.daemon starts: 2 workers), the limit.

wrk (2 threads, 16 connections, Lua) sends every target the same requests: GET random keys
among 256 objects written beforehand (cache-hot), and PUTs that overwrite those keys (each wrk
thread its own half, cycling), of 4 KiB and of 1 MiB. The S3 targets get presigned URLs
(boto3, SigV4, one for each key and method: the signature is checked on every request); shoal
http and nginx the bare paths. Each (operation, size) runs 8 times, s3, http, swift, nginx,
nginx, swift, http, s3 (10 s each), and the figures are the means of each target's two runs.
The CPU of every target's processes (gateway + daemons + master; proxy + storage servers +
memcached; nginx) is read from /proc around each run and divided by its requests.

Prints the table and the ratios (s3 / http, s3 / swift, s3 / nginx) against the issue's goals
and writes bench/results/s3.json.

    .venv/bin/python -m bench.s3 [--dir DIR] [--quick] [--profile]

With --profile, py-spy (pip install py-spy) samples each gateway during one more 4 KiB GET
and PUT run: the HTTP gateway's profile is the baseline of the S3 gateway's.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from statistics import mean
from typing import Any, ClassVar
from urllib.parse import urlsplit

from bench import write_result
from bench.daemon import Nginx, free_port, stop_process, version
from bench.daemon import Params as DaemonParams
from bench.engine import KiB, MiB, arguments, git, log, machine
from bench.http import Http, Meter, log_summary, wrk
from shoal.daemon.process import read_until
from shoal.up import _HTTP, _S3, LocalCluster

SHOAL = [sys.executable, "-m", "shoal.cli"]
SIZES = {"4k": 4 * KiB, "1m": MiB}
LABEL = {"4k": "4 KiB", "1m": "1 MiB"}
POOL, REPLICAS = "r3", 3
TARGETS = ["s3", "http", "swift", "nginx"]
NAME = {"s3": "shoal s3", "http": "shoal http", "swift": "swift s3api", "nginx": "nginx"}
ORDER = ["s3", "http", "swift", "nginx", "nginx", "swift", "http", "s3"]
# (op, size) in run order, the unit, and the goals: s3 / http, s3 / swift (issue 13)
ROWS = [
    ("get", "4k", "ops_per_s", 0.8, 5.0),
    ("get", "1m", "mb_per_s", 0.8, None),
    ("put", "4k", "ops_per_s", 0.8, 20.0),
    ("put", "1m", "mb_per_s", 0.8, None),
]
UNIT = {"ops_per_s": "ops/s", "mb_per_s": "MB/s"}
SWIFT_USER, SWIFT_KEY = "test:tester", "testing"  # tempauth's user: the s3api access key
REGION = "us-east-1"

DURABILITY_NOTE = (
    "PUTs: shoal (both gateways) answers once the object is durable (flushed) on all 3 "
    "replicas and listed in the index; Swift's proxy answers once a quorum (2 of 3) of object "
    "servers have flushed it (each fsyncs its file) and the container listing is updated "
    "(or queued); nginx never fsyncs (a temp file renamed into place). The root filesystem "
    "is ext4 without a journal on a virtio disk: a flush costs well under a millisecond, far "
    "less than on real disks, so the durable figures are optimistic against real hardware."
)
SETUP_NOTE = (
    "One machine, 2 cores shared by everything: shoal's 3 daemons and Swift's 3 nodes (9 "
    "storage servers) write every byte 3 times to the same disk; wrk shares the cores too. "
    "Swift gets nproc proxy workers and memcached (its token and info caches), as deployed; "
    "its proxy pipeline is the s3api sample's less the middlewares this load never uses "
    "(bulk, tempurl, ratelimit, quotas, versioning, symlink, container_sync)."
)
CPU_NOTE = (
    "CPU per request: the process CPU time (/proc/<pid>/stat utime+stime, children included) "
    "of all of a target's processes over a run, divided by its requests: shoal: gateway + 3 "
    "daemons + master; swift: proxy (master and workers) + 9 storage servers + memcached; "
    "nginx: master and workers. Loopback TCP's softirqs are charged to the running process "
    "on this kernel. 'others': the machine's busy time less every known process and the "
    "kernel's threads (other sessions' work; above ~0.2 core the run is disturbed)."
)


@dataclass(frozen=True)
class Params:
    quick: bool
    seconds: int = 10  # each timed run (wrk: whole seconds); the same for every target
    connections: int = 16  # wrk -c
    threads: int = 2  # wrk -t
    keys: int = 256  # objects of each size, per target (each wrk thread PUTs its half)
    daemons: int = 3
    daemon_size: str = "4G"
    nginx_workers: int = 2
    swift_proxy_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    swift_part_power: int = 8
    fill_threads: int = 8  # Python threads writing and reading the key sets (untimed)
    verify_after_put: int = 8  # keys per wrk thread read back after the PUT runs
    expires_s: int = 6 * 3600  # the presigned URLs' lifetime (X-Amz-Expires)


# -- keys, bodies and the wrk script ----------------------------------------------------------


def key_of(size: str, thread: int, i: int) -> str:
    return f"{size}/{thread}-{i}"


def keys(p: Params, size: str) -> list[str]:
    """The key set of a size, thread-major: thread t PUTs keys[t * per : (t + 1) * per]."""
    per = p.keys // p.threads
    return [key_of(size, t, i) for t in range(p.threads) for i in range(per)]


def prefill_body(key: str, n: int) -> bytes:
    seed = key.encode().ljust(32, b".")
    return (seed * (n // len(seed) + 1))[:n]


def put_body(thread: int, n: int) -> bytes:
    return random.Random(f"{thread}-{n}").randbytes(n)


# Each wrk thread reads its list of request targets (path and query: a presigned URL's
# signature covers its key and method); GET picks one at random, PUT cycles through them with
# the thread's body (wrk calls request() once before the run without sending it).
WRK_SCRIPT = """\
local paths, n, counter, body = {{}}, 0, 0, nil
function setup(thread) thread:set("id", setup_n or 0); setup_n = (setup_n or 0) + 1 end
function init(args)
    for line in io.lines("{paths}-" .. id) do paths[#paths + 1] = line end
    n = #paths
    math.randomseed((id + 1) * 7919)
    if "{method}" == "PUT" then
        local f = assert(io.open("{bodies}-" .. id, "rb"))
        body = f:read("*a")
        f:close()
    end
end
function request()
    if body then
        counter = counter + 1
        return wrk.format("PUT", paths[counter % n + 1], nil, body)
    end
    return wrk.format("GET", paths[math.random(n)])
end
"""


# -- the targets ------------------------------------------------------------------------------


@dataclass
class Target:
    """A server under load: its base URL, the request target (path and query) of each key
    for GET and for PUT, and its processes (name: pid, each with its children)."""

    name: str
    url: str
    get: dict[str, str]  # key: request target
    put: dict[str, str]
    procs: dict[str, int]
    expect_put: tuple[int, ...] = (200, 201, 204)


def presigned(client: Any, bucket: str, key: str, method: str, expires: int) -> str:
    url = client.generate_presigned_url(
        f"{method}_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires
    )
    u = urlsplit(url)
    return f"{u.path}?{u.query}"


def s3_client(endpoint: str, access: str, secret: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
        region_name=REGION,
        config=Config(signature_version="s3v4", retries={"max_attempts": 1},
                      s3={"addressing_style": "path"}),
    )  # fmt: skip


def s3_target(name: str, url: str, access: str, secret: str, bucket: str, p: Params,
              procs: dict[str, int]) -> Target:  # fmt: skip
    """Make the bucket, and presign a GET and a PUT URL of every key."""
    c = s3_client(url, access, secret)
    c.create_bucket(Bucket=bucket)
    get, put = {}, {}
    for size in SIZES:
        for k in keys(p, size):
            get[k] = presigned(c, bucket, k, "get", p.expires_s)
            put[k] = presigned(c, bucket, k, "put", p.expires_s)
    return Target(name, url, get, put, procs, expect_put=(200,))


def plain_target(name: str, url: str, prefix: str, p: Params, procs: dict[str, int]) -> Target:
    paths = {k: f"{prefix}/{k}" for size in SIZES for k in keys(p, size)}
    return Target(name, url, paths, paths, procs)


class ShoalGateway:
    """`shoal http` or `shoal s3` on a free port over the pool, as a user runs it."""

    def __init__(self, kind: str, cluster: LocalCluster, work: Path) -> None:
        self.kind = kind
        self.err = work / f"gateway-{kind}.err"
        pattern = _S3 if kind == "s3" else _HTTP
        cmd = [*SHOAL, kind, "--port", "0", "--pool", POOL,
               "--config", str(cluster.data / "client.json"),
               "--index", f"sqlite:///{work / 'index.db'}",
               "--log", str(work / f"{kind}.log")]  # fmt: skip
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                         stdin=subprocess.DEVNULL)  # fmt: skip
        out = read_until(self.proc, lambda o: bool(pattern.search(o.decode())), 60.0)
        m = pattern.search(out.decode(errors="replace"))
        if m is None:
            stop_process(self.proc, signal.SIGKILL)
            tail = self.err.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"shoal {kind} did not start: {out!r}\n{tail}")
        self.url = f"http://{m.group(1)}"
        self.pid = self.proc.pid

    def stop(self) -> int | None:
        code = stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


def start_cluster(work: Path, p: Params) -> tuple[LocalCluster, str, tuple[str, str]]:
    """`shoal up`'s cluster on free ports, the pool r3 made with `shoal pool create`, and a
    key with the rights rw on it (`shoal key create`): the cluster, the pool as made, the
    key."""
    cluster = LocalCluster(work / "cluster", p.daemons, p.daemon_size, base_port=0, http_port=-1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # (it prints the admin key)
            cfg = cluster.start()
        cluster.wait_ready(cfg)
        config = str(cluster.data / "client.json")

        def shoal(*args: str) -> str:
            return subprocess.run([*SHOAL, *args, "--config", config], capture_output=True,
                                  text=True, check=True).stdout  # fmt: skip

        made = shoal("pool", "create", POOL, "--replicas", str(REPLICAS),
                     "--failure-domain", "daemon").strip()  # fmt: skip
        out = shoal("key", "create", "--rights", f"{POOL}=rw", "--comment", "bench.s3")
        access = re.search(r"access key:\s*(\S+)", out)
        secret = re.search(r"secret key:\s*(\S+)", out)
        if access is None or secret is None:
            raise RuntimeError(f"shoal key create printed no key: {out!r}")
        time.sleep(1.0)  # (the daemons see the new map; then wait until each is current)
        status = cluster.wait_ready(cfg, timeout=60.0)
        if status["recovery"]["recovering"]:
            raise RuntimeError(f"the daemons are still recovering: {status['recovery']}")
    except BaseException:
        cluster.stop()
        raise
    return cluster, made, (access.group(1), secret.group(1))


# -- Swift ------------------------------------------------------------------------------------

SWIFT_CONF = """\
[swift-hash]
swift_hash_path_suffix = shoal-bench
swift_hash_path_prefix = shoal-bench

[storage-policy:0]
name = Policy-0
default = yes
"""

SWIFT_DEFAULT = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = {workers}
user = root
swift_dir = {swift_dir}
devices = {devices}
mount_check = false
log_name = {name}
log_udp_host = 127.0.0.1
log_udp_port = {log_port}
"""

SWIFT_SERVER = """\
[pipeline:main]
pipeline = {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}
"""

SWIFT_PROXY = """\
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api \
tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached}

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:s3api]
use = egg:swift#s3api
location = {region}

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {key} .admin

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
"""


class SyslogSink:
    """Swift's servers log by syslog over UDP: this counts their lines by severity and keeps
    the latest warnings and errors (one datagram a line)."""

    NAMES: ClassVar[dict[int, str]] = {0: "emerg", 1: "alert", 2: "crit", 3: "error",
                                       4: "warning", 5: "notice", 6: "info",
                                       7: "debug"}  # fmt: skip

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.counts: dict[str, int] = {}
        self.latest: list[str] = []
        self.done = False
        self.thread = threading.Thread(target=self.drain, daemon=True)
        self.thread.start()

    def drain(self) -> None:
        while not self.done:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            m = re.match(rb"<(\d+)>", data)
            sev = int(m.group(1)) & 7 if m else 6
            name = self.NAMES[sev]
            self.counts[name] = self.counts.get(name, 0) + 1
            if sev <= 4:
                self.latest = [*self.latest[-19:], data.decode(errors="replace")[:300]]

    def stop(self) -> None:
        self.done = True
        self.thread.join(timeout=2)
        self.sock.close()


class Swift:
    """Swift's proxy with s3api and tempauth, memcached, and 3 nodes of object, container and
    account servers, all from Debian's packages, configured in WORK/swift and started here."""

    KINDS = ("account", "container", "object")

    def __init__(self, work: Path, p: Params) -> None:
        self.dir = (work / "swift").resolve()  # (the servers' configs want absolute paths)
        self.dir.mkdir()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = SyslogSink()
        (self.dir / "swift.conf").write_text(SWIFT_CONF)
        ports = {(kind, node): free_port() for kind in self.KINDS for node in range(1, 4)}
        for kind in self.KINDS:
            builder = f"{kind}.builder"
            self.ring(builder, "create", str(p.swift_part_power), "3", "1")
            for node in range(1, 4):
                self.ring(builder, "add", f"r1z{node}-127.0.0.1:{ports[kind, node]}/d{node}",
                          "100")  # fmt: skip
            self.ring(builder, "rebalance")
        try:
            mc = free_port()
            self.spawn("memcached", ["memcached", "-l", "127.0.0.1", "-p", str(mc), "-U", "0",
                                     "-u", "root", "-t", "1", "-m", "64"], mc)  # fmt: skip
            for node in range(1, 4):
                devices = self.dir / f"node{node}"
                (devices / f"d{node}").mkdir(parents=True)
                for kind in self.KINDS:
                    port = ports[kind, node]
                    conf = self.dir / f"{kind}-{node}.conf"
                    conf.write_text(SWIFT_DEFAULT.format(
                        port=port, workers=1, swift_dir=self.dir, devices=devices,
                        name=f"{kind}-{node}", log_port=self.logs.port,
                    ) + "\n" + SWIFT_SERVER.format(kind=kind))  # fmt: skip
                    self.spawn(f"{kind}{node}", [f"swift-{kind}-server", str(conf)], port)
            self.port = free_port()
            conf = self.dir / "proxy.conf"
            conf.write_text(SWIFT_DEFAULT.format(
                port=self.port, workers=p.swift_proxy_workers, swift_dir=self.dir,
                devices=self.dir, name="proxy", log_port=self.logs.port,
            ) + "\n" + SWIFT_PROXY.format(memcached=mc, region=REGION, key=SWIFT_KEY))  # fmt: skip
            self.spawn("proxy", ["swift-proxy-server", str(conf)], self.port, "/healthcheck")
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{self.port}"

    def ring(self, *args: str) -> None:
        out = subprocess.run(["swift-ring-builder", *args], cwd=self.dir, capture_output=True,
                             text=True)  # fmt: skip
        if out.returncode not in (0, 1):  # (1: warnings, e.g. about the dispersion)
            raise RuntimeError(f"swift-ring-builder {' '.join(args)}: {out.stdout}{out.stderr}")

    def spawn(self, name: str, cmd: list[str], port: int, health: str = "") -> None:
        """Start a server and wait until it takes connections (and answers 200 on `health`:
        the proxy's parent listens before its workers have loaded the pipeline)."""
        with open(self.dir / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)  # fmt: skip
        self.procs[name] = proc
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                if not health:
                    return
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{health}", timeout=5):
                    return
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.dir / f"{name}.err").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"swift's {name} did not start: {tail}") from None
                time.sleep(0.05)

    def pids(self) -> dict[str, int]:
        return {f"swift:{name}": proc.pid for name, proc in self.procs.items()}

    def stop(self) -> dict[str, int | None]:
        codes = {f"swift:{name}": stop_process(proc) for name, proc in self.procs.items()}
        self.logs.stop()
        return codes

    def log_summary(self) -> dict[str, Any]:
        return {"lines_by_severity": self.logs.counts, "latest_warnings": self.logs.latest}


# -- the runs ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, p: Params, work: Path, targets: dict[str, Target]) -> None:
        self.p, self.work, self.targets = p, work, targets
        self.bad: list[str] = []  # runs with wrk errors or short bodies
        self.checked = {"before_get": 0, "after_put": 0}
        for size, n in SIZES.items():
            for t in range(p.threads):
                (work / f"body-{size}-{t}").write_bytes(put_body(t, n))

    def meter(self) -> Meter:
        procs: dict[str, int] = {}
        for tg in self.targets.values():
            procs.update(tg.procs)
        return Meter(procs)

    def fill(self) -> None:
        """Write every key of every size through every target (untimed): each PUT as wrk
        sends it (through the presigned URL for the S3 targets)."""
        for name, tg in self.targets.items():
            h = Http(tg.url, self.p.fill_threads)
            for size, n in SIZES.items():
                t0 = time.perf_counter()

                def put(key: str, tg: Target = tg, h: Http = h, n: int = n) -> None:
                    status, body = h.request("PUT", tg.put[key], prefill_body(key, n))
                    if status not in tg.expect_put:
                        raise RuntimeError(f"{tg.name}: PUT {key}: {status} {body[:300]!r}")

                h.each(put, keys(self.p, size))
                log(f"  {NAME[name]}: {self.p.keys} x {LABEL[size]} written in "
                    f"{time.perf_counter() - t0:.1f} s")  # fmt: skip

    def check(self, size: str, expected: Any) -> int:
        """GET every key of a size from every target (200, the bytes of `expected(key)`);
        also makes the GETs cache-hot."""
        count = 0
        for tg in self.targets.values():
            h = Http(tg.url, self.p.fill_threads)

            def get(key: str, tg: Target = tg, h: Http = h) -> None:
                status, body = h.request("GET", tg.get[key])
                if status != 200 or body != expected(key):
                    raise RuntimeError(f"{tg.name}: GET {key}: {status}, {len(body)} bytes, "
                                       f"not the bytes written: {body[:300]!r}")  # fmt: skip

            h.each(get, keys(self.p, size))
            count += self.p.keys
        return count

    def verify_puts(self) -> None:
        """After the PUT runs: the first keys of each wrk thread hold that thread's body."""
        per = self.p.keys // self.p.threads
        for size, n in SIZES.items():
            bodies = {t: put_body(t, n) for t in range(self.p.threads)}
            sample = [key_of(size, t, i) for t in range(self.p.threads)
                      for i in range(2, 2 + min(self.p.verify_after_put, per - 2))]  # fmt: skip
            for tg in self.targets.values():
                h = Http(tg.url, self.p.fill_threads)

                def get(key: str, tg: Target = tg, h: Http = h,
                        bodies: dict[int, bytes] = bodies) -> None:  # fmt: skip
                    status, body = h.request("GET", tg.get[key])
                    want = bodies[int(key.split("/")[1].split("-")[0])]
                    if status != 200 or body != want:
                        raise RuntimeError(
                            f"{tg.name}: GET {key} after the PUT runs: "
                            f"{status}, {len(body)} bytes, not wrk's body"
                        )

                h.each(get, sample)
                self.checked["after_put"] += len(sample)

    def script(self, tg: Target, op: str, size: str) -> str:
        base = self.work / f"paths-{tg.name.replace(' ', '_')}-{op}-{size}"
        ks = keys(self.p, size)
        per = self.p.keys // self.p.threads
        for t in range(self.p.threads):
            mine = ks if op == "get" else ks[t * per : (t + 1) * per]
            table = tg.get if op == "get" else tg.put
            Path(f"{base}-{t}").write_text("".join(f"{table[k]}\n" for k in mine))
        return WRK_SCRIPT.format(paths=base, method=op.upper(),
                                 bodies=self.work / f"body-{size}")  # fmt: skip

    def run(self, name: str, op: str, size: str, seconds: int = 0) -> dict[str, Any]:
        tg = self.targets[name]
        res = wrk(self.p, self.work, self.meter(), tg.url, self.script(tg, op, size),
                  seconds or self.p.seconds)  # fmt: skip
        n = SIZES[size]
        ops = max(res["requests"], 1)
        res["mb_per_s"] = res["ops_per_s"] * n / 1e6
        res["target"] = name
        cpu = {k: v for k, v in res["cpu_s"].items() if k in tg.procs}
        res["server_cpu_s"] = round(sum(cpu.values()), 3)
        res["server_cores"] = round(res["server_cpu_s"] / res["cpu_wall_s"], 3)
        res["server_cpu_us_per_op"] = round(res["server_cpu_s"] / ops * 1e6, 1)
        front = {"s3": "gateway:s3", "http": "gateway:http", "swift": "swift:proxy",
                 "nginx": "nginx"}[name]  # fmt: skip
        res["front_cpu_us_per_op"] = round(cpu[front] / ops * 1e6, 1)  # gateway / proxy
        res["back_cpu_us_per_op"] = round((res["server_cpu_s"] - cpu[front]) / ops * 1e6, 1)
        res["wrk_cpu_us_per_op"] = round(res["wrk_cpu_s"] / ops * 1e6, 1)
        res["non_2xx"] = res["errors"]["status"]
        res["socket_errors"] = sum(v for k, v in res["errors"].items() if k != "status")
        # wrk counts only statuses >= 400: a 3xx or a short answer to a GET shows as fewer
        # bytes than requests x size
        res["short_bodies"] = op == "get" and res["bytes_read"] < res["requests"] * n
        if res["non_2xx"] or res["socket_errors"] or res["short_bodies"]:
            self.bad.append(
                f"{NAME[name]} {op} {size}: errors {res['errors']}, "
                f"{res['bytes_read']} bytes for {res['requests']} requests"
            )
        log(f"    {NAME[name]:<12}{res['ops_per_s']:>9.0f} ops/s {res['mb_per_s']:>8.1f} MB/s  "
            f"{res['server_cpu_us_per_op']:>7.0f} us/op  server {res['server_cores']:.2f} "
            f"wrk {res['wrk_cores']:.2f} others {res['other_cores']:.2f} cores; "
            f"non-2xx {res['non_2xx']}")  # fmt: skip
        return res

    def all(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        fig: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for op, size, _, _, _ in ROWS:
            if op == "get":
                log(f"reading every {LABEL[size]} key once from each target (cache-hot, bytes "
                    "compared)")  # fmt: skip
                n = SIZES[size]
                self.checked["before_get"] += self.check(size, lambda k, n=n: prefill_body(k, n))
            log(f"{op} {LABEL[size]}: {', '.join(ORDER)} ({self.p.seconds} s each, wrk "
                f"-t{self.p.threads} -c{self.p.connections})")  # fmt: skip
            runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
            for name in ORDER:
                runs[name].append(self.run(name, op, size))
            fig[f"{op} {size}"] = runs
        log("reading back the first keys of each wrk thread after the PUT runs")
        self.verify_puts()
        return fig


# -- the profiles of the gateways ---------------------------------------------------------------


SPY_HZ = 200
PROFILE_S = 10  # each profiled run (with --quick too: enough samples)
# frames every sample of the gateway's event loop has (the process's start and its loop):
# left out of the totals, which then rank the gateway's own work
PLUMBING = re.compile(r"runpy|shoal/cli/|daemon/main\.py|asyncio/runners\.py|uvloop/__init__")


def profile(b: Bench, pids: dict[str, int]) -> dict[str, Any]:
    """py-spy (if installed) on each gateway (kind: pid) during one more 4 KiB GET and PUT run
    each: the functions with the most samples, on the CPU and holding the GIL (self and
    total). The HTTP gateway's profile is the baseline: what S3 adds is the difference."""
    spy = shutil.which("py-spy")
    if spy is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    out: dict[str, Any] = {}
    for op, kind in itertools.product(("get", "put"), pids):
        pid = pids[kind]
        raw = b.work / f"profile-{kind}-{op}.txt"
        cmd = [spy, "record", "--gil", "--nonblocking", "--format", "raw", "-r", str(SPY_HZ), "-d",
               str(PROFILE_S - 2), "-p", str(pid), "-o", str(raw)]  # fmt: skip
        with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as spyp:
            time.sleep(0.5)
            res = b.run(kind, op, "4k", PROFILE_S)
            _, err = spyp.communicate(timeout=60)
        if not raw.exists():
            out[f"{NAME[kind]} {op} 4k"] = {"error": err.decode(errors="replace")[-500:]}
            continue
        run = {k: res[k] for k in ("ops_per_s", "server_cpu_us_per_op", "front_cpu_us_per_op")}
        out[f"{NAME[kind]} {op} 4k"] = {"run": run, **top_functions(raw.read_text())}
    return out


def top_functions(raw: str, n: int = 25) -> dict[str, Any]:
    """From py-spy's raw (collapsed) stacks: the total samples, and the n functions with the
    most samples on top of the stack (self) and anywhere in it (total, but for PLUMBING),
    each in % of all."""
    own: dict[str, int] = {}
    anywhere: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + c
        for f in set(frames):
            if not PLUMBING.search(f):
                anywhere[f] = anywhere.get(f, 0) + c

    def top(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(f, round(100 * c / max(total, 1), 1))
                for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:n]]  # fmt: skip

    return {"samples": total, "self_pct": top(own), "total_pct": top(anywhere)}


# -- table and results ------------------------------------------------------------------------


def avg(runs: list[dict[str, Any]], key: str) -> float:
    return mean(r[key] for r in runs)


def rows(fig: dict[str, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    out = []
    for op, size, unit, goal_http, goal_swift in ROWS:
        runs = fig[f"{op} {size}"]
        v = {t: avg(runs[t], unit) for t in TARGETS}
        r_http, r_swift = v["s3"] / v["http"], v["s3"] / v["swift"]
        out.append({
            "op": op, "size": size, "unit": unit,
            "what": f"{op.upper()} {LABEL[size]} ({UNIT[unit]})",
            **{t: v[t] for t in TARGETS},
            "each": {t: [round(r[unit], 1) for r in runs[t]] for t in TARGETS},
            "s3_over_http": r_http, "s3_over_swift": r_swift, "s3_over_nginx": v["s3"] / v["nginx"],
            "http_over_nginx": v["http"] / v["nginx"],
            "goal_s3_over_http": goal_http, "goal_s3_over_swift": goal_swift,
            "met_http": r_http >= goal_http,
            "met_swift": None if goal_swift is None else r_swift >= goal_swift,
            "cpu_us_per_op": {t: avg(runs[t], "server_cpu_us_per_op") for t in TARGETS},
            "front_cpu_us_per_op": {t: avg(runs[t], "front_cpu_us_per_op") for t in TARGETS},
            "back_cpu_us_per_op": {t: avg(runs[t], "back_cpu_us_per_op") for t in TARGETS},
            "server_cores": {t: avg(runs[t], "server_cores") for t in TARGETS},
            "wrk_cores": {t: avg(runs[t], "wrk_cores") for t in TARGETS},
            "latency_p50_ms": {t: avg(runs[t], "latency_p50_ms") for t in TARGETS},
            "latency_p99_ms": {t: avg(runs[t], "latency_p99_ms") for t in TARGETS},
            "machine_busy_cores": {t: avg(runs[t], "machine_busy_cores") for t in TARGETS},
            "non_2xx": sum(r["non_2xx"] for t in TARGETS for r in runs[t]),
            "socket_errors": sum(r["socket_errors"] for t in TARGETS for r in runs[t]),
            "max_other_cores": round(max(avg(runs[t], "other_cores") for t in TARGETS), 2),
        })  # fmt: skip
    return out


def goal_text(ratio: float, goal: float | None) -> str:
    if goal is None:
        return f"{ratio:>6.2f}  {'-':<12}"
    return f"{ratio:>6.2f}  {f'>= {goal:g} ' + ('met' if ratio >= goal else 'MISSED'):<12}"


def table(rs: list[dict[str, Any]]) -> str:
    head = (f"{'measure':<18}{'shoal s3':>9}{'http':>8}{'swift':>8}{'nginx':>8}  "
            f"{'s3/http':>6}  {'goal':<12}{'s3/swift':>6}  {'goal':<12}{'s3/nginx':>8}"
            f"{'non-2xx':>8}{'others':>7}")  # fmt: skip
    out = [head, "-" * len(head)]
    for r in rs:
        out.append(f"{r['what']:<18}{r['s3']:>9.0f}{r['http']:>8.0f}{r['swift']:>8.1f}"
                   f"{r['nginx']:>8.0f}  {goal_text(r['s3_over_http'], r['goal_s3_over_http'])}"
                   f"{goal_text(r['s3_over_swift'], r['goal_s3_over_swift'])}"
                   f"{r['s3_over_nginx']:>8.2f}{r['non_2xx']:>8}"
                   f"{r['max_other_cores']:>7.2f}")  # fmt: skip
    return "\n".join(out)


def cpu_table(rs: list[dict[str, Any]]) -> str:
    """CPU per request (us) of each target, split front (gateway, proxy) + back (daemons,
    storage servers), its cores busy, and wrk's p50 / p99 latency."""
    head = f"{'measure':<18}{'target':<13}{'us/op':>8}{'front':>8}{'back':>8}{'cores':>7}"
    head += f"{'wrk':>6}{'busy':>6}{'p50 ms':>8}{'p99 ms':>8}"
    out = [head, "-" * len(head)]
    for r in rs:
        for t in TARGETS:
            out.append(f"{r['what']:<18}{NAME[t]:<13}{r['cpu_us_per_op'][t]:>8.0f}"
                       f"{r['front_cpu_us_per_op'][t]:>8.0f}{r['back_cpu_us_per_op'][t]:>8.0f}"
                       f"{r['server_cores'][t]:>7.2f}{r['wrk_cores'][t]:>6.2f}"
                       f"{r['machine_busy_cores'][t]:>6.2f}{r['latency_p50_ms'][t]:>8.2f}"
                       f"{r['latency_p99_ms'][t]:>8.2f}")  # fmt: skip
    return "\n".join(out)


def print_profile(prof: dict[str, Any]) -> None:
    """The top frames, in % of the samples and in ~us per request (the samples at 200 Hz over
    the requests wrk made while py-spy recorded)."""
    for what, res in prof.items():
        if "self_pct" not in res:
            print(f"profile {what}: {res}")
            continue
        run = res["run"]
        us = res["samples"] / SPY_HZ / (run["ops_per_s"] * (PROFILE_S - 2)) * 1e6 / 100
        print(f"profile of {what} ({run['ops_per_s']:.0f} ops/s, gateway "
              f"{run['front_cpu_us_per_op']:.0f} us/op of CPU; {res['samples']} samples "
              f"holding the GIL, ~{us * 100:.0f} us/op): % of samples, ~us per "
              "request")  # fmt: skip
        for (f, pct), (g, tot) in zip(res["self_pct"][:15], res["total_pct"][:15], strict=False):
            print(f"  self {pct:>5.1f} {pct * us:>5.0f}  {f[:62]:<62}  total {tot:>5.1f} "
                  f"{tot * us:>5.0f}  {g[:62]}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    ap = arguments("bench.s3", __doc__, "a smoke run: 2 s runs, 64 keys")
    ap.add_argument("--profile", action="store_true",
                    help="after the runs, py-spy each gateway over one more 4 KiB GET and "
                         "PUT run each")  # fmt: skip
    args = ap.parse_args(argv)
    tools = ("nginx", "wrk", "memcached", "swift-proxy-server", "swift-ring-builder")
    for tool in tools:
        if shutil.which(tool) is None:
            sys.exit(
                f"{tool} is missing: make install-bench (Debian packages nginx-extras, "
                "wrk, memcached, swift-proxy, swift-object, swift-container, "
                "swift-account)"
            )
    try:
        import boto3  # noqa: F401
    except ImportError:
        sys.exit("boto3 is missing: .venv/bin/pip install -e '.[test]'")
    p = Params(args.quick)
    if args.quick:
        p = replace(p, seconds=2, keys=64, daemon_size="2G")
    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="s3-", dir=args.dir))
    started = datetime.now()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    cluster: LocalCluster | None = None
    ngx: Nginx | None = None
    swift: Swift | None = None
    gateways: dict[str, ShoalGateway] = {}
    codes: dict[str, int | None] = {}
    logs: dict[str, Any] = {}
    prof: dict[str, Any] = {}
    bench: Bench | None = None
    try:
        info = machine(work)
        info["nginx"], info["wrk"] = version(["nginx", "-v"]), version(["wrk", "-v"])
        info["swift"] = version(["dpkg-query", "-W", "-f", "${Version}", "swift"])
        info["memcached"] = version(["memcached", "-V"])
        info["boto3"] = sys.modules["boto3"].__version__
        log(f"starting a local cluster ({p.daemons} daemons, --size {p.daemon_size}), the pool "
            f"{POOL}, shoal's S3 and HTTP gateways, Swift and nginx in {work}")  # fmt: skip
        cluster, pool_made, (access, secret) = start_cluster(work, p)
        for kind in ("s3", "http"):
            gateways[kind] = ShoalGateway(kind, cluster, work)
        shoal_procs = {c.name: c.proc.pid for c in cluster.sup.children if c.proc}
        swift = Swift(work, p)
        ngx = Nginx(work, DaemonParams(args.quick, float(p.seconds),
                                       nginx_workers=p.nginx_workers))  # fmt: skip
        targets = {
            "s3": s3_target("shoal s3", gateways["s3"].url, access, secret, "s3bench", p,
                            {"gateway:s3": gateways["s3"].pid, **shoal_procs}),
            "http": plain_target("shoal http", gateways["http"].url, "/httpbench", p,
                                 {"gateway:http": gateways["http"].pid, **shoal_procs}),
            "swift": s3_target("swift s3api", swift.url, SWIFT_USER, SWIFT_KEY, "bench", p,
                               swift.pids()),
            "nginx": plain_target("nginx", ngx.url, "/bench", p, {"nginx": ngx.proc.pid}),
        }  # fmt: skip
        bench = Bench(p, work, targets)
        log("writing the key sets through each target (untimed; PUTs as wrk sends them)")
        bench.fill()
        fig = bench.all()
        if args.profile:
            log("profiling the gateways (py-spy) over one more 4 KiB GET and PUT run each")
            prof = profile(bench, {kind: g.pid for kind, g in gateways.items()})
    finally:
        for kind, g in gateways.items():
            codes[f"gateway {kind}"] = g.stop()
        if cluster is not None:
            cluster.stop()
            codes.update({c.name: c.proc.returncode for c in cluster.sup.children if c.proc})
            logs = log_summary(work)
        if swift is not None:
            codes.update(swift.stop())
            logs["swift"] = swift.log_summary()
        if ngx is not None:
            codes["nginx"] = ngx.stop()
        shutil.rmtree(work, ignore_errors=True)
    assert bench is not None
    rs = rows(fig)
    met = {
        "s3_over_http_all": all(r["met_http"] for r in rs),
        "s3_over_swift_put4k": next(r["met_swift"] for r in rs if (r["op"], r["size"]) == (
            "put", "4k")),
        "s3_over_swift_get4k": next(r["met_swift"] for r in rs if (r["op"], r["size"]) == (
            "get", "4k")),
    }  # fmt: skip
    result = {
        "date": started.isoformat(timespec="seconds"),
        "ended": datetime.now().isoformat(timespec="seconds"),
        "machine": info,
        "git": git(),
        "command": "python -m bench.s3" + (" --quick" if args.quick else "")
        + (" --profile" if args.profile else ""),
        "parameters": {**asdict(p), "sizes": SIZES, "order": ORDER, "pool": pool_made,
                       "replicas": REPLICAS, "swift_user": SWIFT_USER,
                       "presigned": "boto3 generate_presigned_url, SigV4 (s3v4), path style, "
                                    "one URL per key and method",
                       "bench_dir": str(work)},
        "ratios": rs,
        "goals": {"s3_over_http": ">= 0.8 (every row)", "s3_over_swift_put4k": ">= 20",
                  "s3_over_swift_get4k": ">= 5"},
        "goals_met": met,
        "figures": fig,
        "profile": prof,
        "checks": {"bytes_compared": bench.checked, "bad_runs": bench.bad},
        "logs": logs,
        "exit_codes": codes,
        "wall_s": round(time.perf_counter() - t0, 1),
        "loadavg_1_5_15": {"start": load0, "end": os.getloadavg()},
        "notes": [DURABILITY_NOTE, SETUP_NOTE, CPU_NOTE],
    }  # fmt: skip
    print(table(rs))
    print(f"goals: s3/http >= 0.8 {'met' if met['s3_over_http_all'] else 'MISSED'}; s3/swift "
          f"4 KiB PUT >= 20 {'met' if met['s3_over_swift_put4k'] else 'MISSED'}; s3/swift "
          f"4 KiB GET >= 5 {'met' if met['s3_over_swift_get4k'] else 'MISSED'}")  # fmt: skip
    print(f"* {DURABILITY_NOTE}")
    print("  'others': the most CPU (cores) other processes took during a row's runs; above "
          "~0.2 the figure is disturbed.")  # fmt: skip
    print()
    print(
        "CPU per request (us; front: the gateway or Swift's proxy; back: daemons + master, "
        "or Swift's storage servers + memcached), cores busy, wrk's latency (means of the "
        "runs):"
    )
    print(cpu_table(rs))
    print()
    if prof:
        print_profile(prof)
        print()
    print(f"checks: bytes compared {bench.checked}; runs with wrk errors or short bodies: "
          f"{len(bench.bad)}{': ' + '; '.join(bench.bad) if bench.bad else ''}")  # fmt: skip
    print(f"logs: {json.dumps(logs)[:2000]}")
    print(f"wall {result['wall_s']} s; load average at start {load0[0]:.2f}, end "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    write_result("s3", result)
    return 1 if bench.bad else 0


if __name__ == "__main__":
    sys.exit(main())
