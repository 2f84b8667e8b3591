"""Pins (epoch-based reclamation): retired blocks are freed once every reader pinned before
the retirement has let go, and never held back by readers that came later."""

from __future__ import annotations

import threading
import time

import pytest

from shoal.engine.freelist import Extent
from shoal.engine.pins import Pins

X: list[Extent] = [(10, 3)]
Y: list[Extent] = [(20, 2), (30, 1)]
Z: list[Extent] = [(40, 5)]


class Recorder:
    """The `free` callback: remembers every call, in order."""

    def __init__(self) -> None:
        self.calls: list[list[Extent]] = []

    def __call__(self, extents: list[Extent]) -> None:
        self.calls.append(list(extents))


@pytest.fixture
def freed() -> Recorder:
    return Recorder()


@pytest.fixture
def pins(freed: Recorder) -> Pins:
    return Pins(freed)


def test_retire_with_no_pin_frees_at_once(pins: Pins, freed: Recorder) -> None:
    pins.retire(X)
    assert freed.calls == [X]
    assert pins.retired_blocks == 0
    pins.retire([])  # nothing to free: no call at all
    assert freed.calls == [X]


def test_retire_while_pinned_waits_for_that_pin(pins: Pins, freed: Recorder) -> None:
    with pins.held():
        pins.retire(X)
        assert freed.calls == [], "freed under a reader that may still be sending them"
        assert pins.retired_blocks == 3
    assert freed.calls == [X]
    assert pins.retired_blocks == 0


def test_a_later_pin_does_not_hold_back_an_earlier_retirement(pins: Pins, freed: Recorder) -> None:
    old = pins.held()
    old.__enter__()
    pins.retire(X)
    with pins.held():  # pinned after X was retired: it cannot have seen X's blocks
        assert freed.calls == []
        old.__exit__(None, None, None)
        assert freed.calls == [X], "the newer reader must not keep X from being freed"
        pins.retire(Y)  # ... but what is retired while it is pinned waits for it
        assert freed.calls == [X]
        assert pins.retired_blocks == 3
    assert freed.calls == [X, Y]


def test_mixed_retirements_and_pins(pins: Pins, freed: Recorder) -> None:
    a, b, c = pins.held(), pins.held(), pins.held()
    a.__enter__()  # epoch 0
    pins.retire(X)  # held by a
    b.__enter__()  # after X
    pins.retire(Y)  # held by a and b
    c.__enter__()  # after Y
    assert pins.retired_blocks == 6

    b.__exit__(None, None, None)
    assert freed.calls == [], "a, pinned before both, still holds X and Y"
    a.__exit__(None, None, None)
    assert freed.calls == [X, Y], "only c is left, and it came after both"

    pins.retire(Z)
    assert freed.calls == [X, Y]
    assert pins.retired_blocks == 5
    c.__exit__(None, None, None)
    assert freed.calls == [X, Y, Z]
    assert pins.retired_blocks == 0

    pins.retire(X)  # nobody pinned any more: straight through
    assert freed.calls == [X, Y, Z, X]


def test_oldest_pin_frees_only_what_it_alone_held(pins: Pins, freed: Recorder) -> None:
    a, b = pins.held(), pins.held()
    a.__enter__()
    pins.retire(X)
    b.__enter__()
    pins.retire(Y)
    a.__exit__(None, None, None)
    assert freed.calls == [X], "Y was retired while b was pinned: it waits for b"
    assert pins.retired_blocks == 3
    b.__exit__(None, None, None)
    assert freed.calls == [X, Y]


def test_two_readers_in_the_same_epoch(pins: Pins, freed: Recorder) -> None:
    a, b = pins.held(), pins.held()
    a.__enter__()
    b.__enter__()
    pins.retire(X)
    a.__exit__(None, None, None)
    assert freed.calls == [], "b was pinned before X was retired too"
    b.__exit__(None, None, None)
    assert freed.calls == [X]


def test_an_exception_inside_held_still_unpins_and_frees(pins: Pins, freed: Recorder) -> None:
    with pytest.raises(RuntimeError, match="boom"), pins.held():
        pins.retire(X)
        raise RuntimeError("boom")
    assert freed.calls == [X]
    assert pins.retired_blocks == 0
    pins.retire(Y)  # no pin was left behind
    assert freed.calls == [X, Y]
    pins.wait_readers()  # and nobody to wait for: returns at once


def _epoch(pins: Pins) -> int:
    return pins._epoch  # the one internal read: to know wait_readers has started


def _wait_for(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.001)


def test_wait_readers_waits_for_earlier_readers_only(pins: Pins, freed: Recorder) -> None:
    done = threading.Event()
    started = _epoch(pins)

    def waiter() -> None:
        pins.wait_readers()
        done.set()

    early = pins.held()
    early.__enter__()
    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    try:
        _wait_for(lambda: _epoch(pins) > started)  # the waiter is in wait_readers now
        late = pins.held()
        late.__enter__()  # pinned after wait_readers began: it must not be waited for
        try:
            assert not done.wait(0.3), "wait_readers returned while an earlier reader is pinned"
            early.__exit__(None, None, None)
            assert done.wait(5), "wait_readers still waits, for a reader that came after it"
        finally:
            late.__exit__(None, None, None)
    finally:
        if not done.is_set():
            early.__exit__(None, None, None)
        t.join(5)
    assert not t.is_alive()
    assert freed.calls == []  # waiting frees nothing by itself


def test_wait_readers_with_several_earlier_readers(pins: Pins) -> None:
    done = threading.Event()
    a, b = pins.held(), pins.held()
    a.__enter__()
    b.__enter__()

    def waiter() -> None:
        pins.wait_readers()
        done.set()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    try:
        a.__exit__(None, None, None)
        assert not done.wait(0.3), "b, pinned before the call, is still reading"
        b.__exit__(None, None, None)
        assert done.wait(5)
    finally:
        if not done.is_set():
            b.__exit__(None, None, None)
        t.join(5)


def test_retired_blocks_counts_what_waits(pins: Pins, freed: Recorder) -> None:
    assert pins.retired_blocks == 0
    with pins.held():
        pins.retire(X)
        assert pins.retired_blocks == 3
        pins.retire(Y)
        assert pins.retired_blocks == 6
        pins.retire([])
        assert pins.retired_blocks == 6
    assert pins.retired_blocks == 0
    assert sum(n for call in freed.calls for _, n in call) == 6


def test_threads_pinning_and_retiring_free_everything_exactly_once(freed: Recorder) -> None:
    """Many readers and retirements at once: every extent is freed once, none while a reader
    pinned before its retirement is still inside."""
    lock = threading.Lock()
    inside: set[int] = set()  # a token per pin, never reused
    tokens = iter(range(1 << 30))
    violations: list[str] = []
    retired_at: dict[Extent, set[int]] = {}  # extent -> the pins inside when it was retired

    def free(extents: list[Extent]) -> None:
        with lock:
            for e in extents:
                still = retired_at[e] & inside
                if still:
                    violations.append(f"{e} freed while pins {still} are held")
            freed.calls.append(list(extents))

    p = Pins(free)
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with p.held():
                with lock:
                    token = next(tokens)
                    inside.add(token)
                time.sleep(0.0005)
                with lock:
                    inside.discard(token)

    def retirer() -> None:
        for i in range(300):
            e = (1000 + i, 1)
            with lock:
                retired_at[e] = set(inside)
            p.retire([e])
            time.sleep(0.0002)

    readers = [threading.Thread(target=reader, daemon=True) for _ in range(4)]
    for t in readers:
        t.start()
    r = threading.Thread(target=retirer, daemon=True)
    r.start()
    r.join(20)
    stop.set()
    for t in readers:
        t.join(5)
    assert not r.is_alive() and not any(t.is_alive() for t in readers)
    assert not violations, violations[:5]
    got = sorted(e for call in freed.calls for e in call)
    assert got == sorted(retired_at), "every retired extent is freed once, none lost"
    assert p.retired_blocks == 0
