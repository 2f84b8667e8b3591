"""FreeList properties: no overlapping hand-outs; free + used always covers the device."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.engine.freelist import Extent, FreeList
from shoal.errors import NoSpace

START, END = 1, 513


def covered(extents: list[Extent]) -> list[int]:
    return sorted(b for s, n in extents for b in range(s, s + n))


def assert_partition(fl: FreeList, used: list[list[Extent]]) -> None:
    free = list(fl)
    taken = [e for grant in used for e in grant]
    blocks = covered(free) + covered(taken)
    assert sorted(blocks) == list(range(START, END)), "free + used must cover each block once"
    assert fl.free_blocks == sum(n for _, n in free)
    # free extents are coalesced: none touches the next
    for (s1, n1), (s2, _) in itertools.pairwise(free):
        assert s1 + n1 < s2


ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(1, 80)),
        st.tuples(st.just("free"), st.integers(0, 10_000)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_allocations_never_overlap_and_cover_the_device(seq: list[tuple[str, int]]) -> None:
    fl = FreeList.complement(START, END, [])
    used: list[list[Extent]] = []
    for op, arg in seq:
        if op == "alloc":
            before = fl.free_blocks
            try:
                grant = fl.allocate(arg)
            except NoSpace:
                assert before < arg
                assert fl.free_blocks == before, "a refused allocation takes nothing"
                continue
            assert sum(n for _, n in grant) == arg
            used.append(grant)
        elif used:
            fl.free_all(used.pop(arg % len(used)))
        assert_partition(fl, used)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.data())
def test_best_fit_takes_one_extent_when_one_is_big_enough(
    sizes: list[int], data: st.DataObject
) -> None:
    fl = FreeList.complement(START, END, [])
    grants = [fl.allocate(n) for n in sizes if n <= fl.free_blocks]
    for g in data.draw(st.permutations(grants))[: len(grants) // 2]:
        fl.free_all(g)
    want = data.draw(st.integers(1, 60))
    fits = [(n, s) for s, n in fl if n >= want]
    if fits:
        _, at = min(fits)
        assert fl.allocate(want) == [(at, want)], "one extent, cut from the smallest that fits"


def test_best_fit_prefers_the_smallest_hole() -> None:
    fl = FreeList.complement(0, 100, [(10, 5), (20, 70)])  # free: [0,10) [15,20) [90,100)
    assert fl.allocate(5) == [(15, 5)]
    assert fl.allocate(10) == [(0, 10)]


def test_fragmented_allocation_takes_largest_first() -> None:
    fl = FreeList.complement(0, 100, [(3, 10), (20, 10), (40, 60)])  # free: 3, 7 and 10 blocks
    assert fl.allocate(15) == [(13, 5), (30, 10)]
    assert list(fl) == [(0, 3), (18, 2)]


def test_double_free_and_out_of_range_are_refused() -> None:
    fl = FreeList.complement(0, 10, [(2, 3)])
    with pytest.raises(ValueError, match="double free"):
        fl.free(0, 1)
    with pytest.raises(ValueError, match="double free"):
        fl.free(4, 2)
    with pytest.raises(ValueError, match="outside"):
        fl.free(9, 5)
    fl.free(2, 3)
    assert list(fl) == [(0, 10)]


def test_complement_of_overlapping_used_extents() -> None:
    fl = FreeList.complement(0, 20, [(2, 5), (4, 5), (15, 2)])
    assert list(fl) == [(0, 2), (9, 6), (17, 3)]
