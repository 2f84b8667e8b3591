"""The single-disk engine (ObjectStore) against the raw disk, in one run on one filesystem.

Raw limits come from fio: 4 KiB random writes with fdatasync after each (1 job, and 16 psync
jobs standing in for queue depth 16), and 4 MiB sequential O_DIRECT write (fsync at end) and
read. The engine is measured in a store formatted in the same fresh directory: durable 4 KiB
PUT from 16 threads and from 1, 4 KiB GET (page cache hot) against a bare os.pread loop over a
file of the same size, and 4 MiB PUT and GET (GET after dropping the page cache, and hot).
fio's 4 MiB buffered writes with fdatasync after each, into a sparse file (the naive way to
write durably: the engine instead reserves its file and writes large pieces with O_DIRECT), are
measured too as a reference without a goal.
Tests that are cheap are repeated around the others and averaged, since the machine is noisy.

Prints a table of shoal / raw ratios against the goals and writes the figures to
bench/results/engine.json.

    .venv/bin/python -m bench.engine [--dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from statistics import mean
from typing import Any

from bench import REPO, write_result
from shoal.engine import ObjectStore

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BIG = 4 * MiB
CHUNK = 1024  # operations between two looks at the clock in the timed read loops
FS_NOTE = (
    "The root filesystem of these machines is ext4 without a journal on a virtio disk: a flush "
    "costs a fraction of a millisecond, far less than on real disks, so the durability figures "
    "(fdatasync IOPS, durable PUT/s) are optimistic compared with real hardware."
)


@dataclass(frozen=True)
class Params:
    quick: bool
    seconds: float  # length of each timed phase
    big_bytes: int  # total of the engine's 4 MiB objects and size of fio's sequential file
    writers: int = 16
    fio_jobs: int = 16
    fio_rand_file: int = 256 * MiB  # per job at qd1; divided by the job count at qd16


# -- helpers ---------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd: Sequence[str], cwd: Path | None = None) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def fio(work: Path, name: str, *args: str) -> dict[str, Any]:
    """Run one fio job (its files in `work`) and return its (group-reported) JSON record."""
    out = work / f"{name}.fio.json"
    run(["fio", f"--name={name}", f"--directory={work}", "--output-format=json",
         f"--output={out}", *args])  # fmt: skip
    job: dict[str, Any] = json.loads(out.read_text())["jobs"][0]
    out.unlink()
    return job


def fio_rand4k(work: Path, p: Params, jobs: int) -> float:
    """IOPS of 4 KiB random writes, fdatasync after each, `jobs` psync jobs, fresh files."""
    name = f"rand4k-{jobs}"
    job = fio(work, name, "--rw=randwrite", "--bs=4k", "--ioengine=psync", "--fdatasync=1",
              f"--size={p.fio_rand_file // jobs}", f"--numjobs={jobs}", "--group_reporting",
              f"--runtime={p.seconds:g}", "--time_based")  # fmt: skip
    for f in work.glob(f"{name}.*"):
        f.unlink()
    return float(job["write"]["iops"])


def fio_seq(work: Path, p: Params, rw: str) -> float:
    """MB/s of a 4 MiB sequential O_DIRECT write (fsync at end, fresh file) or read of it."""
    path = work / "seq.dat"
    if rw == "write":
        path.unlink(missing_ok=True)
    job = fio(work, "seq", f"--rw={rw}", "--bs=4m", "--direct=1", "--ioengine=psync",
              "--end_fsync=1", f"--size={p.big_bytes}", "--filename=seq.dat")  # fmt: skip
    return float(job[rw]["bw_bytes"]) / 1e6


def fio_buffered(work: Path, p: Params) -> float:
    """MB/s of 4 MiB buffered writes, fdatasync after each, into a fresh sparse file: the
    engine's own way of writing a large object (not a goal, a like-for-like reference)."""
    job = fio(work, "buf", "--rw=write", "--bs=4m", "--ioengine=psync", "--fdatasync=1",
              "--fallocate=none", f"--size={p.big_bytes}", "--filename=buf.dat")  # fmt: skip
    (work / "buf.dat").unlink()
    return float(job["write"]["bw_bytes"]) / 1e6


def drop_caches() -> str | None:
    """Empty the page cache (needs root); returns why not, or None."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        return str(exc)
    return None


class Phase:
    """Wall and process CPU time of one phase (CPU counts every thread, fio excluded)."""

    def __enter__(self) -> Phase:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0

    def info(self) -> dict[str, float]:
        return {"wall_s": round(self.wall, 3), "cpu_s": round(self.cpu, 3)}


# -- engine phases ---------------------------------------------------------------------------


def engine_put4k(store: ObjectStore, threads: int, seconds: float, tag: str) -> dict[str, Any]:
    """Durable 4 KiB PUTs from `threads` threads for `seconds`: rate and group-commit stats."""
    data = os.urandom(4 * KiB)
    names: list[list[str]] = [[] for _ in range(threads)]
    gate = threading.Barrier(threads + 1)

    def writer(t: int) -> None:
        mine, put = names[t], store.put
        gate.wait()
        deadline, i = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            name = f"{tag}{t}-{i}"
            put(data, name=name)
            mine.append(name)
            i += 1

    pool = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    before = store.stats
    with Phase() as ph:
        gate.wait()
        for th in pool:
            th.join()
    delta = {k: v - before[k] for k, v in store.stats.items()}
    done = sum(len(n) for n in names)
    return {
        "threads": threads,
        "puts": done,
        "puts_per_s": done / ph.wall,
        "stats": delta,
        "mean_group": delta["changes"] / max(delta["groups"], 1),
        "names": [n for ns in names for n in ns],
        **ph.info(),
    }


def engine_put4k_batched(store: ObjectStore, batch: int, seconds: float) -> dict[str, Any]:
    """Durable 4 KiB PUTs handed over `batch` at a time from one thread (`put_many`, as the
    daemon does with concurrent requests): the engine without threads contending."""
    data = os.urandom(4 * KiB)
    before = store.stats
    done = 0
    with Phase() as ph:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            items = [("default", f"b{done + i}", data, (), False, None) for i in range(batch)]
            store.put_many(items)
            done += batch
    delta = {k: v - before[k] for k, v in store.stats.items()}
    return {"batch": batch, "puts": done, "puts_per_s": done / ph.wall, "stats": delta,
            **ph.info()}  # fmt: skip


def get_loop(store: ObjectStore, names: Sequence[str], seconds: float) -> float:
    """GETs per second of a single thread cycling over `names`."""
    get, done, i, n = store.get, 0, 0, len(names)
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for name in names[i : i + CHUNK]:
            get(name)
        done += min(CHUNK, n - i)
        i = i + CHUNK if i + CHUNK < n else 0
        if time.perf_counter() >= deadline:
            return done / (time.perf_counter() - t0)


def pread_loop(fd: int, offsets: Sequence[int], seconds: float) -> float:
    """os.pread(fd, 4096, offset) per second, the same loop shape as get_loop."""
    pread, done, i, n = os.pread, 0, 0, len(offsets)
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for off in offsets[i : i + CHUNK]:
            pread(fd, 4096, off)
        done += min(CHUNK, n - i)
        i = i + CHUNK if i + CHUNK < n else 0
        if time.perf_counter() >= deadline:
            return done / (time.perf_counter() - t0)


def get4k_vs_pread(store: ObjectStore, work: Path, names: list[str], p: Params) -> dict[str, Any]:
    """Engine 4 KiB GET against bare pread over a same-size file, alternated twice. The same
    pread loop over the store's own device file, at the objects' offsets, is measured too: it
    separates the engine's Python cost from the page-cache layout of its file."""
    order = list(range(len(names)))
    random.Random(1).shuffle(order)
    shuffled = [names[i] for i in order]
    offsets = [i * 4 * KiB for i in order]
    bs = store.block_size
    dev_offsets = [store.stat(n).manifest.extents[0][0] * bs for n in shuffled]
    path = work / "pread.dat"
    with path.open("wb") as f:
        chunk = os.urandom(MiB)
        for _ in range(-(-len(names) * 4 * KiB // MiB)):
            f.write(chunk)
    fd = os.open(path, os.O_RDONLY)
    try:
        for name in shuffled:  # warm the record cache and the page cache once
            store.get(name)
        gets: list[float] = []
        preads: list[float] = []
        dev: list[float] = []
        with Phase() as ph:
            for _ in range(2):
                preads.append(pread_loop(fd, offsets, p.seconds / 3))
                dev.append(pread_loop(store.device.fd, dev_offsets, p.seconds / 3))
                gets.append(get_loop(store, shuffled, p.seconds / 3))
    finally:
        os.close(fd)
        path.unlink()
    return {"objects": len(names), "gets_per_s": gets, "preads_per_s": preads,
            "preads_device_file_per_s": dev, **ph.info()}  # fmt: skip


def put_big(store: ObjectStore, p: Params) -> dict[str, Any]:
    buf = os.urandom(BIG)
    count = p.big_bytes // BIG
    before = store.stats
    with Phase() as ph:
        for i in range(count):
            store.put(buf, name=f"big-{i}")
    delta = {k: v - before[k] for k, v in store.stats.items()}
    return {"objects": count, "mb_per_s": count * BIG / ph.wall / 1e6, "stats": delta, **ph.info()}


def get_big(store: ObjectStore, count: int) -> dict[str, Any]:
    with Phase() as ph:
        for i in range(count):
            if len(store.get(f"big-{i}")) != BIG:
                raise AssertionError(f"big-{i} has the wrong size")
    return {"mb_per_s": count * BIG / ph.wall / 1e6, **ph.info()}


# -- machine, table, results -----------------------------------------------------------------


def machine(path: Path) -> dict[str, Any]:
    device, fstype, *_, mountpoint = run(["df", "-T", str(path)]).splitlines()[1].split()
    opts = ""
    for line in Path("/proc/mounts").read_text().splitlines():
        f = line.split()
        if f[0] == device and f[1] == mountpoint:
            opts = f[3]
    jbd2 = Path("/proc/fs/jbd2")  # a journaled ext4 has an entry <dev>-<n> here
    journal = jbd2.is_dir() and any(
        e.name.startswith(Path(device).name + "-") for e in jbd2.iterdir()
    )
    mem = next(x for x in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in x)
    return {
        "nproc": os.cpu_count(),
        "mem_total_kib": int(mem.split()[1]),
        "kernel": os.uname().release,
        "filesystem": {
            "type": fstype,
            "device": device,
            "mount": mountpoint,
            "options": opts,
            "journal": journal if fstype.startswith("ext") else None,
        },
        "fio": run(["fio", "--version"]).strip(),
        "python": sys.version.split()[0],
    }


def git() -> dict[str, Any]:
    try:
        head = run(["git", "rev-parse", "HEAD"], REPO).strip()
        dirty = bool(run(["git", "status", "--porcelain"], REPO).strip())
        src_diff = run(["git", "diff", "HEAD", "--", "src"], REPO)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    # the engine may be measured with uncommitted changes: identify them by their diff
    digest = hashlib.sha1(src_diff.encode()).hexdigest()[:12] if src_diff else None
    return {"commit": head, "dirty": dirty, "src_diff_sha1": digest}


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'measure':<34}{'shoal':>12}  {'raw limit':<30}{'raw':>10}{'ratio':>8}  goal"
    out = [head, "-" * len(head)]
    for r in rows:
        raw = f"{r['raw']:>10.0f}" if r["raw"] is not None else f"{'':>10}"
        ratio = f"{r['ratio']:>8.2f}" if r["ratio"] is not None else f"{'':>8}"
        goal = ""
        if r["goal"] is not None:
            goal = f">= {r['goal']:g}  {'met' if r['met'] else 'MISSED'}"
        out.append(f"{r['what']:<34}{r['shoal']:>12.0f}  {r['raw_what']:<30}{raw}{ratio}  {goal}")
    return "\n".join(out)


def row(
    what: str, shoal: float, raw_what: str, raw: float | None, goal: float | None
) -> dict[str, Any]:
    ratio = shoal / raw if raw else None
    met = None if goal is None or ratio is None else ratio >= goal
    return {"what": what, "shoal": shoal, "raw_what": raw_what, "raw": raw, "ratio": ratio,
            "goal": goal, "met": met}  # fmt: skip


# -- main ------------------------------------------------------------------------------------


def bench(work: Path, p: Params) -> dict[str, Any]:
    fig: dict[str, Any] = {}
    log("fio: 4k randwrite fdatasync qd1, qd16 (16 jobs), 4m seq write/read")
    qd1 = [fio_rand4k(work, p, 1)]
    qd16 = fio_rand4k(work, p, p.fio_jobs)
    seq_w, seq_r = [fio_seq(work, p, "write")], [fio_seq(work, p, "read")]

    log("engine: format, 4k PUT 16 writers, 1 writer, fio qd1 again, 16 writers again")
    store = ObjectStore.format(str(work / "disk.img"), size=p.big_bytes + 16 * GiB)
    try:
        put16 = [engine_put4k(store, p.writers, p.seconds, "w")]
        put1 = engine_put4k(store, 1, p.seconds, "s")
        qd1.append(fio_rand4k(work, p, 1))
        put16.append(engine_put4k(store, p.writers, p.seconds, "x"))
        names = [n for r in put16 for n in r.pop("names")]
        put1.pop("names")

        log(f"engine: 4k GET vs os.pread over {len(names)} objects")
        get4k = get4k_vs_pread(store, work, names, p)
        log(f"engine: 4k PUT in put_many batches of {p.writers} from one thread")
        batched = engine_put4k_batched(store, p.writers, p.seconds)  # after: it fills the cache

        log(f"engine: 4m PUT x{p.big_bytes // BIG}; fio seq write again, buffered write")
        big_put = put_big(store, p)
        seq_w.append(fio_seq(work, p, "write"))
        buffered = fio_buffered(work, p)

        log("engine: 4m GET after drop_caches, then hot; fio seq read again")
        why = drop_caches()
        big_cold = get_big(store, big_put["objects"]) if why is None else None
        big_hot = get_big(store, big_put["objects"])
        drop_caches()
        seq_r.append(fio_seq(work, p, "read"))
    finally:
        store.close()

    fig["fio"] = {
        "rand4k_fdatasync_qd1_iops": qd1,
        "rand4k_fdatasync_16jobs_iops": qd16,
        "seq4m_direct_write_mb_s": seq_w,
        "seq4m_direct_read_mb_s": seq_r,
        "seq4m_buffered_fdatasync_each_sparse_mb_s": buffered,
        "note": "psync cannot queue: 'qd16' is 16 jobs (numjobs=16, group_reporting)",
    }
    fig["engine"] = {
        "put4k_16writers": put16,
        "put4k_1writer": put1,
        "put4k_batched": batched,
        "get4k": get4k,
        "put4m": big_put,
        "get4m_cold": big_cold,
        "get4m_hot": big_hot,
        "drop_caches_failed": why,
    }
    cold_mb = big_cold["mb_per_s"] if big_cold else big_hot["mb_per_s"]
    cold_label = "4 MiB GET cold (MB/s)" if big_cold else "4 MiB GET HOT, no drop (MB/s)"
    put16_rate = mean(r["puts_per_s"] for r in put16)
    fig["rows"] = [
        row("4 MiB PUT (MB/s)", big_put["mb_per_s"], "fio 4m O_DIRECT write+fsync",
            mean(seq_w), 0.6),
        row(cold_label, cold_mb, "fio 4m O_DIRECT read", mean(seq_r), 0.7),
        row("4 KiB durable PUT, 16 thr (/s)", put16_rate, "fio 4k fdatasync qd1 IOPS",
            mean(qd1), 3.0),
        row("4 KiB GET, 1 thread (/s)", mean(get4k["gets_per_s"]), "os.pread 4k loop (/s)",
            mean(get4k["preads_per_s"]), 0.5),
        row("4 KiB GET, 1 thread (/s)", mean(get4k["gets_per_s"]), "os.pread 4k, store's file",
            mean(get4k["preads_device_file_per_s"]), None),
        row("4 KiB durable PUT, 1 thr (/s)", put1["puts_per_s"], "fio 4k fdatasync qd1 IOPS",
            mean(qd1), None),
        row(f"4 KiB PUT, put_many x{p.writers} (/s)", batched["puts_per_s"],
            "fio 4k fdatasync qd1 IOPS", mean(qd1), None),
        row("4 KiB durable PUT, 16 thr (/s)", put16_rate, "fio 4k fdatasync 16 jobs",
            qd16, None),
        row("4 MiB PUT (MB/s)", big_put["mb_per_s"], "fio 4m buffered+fdatasync each",
            buffered, None),
        row("4 MiB GET hot (MB/s)", big_hot["mb_per_s"], "fio 4m O_DIRECT read", mean(seq_r),
            None),
    ]  # fmt: skip
    return fig


def arguments(module: str, doc: str | None, quick: str) -> argparse.ArgumentParser:
    """The options every bench has: --dir (where its fresh work directory goes) and --quick
    (what a smoke run shortens)."""
    ap = argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or "").split("\n")[0])
    ap.add_argument(
        "--dir",
        type=Path,
        default=REPO / "bench" / "work",
        help="where to make the fresh work directory (default: bench/work)",
    )
    ap.add_argument("--quick", action="store_true", help=quick)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = arguments("bench.engine", __doc__, "shorter phases, 256 MiB not 1 GiB")
    args = ap.parse_args(argv)
    p = Params(args.quick, 2.0 if args.quick else 5.0, (256 * MiB) if args.quick else GiB)
    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="engine-", dir=args.dir))
    started = datetime.now()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    try:
        info = machine(work)
        fig = bench(work, p)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    qd1_ms = 1e3 / mean(fig["fio"]["rand4k_fdatasync_qd1_iops"])
    note = f"{FS_NOTE} Measured in this run: a 4 KiB write + fdatasync at qd1 took {qd1_ms:.2f} ms."
    ru, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "date": started.isoformat(timespec="seconds"),
        "machine": info,
        "git": git(),
        "parameters": {**asdict(p), "bench_dir": str(work)},
        "figures": {k: v for k, v in fig.items() if k != "rows"},
        "ratios": [{k: r[k] for k in ("what", "raw_what", "ratio", "goal", "met")}
                   for r in fig["rows"]],
        "goals_met": all(r["met"] for r in fig["rows"] if r["goal"] is not None),
        "wall_s": round(time.perf_counter() - t0, 1),
        "loadavg_1_5_15": {"start": load0, "end": os.getloadavg()},
        "cpu_s": {"bench_process_user": ru.ru_utime, "bench_process_sys": ru.ru_stime,
                  "fio_children_user": ch.ru_utime, "fio_children_sys": ch.ru_stime},
        "note": note,
    }  # fmt: skip
    eng = fig["engine"]
    print(table(fig["rows"]))
    print()
    for r in eng["put4k_16writers"]:
        s = r["stats"]
        print(f"group commit, 16 writers: {s['changes']} changes in {s['groups']} groups, "
              f"{s['flushes']} data flushes: mean group {r['mean_group']:.1f}; "
              f"cpu {r['cpu_s'] / r['wall_s']:.0%} of a core")  # fmt: skip
    print(f"4 KiB GET over {eng['get4k']['objects']} objects (record cache holds 65536).")
    print("fio 'qd16' = 16 psync jobs (numjobs=16, group_reporting); psync cannot queue.")
    if eng["drop_caches_failed"]:
        print(f"drop_caches failed ({eng['drop_caches_failed']}): 4 MiB GET is cache-hot.")
    print(f"bench process cpu: {ru.ru_utime + ru.ru_stime:.1f} s in {result['wall_s']} s wall; "
          f"fio {ch.ru_utime + ch.ru_stime:.1f} s; load average at start {load0[0]:.2f} "
          "(other work on the machine skews every figure)")  # fmt: skip
    print(f"note: {note}")
    write_result("engine", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
