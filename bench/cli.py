"""`shoal write|read|stat` of a small object, as a user runs them, against `python -c pass`.

A local cluster (`shoal.up.LocalCluster`, as `shoal up` starts it: a master and 3 daemons, one
data file each, TLS to the master and between the daemons; the pool `default`) runs in a
fresh directory under bench/work/ (deleted at the end). Each round runs, as real processes
one after the other, with the cluster's client config (SHOAL_CONFIG):

    python -c pass                              the interpreter's start: the floor
    python -c "import shoal.cli.objects"        the command group's module
    shoal write NAME --data-literal TEXT        (the venv's `shoal` script, as a user runs it)
    shoal read NAME                             (its output checked)
    shoal stat NAME
    python -c SPLIT                             where a command's time goes, in-process: its
                                                imports, the TLS context, connect (TCP + TLS,
                                                AUTH with the map), a first STAT (the daemon's
                                                connection), a second, close

and the wall time of each (fork to exit) is taken, with its CPU (rusage of the child). Every
round does this twice, alternating: with the bytecode cached (as pip installs shoal: each
module's .pyc made once; here in a cache under the work directory, PYTHONPYCACHEPREFIX,
filled by one untimed run of each command), and with shoal's own modules compiled at every
start (the same cache without shoal's files, and PYTHONDONTWRITEBYTECODE=1: what a checkout
run with that variable set does, as on these machines). The goal: a small `shoal write`,
`read` and `stat` in <= 0.3 s wall (median of the runs) with the bytecode cached.

Prints the medians and p90s, each command over `python -c pass`, and writes
bench/results/cli.json.

    .venv/bin/python -m bench.cli [--dir DIR] [--quick] [--runs N]
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from statistics import median, quantiles
from typing import Any

import shoal
from bench import write_result
from bench.daemon import cpu_of, machine_busy
from bench.engine import arguments, git, log
from bench.replication import machine_info
from shoal.up import LocalCluster

GOAL_S = 0.3
POOL = "default"
TEXT = "hello from bench.cli"  # the object's bytes (20)
DAEMONS, DAEMON_SIZE = 3, "1G"
MODES = {  # mode: its title in the table, and what it is
    "cached": ("bytecode cached (as installed)",
               "every module's .pyc made once (as pip does at install), in a cache under the "
               "work directory (PYTHONPYCACHEPREFIX), filled by one untimed run of each "
               "command"),
    "compiled": ("shoal's modules compiled at each start",
                 "the same cache without shoal's modules, and PYTHONDONTWRITEBYTECODE=1: "
                 "shoal's sources are compiled at every start (as a checkout run with that "
                 "variable set, as on these machines); the standard library's and the venv's "
                 ".pyc are used"),
}  # fmt: skip
ROWS = ["pass", "import", "write", "read", "stat"]  # run in this order in every round
GOAL_ROWS = ["write", "read", "stat"]
PIECES = ["imports", "context", "connect", "first_stat", "stat", "close", "in_process"]
PIECE_WHAT = {
    "imports": "imports (shoal.cli, its objects group, the cluster client, uvloop)",
    "context": "the TLS context (the CA loaded)",
    "connect": "connect: TCP + TLS to the master, AUTH with the map",
    "first_stat": "first STAT: the daemon's connection and the request",
    "stat": "another STAT (one round trip)",
    "close": "close",
    "in_process": "all of it, from the first import to the end of close",
}

# Where a command's time goes, measured inside one process as `shoal stat` spends it.
SPLIT = """\
import time
t0 = time.perf_counter()
import shoal.cli, shoal.cli.objects, shoal.client.cluster, uvloop
t1 = time.perf_counter()
import json, sys
from shoal.client.cluster import ClusterClient
from shoal.config import find_config

async def go():
    cfg = find_config()
    t = [time.perf_counter()]
    c = ClusterClient(cfg.master, cfg.access_key, cfg.secret, ca=cfg.ca)
    t.append(time.perf_counter())
    await c.connect()
    t.append(time.perf_counter())
    for _ in range(2):
        await c.stat(sys.argv[1], sys.argv[2])
        t.append(time.perf_counter())
    await c.close()
    t.append(time.perf_counter())
    return t

t = uvloop.run(go())
d = [b - a for a, b in zip(t, t[1:])]
print(json.dumps({"imports": t1 - t0, "context": d[0], "connect": d[1], "first_stat": d[2],
                  "stat": d[3], "close": d[4], "in_process": t[-1] - t0}))
"""

SPLIT_NOTE = (
    "The in-process split is measured by a script that does what `shoal stat` does (the same "
    "imports, a ClusterClient, connect, a STAT, close), timing each step; the wall time of a "
    "command is about `python -c pass` + that + argparse and the process's exit."
)
NOISE_NOTE = (
    "Modes and commands alternate within each round, so both modes see the same machine. "
    "'others' is the CPU (cores) the rest of the machine took during the runs (busy time "
    "from /proc/stat less the commands', the cluster's and this process's): above ~0.2 the "
    "figures are disturbed."
)


def shoal_command() -> tuple[list[str], str]:
    """How a user runs `shoal`: the venv's script (it does not go through `python -m`)."""
    script = Path(sys.executable).with_name("shoal")
    if script.exists():
        return [str(script)], str(script)
    return [sys.executable, "-m", "shoal.cli"], "python -m shoal.cli (no shoal script)"


def commands(shoal_cmd: list[str], name: str) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "pass": [py, "-c", "pass"],
        "import": [py, "-c", "import shoal.cli.objects"],
        "write": [*shoal_cmd, "write", name, "--data-literal", TEXT],
        "read": [*shoal_cmd, "read", name],
        "stat": [*shoal_cmd, "stat", name],
        "split": [py, "-c", SPLIT, POOL, name],
    }


LABEL = {
    "pass": "python -c pass",
    "import": 'python -c "import shoal.cli.objects"',
    "write": "shoal write NAME --data-literal TEXT",
    "read": "shoal read NAME",
    "stat": "shoal stat NAME",
}


class Runner:
    def __init__(self, work: Path, config: Path) -> None:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("SHOAL_") and k not in ("PYTHONDONTWRITEBYTECODE",
                                                             "PYTHONPYCACHEPREFIX")}  # fmt: skip
        base["SHOAL_CONFIG"] = str(config)
        self.work = work
        self.cache = work / "pyc-all"  # every module's bytecode
        self.no_shoal = work / "pyc-no-shoal"  # the same, less shoal's
        self.env = {
            "cached": {**base, "PYTHONPYCACHEPREFIX": str(self.cache)},
            "compiled": {**base, "PYTHONPYCACHEPREFIX": str(self.no_shoal),
                         "PYTHONDONTWRITEBYTECODE": "1"},
        }  # fmt: skip
        self.failures: list[str] = []
        self.cpu_s = 0.0  # of every timed child

    def run(self, mode: str, what: str, argv: list[str]) -> tuple[float, float, str]:
        """Wall seconds, CPU seconds (the child's rusage) and stdout of one command."""
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run(argv, env=self.env[mode], cwd=self.work, capture_output=True,
                             text=True)  # fmt: skip
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        self.cpu_s += cpu
        if out.returncode != 0:
            self.failures.append(f"{mode} {what}: exit {out.returncode}: {out.stderr.strip()}")
        elif what == "read" and out.stdout != TEXT:
            self.failures.append(f"{mode} read: {out.stdout!r}, not {TEXT!r}")
        elif what == "stat" and f"size: {len(TEXT)}" not in out.stdout:
            self.failures.append(f"{mode} stat: no 'size: {len(TEXT)}' in {out.stdout!r}")
        return wall, cpu, out.stdout

    def warm(self, shoal_cmd: list[str]) -> None:
        """Fill the bytecode cache (one untimed run of each command), then make its copy
        without shoal's modules."""
        for what, argv in commands(shoal_cmd, "bench-cli/warm").items():
            self.run("cached", what, argv)
        shutil.copytree(self.cache, self.no_shoal)
        src = Path(shoal.__file__).resolve().parent  # (its .pyc mirror the source path)
        mirror = self.no_shoal / src.relative_to(src.anchor)
        if not mirror.is_dir():
            raise RuntimeError(f"no bytecode of shoal's modules under {mirror}")
        shutil.rmtree(mirror)


def stats(xs: list[float]) -> dict[str, float]:
    p90 = quantiles(xs, n=10, method="inclusive")[8] if len(xs) > 1 else xs[0]
    return {"median_ms": round(median(xs) * 1e3, 2), "p90_ms": round(p90 * 1e3, 2),
            "min_ms": round(min(xs) * 1e3, 2), "max_ms": round(max(xs) * 1e3, 2)}  # fmt: skip


def bench(runner: Runner, cluster: LocalCluster, runs: int) -> dict[str, Any]:
    shoal_cmd, _ = shoal_command()
    runner.warm(shoal_cmd)
    walls: dict[str, dict[str, list[float]]] = {m: {r: [] for r in ROWS} for m in MODES}
    cpus: dict[str, dict[str, list[float]]] = {m: {r: [] for r in ROWS} for m in MODES}
    split: dict[str, dict[str, list[float]]] = {m: {p: [] for p in PIECES} for m in MODES}
    pids = [c.proc.pid for c in cluster.sup.children if c.proc is not None]
    own0, cl0, busy0 = time.process_time(), sum(cpu_of(p) for p in pids), machine_busy()
    kids0, t0 = runner.cpu_s, time.perf_counter()
    for r in range(runs):
        for mode in MODES:
            cmds = commands(shoal_cmd, f"bench-cli/{mode}/{r}")
            for what in ROWS:
                wall, cpu, _ = runner.run(mode, what, cmds[what])
                walls[mode][what].append(wall)
                cpus[mode][what].append(cpu)
            _, _, out = runner.run(mode, "split", cmds["split"])
            with contextlib.suppress(ValueError):
                for k, v in json.loads(out).items():
                    split[mode][k].append(v)
        if (r + 1) % max(1, runs // 5) == 0:
            log(f"  round {r + 1}/{runs}")
    elapsed = time.perf_counter() - t0
    busy = sum(machine_busy()[:2]) - sum(busy0[:2])
    cluster_s = sum(cpu_of(p) for p in pids) - cl0
    own_s, kids_s = time.process_time() - own0, runner.cpu_s - kids0
    fig: dict[str, Any] = {"modes": {}}
    for mode in MODES:
        floor = median(walls[mode]["pass"])
        rows = {}
        for what in ROWS:
            xs = walls[mode][what]
            row: dict[str, Any] = {"command": LABEL[what], **stats(xs),
                                   "cpu_median_ms": round(median(cpus[mode][what]) * 1e3, 2),
                                   "over_pass": round(median(xs) / floor, 2),
                                   "wall_ms_each": [round(x * 1e3, 1) for x in xs]}  # fmt: skip
            if what in GOAL_ROWS:
                row["goal_s"] = GOAL_S
                row["met"] = median(xs) <= GOAL_S
                row["p90_within_goal"] = stats(xs)["p90_ms"] <= GOAL_S * 1e3
            rows[what] = row
        pieces = {p: round(median(v) * 1e3, 2) for p, v in split[mode].items() if v}
        fig["modes"][mode] = {
            "what": MODES[mode][0],
            "detail": MODES[mode][1],
            "rows": rows,
            "split_median_ms": pieces,
        }
    fig["cpu"] = {
        "elapsed_s": round(elapsed, 2),
        "commands_cores": round(kids_s / elapsed, 3),
        "cluster_cores": round(cluster_s / elapsed, 3),
        "bench_process_cores": round(own_s / elapsed, 3),
        "machine_busy_cores": round(busy / elapsed, 3),
        "other_cores": round(max(0.0, busy - kids_s - cluster_s - own_s) / elapsed, 3),
    }
    return fig


def start_cluster(work: Path) -> tuple[LocalCluster, Path]:
    """`shoal up`'s cluster (master, daemons, TLS) on free ports; its client config."""
    cluster = LocalCluster(work / "cluster", DAEMONS, DAEMON_SIZE, base_port=0, http_port=-1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # (it prints the admin key)
            cfg = cluster.start()
        cluster.wait_ready(cfg)  # (makes the pool `default`)
    except BaseException:
        cluster.stop()
        raise
    return cluster, cluster.config_path


def table(fig: dict[str, Any]) -> str:
    out = []
    for m in fig["modes"].values():
        head = (f"{m['what']:<50}{'median':>9}{'p90':>9}{'cpu':>8}{'/ pass':>8}"
                f"  <= {GOAL_S:g} s")  # fmt: skip
        out += [head, "-" * len(head)]
        for r in m["rows"].values():
            goal = ""
            if "met" in r:
                goal = ("met" if r["met"] else "MISSED") + ("" if r["p90_within_goal"]
                                                            else " (p90 over)")  # fmt: skip
            out.append(f"  {r['command']:<48}{r['median_ms']:>6.0f} ms{r['p90_ms']:>6.0f} ms"
                       f"{r['cpu_median_ms']:>5.0f} ms{r['over_pass']:>7.1f}x  {goal}")  # fmt: skip
        s = m["split_median_ms"]
        if s:
            out.append("  where it goes, in-process (medians):")
            out += [f"    {PIECE_WHAT[p]:<66}{s[p]:>6.1f} ms" for p in PIECES if p in s]
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = arguments("bench.cli", __doc__, "8 rounds, not 30")
    ap.add_argument("--runs", type=int, help="rounds (each command once per mode in each)")
    args = ap.parse_args(argv)
    runs = args.runs or (8 if args.quick else 30)
    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cli-", dir=args.dir))
    started = datetime.now()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    cluster: LocalCluster | None = None
    codes: dict[str, int | None] = {}
    runner: Runner | None = None
    try:
        info = machine_info(work)
        log(f"starting a local cluster ({DAEMONS} daemons, --size {DAEMON_SIZE}) in {work}")
        cluster, config = start_cluster(work)
        runner = Runner(work, config)
        log(f"{runs} rounds: {', '.join(ROWS)} and the in-process split, in each of "
            f"{len(MODES)} modes")  # fmt: skip
        fig = bench(runner, cluster, runs)
    finally:
        if cluster is not None:
            cluster.stop()
            codes = {c.name: c.proc.returncode for c in cluster.sup.children if c.proc}
        shutil.rmtree(work, ignore_errors=True)
    assert runner is not None
    cached = fig["modes"]["cached"]["rows"]
    result = {
        "date": started.isoformat(timespec="seconds"),
        "machine": info,
        "git": git(),
        "command": "python -m bench.cli" + (" --quick" if args.quick else ""),
        "parameters": {
            "runs": runs, "object_bytes": len(TEXT), "pool": POOL, "shoal": shoal_command()[1],
            "python": sys.version.split()[0],
            "cluster": f"shoal.up.LocalCluster: master + {DAEMONS} daemons (--size "
                       f"{DAEMON_SIZE}), TLS to the master and between daemons; pool default",
            "order": "each round: for each mode, pass, import, write, read, stat, split",
            "modes": {k: v[1] for k, v in MODES.items()}, "bench_dir": str(work),
        },
        "figures": fig,
        "goal": f"a small shoal write, read and stat in <= {GOAL_S} s wall (median), bytecode "
                "cached",
        "goals_met": all(cached[w]["met"] for w in GOAL_ROWS),
        "failures": runner.failures,
        "exit_codes": codes,
        "wall_s": round(time.perf_counter() - t0, 1),
        "loadavg_1_5_15": {"start": load0, "end": os.getloadavg()},
        "notes": [SPLIT_NOTE, NOISE_NOTE],
    }  # fmt: skip
    print(table(fig))
    c = fig["cpu"]
    print(f"CPU over the runs, in cores: the commands {c['commands_cores']:.2f}, the cluster "
          f"{c['cluster_cores']:.2f}, this process {c['bench_process_cores']:.2f}, others "
          f"{c['other_cores']:.2f}{' (disturbed)' if c['other_cores'] > 0.2 else ''}")  # fmt: skip
    print(f"* {SPLIT_NOTE}")
    print(f"goal (write, read, stat <= {GOAL_S:g} s, median, bytecode cached): "
          f"{'met' if result['goals_met'] else 'MISSED'}")  # fmt: skip
    if runner.failures:
        print(f"FAILURES ({len(runner.failures)}): " + "; ".join(runner.failures[:5]))
    print(f"wall {result['wall_s']} s; load average at start {load0[0]:.2f}, end "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    write_result("cli", result)
    return 1 if runner.failures else 0


if __name__ == "__main__":
    sys.exit(main())
