"""Heads of striped and composed objects: their encoding, and the stripes a range covers."""

from __future__ import annotations

import pytest

from shoal.client.stripes import STRIPE, Head, Segment, stripes_of
from shoal.errors import IntegrityError


def test_a_striped_head_is_one_segment_named_after_its_object() -> None:
    head = Head.new(2 * STRIPE + 1, b"h" * 32)
    (seg,) = head.segments("obj")
    assert (seg.base, seg.wid, seg.size, seg.count) == ("obj", head.wid, head.size, 3)
    assert seg.stripe_name(2) == head.stripe_name("obj", 2)
    assert Head.decode(head.encode()) == head


def test_a_composed_head_keeps_its_segments_and_checks_they_add_up() -> None:
    parts = (Segment("u/1", "aa", STRIPE + 1, STRIPE, b"1" * 32),
             Segment("u/2", "bb", 7, STRIPE, b"2" * 32))  # fmt: skip
    head = Head.composed(parts)
    assert head.size == STRIPE + 8 and head.count == 3 and head.stripe == 0
    assert Head.decode(head.encode()) == head
    assert head.segments("ignored") == parts
    lying = Head(head.size + 1, 0, head.wid, head.count, head.hash, parts)
    with pytest.raises(IntegrityError):
        Head.decode(lying.encode())
    with pytest.raises(ValueError):
        Head.composed(())


def test_the_stripes_of_a_range_cross_segment_borders() -> None:
    a = Segment("a", "w", 10, 4, b"")  # stripes of 4 bytes: 4 4 2
    b = Segment("b", "w", 5, 4, b"")  # 4 1
    assert stripes_of((a, b), 0, 15) == [
        (0, 0, 0, 4), (0, 1, 0, 4), (0, 2, 0, 2), (1, 0, 0, 4), (1, 1, 0, 1)
    ]  # fmt: skip
    assert stripes_of((a, b), 9, 3) == [(0, 2, 1, 1), (1, 0, 0, 2)]
    assert stripes_of((a, b), 14, 1) == [(1, 1, 0, 1)]
    assert stripes_of((a, b), 3, 0) == []
