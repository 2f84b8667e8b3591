"""What replication costs: a pool of 3 replicas against a pool of 1, on one local cluster.

A `shoal master` and 3 `shoal daemon`s run as real processes on 127.0.0.1 (one fresh
directory under bench/work/, deleted at the end; each daemon's data file is `--size`). Two
pools are made side by side: `r1` (replicas 1) and `r3` (replicas 3, min_size 2, failure
domain daemon), both 64 placement groups. The load goes through `ClusterClient`, from a few
forked driver processes (a uvloop event loop and a ClusterClient each):

    put4k   PUT 4 KiB objects under new names, 64 in flight      (ops/s)
    get4k   GET random objects among those of the first put4k run (ops/s), cache-hot
    put4m   PUT 4 MiB objects under new names, 8 in flight       (MB/s)
    get4m   GET random objects among 64 of the first put4m run   (MB/s), cache-hot

Each phase runs r1, r3, r1, r3 (5 s each; a 4 MiB PUT run also stops early at its share of
the daemons' space) and the best run of each pool is compared: the ratio r3 / r1. With 3
copies every byte is written 3 times to the same disk of this one machine, by daemons that
share its cores, so the ideal write ratio here is ~1/3 of the disk- (or CPU-) bound rate;
reads go to the primary only, so the read ratio should be ~1. The bytes the disk really
wrote during each run (/proc/diskstats) and the CPU of the daemons, the drivers and the rest
of the machine are recorded too. The daemons run with --recovery-interval 3600, so that no
recovery pass (a scan of every peer's objects) falls in a timed run; one pass is measured on
its own at the end (a map change: an empty pool). The daemons' logs are searched for
warnings and errors (replication failures) at the end.

Prints the table and writes bench/results/replication.json.

    .venv/bin/python -m bench.replication [--dir DIR] [--quick] [--size 4G] [--keep-logs]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
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

from bench import write_result
from bench.daemon import TICK, cpu_of, kernel_threads, machine_busy, stop_process, tree
from bench.engine import KiB, MiB, arguments, git, log, machine
from shoal.daemon import replication
from shoal.daemon.process import DaemonProcess, spawn

SMALL, BIG = 4 * KiB, 4 * MiB
POOLS = {"r1": 1, "r3": 3}  # pool name: replicas
SHOAL = [sys.executable, "-m", "shoal.cli"]
_LISTEN = re.compile(r"listening on (\S+) \(peer\), (\S+) \(client\)")
_ADMIN = re.compile(r"admin key: (\S+) (\S+)")

PHYSICS_NOTE = (
    "One machine, one disk, 2 vCPUs: with replicas=3 the primary sends each write to the 2 "
    "other daemons and stores it too, so every byte goes 3 times to the same disk (and costs "
    "3 daemons' CPU on the same cores). The ideal write ratio r3/r1 here is therefore ~1/3 "
    "(0.33) of the disk-bound (or CPU-bound) rate, not 1 as on 3 machines. Near 0.33: "
    "replication costs only the extra copies; well below: overhead on top of them; above: r1 "
    "was not bound by the disk or the CPU (latency: the replicas' commits, the primary's and "
    "the reply come one after the other). Reads go to the primary only: the read ratio "
    "should be ~1."
)
FS_NOTE = (
    "The root filesystem here is ext4 without a journal on a virtio disk: a flush costs well "
    "under a millisecond, far less than on real disks, so the durable PUT figures (both pools "
    "acknowledge only what every up replica has flushed) are optimistic for real hardware."
)
CLIENT_NOTE = (
    "The load goes through ClusterClient (placement, primary choice, per-request timeout); its "
    "GET is two requests to the daemon (stat, then the read). The drivers share the 2 cores "
    "with the master and the 3 daemons."
)


@dataclass(frozen=True)
class Params:
    quick: bool
    seconds: float = 5.0  # length of each timed run
    rounds: int = 2  # runs per pool per phase: r1, r3, r1, r3
    drivers: int = 2  # forked driver processes, a ClusterClient each
    small_inflight: int = 64
    big_inflight: int = 8
    daemons: int = 3
    daemon_size: str = "4G"
    pg_num: int = 64
    min_size: int = 2
    small_get_keys: int = 5000  # the 4 KiB GET set: this many of the first put4k run's objects
    big_get_keys: int = 64  # 256 MiB
    space_share: float = 0.7  # of the daemons' space, for all the 4 MiB PUT runs together
    # Recovery passes out of the timed runs (shoal's default is every 10 s: with runs ~6 s
    # apart they would land in one pool's runs more than the other's); one pass is measured
    # on its own at the end.
    recovery_interval: float = 3600.0


# -- the cluster -----------------------------------------------------------------------------


@dataclass
class Cluster:
    master: subprocess.Popen[bytes]
    master_dir: Path
    client: str  # where clients connect
    access: str
    secret: str
    daemons: list[DaemonProcess]


def start_master(directory: Path, timeout: float = 30.0) -> tuple[subprocess.Popen[bytes], str,
                                                                   str, str, str]:  # fmt: skip
    """`shoal master` on free ports; the process, its peer and client addresses and the admin
    key it prints on its first start. stdout to DIR/master.out, stderr to DIR/master.log."""
    directory.mkdir(parents=True)
    cmd = [*SHOAL, "master", "--dir", str(directory / "state"),
           "--peer-address", "127.0.0.1:0", "--listen-address", "127.0.0.1:0"]  # fmt: skip
    out = directory / "master.out"
    with open(out, "wb") as o, open(directory / "master.log", "wb") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, stdin=subprocess.DEVNULL)
    deadline, text = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        text = out.read_text(errors="replace")
        if (_LISTEN.search(text) and _ADMIN.search(text)) or proc.poll() is not None:
            break
        time.sleep(0.05)
    m, a = _LISTEN.search(text), _ADMIN.search(text)
    if m is None or a is None:
        stop_process(proc, signal.SIGKILL)
        err = (directory / "master.log").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"shoal master did not start: {text!r}\n{err}")
    return proc, m.group(1), m.group(2), a.group(1), a.group(2)


def start_cluster(work: Path, p: Params) -> Cluster:
    proc, peer, client, access, secret = start_master(work / "master")
    cl = Cluster(proc, work / "master", client, access, secret, [])
    try:
        for i in range(p.daemons):  # (one at a time: each formats its data file)
            extra = ["--master", peer, "--host", f"h{i}",
                     "--recovery-interval", f"{p.recovery_interval:g}"]  # fmt: skip
            d = spawn(work / f"d{i}", size=p.daemon_size, http="off", extra=extra)
            if d.proc.stdout is not None:
                d.proc.stdout.close()
                d.proc.stdout = None
            cl.daemons.append(d)
    except BaseException:
        stop_cluster(cl)
        raise
    return cl


def stop_cluster(cl: Cluster) -> dict[str, int | None]:
    """SIGTERM to each daemon (by PID), then the master; their exit codes."""
    codes: dict[str, int | None] = {}
    for d in cl.daemons:
        if d.proc.poll() is None:
            os.kill(d.proc.pid, signal.SIGTERM)
    for d in cl.daemons:
        codes[d.dir.name] = stop_process(d.proc, 0) if d.proc.poll() is None else d.proc.poll()
    codes["master"] = stop_process(cl.master)
    return codes


def client_of(cl: Cluster | Job) -> Any:
    from shoal.client.cluster import ClusterClient

    return ClusterClient(cl.client, cl.access, cl.secret, timeout=60.0)


async def prepare(cl: Cluster, p: Params) -> dict[str, Any]:
    """Wait for the daemons, make the two pools, wait until every daemon is current; the
    daemons' capacity (bytes, the smallest) and the pools as the master made them."""
    async with client_of(cl) as c:
        deadline = time.monotonic() + 60
        while True:
            ds = (await c.admin("daemon_ls"))["daemons"]
            if len(ds) == p.daemons and all(d["up"] and d["in"] for d in ds):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemons did not all come up: {ds}")
            await asyncio.sleep(0.1)
        pools = {}
        for name, n in POOLS.items():
            args: dict[str, Any] = {"name": name, "replicas": n, "pg_num": p.pg_num,
                                    "failure_domain": "daemon"}  # fmt: skip
            if n > 1:
                args["min_size"] = p.min_size
            out = await c.admin("pool_create", **args)
            pools[name] = out["pool"]
        await c.refresh(out["epoch"], wait=10.0)
        deadline = time.monotonic() + 60  # every daemon current for the new map
        await asyncio.sleep(1.0)
        while (await c.admin("status")).get("recovery", {}).get("recovering", 0):
            if time.monotonic() > deadline:
                raise RuntimeError("the daemons are still recovering after 60 s")
            await asyncio.sleep(0.2)
        ds = (await c.admin("daemon_ls"))["daemons"]
        return {"capacity": min(int(d["capacity"]) for d in ds), "pools": pools,
                "daemons": ds}  # fmt: skip


# -- driver processes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One driver process's share of a run."""

    client: str
    access: str
    secret: str
    pool: str
    op: str  # "put" or "get"
    size: int
    tasks: int  # requests in flight in this process
    start_at: float  # time.monotonic() (system-wide) at which to start
    seconds: float
    max_bytes: int = 0  # PUT: stop when this process has sent this much (0: no limit)
    prefix: str = ""  # PUT: names <prefix><task>-<n>
    names: tuple[str, ...] = ()  # GET: the names to read
    once: bool = False  # GET: read this process's slice of `names` once (warm-up, untimed)
    first: int = 0  # global index of this process's first task
    total: int = 1  # tasks in all processes


def drive(job: Job) -> dict[str, Any]:
    import uvloop

    return uvloop.run(_drive(job))


async def _drive(job: Job) -> dict[str, Any]:
    data = os.urandom(job.size) if job.op == "put" else b""
    counts, got, sent = [0] * job.tasks, [0], [0]
    written: list[list[str]] = [[] for _ in range(job.tasks)]
    errors: list[str] = []

    def sink(mv: memoryview) -> None:  # 4 MiB GETs: count the bytes, keep nothing
        got[0] += len(mv)

    async with client_of(job) as c:
        await asyncio.sleep(max(0.0, job.start_at - time.monotonic()))
        deadline = job.start_at + job.seconds

        async def putter(t: int) -> None:
            n = 0
            while time.monotonic() < deadline and not (job.max_bytes and sent[0] >= job.max_bytes):
                sent[0] += job.size
                name = f"{job.prefix}{t}-{n}"
                await c.put(job.pool, name, data)
                written[t].append(name)
                n += 1
            counts[t] = n

        async def get(name: str) -> None:
            if job.size > 64 * KiB:
                await c.get_to(job.pool, name, sink)
            else:
                n = len(await c.get(job.pool, name))
                got[0] += n  # (not `got[0] += len(await ...)`: it reads got[0] first)

        async def getter(t: int) -> None:
            if job.once:
                mine = job.names[job.first + t :: job.total]
                for name in mine:
                    await get(name)
                counts[t] = len(mine)
                return
            pick, n = random.Random(job.first + t).choice, 0
            while time.monotonic() < deadline:
                await get(pick(job.names))
                n += 1
            counts[t] = n

        cpu0, t0 = time.process_time(), time.monotonic()
        worker = putter if job.op == "put" else getter
        for r in await asyncio.gather(*(worker(t) for t in range(job.tasks)),
                                      return_exceptions=True):  # fmt: skip
            if isinstance(r, BaseException):
                errors.append(f"{type(r).__name__}: {r}")
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    ops = sum(counts)
    return {"ops": ops, "bytes": got[0] if job.op == "get" else ops * job.size, "wall_s": wall,
            "cpu_s": cpu, "errors": errors,
            "names": [n for w in written for n in w]}  # fmt: skip


def processes() -> dict[int, tuple[str, float]]:
    """Every process's name and CPU seconds (utime + stime, all its threads)."""
    out = {}
    for e in os.scandir("/proc"):
        if e.name.isdigit():
            try:
                head, tail = Path(e.path, "stat").read_text().rsplit(")", 1)
            except OSError:
                continue
            f = tail.split()
            out[int(e.name)] = (head.split("(", 1)[1], (int(f[11]) + int(f[12])) / TICK)
    return out


class Meter:
    """CPU (cores busy) of the daemons, the master, the kernel's threads and the whole
    machine, and the bytes the disk wrote, between start and stop."""

    def __init__(self, cl: Cluster, disk: str | None) -> None:
        self.cl, self.disk = cl, disk

    def disk_written(self) -> int:
        if self.disk is None:
            return 0
        for line in Path("/proc/diskstats").read_text().splitlines():
            f = line.split()
            if f[2] == self.disk:
                return int(f[9]) * 512  # sectors written
        return 0

    def sample(self) -> dict[str, float]:
        busy, irq, _ = machine_busy()
        return {
            "t": time.perf_counter(),
            **{d.dir.name: cpu_of(d.proc.pid) for d in self.cl.daemons},
            "master": cpu_of(self.cl.master.pid),
            "kernel": kernel_threads(),
            "machine": busy + irq,
            "bench": time.process_time(),
            "disk": float(self.disk_written()),
        }

    def start(self) -> None:
        self.p0 = processes()
        self.t0 = self.sample()

    def stop(self) -> dict[str, Any]:
        t1 = self.sample()
        p1 = processes()
        d = {k: t1[k] - self.t0[k] for k in t1}
        wall = self.last_wall = d["t"]
        each = {x.dir.name: round(d[x.dir.name] / wall, 3) for x in self.cl.daemons}
        ours = set(tree(os.getpid()))  # this process, the drivers, the master, the daemons
        busy = sorted(((cpu - self.p0.get(pid, ("", 0.0))[1]) / wall, f"{comm}[{pid}]")
                      for pid, (comm, cpu) in p1.items() if pid not in ours)  # fmt: skip
        top = [f"{who} {c:.2f}" for c, who in reversed(busy[-3:]) if c >= 0.02]
        return {"daemon_cores": each, "daemons_cores": round(sum(each.values()), 3),
                "busiest_other_processes": top,
                "master_cores": round(d["master"] / wall, 3),
                "kernel_cores": round(max(0.0, d["kernel"]) / wall, 3),  # (a kthread may exit)
                "machine_busy_cores": round(d["machine"] / wall, 3),
                "bench_process_cores": round(d["bench"] / wall, 3),
                "disk_written_bytes": int(d["disk"]),
                "disk_write_mb_per_s": round(d["disk"] / wall / 1e6, 1)}  # fmt: skip


class Drivers:
    """Forked driver processes (the pool is made before any event loop runs here)."""

    def __init__(self, p: Params) -> None:
        self.p = p
        self.pool = multiprocessing.get_context("fork").Pool(p.drivers)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def run(self, cl: Cluster, meter: Meter, pool: str, op: str, size: int, inflight: int,
            seconds: float, max_bytes: int = 0, prefix: str = "",
            names: Sequence[str] = (), once: bool = False) -> dict[str, Any]:  # fmt: skip
        n = min(self.p.drivers, inflight)
        tasks = [inflight // n + (i < inflight % n) for i in range(n)]
        start_at = time.monotonic() + 1.0  # (each driver connects its ClusterClient first)
        jobs = [Job(cl.client, cl.access, cl.secret, pool, op, size, tasks[i], start_at,
                    seconds, max_bytes // n, f"{prefix}{i}-", tuple(names), once,
                    sum(tasks[:i]), inflight) for i in range(n)]  # fmt: skip
        pending = self.pool.map_async(drive, jobs)
        time.sleep(max(0.0, start_at - time.monotonic()))
        meter.start()
        parts = pending.get()
        cpu = meter.stop()
        errors = [e for r in parts for e in r["errors"]]
        if errors:
            raise RuntimeError(f"{op} {size} on {pool}: {len(errors)} tasks failed: {errors[:3]}")
        wall = max(r["wall_s"] for r in parts)
        ops, nbytes = sum(r["ops"] for r in parts), sum(r["bytes"] for r in parts)
        if op == "get" and nbytes != ops * size:
            raise RuntimeError(f"GETs returned {nbytes} bytes, not {ops} x {size}")
        gen = sum(r["cpu_s"] for r in parts)
        others = cpu["machine_busy_cores"] - (cpu["daemons_cores"] + cpu["master_cores"]
                                              + cpu["kernel_cores"] + cpu["bench_process_cores"]
                                              + gen / wall)  # fmt: skip
        return {"pool": pool, "ops": ops, "ops_per_s": ops / wall, "mb_per_s": nbytes / wall / 1e6,
                "wall_s": round(wall, 3), "inflight": inflight, **cpu,
                "drivers_cores": round(gen / wall, 3),
                "busiest_driver_cores": round(max(r["cpu_s"] / r["wall_s"] for r in parts), 3),
                "other_cores": round(max(0.0, others), 3),
                "disk_bytes_per_client_byte": round(cpu["disk_written_bytes"] / max(nbytes, 1), 2)
                if op == "put" else None,
                "names": [x for r in parts for x in r["names"]]}  # fmt: skip


# -- the phases ----------------------------------------------------------------------------------

PHASES = [  # (phase, op, size, what, unit key)
    ("put4k", "put", SMALL, "4 KiB PUT", "ops_per_s"),
    ("get4k", "get", SMALL, "4 KiB GET, cache-hot", "ops_per_s"),
    ("put4m", "put", BIG, "4 MiB PUT", "mb_per_s"),
    ("get4m", "get", BIG, "4 MiB GET, cache-hot", "mb_per_s"),
]


def bench(cl: Cluster, drv: Drivers, meter: Meter, p: Params, capacity: int,
          phases: list[str]) -> dict[str, dict[str, list[dict[str, Any]]]]:  # fmt: skip
    """Each phase: r1, r3, r1, r3 (`rounds` each). The GET sets are the first PUT run's
    objects of each pool, read once untimed before the phase's GET runs."""
    fig: dict[str, dict[str, list[dict[str, Any]]]] = {}
    keys: dict[tuple[str, int], list[str]] = {}
    order = [pool for _ in range(p.rounds) for pool in POOLS]
    # 4 MiB PUT runs: each may use its share of the daemons' space (all copies counted), so
    # that the runs end before a daemon fills up (r1's placement is not perfectly even).
    physical = p.space_share * capacity * p.daemons / (p.rounds * len(POOLS))
    for phase, op, size, _, _ in PHASES:
        if phase not in phases:
            continue
        inflight = p.small_inflight if size == SMALL else p.big_inflight
        log(f"{phase}: {', '.join(order)} ({p.seconds:g} s each, {inflight} in flight)")
        if op == "get":
            for pool in POOLS:
                drv.run(cl, meter, pool, "get", size, inflight, 600, names=keys[pool, size],
                        once=True)  # fmt: skip
        for i, pool in enumerate(order):
            if op == "put":
                cap = int(physical / POOLS[pool] / (1.3 if POOLS[pool] == 1 else 1.0))
                res = drv.run(cl, meter, pool, "put", size, inflight, p.seconds,
                              max_bytes=cap if size == BIG else 0,
                              prefix=f"{phase}-{i}-")  # fmt: skip
                names = res.pop("names")
                if (pool, size) not in keys:
                    n = p.small_get_keys if size == SMALL else p.big_get_keys
                    random.Random(1).shuffle(names)
                    keys[pool, size] = names[:n]
                res["max_bytes"] = cap if size == BIG else None
            else:
                res = drv.run(cl, meter, pool, "get", size, inflight, p.seconds,
                              names=keys[pool, size])  # fmt: skip
                res.pop("names")
                res["keys"] = len(keys[pool, size])
            u = "ops_per_s" if size == SMALL else "mb_per_s"
            log(
                f"  {pool}: {res[u]:.0f} {'ops/s' if size == SMALL else 'MB/s'} "
                f"({res['wall_s']:.1f} s, daemons {res['daemons_cores']:.2f} cores, "
                f"drivers {res['drivers_cores']:.2f}, others {res['other_cores']:.2f}, "
                f"disk {res['disk_write_mb_per_s']:.0f} MB/s)"
                + (
                    f"; busiest others: {', '.join(res['busiest_other_processes'])}"
                    if res["busiest_other_processes"]
                    else ""
                )
            )
            fig.setdefault(phase, {}).setdefault(pool, []).append(res)
    return fig


def pass_cost(cl: Cluster, meter: Meter, fig: dict[str, dict[str, list[dict[str, Any]]]]
              ) -> dict[str, Any]:  # fmt: skip
    """One recovery pass of every daemon, with no client load, over what the runs wrote: a
    new (empty) pool changes the map, and each daemon then scans every peer's objects (with
    nothing to fetch). The CPU it takes, and what that is at shoal's default interval."""
    log("one recovery pass (a map change: an empty pool made), no load")

    async def new_pool() -> int:
        async with client_of(cl) as c:
            out = await c.admin("pool_create", name="probe", replicas=1, pg_num=8)
            return int(out["epoch"])

    logs = [d.dir / "daemon.log" for d in cl.daemons]
    meter.start()
    epoch = asyncio.run(new_pool())
    done = f"current at epoch {epoch}"
    deadline = time.monotonic() + 120
    while not all(done in f.read_text(errors="replace") for f in logs):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the daemons did not log '{done}' within 120 s")
        time.sleep(0.05)
    res = meter.stop()
    ours = ("daemons_cores", "master_cores", "kernel_cores", "bench_process_cores")
    others = res["machine_busy_cores"] - sum(res[k] for k in ours)
    res["other_cores"] = round(max(0.0, others), 3)
    wall = res["wall_s"] = round(meter.last_wall, 3)
    res["daemons_cpu_s"] = round(res["daemons_cores"] * wall, 3)
    # the same work every 10 s (shoal's default --recovery-interval), and every FULL_EVERY s
    # (the timer's pass of a daemon with nothing left to do, where shoal has it)
    res["cores_if_every_10s"] = round(res["daemons_cpu_s"] / (10 + wall), 3)
    full = getattr(replication, "FULL_EVERY", None)
    res["settled_pass_every_s"] = full
    res["cores_if_settled"] = round(res["daemons_cpu_s"] / (full + wall), 4) if full else None
    res["objects_written"] = {
        pool: sum(r["ops"] for ph, by in fig.items() if ph.startswith("put") for r in by[pool])
        for pool in POOLS
    }
    return res


def rows(fig: dict[str, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    out = []
    for phase, op, _, what, key in PHASES:
        if phase not in fig:
            continue
        r1, r3 = fig[phase]["r1"], fig[phase]["r3"]
        b1, b3 = max(r[key] for r in r1), max(r[key] for r in r3)
        best1 = max(r1, key=lambda r: r[key])
        best3 = max(r3, key=lambda r: r[key])
        out.append({
            "phase": phase, "what": what, "unit": key,
            "r1_best": b1, "r3_best": b3, "ratio_best": b3 / b1,
            "r1_mean": mean(r[key] for r in r1), "r3_mean": mean(r[key] for r in r3),
            "ratio_mean": mean(r[key] for r in r3) / mean(r[key] for r in r1),
            "r1_each": [round(r[key], 1) for r in r1], "r3_each": [round(r[key], 1) for r in r3],
            "r1_best_ops_per_s": best1["ops_per_s"], "r3_best_ops_per_s": best3["ops_per_s"],
            "r1_best_mb_per_s": best1["mb_per_s"], "r3_best_mb_per_s": best3["mb_per_s"],
            "expected_ratio": "~0.33 (3 copies on one disk)" if op == "put" else "~1",
            "max_other_cores": round(max(r["other_cores"] for r in r1 + r3), 2),
        })  # fmt: skip
    return out


def table(rs: list[dict[str, Any]]) -> str:
    head = (f"{'measure (best of runs)':<24}{'r1 ops/s':>10}{'r1 MB/s':>9}{'r3 ops/s':>10}"
            f"{'r3 MB/s':>9}{'r3/r1':>7}{'(mean)':>8}  {'ideal':<7}{'others':>7}")  # fmt: skip
    out = [head, "-" * len(head)]
    for r in rs:
        ideal = "~0.33" if r["phase"].startswith("put") else "~1"
        out.append(f"{r['what']:<24}{r['r1_best_ops_per_s']:>10.0f}{r['r1_best_mb_per_s']:>9.1f}"
                   f"{r['r3_best_ops_per_s']:>10.0f}{r['r3_best_mb_per_s']:>9.1f}"
                   f"{r['ratio_best']:>7.2f}{r['ratio_mean']:>8.2f}  {ideal:<7}"
                   f"{r['max_other_cores']:>7.2f}")  # fmt: skip
    return "\n".join(out)


def cpu_table(fig: dict[str, dict[str, list[dict[str, Any]]]], ncpu: int) -> str:
    head = (f"{'phase':<7}{'pool':<5}{'daemons':>8}{'(max 1)':>8}{'master':>7}{'drivers':>8}"
            f"{'(1 proc)':>9}{'kernel':>7}{'others':>7}{'disk MB/s':>10}{'disk/client':>12}"
            f"  of {ncpu} cores")  # fmt: skip
    out = [head, "-" * len(head)]
    for phase, *_ in PHASES:
        for pool in POOLS:
            rs = fig.get(phase, {}).get(pool)
            if not rs:
                continue

            def a(k: str, rs: list[dict[str, Any]] = rs) -> float:
                return float(mean(r[k] for r in rs))

            one = mean(max(r["daemon_cores"].values()) for r in rs)
            amp = f"{a('disk_bytes_per_client_byte'):>12.2f}" if phase.startswith("put") else ""
            out.append(f"{phase:<7}{pool:<5}{a('daemons_cores'):>8.2f}{one:>8.2f}"
                       f"{a('master_cores'):>7.2f}{a('drivers_cores'):>8.2f}"
                       f"{a('busiest_driver_cores'):>9.2f}{a('kernel_cores'):>7.2f}"
                       f"{a('other_cores'):>7.2f}{a('disk_write_mb_per_s'):>10.0f}"
                       f"{amp}")  # fmt: skip
    return "\n".join(out)


# -- the daemons' logs ---------------------------------------------------------------------------

_NOISY = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")


def scan_logs(cl: Cluster) -> dict[str, Any]:
    """Warnings, errors and tracebacks in each daemon's log and the master's: counts and the
    distinct messages (numbers blanked), a few of each."""
    out: dict[str, Any] = {}
    files = {d.dir.name: d.dir / "daemon.log" for d in cl.daemons}
    files["master"] = cl.master_dir / "master.log"
    for name, path in files.items():
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        bad = [ln for ln in lines if _NOISY.search(ln)]
        kinds: dict[str, int] = {}
        examples: dict[str, str] = {}
        for ln in bad:
            msg = ln.split(" ", 2)[-1]  # without the date and time
            k = re.sub(r"\d+", "N", msg)[:160]
            kinds[k] = kinds.get(k, 0) + 1
            examples.setdefault(k, ln[:300])
        out[name] = {"lines": len(lines), "warnings_errors": len(bad),
                     "kinds": [{"count": n, "example": examples[k]}
                               for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])][:10],
                     "tail": lines[-5:]}  # fmt: skip
    return out


def disk_of(info: dict[str, Any]) -> str | None:
    """The block device name (vda) in /proc/diskstats behind the work directory."""
    dev = str(info.get("filesystem", {}).get("device", ""))
    name = Path(dev).name
    names = {ln.split()[2] for ln in Path("/proc/diskstats").read_text().splitlines()}
    return name if name in names else None


def main(argv: Sequence[str] | None = None) -> int:
    ap = arguments("bench.replication", __doc__, "2 s runs, 2G data files")
    ap.add_argument("--size", help="each daemon's data file (default 4G; 2G with --quick)")
    ap.add_argument("--seconds", type=float, help="length of each timed run (default 5)")
    ap.add_argument("--only", choices=["4k", "4m"], help="only the phases of this size")
    ap.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the master's and daemons' logs (copied next to the work dir)",
    )
    args = ap.parse_args(argv)  # fmt: skip
    p = Params(args.quick)
    if args.quick:
        p = replace(p, seconds=2.0, daemon_size="2G", small_get_keys=2000)
    if args.size:
        p = replace(p, daemon_size=args.size)
    if args.seconds:
        p = replace(p, seconds=args.seconds)
    phases = [ph for ph, *_ in PHASES if args.only is None or ph.endswith(args.only)]
    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="replication-", dir=args.dir))
    started, load0, t0 = datetime.now(), os.getloadavg(), time.perf_counter()
    info = machine_info(work)
    drv = Drivers(p)  # (forked before any event loop)
    cl: Cluster | None = None
    codes: dict[str, int | None] = {}
    logs: dict[str, Any] = {}
    kept = None
    try:
        log(f"starting a master and {p.daemons} daemons (--size {p.daemon_size}) in {work}")
        cl = start_cluster(work, p)
        setup = asyncio.run(prepare(cl, p))
        log(f"pools r1 and r3 made; smallest daemon capacity {setup['capacity'] / 2**30:.1f} GiB")
        meter = Meter(cl, disk_of(info))
        fig = bench(cl, drv, meter, p, setup["capacity"], phases)
        idle = pass_cost(cl, meter, fig)
    finally:
        drv.close()
        if cl is not None:
            codes = stop_cluster(cl)
            logs = scan_logs(cl)
            if args.keep_logs:
                kept = args.dir / f"{work.name}-logs"
                kept.mkdir(exist_ok=True)
                for d in cl.daemons:
                    shutil.copy(d.dir / "daemon.log", kept / f"{d.dir.name}.log")
                shutil.copy(cl.master_dir / "master.log", kept / "master.log")
        shutil.rmtree(work, ignore_errors=True)
    ended = datetime.now()
    ncpu = os.cpu_count() or 1
    rs = rows(fig)
    ru, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "date": started.isoformat(timespec="seconds"),
        "ended": ended.isoformat(timespec="seconds"),
        "machine": info,
        "git": git(),
        "parameters": {**asdict(p), "object_sizes": {"small": SMALL, "big": BIG},
                       "pools": {"r1": {"replicas": 1}, "r3": {"replicas": 3,
                                 "min_size": p.min_size, "failure_domain": "daemon"}},
                       "order": "each phase: r1, r3, r1, r3; best (and mean) of each pool",
                       "load": "ClusterClient in forked driver processes (uvloop)",
                       "bench_dir": str(work)},
        "pools_made": setup["pools"],
        "figures": fig,
        "recovery_pass": idle,
        "ratios": rs,
        "daemon_logs": logs,
        "exit_codes": codes,
        "wall_s": round(time.perf_counter() - t0, 1),
        "loadavg_1_5_15": {"start": load0, "end": os.getloadavg()},
        "cpu_s": {"bench_process": ru.ru_utime + ru.ru_stime,
                  "waited_children": ch.ru_utime + ch.ru_stime},
        "notes": [PHYSICS_NOTE, FS_NOTE, CLIENT_NOTE],
    }  # fmt: skip
    print(table(rs))
    print()
    print(f"* {PHYSICS_NOTE}")
    print(f"  {FS_NOTE}")
    print(f"  {CLIENT_NOTE}")
    print("  'others': the most CPU (cores) other processes took during a row's runs; above "
          "~0.2 the row is disturbed.")  # fmt: skip
    print()
    print("CPU in cores busy over each timed run (mean of runs): 'daemons' = the 3 daemons, "
          "'(max 1)' = the busiest daemon, '(1 proc)' = the busiest driver process; disk MB/s "
          "= what the device wrote (/proc/diskstats: everyone's writes), disk/client = device "
          "bytes per byte the client wrote (ideal: 1 for r1, 3 for r3):")  # fmt: skip
    print(cpu_table(fig, ncpu))
    print()
    print(
        "one recovery pass of the 3 daemons after the runs (nothing to fetch; objects "
        "written: "
        + ", ".join(f"{k} {v}" for k, v in idle["objects_written"].items())
        + f"): {idle['wall_s']:.1f} s, {idle['daemons_cpu_s']:.1f} CPU-s of the daemons, "
        f"others {idle['other_cores']:.2f}; a pass every 10 s (--recovery-interval 10) would "
        f"be {idle['cores_if_every_10s']:.2f} cores all the time"
        + (
            f", every {idle['settled_pass_every_s']:g} s (a settled daemon's timer) "
            f"{idle['cores_if_settled']:.3f} cores"
            if idle["cores_if_settled"]
            else ""
        )
        + f" (the runs above used --recovery-interval {p.recovery_interval:g}, so that no "
        "pass fell in them)"
    )
    print()
    total = sum(v["warnings_errors"] for v in logs.values())
    print(f"logs: {total} warning/error lines in all "
          + ", ".join(f"{k} {v['warnings_errors']}" for k, v in logs.items()))  # fmt: skip
    for name, v in logs.items():
        for k in v["kinds"][:3]:
            print(f"  {name}: {k['count']} x {k['example']}")
    print(f"exit codes: {codes}" + (f"; logs kept in {kept}" if kept else ""))
    print(f"wall {result['wall_s']} s; load average at start {load0[0]:.2f}")
    write_result("replication", result)
    return 0


def machine_info(work: Path) -> dict[str, Any]:
    try:
        return machine(work)
    except (OSError, subprocess.CalledProcessError):  # (it asks fio for its version)
        info: dict[str, Any] = {"nproc": os.cpu_count(), "kernel": os.uname().release}
        df = subprocess.run(["df", "-T", str(work)], capture_output=True, text=True).stdout
        dev, fstype, *_ = df.splitlines()[1].split()
        info["filesystem"] = {"type": fstype, "device": dev}
        return info


if __name__ == "__main__":
    sys.exit(main())
