"""shoal's HTTP gateway (`shoal http`) against stock nginx WebDAV, over loopback, in one run.

A local cluster (`shoal.up.LocalCluster`, as `shoal up` starts it: a master and 3 daemons, one
data file each, TLS to the master and between the daemons) runs in a fresh directory under
bench/work/ (deleted at the end), with two pools: `r1` (replicas 1, the like-for-like figure)
and `r3` (replicas 3, the real one), both `--failure-domain daemon`. One `shoal http` gateway
per pool (proxy mode, the default; its request log to a file, as a user runs it; its index in
one SQLite file) stays up for the whole run. Stock nginx with its DAV module (the same one
bench.daemon starts) runs beside them. wrk drives both (2 threads, 16 connections, Lua
scripts), with the same paths and the same bodies:

    GET  4 KiB and 1 MiB objects written beforehand (random keys of the set, cache-hot)
    PUT  4 KiB and 1 MiB bodies that overwrite the keys of that same set (each wrk thread its
         own keys, cycling through them)

Each (operation, size, pool) runs four times, shoal, nginx, nginx, shoal (5 s each), and the
ratio shoal / nginx is of the means. Also: one 4 KiB GET run with the request log off (what
the log costs), and one 4 KiB GET run of a gateway in redirect mode (only its 302 answers:
wrk does not follow them). The CPU of the gateway, the daemons, the master, nginx, wrk, the
kernel's threads and the rest of the machine is read around each run (/proc), as bench.daemon
does. The bodies are checked: every key is read back and compared before the GET runs, a
sample after the PUT runs; wrk's error counts (non-2xx, sockets) are reported.

Prints a table of shoal / nginx ratios against the goals and writes
bench/results/http.json.

    .venv/bin/python -m bench.http [--dir DIR] [--quick]
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from statistics import mean
from typing import Any

from bench import write_result
from bench.daemon import (
    WRK_DONE,
    WRK_GET,
    Nginx,
    cpu_of,
    kernel_threads,
    machine_busy,
    stop_process,
    tree,
    version,
)
from bench.daemon import Params as DaemonParams
from bench.engine import KiB, MiB, arguments, git, log, machine
from shoal.daemon.process import read_until
from shoal.up import _HTTP, LocalCluster

SHOAL = [sys.executable, "-m", "shoal.cli"]
SIZES = {"4k": 4 * KiB, "1m": MiB}
POOLS = {"r1": 1, "r3": 3}  # pool name: replicas
# (op, size) in run order, the unit of the table and the goal (shoal / nginx, proxy mode)
ROWS = [
    ("get", "4k", "ops_per_s", 0.25),
    ("get", "1m", "mb_per_s", 0.5),
    ("put", "4k", "ops_per_s", None),
    ("put", "1m", "mb_per_s", 0.5),
]
WHAT = {"get": "GET, cache-hot", "put": "PUT, overwrite"}
LABEL = {"4k": "4 KiB", "1m": "1 MiB"}
UNIT = {"ops_per_s": "ops/s", "mb_per_s": "MB/s"}

DURABILITY_NOTE = (
    "PUTs are not like-for-like: the gateway answers 201 once the object is durable on every "
    "replica (flushed; concurrent small PUTs share flushes by group commit) and listed in the "
    "index (SQLite, WAL, synchronous=NORMAL), while nginx never fsyncs (a temp file renamed "
    "into place, left in the page cache). r1 is the closest to like-for-like; r3 writes every "
    "byte 3 times to the same disk, by 3 daemons on the same 2 cores."
)
FS_NOTE = (
    "The root filesystem of these machines is ext4 without a journal on a virtio disk: an "
    "fsync costs well under a millisecond, far less than on real disks, so shoal's durable "
    "PUT figures are optimistic compared with real hardware."
)
PUT_NOTE = (
    "PUTs overwrite keys of the GET set (written before the runs): each wrk thread cycles "
    "through its own keys, so no two requests in flight change the same key (the gateway "
    "answers 409 to a PUT of a key it is already changing). Overwrites keep the disk use and "
    "nginx's file count bounded (nginx's rename frees the old file; shoal frees the old "
    "blocks right after the new copy is durable)."
)
GET_NOTE = (
    "GETs are cache-hot: every key of the set is read once (and its bytes compared) right "
    "before the GET runs of that size, from nginx and from each pool's gateway. Keys are "
    "picked at random by each wrk thread; wrk discards the bodies."
)
CPU_NOTE = (
    "CPU is cores busy over a run (1.0 = one core all the time), from /proc/<pid>/stat "
    "utime+stime: the gateway, the 3 daemons, the master, nginx (master and workers); wrk's "
    "from its rusage; 'kernel': the kernel's threads (writeback, ksoftirqd); 'others': the "
    "whole machine's busy time (/proc/stat) less all of those and this process (other "
    "sessions' work; above ~0.2 the run is disturbed). Softirqs such as loopback TCP are "
    "charged to the running process on this kernel. wrk and the servers share the 2 cores."
)
REDIRECT_NOTE = (
    "Redirect mode (`shoal http --redirect`) answers a GET with a 302 to a daemon's read "
    "endpoint (one stat of the object first); wrk does not follow redirects, so this figure "
    "is the rate of 302 answers alone, not a GET figure: a real client then makes a second "
    "request, to the daemon."
)


@dataclass(frozen=True)
class Params:
    quick: bool
    seconds: int = 5  # each timed run (wrk: whole seconds)
    connections: int = 16  # wrk -c
    threads: int = 2  # wrk -t
    keys: tuple[tuple[str, int], ...] = (("4k", 4096), ("1m", 512))  # the set of each size
    daemons: int = 3
    daemon_size: str = "4G"
    nginx_workers: int = 2
    verify_after_put: int = 16  # keys per wrk thread read back after the PUT runs
    fill_threads: int = 8  # Python threads writing and reading the key sets (untimed)

    def nkeys(self, size: str) -> int:
        return dict(self.keys)[size]


# -- keys and bodies -------------------------------------------------------------------------


def key_of(size: str, thread: int, i: int) -> str:
    """The path of key i of wrk thread `thread` (the same on nginx and on the gateways)."""
    return f"/b{size}/{thread}-{i}"


def keyset(p: Params, size: str) -> list[str]:
    per = p.nkeys(size) // p.threads
    return [key_of(size, t, i) for t in range(p.threads) for i in range(per)]


def prefill_body(path: str, n: int) -> bytes:
    """What the key holds before the PUT runs (different for every key)."""
    seed = hashlib.sha256(path.encode()).digest()
    return (seed * (n // len(seed) + 1))[:n]


def put_body(thread: int, n: int) -> bytes:
    """What wrk thread `thread` PUTs (to its own keys)."""
    return random.Random(f"{thread}-{n}").randbytes(n)


# The PUT runs: wrk thread t cycles through its keys /b<size>/t-0 .. t-(n-1), starting at 1
# in every run (at 2 for thread 0: wrk calls its request() once before the run without sending
# it).
WRK_PUT = """\
local n, counter, body, prefix = {per}, 0, nil, nil
function setup(thread) thread:set("id", setup_n or 0); setup_n = (setup_n or 0) + 1 end
function init(args)
    local f = assert(io.open("{bodies}-" .. id, "rb"))
    body = f:read("*a")
    f:close()
    prefix = "/b{size}/" .. id .. "-"
end
function request()
    counter = counter + 1
    return wrk.format("PUT", prefix .. (counter % n), nil, body)
end
"""


class Http:
    """Many requests from a few Python threads, one keep-alive connection each: writes the
    key sets and reads them back (untimed)."""

    def __init__(self, url: str, threads: int) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port, self.threads = host, int(port), threads
        self.local = threading.local()

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        for attempt in range(2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, 60)
            try:
                conn.request(method, path, body)
                r = conn.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def each(self, fn: Callable[[str], None], paths: Sequence[str]) -> None:
        with ThreadPoolExecutor(self.threads) as ex:
            for _ in ex.map(fn, paths):
                pass

    def fill(self, paths: Sequence[str], n: int) -> None:
        def put(path: str) -> None:
            status, body = self.request("PUT", path, prefill_body(path, n))
            if status not in (200, 201, 204):
                raise RuntimeError(f"PUT {path}: {status} {body[:200]!r}")

        self.each(put, paths)

    def check(self, paths: Sequence[str], expected: Callable[[str], bytes]) -> int:
        """GET each path and compare its bytes with `expected(path)`; the number checked."""

        def get(path: str) -> None:
            status, body = self.request("GET", path)
            if status != 200 or body != expected(path):
                raise RuntimeError(f"GET {self.host}:{self.port}{path}: {status}, "
                                   f"{len(body)} bytes, not the bytes written")  # fmt: skip

        self.each(get, paths)
        return len(paths)


# -- processes and CPU accounting -------------------------------------------------------------


class Gateway:
    """`shoal http` on a free port over `pool` of the cluster, as a user runs it."""

    def __init__(self, name: str, cluster: LocalCluster, work: Path, pool: str,
                 log_to: str, redirect: bool = False) -> None:  # fmt: skip
        self.name, self.pool, self.redirect = name, pool, redirect
        self.log_to = log_to
        self.err = work / f"gateway-{name}.err"
        cmd = [*SHOAL, "http", "--port", "0", "--pool", pool,
               "--config", str(cluster.data / "client.json"),
               "--index", f"sqlite:///{work / 'index.db'}", "--log", log_to,
               *(["--redirect"] if redirect else [])]  # fmt: skip
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                         stdin=subprocess.DEVNULL)  # fmt: skip
        text = read_until(self.proc, lambda out: bool(_HTTP.search(out.decode())), 60.0)
        m = _HTTP.search(text.decode(errors="replace"))
        if m is None:
            stop_process(self.proc, signal.SIGKILL)
            tail = self.err.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"shoal http ({name}) did not start: {text!r}\n{tail}")
        self.url = f"http://{m.group(1)}"
        self.pid = self.proc.pid

    def stop(self) -> int | None:
        code = stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


def loop_sched(pid: int) -> tuple[float, float]:
    """Seconds a process's main thread (shoal's event loop) has spent on a CPU and waiting on
    a run queue for one (/proc/PID/schedstat, in ns)."""
    try:
        run, wait, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(run) / 1e9, int(wait) / 1e9


class Meter:
    """CPU seconds of named processes (each with its children), of wrk (this process's waited
    children), of the kernel's threads and of the whole machine, between start and stop; and
    for shoal's processes, how long their event loop thread ran or waited for a CPU."""

    def __init__(self, procs: dict[str, int]) -> None:
        self.procs = procs  # name: pid

    def sample(self) -> dict[str, float]:
        busy, irq, forks = machine_busy()
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = {name: sum(cpu_of(x) for x in tree(pid)) for name, pid in self.procs.items()}
        for name, pid in self.procs.items():
            if name != "nginx":
                out[f"{name}/loop_run"], out[f"{name}/loop_wait"] = loop_sched(pid)
        return {**out, "t": time.perf_counter(), "machine": busy + irq, "irq": irq,
                "kernel": kernel_threads(), "bench": time.process_time(), "forks": forks,
                "wrk": ch.ru_utime + ch.ru_stime}  # fmt: skip

    def start(self) -> None:
        self.t0 = self.sample()

    def stop(self) -> dict[str, Any]:
        t1 = self.sample()
        d = {k: t1[k] - self.t0[k] for k in t1}
        wall = d.pop("t")
        cores = {k: round(v / wall, 3) for k, v in d.items() if k in self.procs}
        known = sum(d[k] for k in self.procs) + d["wrk"] + d["kernel"] + d["bench"]
        loops = {k: round(v / wall, 3) for k, v in d.items() if "/loop_" in k}
        return {"cpu_wall_s": round(wall, 3), "cores": cores, "event_loops": loops,
                "cpu_s": {k: round(d[k], 3) for k in self.procs},
                "wrk_cores": round(d["wrk"] / wall, 3), "wrk_cpu_s": round(d["wrk"], 3),
                "kernel_cores": round(max(0.0, d["kernel"]) / wall, 3),
                "irq_softirq_cores": round(d["irq"] / wall, 3),
                "bench_process_cores": round(d["bench"] / wall, 3),
                "machine_busy_cores": round(d["machine"] / wall, 3),
                "other_cores": round(max(0.0, d["machine"] - known) / wall, 3),
                "processes_forked_per_s": round(d["forks"] / wall, 1)}  # fmt: skip


def wrk(p: Params, work: Path, meter: Meter, url: str, script: str, seconds: int) -> dict[str, Any]:
    """One timed wrk run against `url`: requests, rate, latency percentiles, error counts
    (reported, not raised: the caller checks them) and the CPU of everyone during it."""
    lua = work / "wrk.lua"
    lua.write_text(script + WRK_DONE)
    cmd = ["wrk", "-t", str(p.threads), "-c", str(p.connections), "-d", f"{seconds}s",
           "--timeout", "60s", "-s", str(lua), url]  # fmt: skip
    meter.start()
    done = subprocess.run(cmd, capture_output=True, text=True)
    cpu = meter.stop()
    m = re.search(r"WRKJSON (\{.*\})", done.stdout)
    if done.returncode or not m:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n"
                           f"{done.stderr}{done.stdout}")  # fmt: skip
    s = json.loads(m.group(1))
    wall = s["duration_us"] / 1e6
    return {"url": url, "requests": s["requests"], "ops_per_s": s["requests"] / wall,
            "wall_s": round(wall, 3), "bytes_read": s["bytes"], "errors": s["errors"],
            "latency_p50_ms": s["latency_p50_us"] / 1e3,
            "latency_p99_ms": s["latency_p99_us"] / 1e3, **cpu}  # fmt: skip


# -- the runs ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, p: Params, work: Path, cluster: LocalCluster, ngx: Nginx,
                 gateways: dict[str, Gateway]) -> None:  # fmt: skip
        self.p, self.work, self.cluster, self.ngx, self.gw = p, work, cluster, ngx, gateways
        self.bad: list[str] = []  # runs with wrk errors or short bodies
        self.checked = {"before_get": 0, "after_put": 0}
        self.keyfiles: dict[str, Path] = {}
        for size, n in SIZES.items():
            paths = keyset(p, size)
            self.keyfiles[size] = work / f"keys-{size}.txt"
            self.keyfiles[size].write_text("".join(f"{k}\n" for k in paths))
            for t in range(p.threads):
                (work / f"body-{size}-{t}").write_bytes(put_body(t, n))

    def meter(self) -> Meter:
        procs = {f"gateway:{g.name}": g.pid for g in self.gw.values()}
        procs.update({c.name: c.proc.pid for c in self.cluster.sup.children if c.proc})
        procs["nginx"] = self.ngx.proc.pid
        return Meter(procs)

    def targets(self) -> dict[str, str]:
        return {"nginx": self.ngx.url, **{pool: self.gw[pool].url for pool in POOLS}}

    def fill(self) -> None:
        for size, n in SIZES.items():
            paths = keyset(self.p, size)
            for name, url in self.targets().items():
                t0 = time.perf_counter()
                Http(url, self.p.fill_threads).fill(paths, n)
                log(f"  {name}: {len(paths)} x {LABEL[size]} written in "
                    f"{time.perf_counter() - t0:.1f} s")  # fmt: skip

    def warm(self, size: str) -> None:
        """Read every key of the set from every target, comparing the bytes: cache-hot GETs
        (shoal writes large objects around the page cache)."""
        paths, n = keyset(self.p, size), SIZES[size]
        for url in self.targets().values():
            self.checked["before_get"] += Http(url, self.p.fill_threads).check(
                paths, lambda path: prefill_body(path, n)
            )

    def verify_puts(self) -> None:
        """After the PUT runs: the first keys of each wrk thread (overwritten in every PUT
        run; from the third: thread 0 skips key 1) hold that thread's body, on every target."""
        for size, n in SIZES.items():
            per = self.p.nkeys(size) // self.p.threads
            paths = [key_of(size, t, i) for t in range(self.p.threads)
                     for i in range(2, 2 + min(self.p.verify_after_put, per - 2))]  # fmt: skip
            bodies = {t: put_body(t, n) for t in range(self.p.threads)}
            for url in self.targets().values():
                self.checked["after_put"] += Http(url, self.p.fill_threads).check(
                    paths, lambda path, b=bodies: b[int(path.split("/")[2].split("-")[0])]
                )

    def script(self, op: str, size: str) -> str:
        if op == "get":
            return WRK_GET.format(keys=self.keyfiles[size])
        per = self.p.nkeys(size) // self.p.threads
        return WRK_PUT.format(per=per, bodies=self.work / f"body-{size}", size=size)

    def run(self, who: str, url: str, op: str, size: str, meter: Meter,
            gateway: str | None, full_bodies: bool = True) -> dict[str, Any]:  # fmt: skip
        res = wrk(self.p, self.work, meter, url, self.script(op, size), self.p.seconds)
        n = SIZES[size]
        res["mb_per_s"] = res["ops_per_s"] * n / 1e6
        res["side"] = who
        if gateway is not None:  # the gateway measured, and the rest of shoal
            res["gateway"] = gateway
            res["gateway_cores"] = res["cores"][f"gateway:{gateway}"]
            ds = [res["cores"][f"daemon{i}"] for i in range(self.p.daemons)]
            res["daemons_cores"] = round(sum(ds), 3)
            res["busiest_daemon_cores"] = max(ds)
            res["master_cores"] = res["cores"]["master"]
            # the gateway's event loop thread: on a CPU, and runnable but waiting for one
            # (1.0 together: the loop never waited for work, it is saturated)
            res["gateway_loop_run"] = res["event_loops"][f"gateway:{gateway}/loop_run"]
            res["gateway_loop_wait"] = res["event_loops"][f"gateway:{gateway}/loop_wait"]
            res["server_cores"] = round(res["gateway_cores"] + res["daemons_cores"]
                                        + res["master_cores"], 3)  # fmt: skip
            ops = max(res["requests"], 1)
            res["gateway_cpu_us_per_op"] = round(
                res["cpu_s"][f"gateway:{gateway}"] / ops * 1e6, 1)  # fmt: skip
            res["daemons_cpu_us_per_op"] = round(
                sum(res["cpu_s"][f"daemon{i}"] for i in range(self.p.daemons)) / ops * 1e6, 1
            )
        else:
            res["server_cores"] = res["nginx_cores"] = res["cores"]["nginx"]
            res["nginx_cpu_us_per_op"] = round(res["cpu_s"]["nginx"] / max(res["requests"], 1)
                                               * 1e6, 1)  # fmt: skip
        res["wrk_cpu_us_per_op"] = round(res["wrk_cpu_s"] / max(res["requests"], 1) * 1e6, 1)
        res["non_2xx"] = res["errors"]["status"]
        res["socket_errors"] = sum(v for k, v in res["errors"].items() if k != "status")
        # wrk counts only statuses >= 400 as errors: a 3xx (or a short body) shows here
        res["short_bodies"] = op == "get" and full_bodies and res["bytes_read"] < res[
            "requests"] * n  # fmt: skip
        if res["non_2xx"] or res["socket_errors"] or res["short_bodies"]:
            self.bad.append(f"{who} {op} {size}: errors {res['errors']}, {res['bytes_read']} "
                            f"bytes for {res['requests']} requests")  # fmt: skip
        log(f"    {who:<16}{res['ops_per_s']:>9.0f} ops/s {res['mb_per_s']:>8.1f} MB/s  "
            f"server {res['server_cores']:.2f} wrk {res['wrk_cores']:.2f} others "
            f"{res['other_cores']:.2f} cores; non-2xx {res['non_2xx']}")  # fmt: skip
        return res

    def extra_gateway(self, name: str, pool: str, log_to: str, redirect: bool = False) -> Gateway:
        g = Gateway(name, self.cluster, self.work, pool, log_to, redirect)
        self.gw[name] = g
        return g

    def drop_gateway(self, name: str) -> int | None:
        return self.gw.pop(name).stop()

    def all(self) -> dict[str, Any]:
        fig: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        s = self.p.seconds
        for op, size, _, _ in ROWS:
            if op == "get":
                log(f"reading every {LABEL[size]} key once from each target (cache-hot, "
                    "bytes compared)")  # fmt: skip
                self.warm(size)
            for pool in POOLS:
                log(f"{op} {LABEL[size]} {pool}: shoal, nginx, nginx, shoal ({s} s each, "
                    f"wrk -t{self.p.threads} -c{self.p.connections})")  # fmt: skip
                runs: dict[str, list[dict[str, Any]]] = {"shoal": [], "nginx": []}
                for side in ("shoal", "nginx", "nginx", "shoal"):
                    meter = self.meter()
                    if side == "shoal":
                        runs[side].append(self.run(f"shoal {pool}", self.gw[pool].url, op,
                                                   size, meter, pool))  # fmt: skip
                    else:
                        runs[side].append(self.run("nginx", self.ngx.url, op, size, meter, None))
                fig[f"{op} {size} {pool}"] = runs
                if (op, size, pool) == ("get", "4k", "r1"):
                    # the run without the log, between two with it: the last one above and
                    # one more right after
                    extra["log_off"] = self.log_off()
                    log("get 4 KiB r1 with the request log again (one run)")
                    extra["log_on_again"] = self.run("shoal r1", self.gw["r1"].url, "get", "4k",
                                                     self.meter(), "r1")  # fmt: skip
                    extra["redirect"] = self.redirect()
        log("reading back the first keys of each wrk thread after the PUT runs")
        self.verify_puts()
        fig["_extra"] = extra
        return fig

    def log_off(self) -> dict[str, Any]:
        log("get 4 KiB r1 with the request log off (one run)")
        self.extra_gateway("r1-log-off", "r1", "off")
        try:
            return self.run("shoal r1 log off", self.gw["r1-log-off"].url, "get", "4k",
                            self.meter(), "r1-log-off")  # fmt: skip
        finally:
            self.drop_gateway("r1-log-off")

    def redirect(self) -> dict[str, Any]:
        log("get 4 KiB r1 in redirect mode: 302 answers only (one run)")
        g = self.extra_gateway("r1-redirect", "r1", str(self.work / "http-r1-redirect.log"),
                               redirect=True)  # fmt: skip
        try:
            path = keyset(self.p, "4k")[0]
            req = urllib.request.Request(g.url + path)
            with urllib.request.urlopen(req, timeout=30) as r:  # follows the 302
                followed = r.geturl()
                if r.read() != prefill_body(path, SIZES["4k"]):
                    raise RuntimeError(f"redirect mode: {followed} did not serve {path}'s bytes")
            res = self.run("shoal r1 redirect", g.url, "get", "4k", self.meter(), "r1-redirect",
                           full_bodies=False)  # fmt: skip
            res["followed_example"] = {"from": g.url + path, "to": followed, "bytes_ok": True}
            return res
        finally:
            self.drop_gateway("r1-redirect")


# -- the cluster ------------------------------------------------------------------------------


def start_cluster(work: Path, p: Params) -> tuple[LocalCluster, dict[str, Any]]:
    """`shoal up`'s cluster (master, daemons, TLS) on free ports, and the two pools made with
    `shoal pool create`; the pools as the master made them."""
    cluster = LocalCluster(work / "cluster", p.daemons, p.daemon_size, base_port=0, http_port=-1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # (it prints the admin key)
            cfg = cluster.start()
        cluster.wait_ready(cfg)  # (makes the pool `default` too: empty, unused here)
        config = str(cluster.data / "client.json")
        pools = {}
        for name, n in POOLS.items():
            out = subprocess.run([*SHOAL, "pool", "create", name, "--replicas", str(n),
                                  "--failure-domain", "daemon", "--config", config],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            pools[name] = out.stdout.strip()
        time.sleep(1.0)  # (the daemons see the new map; then wait until each is current)
        status = cluster.wait_ready(cfg, timeout=60.0)
        if status["recovery"]["recovering"]:
            raise RuntimeError(f"the daemons are still recovering: {status['recovery']}")
    except BaseException:
        cluster.stop()
        raise
    return cluster, pools


# -- table and results ------------------------------------------------------------------------


def avg(runs: list[dict[str, Any]], key: str) -> float:
    return mean(r[key] for r in runs)


SPLIT = ["gateway_cores", "gateway_loop_run", "gateway_loop_wait", "gateway_cpu_us_per_op",
         "daemons_cores", "busiest_daemon_cores", "daemons_cpu_us_per_op", "master_cores",
         "nginx_cores", "nginx_cpu_us_per_op", "wrk_cores", "wrk_cpu_us_per_op",
         "kernel_cores", "other_cores", "machine_busy_cores", "latency_p50_ms",
         "latency_p99_ms"]  # fmt: skip


def split(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Where the CPU went (cores, and us per request), and the latency: means of the runs."""
    return {k: round(avg(runs, k), 3) for k in SPLIT if k in runs[0]}


def rows(fig: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for op, size, unit, goal in ROWS:
        for pool in POOLS:
            runs = fig.get(f"{op} {size} {pool}")
            if runs is None:
                continue
            s, n = runs["shoal"], runs["nginx"]
            ratio = avg(s, unit) / avg(n, unit)
            out.append({"op": op, "size": size, "pool": pool, "replicas": POOLS[pool],
                        "what": f"{LABEL[size]} {WHAT[op]} ({UNIT[unit]})", "unit": unit,
                        "shoal": avg(s, unit), "nginx": avg(n, unit),
                        "shoal_each": [round(r[unit], 1) for r in s],
                        "nginx_each": [round(r[unit], 1) for r in n],
                        "ratio": ratio, "goal": goal,
                        "met": None if goal is None else ratio >= goal,
                        "non_2xx": sum(r["non_2xx"] for r in s + n),
                        "socket_errors": sum(r["socket_errors"] for r in s + n),
                        "max_other_cores": round(max(avg(s, "other_cores"),
                                                     avg(n, "other_cores")), 2),
                        "shoal_cpu": split(s), "nginx_cpu": split(n)})  # fmt: skip
    return out


def table(rs: list[dict[str, Any]]) -> str:
    head = (f"{'measure':<30}{'pool':<6}{'shoal':>9}{'nginx':>9}{'ratio':>7}  {'goal':<15}"
            f"{'non-2xx':>8}{'others':>7}")  # fmt: skip
    out = [head, "-" * len(head)]
    for r in rs:
        goal = f">= {r['goal']:g}  {'met' if r['met'] else 'MISSED'}" if r["goal"] else "-"
        out.append(f"{r['what']:<30}{r['pool']:<6}{r['shoal']:>9.0f}{r['nginx']:>9.0f}"
                   f"{r['ratio']:>7.2f}  {goal:<15}{r['non_2xx']:>8}"
                   f"{r['max_other_cores']:>7.2f}")  # fmt: skip
    return "\n".join(out)


def cpu_table(fig: dict[str, Any]) -> str:
    """Per row and side, mean of the runs: cores busy, CPU per request, latency."""
    head = (f"{'run':<24}{'side':<7}{'gateway':>8}{'+wait':>6}{'us/op':>7}{'daemons':>8}"
            f"{'(max)':>7}{'us/op':>7}{'master':>7}{'nginx':>7}{'us/op':>7}{'wrk':>6}{'kernel':>7}"
            f"{'others':>7}{'p50 ms':>8}{'p99 ms':>8}")  # fmt: skip
    out = [head, "-" * len(head)]

    def line(name: str, side: str, rs: list[dict[str, Any]]) -> str:
        def f(key: str, width: int, fmt: str = ".2f") -> str:
            return f"{avg(rs, key):>{width}{fmt}}" if key in rs[0] else " " * width

        return (f"{name:<24}{side:<7}{f('gateway_cores', 8)}{f('gateway_loop_wait', 6)}"
                f"{f('gateway_cpu_us_per_op', 7, '.0f')}"
                f"{f('daemons_cores', 8)}{f('busiest_daemon_cores', 7)}"
                f"{f('daemons_cpu_us_per_op', 7, '.0f')}{f('master_cores', 7)}"
                f"{f('nginx_cores', 7)}{f('nginx_cpu_us_per_op', 7, '.0f')}{f('wrk_cores', 6)}"
                f"{f('kernel_cores', 7)}{f('other_cores', 7)}{f('latency_p50_ms', 8)}"
                f"{f('latency_p99_ms', 8)}")  # fmt: skip

    for op, size, _, _ in ROWS:
        for pool in POOLS:
            runs = fig.get(f"{op} {size} {pool}")
            if runs is None:
                continue
            for side in ("shoal", "nginx"):
                out.append(line(f"{op} {size} {pool}", side, runs[side]))
    for name, res in fig.get("_extra", {}).items():
        out.append(line(f"get 4k r1 {name.replace('_', ' ')}", "shoal", [res]))
    return "\n".join(out)


def bottlenecks(fig: dict[str, Any], ncpu: int) -> list[str]:
    """Who limits each shoal figure, judged from the CPU accounting (a heuristic: a profile of
    the gateway is the evidence; see bench/README.md)."""
    notes = []
    for op, size, _, _ in ROWS:
        for pool in POOLS:
            runs = fig.get(f"{op} {size} {pool}")
            if runs is None:
                continue
            s, n = runs["shoal"], runs["nginx"]
            gw, ds, dmax = avg(s, "gateway_cores"), avg(s, "daemons_cores"), avg(
                s, "busiest_daemon_cores")  # fmt: skip
            busy, oth = avg(s, "machine_busy_cores"), avg(s, "other_cores")
            us = avg(s, "gateway_cpu_us_per_op")
            full = busy >= 0.85 * ncpu
            run, wait = avg(s, "gateway_loop_run"), avg(s, "gateway_loop_wait")
            if run + wait >= 0.85:  # the event loop always had work: on a CPU or waiting
                who = (
                    f"the gateway's event loop, saturated: on a CPU {run:.2f}, waiting for "
                    f"one {wait:.2f} of the time; {us:.0f} us of gateway CPU per request"
                )
                if wait >= 0.15:
                    who += f" (the {ncpu} cores are shared with the daemons: {ds:.2f} cores)"
            elif dmax >= 0.8:
                who = f"a daemon's CPU (busiest {dmax:.2f} cores)"
            elif full:
                who = f"the {ncpu} cores, full (gateway {gw:.2f}, daemons {ds:.2f})"
            else:
                who = f"waiting, not CPU (gateway {gw:.2f}, daemons {ds:.2f} cores)"
            notes.append(f"shoal {op} {size} {pool}: limited by {who}; machine busy "
                         f"{busy:.2f} of {ncpu} cores (others {oth:.2f})")  # fmt: skip
            nsv, nwrk, nbusy = avg(n, "nginx_cores"), avg(n, "wrk_cores"), avg(
                n, "machine_busy_cores")  # fmt: skip
            why = "the cores are full: nginx shares them with wrk" if nbusy >= 0.85 * ncpu else (
                "CPU not saturated")  # fmt: skip
            notes.append(f"nginx {op} {size} (beside {pool}): nginx {nsv:.2f} cores, wrk "
                         f"{nwrk:.2f}; machine busy {nbusy:.2f}: {why}")  # fmt: skip
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    ap = arguments("bench.http", __doc__, "a smoke run: 1 s runs, smaller key sets")
    args = ap.parse_args(argv)
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: make install-bench (Debian packages nginx-extras, wrk)")
    p = Params(args.quick)
    if args.quick:
        p = replace(p, seconds=1, keys=(("4k", 1024), ("1m", 128)), daemon_size="2G")
    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="http-", dir=args.dir))
    started = datetime.now()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    cluster: LocalCluster | None = None
    ngx: Nginx | None = None
    gateways: dict[str, Gateway] = {}
    codes: dict[str, int | None] = {}
    logs: dict[str, Any] = {}
    bench: Bench | None = None
    try:
        info = machine(work)
        info["nginx"], info["wrk"] = version(["nginx", "-v"]), version(["wrk", "-v"])
        log(f"starting a local cluster ({p.daemons} daemons, --size {p.daemon_size}), the "
            f"pools {', '.join(POOLS)}, a gateway per pool and nginx in {work}")  # fmt: skip
        cluster, pools = start_cluster(work, p)
        for pool in POOLS:
            gateways[pool] = Gateway(pool, cluster, work, pool, str(work / f"http-{pool}.log"))
        ngx = Nginx(work, DaemonParams(args.quick, float(p.seconds),
                                       nginx_workers=p.nginx_workers))  # fmt: skip
        bench = Bench(p, work, cluster, ngx, gateways)
        log("writing the key sets through each target (untimed)")
        bench.fill()
        fig = bench.all()
    finally:
        for name, g in list(gateways.items()):
            codes[f"gateway {name}"] = g.stop()
        if cluster is not None:
            cluster.stop()
            codes.update({c.name: c.proc.returncode for c in cluster.sup.children if c.proc})
            logs = log_summary(work)
        if ngx is not None:
            codes["nginx"] = ngx.stop()
        shutil.rmtree(work, ignore_errors=True)
    assert bench is not None
    ended = datetime.now()
    ncpu = os.cpu_count() or 1
    rs = rows(fig)
    extra = fig.pop("_extra")
    notes = bottlenecks(fig, ncpu)
    get4k_r1 = avg(fig["get 4k r1"]["shoal"], "ops_per_s")
    on_runs = [fig["get 4k r1"]["shoal"][-1], extra["log_on_again"]]  # around the log-off run
    log_on, log_off = avg(on_runs, "ops_per_s"), extra["log_off"]["ops_per_s"]
    us_on, us_off = avg(on_runs, "gateway_cpu_us_per_op"), extra["log_off"]["gateway_cpu_us_per_op"]
    disturbed = max(r["other_cores"] for r in [*on_runs, extra["log_off"]])
    redirect = extra["redirect"]["ops_per_s"]
    result = {
        "date": started.isoformat(timespec="seconds"),
        "ended": ended.isoformat(timespec="seconds"),
        "machine": info,
        "git": git(),
        "command": "python -m bench.http" + (" --quick" if args.quick else ""),
        "parameters": {**asdict(p), "sizes": SIZES, "pools": POOLS,
                       "order": "each (op, size, pool): shoal, nginx, nginx, shoal; means",
                       "gateway": "shoal http (proxy mode), one per pool, both up for the "
                                  "whole run; request log to a file; index sqlite",
                       "cluster": "shoal.up.LocalCluster: master + 3 daemons, TLS to the "
                                  "master and between daemons; pools made with `shoal pool "
                                  "create NAME --replicas N --failure-domain daemon`",
                       "put_keys": "overwrite: each wrk thread cycles through its own keys "
                                   "of the GET set",
                       "bench_dir": str(work)},
        "pools_made": pools,
        "figures": fig,
        "ratios": rs,
        "goals_met": all(r["met"] for r in rs if r["goal"] is not None),
        "log_off": {"run": extra["log_off"], "log_on_run_after": extra["log_on_again"],
                    "compared_with": "the log-on runs just before and just after it",
                    "log_on_ops_per_s": log_on, "log_off_ops_per_s": log_off,
                    "off_over_on": log_off / log_on, "gateway_us_per_op_log_on": us_on,
                    "gateway_us_per_op_log_off": us_off, "max_other_cores": disturbed},
        "redirect_302_only": {"run": extra["redirect"], "ops_per_s_302": redirect,
                              "proxy_get4k_r1_ops_per_s": get4k_r1, "note": REDIRECT_NOTE},
        "bottlenecks": notes,
        "checks": {"bytes_compared": bench.checked, "bad_runs": bench.bad,
                   "wrk_non_2xx_total": sum(r["non_2xx"] for r in rs)
                   + sum(r["non_2xx"] for r in extra.values())},
        "logs": logs,
        "exit_codes": codes,
        "wall_s": round(time.perf_counter() - t0, 1),
        "loadavg_1_5_15": {"start": load0, "end": os.getloadavg()},
        "notes": [DURABILITY_NOTE, FS_NOTE, PUT_NOTE, GET_NOTE, CPU_NOTE, REDIRECT_NOTE],
    }  # fmt: skip
    print(table(rs))
    print(f"* {DURABILITY_NOTE}")
    print(f"  {PUT_NOTE}")
    print("  'others': the most CPU (cores) other processes took during a row's runs; above "
          "~0.2 the figure is disturbed.")  # fmt: skip
    print()
    print(f"request log off (4 KiB GET, r1, one run): {log_off:.0f} ops/s against {log_on:.0f} "
          f"with the log to a file in the runs just before and after ({log_off / log_on:.2f}x); "
          f"gateway CPU per request {us_off:.0f} us against {us_on:.0f} (others up to "
          f"{disturbed:.2f} cores{': disturbed' if disturbed > 0.2 else ''})")  # fmt: skip
    print(
        f"redirect mode (4 KiB GET, r1, one run): {redirect:.0f} 302 answers/s -- NOT a GET "
        f"figure: wrk does not follow the redirect (proxy-mode GET: {get4k_r1:.0f} ops/s)"
    )
    print()
    print(
        "CPU in cores busy over each run (mean of the runs), us/op = CPU per request, "
        "latency from wrk:"
    )
    print(cpu_table({**fig, "_extra": extra}))
    print()
    for n in notes:
        print(n)
    total_bad = len(bench.bad)
    print(f"checks: bytes compared {bench.checked}; runs with wrk errors or short bodies: "
          f"{total_bad}{': ' + '; '.join(bench.bad) if bench.bad else ''}")  # fmt: skip
    print(f"logs: {logs}")
    print(f"wall {result['wall_s']} s; load average at start {load0[0]:.2f}, end "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    write_result("http", result)
    return 1 if bench.bad else 0


def log_summary(work: Path) -> dict[str, Any]:
    """Warnings, errors and tracebacks in the gateways' and the cluster's logs."""
    out: dict[str, Any] = {}
    files = [*work.glob("gateway-*.err"), *(work / "cluster").glob("*.log")]
    for f in sorted(files):
        text = f.read_text(errors="replace")
        counts = {k: len(re.findall(k, text)) for k in ("WARNING", "ERROR", "Traceback")}
        if any(counts.values()):
            kinds: dict[str, int] = {}
            for line in text.splitlines():
                if " WARNING " in line or " ERROR " in line:
                    kind = re.sub(r"\d+", "N", line.split(" ", 2)[-1])[:100]
                    kinds[kind] = kinds.get(kind, 0) + 1
            top = sorted(kinds.items(), key=lambda kv: -kv[1])[:3]
            out[f.name] = {**counts, "most_frequent": top}
    return out


if __name__ == "__main__":
    sys.exit(main())
