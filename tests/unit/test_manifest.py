"""Manifest values: runs, splices (copy-on-write patches), holes, and their storage form."""

from __future__ import annotations

from array import array

from hypothesis import given
from hypothesis import strategies as st

from shoal.engine.manifest import HOLE, ZERO_CRC, Manifest, block_crcs


def m(extents: list[tuple[int, int]]) -> Manifest:
    n = sum(c for _, c in extents)
    return Manifest(tuple(extents), array("I", range(n)))


def test_runs_clip_to_the_range() -> None:
    man = m([(100, 4), (HOLE, 2), (50, 3)])
    assert list(man.runs(2, 8)) == [(2, 102, 2), (4, HOLE, 2), (6, 50, 2)]
    assert list(man.runs(9, 20)) == []


def test_splice_replaces_blocks_and_merges_neighbours() -> None:
    man = m([(100, 4)])
    out = man.splice(1, 2, [(101, 1)], array("I", [7]))
    assert out.extents == ((100, 4),), "a block put back in place joins its neighbours"
    out = man.splice(1, 3, [(200, 2)], array("I", [7, 8]))
    assert out.extents == ((100, 1), (200, 2), (103, 1))
    assert list(out.crcs) == [0, 7, 8, 3]


def test_splice_past_the_end_leaves_a_hole() -> None:
    out = m([(10, 2)]).splice(5, 6, [(30, 1)], array("I", [9]))
    assert out.extents == ((10, 2), (HOLE, 3), (30, 1))
    assert list(out.crcs) == [0, 1, ZERO_CRC, ZERO_CRC, ZERO_CRC, 9]
    assert list(out.physical()) == [(10, 2), (30, 1)]


@given(st.lists(st.tuples(st.integers(-1, 10**9), st.integers(1, 10**6)), max_size=50))
def test_encode_decode_roundtrip(extents: list[tuple[int, int]]) -> None:
    man = Manifest(tuple(extents), array("I", [1, 2, 3]))
    assert Manifest.decode(*man.encode()) == man


def test_block_crcs_pad_the_last_block_with_zeros() -> None:
    data = b"x" * 5000
    crcs = block_crcs(data, 4096)
    assert list(crcs) == list(block_crcs(data + bytes(8192 - 5000), 4096))
    assert len(crcs) == 2
