"""shoal's storage daemon against stock nginx (WebDAV PUT/GET), over loopback, in one run.

Both servers run as real processes with their data in one fresh directory under bench/work/
(deleted at the end). Each does the same work: PUT of 4 KiB objects under new names and GET of
them (ops/s), and PUT of 4 MiB objects and GET of them (MB/s), at the same number of requests
in flight. shoal is driven over its native protocol by several driver processes (one uvloop
event loop each, many requests in flight over a few of the client library's connections per
process; `--via asyncclient` goes through `AsyncClient` instead); nginx by wrk with Lua
scripts. The CPU time of the servers and of the load generators is read around each phase
(/proc/<pid>/stat, rusage), so that the output can show who was saturated. Each phase runs
four times, shoal, nginx, nginx, shoal (both servers stay up), and each server's two runs are
averaged: the machine is noisy.

Prints a table of shoal / nginx ratios against the goals and writes the figures to
bench/results/daemon.json.

    .venv/bin/python -m bench.daemon [--dir DIR] [--quick] [--via connection|asyncclient]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from statistics import mean
from typing import Any

from bench import RESULTS, write_result
from bench.engine import KiB, MiB, arguments, git, log, machine
from shoal.daemon.process import spawn

SMALL, BIG = 4 * KiB, 4 * MiB
TICK = os.sysconf("SC_CLK_TCK")
POOL = "bench"  # shoal namespace
FS_NOTE = (
    "The root filesystem of these machines is ext4 without a journal on a virtio disk: an "
    "fsync costs well under a millisecond, far less than on real disks, so shoal's durable "
    "PUT figures are optimistic compared with real hardware."
)
GET_NOTE = (
    "GETs are cache-hot for both servers: the GET sets (the first PUT run's objects, at most "
    "20000 x 4 KiB and 64 x 4 MiB) are read once, untimed, right before each timed GET run "
    "(shoal writes 4 MiB objects around the page cache, with O_DIRECT, and keeps the records "
    "of the last 65,536 objects it wrote or read). Names are picked at random."
)
CPU_NOTE = (
    "CPU is cores busy over a phase (1.0 = one core all the time): servers from "
    "/proc/<pid>/stat utime+stime (nginx: master and workers); shoal's driver processes "
    "measure their own process time, wrk its rusage; 'others' is the whole machine's busy "
    "time (/proc/stat) less those and the kernel threads' ('kernel': writeback, ksoftirqd; "
    "softirqs such as loopback TCP are charged to the running process on this kernel). "
    "Drivers and servers share the machine's cores."
)
DURABILITY_NOTE = (
    "PUTs are not like-for-like: shoal acknowledges a PUT only once it is durable (data and "
    "key store flushed; concurrent small PUTs share one flush by group commit), while nginx "
    "never fsyncs (its PUT is a temp file renamed into place, left in the page cache)."
)


@dataclass(frozen=True)
class Params:
    quick: bool
    seconds: float  # length of each timed phase
    drivers: int = 2  # driver processes for shoal's native protocol
    conns: int = 2  # connections per driver process
    via: str = "connection"  # the client's Connection objects, or "asyncclient"
    small_inflight: int = 64  # requests in flight in the 4 KiB phases (both servers)
    big_inflight: int = 4  # ... in the 4 MiB phases
    wrk_threads: int = 2
    nginx_workers: int = 2
    small_get_keys: int = 20000  # at most this many of the 4 KiB PUTs' keys are read back
    big_get_keys: int = 64  # 256 MiB: read back cache-hot (one untimed pass first)
    daemon_size: str = "24G"


# -- processes and CPU accounting ------------------------------------------------------------


def cpu_of(pid: int, tid: int | None = None, user_only: bool = False) -> float:
    """utime + stime (or utime only), in seconds, of a process (all its threads) or of one of
    its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + (0 if user_only else int(fields[12]))) / TICK  # stat(5): 14, 15


def tree(pid: int) -> list[int]:
    """pid and its descendants (nginx: the master and its workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return out


class CpuMeter:
    """CPU seconds used between `start` and `stop` by the server's processes (and, for shoal,
    its event loop thread), by the kernel's threads (writeback, ksoftirqd) and by the whole
    machine, each as cores busy over that wall time."""

    def __init__(self, pid: int, loop_thread: bool) -> None:
        self.pid, self.loop_thread = pid, loop_thread

    def sample(self) -> dict[str, float]:
        user_sys, irq, forks = machine_busy()
        pids = tree(self.pid)
        return {
            "t": time.perf_counter(),
            "server": sum(cpu_of(p) for p in pids),
            "server_user": sum(cpu_of(p, user_only=True) for p in pids),
            "loop": cpu_of(self.pid, self.pid) if self.loop_thread else 0.0,
            "machine": user_sys + irq,
            "irq": irq,
            "kernel": kernel_threads(),
            "bench": time.process_time(),  # this process (not the drivers)
            "forks": forks,
        }

    def start(self) -> None:
        self.t0 = self.sample()

    def stop(self) -> dict[str, float]:
        t1 = self.sample()
        d = {k: t1[k] - self.t0[k] for k in t1}
        wall = d["t"]
        out = {"wall_s": round(wall, 3), "server_cpu_s": round(d["server"], 3),
               "server_cores": round(d["server"] / wall, 3),
               "server_user_cores": round(d["server_user"] / wall, 3)}  # fmt: skip
        if self.loop_thread:
            out["server_loop_thread_cores"] = round(d["loop"] / wall, 3)
        out["machine_busy_cores"] = round(d["machine"] / wall, 3)
        out["kernel_cores"] = round(d["kernel"] / wall, 3)
        # Interrupts and softirqs (loopback TCP): information only. Without
        # CONFIG_IRQ_TIME_ACCOUNTING (as on these machines) they are also charged to the
        # process that was running, so they are in the servers' and drivers' figures.
        out["irq_softirq_cores"] = round(d["irq"] / wall, 3)
        out["bench_process_cores"] = round(d["bench"] / wall, 3)
        out["processes_forked_per_s"] = round(d["forks"] / wall, 1)  # by anyone: wrk is 1
        return out


def with_others(phase: dict[str, Any]) -> dict[str, Any]:
    """Add the CPU taken by other processes on the machine (other sessions' work) during the
    phase: the machine's busy time less the server's, the load generator's, the kernel
    threads' and this process's. Also the server's CPU per request."""
    ours = sum(phase[k] for k in ("server_cores", "loadgen_cores", "kernel_cores",
                                  "bench_process_cores"))  # fmt: skip
    phase["other_cores"] = round(max(0.0, phase["machine_busy_cores"] - ours), 3)
    ops = max(phase["ops"], 1)
    phase["server_cpu_us_per_op"] = round(phase["server_cpu_s"] / ops * 1e6, 1)
    phase["loadgen_cpu_us_per_op"] = round(phase["loadgen_cpu_s"] / ops * 1e6, 1)
    return phase


def machine_busy() -> tuple[float, float, int]:
    """CPU seconds the whole machine spent busy, all cores (from /proc/stat): in processes
    (user, nice, system, steal), and in interrupts and softirqs; and processes forked since
    boot (other sessions' short-lived processes are 'others' that no /proc/<pid> shows)."""
    text = Path("/proc/stat").read_text()
    f = [int(x) for x in text.split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = f
    forks = int(text.split("\nprocesses ", 1)[1].split()[0])
    return (user + nice + system + steal) / TICK, (irq + softirq) / TICK, forks


def kernel_threads() -> float:
    """CPU seconds of the kernel's threads (kthreadd's children: kworkers doing writeback,
    ksoftirqd, ...)."""
    total = 0.0
    for d in os.scandir("/proc"):
        if d.name.isdigit():
            try:
                f = Path(d.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if f[1] == "2" or d.name == "2":  # ppid is kthreadd
                total += (int(f[11]) + int(f[12])) / TICK
    return total


def version(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True)
    return (out.stdout + out.stderr).strip().split("\n")[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int | None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# -- shoal: the daemon and the native-protocol drivers ---------------------------------------


def start_shoal(directory: Path, size: str) -> tuple[subprocess.Popen[bytes], str]:
    """`shoal daemon` on a free port; returns the process and its native address."""
    d = spawn(directory, size=size, http="off", log=directory.parent / "shoal-daemon.log")
    return d.proc, d.address


@dataclass(frozen=True)
class Job:
    """One driver process's share of a phase."""

    address: str
    op: str  # "put" or "get"
    size: int  # object size (PUT)
    tasks: int  # requests in flight in this process
    conns: int
    start_at: float  # time.monotonic() at which to start (the clock is system-wide)
    seconds: float
    prefix: str = ""  # PUT: names are <prefix><task>-<n>
    names: tuple[str, ...] = ()  # GET: the names to read
    once: bool = False  # GET: read each name once (this process's slice), untimed warm-up
    first: int = 0  # the global index of this process's first task
    total: int = 1  # tasks in all processes
    via: str = "connection"  # or "asyncclient"


def drive(job: Job) -> dict[str, Any]:
    """Run one driver process's share of a phase (in a pool worker) with uvloop."""
    import uvloop

    return uvloop.run(_drive(job))


async def _drive(job: Job) -> dict[str, Any]:
    from shoal.client import AsyncClient
    from shoal.client.connection import Connection
    from shoal.proto.frames import Op

    data = os.urandom(job.size) if job.op == "put" else b""
    big = job.size > 64 * KiB
    got = [0]

    def sink(mv: memoryview) -> None:  # 4 MiB GETs: count the bytes, copy nothing
        got[0] += len(mv)

    if job.via == "asyncclient":
        client = AsyncClient(job.address, pool_size=job.conns, timeout=120.0)
        # Open the `conns` connections before the clock starts: concurrent first requests
        # each open one; later ones pick the least loaded connection of the full pool.
        await asyncio.gather(*(client.ping() for _ in range(job.conns)))

        async def put(t: int, name: str) -> None:
            await client.put(POOL, name, data)

        async def get(t: int, name: str) -> None:
            if big:
                await client.get_to(POOL, name, sink)
            else:
                reply = await client.get(POOL, name)  # (not `got[0] += len(await ...)`)
                got[0] += len(reply)

        async def close() -> None:
            await client.close()

    else:  # the client's connections without AsyncClient's pool and per-request timeout
        host, _, port = job.address.rpartition(":")
        conns = [await Connection.open(host, int(port), 60.0) for _ in range(job.conns)]

        async def put(t: int, name: str) -> None:
            meta = {"namespace": POOL, "name": name, "refs": [], "permanent": False}
            await conns[t % len(conns)].request(Op.PUT, meta, data)

        async def get(t: int, name: str) -> None:
            meta = {"namespace": POOL, "name": name, "offset": 0, "length": None}
            if big:
                await conns[t % len(conns)].request(Op.GET, meta, sink=sink)
            else:
                _, reply = await conns[t % len(conns)].request(Op.GET, meta)
                got[0] += len(reply)

        async def close() -> None:
            for c in conns:
                c.close()

    counts = [0] * job.tasks
    written: list[list[str]] = [[] for _ in range(job.tasks)]

    async def putter(t: int) -> None:
        mine, n = written[t], 0
        while time.monotonic() < deadline:
            name = f"{job.prefix}{t}-{n}"
            await put(t, name)
            mine.append(name)
            n += 1
        counts[t] = n

    async def getter(t: int) -> None:
        names, n = job.names, 0
        if job.once:
            mine = names[job.first + t :: job.total]
            for name in mine:
                await get(t, name)
            counts[t] = len(mine)
            return
        pick = random.Random(job.first + t).choice
        while time.monotonic() < deadline:
            await get(t, pick(names))
            n += 1
        counts[t] = n

    await asyncio.sleep(max(0.0, job.start_at - time.monotonic()))
    deadline = job.start_at + job.seconds
    cpu0, t0 = time.process_time(), time.monotonic()
    worker = putter if job.op == "put" else getter
    await asyncio.gather(*(worker(t) for t in range(job.tasks)))
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    await close()
    return {"ops": sum(counts), "bytes": got[0] if job.op == "get" else sum(counts) * job.size,
            "wall_s": wall, "cpu_s": cpu, "connections": job.conns,
            "names": [n for w in written for n in w]}  # fmt: skip


class Drivers:
    """A pool of driver processes (forked once, reused by every phase)."""

    def __init__(self, p: Params, address: str) -> None:
        self.p, self.address = p, address
        self.pool = multiprocessing.get_context("fork").Pool(p.drivers)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def phase(
        self, meter: CpuMeter, op: str, size: int, inflight: int, seconds: float,
        prefix: str = "", names: Sequence[str] = (), once: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        p = self.p
        n = min(p.drivers, inflight)
        tasks = [inflight // n + (i < inflight % n) for i in range(n)]
        start_at = time.monotonic() + 0.5
        jobs = [Job(self.address, op, size, tasks[i], min(p.conns, tasks[i]), start_at, seconds,
                    f"{prefix}{i}-", tuple(names), once, sum(tasks[:i]), inflight, p.via)
                for i in range(n)]  # fmt: skip
        pending = self.pool.map_async(drive, jobs)
        time.sleep(max(0.0, start_at - time.monotonic()))
        meter.start()
        parts = pending.get()
        cpu = meter.stop()
        wall = max(r["wall_s"] for r in parts)
        ops, nbytes = sum(r["ops"] for r in parts), sum(r["bytes"] for r in parts)
        gen_cpu = sum(r["cpu_s"] for r in parts)
        if op == "get" and nbytes != ops * size:
            raise RuntimeError(f"GETs returned {nbytes} bytes, not {ops} x {size}")
        return with_others({
            "ops": ops, "ops_per_s": ops / wall, "mb_per_s": nbytes / wall / 1e6,
            "inflight": inflight, "connections": sum(j.conns for j in jobs),
            "wall_s": round(wall, 3), **cpu,
            "loadgen": f"{n} driver processes (uvloop, {p.via})",
            "loadgen_cpu_s": round(gen_cpu, 3),
            "loadgen_cores": round(gen_cpu / wall, 3),
            "loadgen_max_process_cores": round(max(r["cpu_s"] / r["wall_s"] for r in parts), 3),
            "names": [n for r in parts for n in r["names"]],
        })  # fmt: skip


# -- nginx and wrk ---------------------------------------------------------------------------

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
user root;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/nginx-tmp;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {work}/nginx-root;
        client_max_body_size 0;
        dav_methods PUT DELETE;
        create_full_put_path on;
    }}
}}
"""

# wrk calls request() once before the run without sending it: harmless for new names.
WRK_PUT = """\
local counter = 0
local body = string.rep("x", {size})
function setup(thread) thread:set("id", {prefix!r} .. tostring(setup_n or 0)); \
setup_n = (setup_n or 0) + 1 end
function init(args) prefix = id end  -- id: set by setup() in this thread's state
function request()
    counter = counter + 1
    return wrk.format("PUT", "/{dir}/" .. prefix .. "-" .. counter, nil, body)
end
"""

WRK_GET = """\
local paths, i = {{}}, 0
function setup(thread) thread:set("seed", (seed_n or 0) + 1); seed_n = (seed_n or 0) + 1 end
function init(args)
    for line in io.lines("{keys}") do paths[#paths + 1] = line end
    math.randomseed(seed * 7919)
end
function request() return wrk.format("GET", paths[math.random(#paths)]) end
"""

WRK_DONE = """
function done(summary, latency, requests)
    local e, f = summary.errors, math.floor
    io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, '
        .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, '
        .. '"timeout": %d}, "latency_p50_us": %d, "latency_p99_us": %d}\\n',
        summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
        e.status, e.timeout, f(latency:percentile(50)), f(latency:percentile(99))))
end
"""


class Nginx:
    def __init__(self, work: Path, p: Params) -> None:
        self.work, self.p = work, p
        self.root = work / "nginx-root"
        self.root.mkdir()
        (work / "nginx-tmp").mkdir()
        self.port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(workers=p.nginx_workers, work=work, port=self.port))
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(work), "-c", str(conf), "-e", str(work / "nginx-error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = (work / "nginx-error.log").read_text(errors="replace")
                    raise RuntimeError(f"nginx did not start:\n{err}") from None
                time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> int | None:
        return stop_process(self.proc, signal.SIGQUIT)

    def wrk(
        self, meter: CpuMeter, script: str, inflight: int, seconds: float, size: int
    ) -> dict[str, Any]:
        lua = self.work / "wrk.lua"
        lua.write_text(script + WRK_DONE)
        threads = min(self.p.wrk_threads, inflight)
        cmd = ["wrk", "-t", str(threads), "-c", str(inflight), "-d", f"{round(seconds)}s",
               "--timeout", "60s", "-s", str(lua), self.url]  # fmt: skip
        ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        meter.start()
        done = subprocess.run(cmd, capture_output=True, text=True)
        out = done.stdout
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}{out}")
        cpu = meter.stop()
        ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        m = re.search(r"WRKJSON (\{.*\})", out)
        if not m:
            raise RuntimeError(f"wrk printed no summary:\n{out}")
        s = json.loads(m.group(1))
        if any(s["errors"].values()):
            raise RuntimeError(f"wrk saw errors (non-2xx or socket): {s['errors']}\n{out}")
        wall = s["duration_us"] / 1e6
        gen_cpu = (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
        return with_others({
            "ops": s["requests"], "ops_per_s": s["requests"] / wall,
            "mb_per_s": s["requests"] * size / wall / 1e6, "inflight": inflight,
            "connections": inflight, "wall_s": round(wall, 3), **cpu,
            "loadgen": f"wrk -t{threads} -c{inflight}", "loadgen_cpu_s": round(gen_cpu, 3),
            "loadgen_cores": round(gen_cpu / cpu["wall_s"], 3),
            "latency_p50_ms": s["latency_p50_us"] / 1e3,
            "latency_p99_ms": s["latency_p99_us"] / 1e3,
        })  # fmt: skip

    def put(self, meter: CpuMeter, d: str, size: int, inflight: int, seconds: float,
            prefix: str) -> dict[str, Any]:  # fmt: skip
        script = WRK_PUT.format(size=size, prefix=prefix, dir=d)
        res = self.wrk(meter, script, inflight, seconds, size)
        res["names"] = [f"/{d}/{e.name}" for e in os.scandir(self.root / d) if e.is_file()]
        return res

    def get(
        self, meter: CpuMeter, paths: Sequence[str], inflight: int, seconds: float, size: int
    ) -> dict[str, Any]:
        keys = self.work / "wrk-keys.txt"
        keys.write_text("".join(f"{k}\n" for k in paths))
        return self.wrk(meter, WRK_GET.format(keys=keys), inflight, seconds, size)

    def warm(self, paths: Sequence[str]) -> None:
        """Read the files once from the disk so that the timed GETs are cache-hot."""
        for k in paths:
            with open(self.root / k.lstrip("/"), "rb") as f:
                while f.read(MiB):
                    pass


# -- the phases, interleaved -----------------------------------------------------------------

PHASES = [  # (phase, op, object size, what, unit key, goal); run in this order
    ("put4k", "put", SMALL, "4 KiB PUT (ops/s) *", "ops_per_s", None),
    ("get4k", "get", SMALL, "4 KiB GET (ops/s), cache-hot", "ops_per_s", 0.3),
    ("put4m", "put", BIG, "4 MiB PUT (MB/s) *", "mb_per_s", 0.8),
    ("get4m", "get", BIG, "4 MiB GET (MB/s), cache-hot", "mb_per_s", 0.8),
]
TABLE_ORDER = ["get4m", "put4m", "get4k", "put4k"]


def ran(fig: dict[str, dict[str, list[Any]]]) -> list[str]:
    """The phases that ran, in table order."""
    return [phase for phase in TABLE_ORDER if phase in fig["shoal"]]


def subset(names: Sequence[str], n: int, seed: int) -> list[str]:
    names = list(names)
    random.Random(seed).shuffle(names)
    return names[:n]


class ShoalSide:
    name = "shoal"

    def __init__(self, drv: Drivers, meter: CpuMeter, p: Params) -> None:
        self.drv, self.meter, self.p = drv, meter, p
        self.keys: dict[int, list[str]] = {}

    def run(self, op: str, size: int, inflight: int, i: int) -> dict[str, Any]:
        s = self.p.seconds
        if op == "put":
            res = self.drv.phase(self.meter, "put", size, inflight, s, prefix=f"{size}-{i}-")
            names = res.pop("names")
            if size not in self.keys:  # the first PUT's objects are the GET set
                n = self.p.small_get_keys if size == SMALL else self.p.big_get_keys
                self.keys[size] = subset(names, n, 1)
            return res
        # One untimed pass right before each timed GET run: cache-hot GETs (4 MiB PUTs went
        # around the page cache, and the later PUT runs' records pushed the GET set's out of
        # the daemon's record cache, which keeps the last 65,536).
        self.drv.phase(self.meter, "get", size, inflight, s, names=self.keys[size], once=True)
        res = self.drv.phase(self.meter, "get", size, inflight, s, names=self.keys[size])
        res.pop("names")
        res["keys"] = len(self.keys[size])
        return res


class NginxSide:
    name = "nginx"

    def __init__(self, ngx: Nginx, meter: CpuMeter, p: Params) -> None:
        self.ngx, self.meter, self.p = ngx, meter, p
        self.keys: dict[int, list[str]] = {}

    def run(self, op: str, size: int, inflight: int, i: int) -> dict[str, Any]:
        s = self.p.seconds
        if op == "put":
            res = self.ngx.put(self.meter, f"{size}-{i}", size, inflight, s, "t")
            names = res.pop("names")
            if size not in self.keys:
                n = self.p.small_get_keys if size == SMALL else self.p.big_get_keys
                self.keys[size] = subset(names, n, 1)
            return res
        self.ngx.warm(self.keys[size])  # (as for shoal: right before each timed GET run)
        res = self.ngx.get(self.meter, self.keys[size], inflight, s, size)
        res["keys"] = len(self.keys[size])
        return res


def bench(
    shoal: ShoalSide, nginx: NginxSide, p: Params, phases: list[str]
) -> dict[str, dict[str, list[Any]]]:
    """Each phase four times, shoal and nginx alternating (ABBA), so that a burst of other
    work on the machine or a slow drift hits both."""
    fig: dict[str, dict[str, list[Any]]] = {"shoal": {}, "nginx": {}}
    for phase, op, size, *_ in PHASES:
        if phase not in phases:
            continue
        inflight = p.small_inflight if size == SMALL else p.big_inflight
        log(f"{phase}: shoal, nginx, nginx, shoal ({p.seconds:g} s each, {inflight} in flight)")
        for i, side in enumerate((shoal, nginx, nginx, shoal)):
            res = side.run(op, size, inflight, i)
            fig[side.name].setdefault(phase, []).append(res)
    return fig


# -- table and results -----------------------------------------------------------------------


def avg(rounds: list[dict[str, Any]], key: str) -> float:
    return mean(r[key] for r in rounds)


def rows(fig: dict[str, dict[str, list[Any]]]) -> list[dict[str, Any]]:
    out = []
    spec = {ph[0]: ph for ph in PHASES}
    for phase in ran(fig):
        _, _, _, what, key, goal = spec[phase]
        s, n = fig["shoal"][phase], fig["nginx"][phase]
        ratio = avg(s, key) / avg(n, key)
        others = max(avg(s, "other_cores"), avg(n, "other_cores"))
        out.append({"phase": phase, "what": what, "unit": key, "shoal": avg(s, key),
                    "nginx": avg(n, key), "shoal_each": [r[key] for r in s],
                    "nginx_each": [r[key] for r in n], "ratio": ratio, "goal": goal,
                    "met": None if goal is None else ratio >= goal,
                    "max_other_cores": round(others, 2)})  # fmt: skip
    return out


def table(rs: list[dict[str, Any]]) -> str:
    head = f"{'measure':<32}{'shoal':>10}{'nginx':>10}{'ratio':>8}  {'goal':<16}{'others':>7}"
    out = [head, "-" * len(head)]
    for r in rs:
        goal = f">= {r['goal']:g}  {'met' if r['met'] else 'MISSED'}" if r["goal"] else "-"
        out.append(f"{r['what']:<32}{r['shoal']:>10.0f}{r['nginx']:>10.0f}{r['ratio']:>8.2f}  "
                   f"{goal:<16}{r['max_other_cores']:>7.2f}")  # fmt: skip
    return "\n".join(out)


def cpu_table(fig: dict[str, dict[str, list[Any]]], ncpu: int) -> str:
    """Per phase, cores used (1.0 = one core busy for the whole phase), mean of the runs."""
    head = (f"{'phase':<7}{'server':<7}{'server':>8}{'(loop)':>8}{'us/op':>8}{'loadgen':>9}"
            f"{'(1 proc)':>9}{'us/op':>7}{'total':>7}{'kernel':>8}{'others':>8}"
            f"  of {ncpu} cores")  # fmt: skip
    out = [head, "-" * len(head)]
    for phase in ran(fig):
        for name in ("shoal", "nginx"):
            rs = fig[name][phase]
            sv, gen, oth = avg(rs, "server_cores"), avg(rs, "loadgen_cores"), avg(rs, "other_cores")
            us, gus = avg(rs, "server_cpu_us_per_op"), avg(rs, "loadgen_cpu_us_per_op")
            loop = f"{avg(rs, 'server_loop_thread_cores'):>8.2f}" if name == "shoal" else " " * 8
            one = f"{avg(rs, 'loadgen_max_process_cores'):>9.2f}" if name == "shoal" else " " * 9
            kern = avg(rs, "kernel_cores")
            out.append(f"{phase:<7}{name:<7}{sv:>8.2f}{loop}{us:>8.0f}{gen:>9.2f}{one}{gus:>7.0f}"
                       f"{sv + gen:>7.2f}{kern:>8.2f}{oth:>8.2f}")  # fmt: skip
    return "\n".join(out)


def bottleneck(fig: dict[str, dict[str, list[Any]]], ncpu: int) -> list[str]:
    """Who limits each figure, judged from the CPU accounting (a heuristic: the profile of the
    daemon is the evidence; see bench/README.md)."""
    notes = []
    for phase in ran(fig):
        s, n = fig["shoal"][phase], fig["nginx"][phase]
        sv, loop = avg(s, "server_cores"), avg(s, "server_loop_thread_cores")
        gen, one = avg(s, "loadgen_cores"), avg(s, "loadgen_max_process_cores")
        oth, kern = avg(s, "other_cores"), avg(s, "kernel_cores")
        us, busy = avg(s, "server_cpu_us_per_op"), sv + gen + oth + kern
        full = f"the {ncpu} cores are full ({busy:.2f}; others {oth:.2f})"
        if sv >= 0.7:  # one Python process: its threads share one GIL, ~1 core at most
            who = (f"the daemon's CPU, {sv:.2f} cores (event loop thread {loop:.2f}), "
                   f"{us:.0f} us per request")  # fmt: skip
            if busy >= 0.9 * ncpu:
                who += f"; {full}"
        elif busy >= 0.9 * ncpu:
            who = f"{full}: daemon {sv:.2f}, drivers {gen:.2f}, kernel {kern:.2f}"
        else:
            who = f"waiting, not CPU (daemon {sv:.2f} cores, event loop thread {loop:.2f})"
        sat = "not saturated" if one < 0.85 else "SATURATED: shoal's figure is a lower bound"
        notes.append(f"shoal {phase}: limited by {who}; busiest driver process {one:.0%} of a "
                     f"core ({sat})")  # fmt: skip
        nsv, ngen = avg(n, "server_cores"), avg(n, "loadgen_cores")
        threads = int(n[0]["loadgen"].split()[1][2:])
        busy = nsv + ngen + avg(n, "other_cores") + avg(n, "kernel_cores")
        why = (
            f"the {ncpu} cores are busy ({busy:.2f}): nginx shares them with wrk"
            if busy >= 0.9 * ncpu
            else "CPU not saturated"
        )
        wrk = "SATURATED" if ngen / threads >= 0.85 else "not saturated"
        notes.append(f"nginx {phase}: nginx {nsv:.2f} cores, wrk {ngen:.2f} ({threads} threads, "
                     f"{wrk}); {why}")  # fmt: skip
    return notes


def recent_deletes_warning() -> str | None:
    """The previous run deleted its nginx files; ext4 creates files slowly for minutes after a
    mass delete, which would slow nginx's PUTs here."""
    try:
        prev = json.loads((RESULTS / "daemon.json").read_text())
        ended = datetime.fromisoformat(prev["ended"])
    except (OSError, KeyError, ValueError):
        return None
    ago = (datetime.now() - ended).total_seconds()
    if 0 <= ago < 300:
        files = prev.get("files_deleted", "?")
        return (f"the previous run ended {ago:.0f} s ago and deleted {files} files: ext4 "
                "creates files slowly for ~5 min after a mass delete, so nginx's PUT figures "
                "may be low (shoal's PUT ratios high)")  # fmt: skip
    return None


def main(argv: Sequence[str] | None = None) -> int:
    ap = arguments("bench.daemon", __doc__, "2 s phases instead of 5 s")
    ap.add_argument(
        "--via",
        choices=["connection", "asyncclient"],
        default="connection",
        help="drive shoal through the client's connections (default: cheapest "
        "for the shared CPU) or through AsyncClient (pool, timeout per request)",
    )
    ap.add_argument(
        "--only",
        choices=["4k", "4m"],
        help="only the phases of this object size (for a quick look; results are still saved)",
    )
    args = ap.parse_args(argv)  # fmt: skip
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install nginx wrk (Debian packages)")
    p = Params(args.quick, 2.0 if args.quick else 5.0, via=args.via)  # wrk: whole seconds
    if args.quick:
        p = replace(p, daemon_size="8G")
    warning = recent_deletes_warning()
    if warning:
        log(f"warning: {warning}")
    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="daemon-", dir=args.dir))
    started = datetime.now()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    daemon = ngx = drv = None
    files = 0
    try:
        info = machine(work)
        info["nginx"], info["wrk"] = version(["nginx", "-v"]), version(["wrk", "-v"])
        log(f"starting shoal daemon (--size {p.daemon_size}) and nginx in {work}")
        daemon, address = start_shoal(work / "shoal", p.daemon_size)
        drv = Drivers(p, address)
        ngx = Nginx(work, p)
        fig = bench(
            ShoalSide(drv, CpuMeter(daemon.pid, loop_thread=True), p),
            NginxSide(ngx, CpuMeter(ngx.proc.pid, loop_thread=False), p),
            p,
            [ph for ph, *_ in PHASES if args.only is None or ph.endswith(args.only)],
        )
    finally:
        if drv is not None:
            drv.close()
        codes = {
            "shoal_daemon_exit": stop_process(daemon) if daemon is not None else None,
            "nginx_exit": ngx.stop() if ngx is not None else None,
        }
        if ngx is not None:
            files = sum(len(fs) for _, _, fs in os.walk(ngx.root))
        shutil.rmtree(work, ignore_errors=True)
    ended = datetime.now()
    ncpu = os.cpu_count() or 1
    rs = rows(fig)
    notes = bottleneck(fig, ncpu)
    ru, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "date": started.isoformat(timespec="seconds"),
        "ended": ended.isoformat(timespec="seconds"),
        "machine": info,
        "git": git(),
        "parameters": {**asdict(p), "object_sizes": {"small": SMALL, "big": BIG},
                       "order": "each phase 4 times: shoal, nginx, nginx, shoal; averaged",
                       "bench_dir": str(work)},
        "figures": fig,
        "ratios": [{k: r[k] for k in ("what", "shoal", "nginx", "ratio", "goal", "met",
                                      "max_other_cores")} for r in rs],
        "goals_met": all(r["met"] for r in rs if r["goal"] is not None),
        "bottlenecks": notes,
        "exit_codes": codes,
        "files_deleted": files,
        "wall_s": round(time.perf_counter() - t0, 1),
        "loadavg_1_5_15": {"start": load0, "end": os.getloadavg()},
        "cpu_s": {"bench_process": ru.ru_utime + ru.ru_stime,
                  "waited_children_wrk_and_tools": ch.ru_utime + ch.ru_stime},
        "notes": [DURABILITY_NOTE, FS_NOTE, GET_NOTE, CPU_NOTE]
                 + ([f"warning: {warning}"] if warning else []),
    }  # fmt: skip
    print(table(rs))
    print(f"* {DURABILITY_NOTE}")
    print(f"  {FS_NOTE}")
    print("  'others': the most CPU (cores) other processes on the machine took during these "
          "phases; above ~0.2 the figure is disturbed.")  # fmt: skip
    print()
    print(
        "CPU in cores busy over each timed phase (mean of runs): 'loop' = the daemon's event "
        "loop thread, 'us/op' = server CPU per request, '1 proc' = busiest driver process, "
        "'total' = server + load generator, 'kernel' = kernel threads (writeback, ksoftirqd), "
        "'others' = other processes:"
    )
    print(cpu_table(fig, ncpu))
    print()
    for n in notes:
        print(n)
    print(f"in flight: 4 KiB {p.small_inflight}, 4 MiB {p.big_inflight} (shoal: up to "
          f"{p.drivers} driver processes x {p.conns} connections; nginx: wrk, one request per "
          "connection)")  # fmt: skip
    if warning:
        print(f"warning: {warning}")
    print(f"wall {result['wall_s']} s; load average at start {load0[0]:.2f}")
    write_result("daemon", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
