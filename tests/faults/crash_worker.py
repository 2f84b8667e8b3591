"""Child process of test_engine_crash: a random multi-threaded workload, run until killed.

Usage: python crash_worker.py CONFIG.json

CONFIG holds the device path, the log path, the seed, and for every thread the names it owns
(each with a kind, "small" or "large") and the state the parent verified for each name (its
expected starting point). Each thread loops over random operations on its own names and, for
every operation, appends to the log (O_APPEND, one os.write per line, lines < 4 KiB):

    B <name> <state> <op>     before the call: the state the object will have if it succeeds
    A <name> <state> <op>     after the call returned (acknowledged)
    F <name> <error> <op>     the call failed cleanly (NoSpace): the state did not change
    E - - <message>           an unexpected error: the worker exits with status 2

<state> is "absent" or "<blake3 hex of the full content>:<ref ids as hex, comma-joined, or ->".
The worker tracks each object's full expected content itself (write_at patches included), so
a state names the exact bytes that must be on disk. It prints "ready" on stdout when the
threads are running, and exits 0 on its own only after `max_seconds`.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import traceback

import blake3

from shoal.engine import ObjectStore
from shoal.errors import NoSpace, NotFound

KIB, MIB = 1 << 10, 1 << 20
SMALL_MAX = 16 * KIB  # a small object never grows beyond this
LARGE_MAX = 8 * MIB
FAILED = object()  # what run_op returns when the call raised NoSpace


def state_of(content: bytes | None, refs: tuple[bytes, ...]) -> str:
    if content is None:
        return "absent"
    return blake3.blake3(content).hexdigest() + ":" + (",".join(r.hex() for r in refs) or "-")


class Log:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def line(self, *fields: str) -> None:
        raw = (" ".join(fields) + "\n").encode()
        assert len(raw) < 4096, raw[:200]
        os.write(self.fd, raw)


class Worker:
    def __init__(self, store: ObjectStore, log: Log, seed: int, index: int, names: dict) -> None:
        self.store = store
        self.log = log
        self.rng = random.Random(f"{seed}:{index}")
        self.seed = seed
        self.index = index
        self.kinds: dict[str, str] = {n: v["kind"] for n, v in names.items()}
        self.budget = sum(LARGE_MAX if k == "large" else SMALL_MAX for k in self.kinds.values())
        self.budget = min(self.budget, 12 * MIB)
        self.content: dict[str, bytes | None] = {}
        self.refs: dict[str, tuple[bytes, ...]] = {}
        self.counter = 0

    # -- model ---------------------------------------------------------------------------

    def load(self) -> None:
        """Read the starting state (full contents and references) from the store."""
        for name in self.kinds:
            try:
                rec = self.store.stat(name)
                data: bytes | None = bytes(self.store.get(name))
                refs = rec.refs
            except NotFound:
                data, refs = None, ()
            self.content[name], self.refs[name] = data, refs

    def random_bytes(self, n: int) -> bytes:
        self.counter += 1
        key = f"{self.seed}:{self.index}:{self.counter}".encode()
        return bytes(blake3.blake3(key).digest(length=n)) if n else b""

    def new_ref(self) -> bytes:
        return self.random_bytes(16)

    def used_by_others(self, name: str) -> int:
        return sum(len(c) for n, c in self.content.items() if c is not None and n != name)

    # -- one operation ---------------------------------------------------------------------

    def step(self) -> None:
        rng = self.rng
        name = rng.choice(list(self.kinds))
        cur = self.content[name]
        if cur is None:
            op = rng.choices(["put", "write_at"], [0.7, 0.3])[0]
        else:
            ops = ["put", "write_at", "delete", "add_refs", "remove_refs"]
            op = rng.choices(ops, [0.3, 0.3, 0.12, 0.14, 0.14])[0]
        getattr(self, "op_" + op)(name)

    def run_op(self, name: str, content: bytes | None, refs: tuple[bytes, ...], desc: str, call):
        state = state_of(content, refs)
        self.log.line("B", name, state, desc)
        try:
            result = call()
        except NoSpace:
            self.log.line("F", name, "NoSpace", desc)
            return FAILED
        self.log.line("A", name, state, desc)
        self.content[name], self.refs[name] = content, refs
        return result

    def large_size(self, name: str) -> int:
        room = min(LARGE_MAX, self.budget - self.used_by_others(name))
        size = int(MIB * 2 ** self.rng.uniform(0, 3)) + self.rng.randrange(4096)
        return max(0, min(size, room))

    def op_put(self, name: str) -> None:
        rng = self.rng
        large = self.kinds[name] == "large"
        if large:
            size = self.large_size(name)
        else:
            size = rng.choice([0, 1, 100, 4095, 4096, 4097, rng.randrange(1, 4096)])
            size = rng.choice([size, rng.randrange(4096, 3 * 4096 + 7)])
        data = self.random_bytes(size)
        refs = tuple(self.new_ref() for _ in range(rng.choice([0, 0, 0, 1, 2])))
        if large and rng.random() < 0.5:
            known = rng.random() < 0.4
            chunks = []
            pos = 0
            while pos < size:
                n = rng.choice([1, 7, 4095, 4097, 65537, 131071, rng.randrange(1, 1 << 19)])
                chunks.append((pos, min(size, pos + n)))
                pos += n
            desc = f"writer(size={size},known={int(known)},chunks={len(chunks)},refs={len(refs)})"

            def call() -> None:
                with self.store.writer(name=name, size=size if known else None, refs=refs) as w:
                    for a, b in chunks:
                        w.write(memoryview(data)[a:b])
                    w.commit()

        else:
            desc = f"put(size={size},refs={len(refs)})"

            def call() -> None:
                self.store.put(data, name=name, refs=refs)

        self.run_op(name, data, refs, desc, call)

    def op_write_at(self, name: str) -> None:
        rng = self.rng
        old = self.content[name] or b""
        if self.kinds[name] == "large":
            cap = min(LARGE_MAX, self.budget - self.used_by_others(name))
            length = rng.choice([1, 4096, 8192, rng.randrange(1, 256 * KIB)])
            offset = rng.randrange(0, len(old) + 300 * KIB)
        else:
            cap = SMALL_MAX
            length = rng.choice([1, 4096, rng.randrange(1, 6000)])
            offset = rng.randrange(0, len(old) + 5000)
        if rng.random() < 0.3:
            offset -= offset % 4096  # block-aligned start
        if offset + length > cap:
            offset = max(0, rng.randrange(0, max(1, cap - length)))
            length = min(length, cap - offset)
        if length <= 0:
            return
        patch = self.random_bytes(length)
        new = bytearray(old)
        if offset > len(new):
            new.extend(bytes(offset - len(new)))
        new[offset : offset + length] = patch
        refs = self.refs[name] if self.content[name] is not None else ()
        desc = f"write_at(offset={offset},len={length},old_size={len(old)})"
        self.run_op(name, bytes(new), refs, desc, lambda: self.store.write_at(name, offset, patch))

    def op_delete(self, name: str) -> None:
        how = self.rng.choice(["plain", "zero", "discard"])
        kw = {} if how == "plain" else {how: True}
        self.run_op(name, None, (), f"delete({how})", lambda: self.store.delete(name, **kw))

    def op_add_refs(self, name: str) -> None:
        old = self.refs[name]
        add = [self.new_ref() for _ in range(self.rng.choice([1, 2]))]
        if old and self.rng.random() < 0.3:
            add.append(self.rng.choice(old))  # already there: no duplicate
        new = old + tuple(r for r in dict.fromkeys(add) if r not in old)
        desc = f"add_refs(n={len(add)},had={len(old)})"
        got = self.run_op(
            name, self.content[name], new, desc, lambda: self.store.add_refs(name, add)
        )
        if got is not FAILED and got != new:
            raise AssertionError(f"add_refs({name}) returned {got}, expected {new}")

    def op_remove_refs(self, name: str) -> None:
        rng = self.rng
        old = self.refs[name]
        remove = rng.sample(old, rng.randint(1, len(old))) if old else []
        if not remove or rng.random() < 0.2:
            remove.append(self.new_ref())  # not a reference of this object
        left = tuple(r for r in old if r not in remove)
        gone = bool(old) and not left
        content = None if gone else self.content[name]
        desc = f"remove_refs(n={len(remove)},had={len(old)},deletes={int(gone)})"
        got = self.run_op(
            name, content, () if gone else left, desc, lambda: self.store.remove_refs(name, remove)
        )
        if got is not FAILED and got != left:
            raise AssertionError(f"remove_refs({name}) returned {got}, expected {left}")

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self.step()
        except BaseException:
            msg = traceback.format_exc().replace("\n", " | ")[-3000:]
            self.log.line("E", "-", "-", f"thread {self.index}: {msg}")
            os._exit(2)


def main() -> int:
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    log = Log(cfg["log"])
    store = ObjectStore.open(cfg["device"])
    workers = [Worker(store, log, cfg["seed"], i, names) for i, names in enumerate(cfg["threads"])]
    mismatches = []
    for w, names in zip(workers, cfg["threads"], strict=True):
        w.load()
        for name, info in names.items():
            have = state_of(w.content[name], w.refs[name])
            if have != info["state"]:
                mismatches.append(f"{name}: store has {have}, parent verified {info['state']}")
    if mismatches:
        print("starting state differs from the verified one:", *mismatches, sep="\n  ",
              file=sys.stderr)  # fmt: skip
        return 3
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    print("ready", flush=True)
    stop.wait(cfg["max_seconds"])
    stop.set()
    for t in threads:
        t.join()
    store.close()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
