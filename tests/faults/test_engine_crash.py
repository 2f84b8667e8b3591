"""Fault tests of the single-disk engine (ObjectStore).

A. Crash consistency: a child process (crash_worker.py) runs a random multi-threaded workload
   on a device file and is killed with SIGKILL at a random moment; the store is reopened and
   every object must be in its last acknowledged state or in the state of the operation in
   flight at the kill (whole-content BLAKE3, so half-old/half-new fails), and `check` must
   pass. Rounds accumulate on the same device. 4 tests x 13 kills = 52 kills.
B. Corruption: flipped bytes in an object's data blocks give IntegrityError (never the bytes),
   `check` and `shoal disk check` name the object; a damaged superblock is refused.
C. No space: a write that does not fit raises NoSpace and takes, leaks and changes nothing.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import pytest

from shoal.engine import ObjectStore, check
from shoal.engine.device import _SB, _SB_CRC
from shoal.engine.manifest import HOLE
from shoal.errors import FormatError, IntegrityError, NoSpace, NotFound

KIB, MIB = 1 << 10, 1 << 20
WORKER = Path(__file__).with_name("crash_worker.py")

DEVICE_SIZE = 128 * MIB
THREADS = 4
SMALL_PER_THREAD, LARGE_PER_THREAD = 4, 2
KILLS_PER_TEST = 13
CRASH_SEEDS = [11, 22, 33, 44]  # 4 x 13 = 52 kills in all
KILL_DELAY = (0.05, 0.4)  # seconds after the worker says it is running
READY_TIMEOUT = 60.0
SEED = int(os.environ.get("SHOAL_CRASH_SEED", "0"))  # to vary or reproduce a run


# -- helpers ----------------------------------------------------------------------------------


def state_of(store: ObjectStore, name: str) -> str:
    """The object's state as the worker writes it: BLAKE3 of the full content and its refs."""
    try:
        rec = store.stat(name)
        data = store.get(name)
    except NotFound:
        return "absent"
    assert len(data) == rec.size, f"{name}: get returned {len(data)} bytes, size is {rec.size}"
    refs = ",".join(r.hex() for r in rec.refs) or "-"
    return f"{blake3.blake3(data).hexdigest()}:{refs}"


def all_names(store: ObjectStore, namespace: str = "default") -> list[str]:
    out: list[str] = []
    while True:
        page = store.list(namespace, start_after=out[-1] if out else "", limit=1000)
        if not page:
            return out
        out += [r.name for r in page]


def short(state: str) -> str:
    """A state for a message: the hash's first 16 digits and each ref id's first 8."""
    if state == "absent":
        return state
    digest, refs = state.split(":")
    refs = "" if refs == "-" else ",".join(r[:8] for r in refs.split(","))
    return f"blake3 {digest[:16]}.. refs [{refs}]"


def op_kind(op: str) -> str:
    """The kind of a logged op, for the coverage count: "delete(zero)", "writer(known=0)"..."""
    call, _, args = op.partition("(")
    if call in ("delete", "put", "add_refs"):
        return op if call == "delete" else call
    if call == "writer":
        return f"writer(known={args.split('known=')[1][0]})"
    if call == "remove_refs":
        return f"remove_refs(deletes={args.split('deletes=')[1][0]})"
    if call == "write_at":
        return "write_at(grows)" if grows(args) else "write_at"
    return call


def grows(args: str) -> bool:
    kv = dict(x.split("=") for x in args.rstrip(")").split(","))
    return int(kv["offset"]) + int(kv["len"]) > int(kv["old_size"])


EXPECTED_KINDS = {
    "put", "writer(known=0)", "writer(known=1)", "write_at", "write_at(grows)",
    "delete(plain)", "delete(zero)", "delete(discard)", "add_refs",
    "remove_refs(deletes=0)", "remove_refs(deletes=1)",
}  # fmt: skip


@dataclass
class NameLog:
    """What the log says about one name: its last acknowledged state and the op in flight."""

    acked: str
    acked_by: str = "baseline (verified after the previous round)"
    inflight: str | None = None
    inflight_op: str = ""
    lines: list[str] = field(default_factory=list)

    def candidates(self) -> dict[str, str]:
        out = {self.acked: f"last acked: {self.acked_by}"}
        if self.inflight is not None:
            out.setdefault(self.inflight, f"in flight at the kill: {self.inflight_op}")
        return out


@dataclass
class ParsedLog:
    names: dict[str, NameLog]
    acks: int = 0
    fails: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse_log(path: Path, baseline: dict[str, str]) -> ParsedLog:
    parsed = ParsedLog({n: NameLog(s) for n, s in baseline.items()})
    raw = path.read_bytes() if path.exists() else b""
    lines = raw.split(b"\n")
    # A line without its newline was cut by the kill: a cut "B" was not begun yet (the call
    # comes after the write) and a cut "A" leaves the op in flight, so dropping it is safe.
    for no, line in enumerate(lines[:-1], 1):
        kind, name, state, op = line.decode().split(" ", 3)
        if kind == "E":
            parsed.errors.append(op)
            continue
        n = parsed.names.get(name)
        if n is None:
            parsed.problems.append(f"log line {no}: unknown name {name!r}")
            continue
        n.lines.append(f"{no}: {kind} {short(state)} {op}")
        if kind == "B":
            if n.inflight is not None:
                parsed.problems.append(f"log line {no}: {name} began twice")
            n.inflight, n.inflight_op = state, f"{op} (line {no})"
        elif kind == "A":
            if n.inflight != state:
                parsed.problems.append(f"log line {no}: {name} acked a state it did not begin")
            n.acked, n.acked_by, n.inflight = state, f"{op} (line {no})", None
            parsed.acks += 1
            parsed.kinds[op_kind(op)] += 1
        elif kind == "F":
            n.inflight = None
            parsed.fails += 1
        else:
            parsed.problems.append(f"log line {no}: bad line {line!r}")
    return parsed


def wait_ready(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for the worker's "ready" line on its stdout; False if it exited or timed out."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return False
        chunk = os.read(fd, 4096)
        if not chunk:
            return False
        buf += chunk
    return buf.startswith(b"ready")


def thread_names() -> list[dict[str, str]]:
    return [
        {f"t{t}-s{i}": "small" for i in range(SMALL_PER_THREAD)}
        | {f"t{t}-L{i}": "large" for i in range(LARGE_PER_THREAD)}
        for t in range(THREADS)
    ]


@dataclass
class RoundResult:
    killed_mid_workload: bool
    acks: int
    inflight: int
    inflight_new: int
    kinds: Counter[str]
    baseline: dict[str, str]


def crash_round(
    tmp: Path, device: str, baseline: dict[str, str], seed: int, rnd: int
) -> RoundResult:
    """One round: start a worker, kill it, verify every name, check, return the new baseline."""
    where = f"round {rnd}, seed {seed}, device {device}"
    log, cfg_path, err_path = (tmp / f"round{rnd:02d}.{x}" for x in ("log", "json", "stderr"))
    names = thread_names()
    cfg = {
        "device": device,
        "log": str(log),
        "seed": seed,
        "max_seconds": 30,
        "threads": [
            {n: {"kind": k, "state": baseline[n]} for n, k in group.items()} for group in names
        ],
    }
    cfg_path.write_text(json.dumps(cfg))
    delay = random.Random(seed).uniform(*KILL_DELAY)
    cmd = [sys.executable, str(WORKER), str(cfg_path)]
    with (
        open(err_path, "wb") as err,
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err) as proc,
    ):
        try:
            ready = wait_ready(proc, READY_TIMEOUT)
            if ready:
                time.sleep(delay)  # the random moment of the crash: the point of the test
            exited_on_its_own = proc.poll() is not None
            proc.send_signal(signal.SIGKILL)
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    parsed = parse_log(log, baseline)
    stderr = err_path.read_text(errors="replace")
    assert not parsed.errors, f"{where}: the worker failed:\n" + "\n".join(parsed.errors)
    assert ready, f"{where}: the worker never became ready (exit {rc}); stderr:\n{stderr}"
    assert not exited_on_its_own and rc == -signal.SIGKILL, (
        f"{where}: worker exited with {rc} before the kill; stderr:\n{stderr}"
    )
    assert not parsed.problems, f"{where}: bad log:\n" + "\n".join(parsed.problems)

    failures: list[str] = []
    actual: dict[str, str] = {}
    inflight = inflight_new = 0
    with ObjectStore.open(device) as store:
        extra = sorted(set(all_names(store)) - set(baseline))
        if extra:
            failures.append(f"objects that no worker wrote: {extra}")
        for name, nl in parsed.names.items():
            try:
                actual[name] = got = state_of(store, name)
            except Exception as exc:
                failures.append(f"{name}: reading it raised {exc!r}")
                continue
            cands = nl.candidates()
            if got not in cands:
                shown = "\n".join(f"      {short(s)}  <- {how}" for s, how in cands.items())
                history = "\n".join("      " + x for x in nl.lines[-6:])
                size = store.stat(name).size if got != "absent" else 0
                failures.append(
                    f"{name}: actual state {short(got)} ({size} bytes) is none of the "
                    f"candidates:\n{shown}\n"
                    f"    its last log lines:\n{history}"
                )
            if nl.inflight is not None:
                inflight += 1
                inflight_new += got == nl.inflight != nl.acked
        report = check(store)
        if not report.ok:
            failures.append("check failed:\n      " + "\n      ".join(report.problems))
    assert not failures, (
        f"{where} ({parsed.acks} acks in this round; worker log {log}):\n  " + "\n  ".join(failures)
    )
    return RoundResult(
        killed_mid_workload=parsed.acks > 0,
        acks=parsed.acks,
        inflight=inflight,
        inflight_new=inflight_new,
        kinds=parsed.kinds,
        baseline=actual,
    )


# -- A. crash consistency under SIGKILL -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("base_seed", CRASH_SEEDS)
def test_sigkill_rounds_keep_every_object_whole(tmp_path: Path, base_seed: int) -> None:
    device = str(tmp_path / "disk.img")
    ObjectStore.format(device, size=DEVICE_SIZE).close()
    baseline = {n: "absent" for group in thread_names() for n in group}
    kills = acks = inflight = inflight_new = 0
    kinds: Counter[str] = Counter()
    rnd = 0
    while kills < KILLS_PER_TEST:
        assert rnd < KILLS_PER_TEST + 5, f"only {kills} kills landed mid-workload in {rnd} rounds"
        seed = SEED * 1_000_000 + base_seed * 1000 + rnd
        res = crash_round(tmp_path, device, baseline, seed, rnd)
        baseline = res.baseline
        kills += res.killed_mid_workload
        acks += res.acks
        inflight += res.inflight
        inflight_new += res.inflight_new
        kinds += res.kinds
        rnd += 1
    assert kills >= KILLS_PER_TEST
    assert set(kinds) >= EXPECTED_KINDS, f"ops never acked: {EXPECTED_KINDS - set(kinds)}"
    present = sum(s != "absent" for s in baseline.values())
    print(
        f"seed {base_seed}: {kills} kills mid-workload in {rnd} rounds, {acks} acked ops, "
        f"{inflight} ops in flight at a kill ({inflight_new} found done), "
        f"{present} objects at the end; acked: {dict(sorted(kinds.items()))}"
    )


# -- B. corruption detection ------------------------------------------------------------------


def physical_block(store: ObjectStore, name: str, logical: int) -> int:
    pos = 0
    for start, count in store.stat(name).manifest.extents:
        if pos <= logical < pos + count:
            assert start != HOLE, f"{name}: logical block {logical} is a hole"
            return start + logical - pos
        pos += count
    raise AssertionError(f"{name} has no logical block {logical}")


def flip(path: str, offset: int, mask: int = 0xFF) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A closed 32 MiB store holding small and large objects (one grown by write_at)."""
    device = str(tmp_path / "disk.img")
    rng = random.Random(7)
    objects = {
        "small": rng.randbytes(1000),
        "small-2": rng.randbytes(3 * KIB + 5),
        "large": rng.randbytes(3 * MIB + 123),
        "large-2": rng.randbytes(MIB),
    }
    with ObjectStore.format(device, size=32 * MIB) as store:
        for name, data in objects.items():
            store.put(data, name=name)
        patch = rng.randbytes(10_000)
        store.write_at("large-2", MIB + 5000, patch)
        objects["large-2"] += bytes(5000) + patch
    yield device, objects


@pytest.mark.parametrize(("victim", "logical"), [("small", 0), ("large", 5), ("large-2", 257)])
def test_flipped_data_byte_is_detected(
    filled: tuple[str, dict[str, bytes]], victim: str, logical: int
) -> None:
    device, objects = filled
    with ObjectStore.open(device) as store:
        bs = store.block_size
        block = physical_block(store, victim, logical)
    flip(device, block * bs + 123)

    with ObjectStore.open(device) as store:
        with pytest.raises(IntegrityError, match=f"default/{victim}"):
            store.get(victim)
        with pytest.raises(IntegrityError):
            store.get(victim, offset=logical * bs + 100, length=50)
        with pytest.raises(IntegrityError):
            for _ in store.iter_read(victim):
                pass
        # Ranges that avoid the damaged block still read, and match.
        data = objects[victim]
        if logical > 0:
            assert store.get(victim, length=logical * bs) == data[: logical * bs]
        after = (logical + 1) * bs
        if after < len(data):
            assert store.get(victim, offset=after) == data[after:]
        for name, want in objects.items():
            if name != victim:
                assert store.get(name) == want, name
        report = check(store)
    assert not report.ok
    assert any(f"default/{victim}" in p for p in report.problems), report.problems
    assert all(f"default/{victim}" in p for p in report.problems), report.problems

    cli = [sys.executable, "-m", "shoal.cli", "disk", "check", device]
    res = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0, res.stdout
    assert f"default/{victim}" in res.stdout, res.stdout + res.stderr


def test_clean_store_checks_ok_from_cli(filled: tuple[str, dict[str, bytes]]) -> None:
    device, _ = filled
    cli = [sys.executable, "-m", "shoal.cli", "disk", "check", device]
    res = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ok" in res.stdout


SUPERBLOCK_BYTES = [0, 7, 8, 12, 16, 23, 24, 40, 47, _SB.size, _SB.size + _SB_CRC.size - 1]


@pytest.mark.parametrize("offset", SUPERBLOCK_BYTES)
def test_damaged_superblock_is_refused(filled: tuple[str, dict[str, bytes]], offset: int) -> None:
    device, _ = filled
    flip(device, offset, 0x01)
    with pytest.raises(FormatError) as exc:
        ObjectStore.open(device).close()
    msg = str(exc.value)
    assert device in msg
    # a damaged magic is told apart from a foreign device: the rest still checksums
    assert "superblock is damaged" in msg
    cli = [sys.executable, "-m", "shoal.cli", "disk", "check", device]
    res = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.startswith("shoal: error:") and device in res.stderr, res.stderr


# -- C. no space ------------------------------------------------------------------------------


def test_no_space_takes_nothing_and_recovers(tmp_path: Path) -> None:
    device = str(tmp_path / "small.img")
    rng = random.Random(3)
    kept: dict[str, bytes] = {}
    with ObjectStore.format(device, size=2 * MIB) as store:
        bs = store.block_size
        # Fill with 64 KiB objects until a put does not fit.
        for i in range(1000):
            data = rng.randbytes(64 * KIB - rng.randrange(3))
            before = store.free_blocks
            try:
                store.put(data, name=f"obj{i}")
            except NoSpace:
                assert store.free_blocks == before
                break
            kept[f"obj{i}"] = data
        else:
            pytest.fail("the device never filled up")
        failed = f"obj{i}"
        assert store.free_blocks < 16
        with pytest.raises(NotFound):
            store.stat(failed)

        # Exactly what is left fits; then not one byte more (but an empty object does).
        free = store.free_blocks
        tail = rng.randbytes(free * bs)
        store.put(tail, name="tail")
        kept["tail"] = tail
        assert store.free_blocks == 0
        with pytest.raises(NoSpace):
            store.put(b"x", name="one-byte")
        store.put(b"", name="empty")
        kept["empty"] = b""

        # Nothing that fails may take or leak a block, or change what it was aimed at.
        with pytest.raises(NoSpace):
            store.put(rng.randbytes(100 * KIB), name="obj0")  # an overwrite
        with pytest.raises(NoSpace):
            store.write_at("obj1", 10, b"patch")  # copy-on-write needs a fresh block
        with pytest.raises(NoSpace):
            store.write_at("obj2", len(kept["obj2"]) + 5 * bs, b"growth")
        with pytest.raises(NoSpace), store.writer(name="streamed") as w:
            for _ in range(100):
                w.write(rng.randbytes(8191))
            w.commit()
        assert store.free_blocks == 0
        for name in ("one-byte", "streamed"):
            with pytest.raises(NotFound):
                store.stat(name)
        for name, data in kept.items():
            assert store.get(name) == data, name
        report = check(store)
        assert report.ok, report.problems
        assert report.free_blocks == 0

        # Free something: the put that failed now succeeds.
        store.delete("obj3", zero=True)
        del kept["obj3"]
        data = rng.randbytes(40 * KIB)
        store.put(data, name=failed)
        kept[failed] = data
        free_after = store.free_blocks

    with ObjectStore.open(device) as store:
        assert store.free_blocks == free_after  # the rebuilt free list agrees: nothing leaked
        assert sorted(all_names(store)) == sorted(kept)
        for name, data in kept.items():
            assert store.get(name) == data, name
        assert check(store).ok
