"""The frame codec: any split of the byte stream gives the same frames; garbage is refused."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import NotFound
from shoal.proto.frames import (
    HEADER,
    MAGIC,
    FrameEnd,
    FrameReader,
    FrameStart,
    Op,
    Payload,
    ProtocolError,
    Status,
    encode,
    encode_error,
    error_of,
    status_of,
)

metas = st.dictionaries(
    st.text(max_size=8),
    st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=20), st.binary(max_size=20)),
    max_size=5,
)
frames = st.lists(
    st.tuples(st.sampled_from(list(Op)), st.integers(0, 2**32 - 1), metas, st.binary(max_size=300)),
    min_size=1,
    max_size=6,
)


def collect(events: list[object]) -> list[tuple[int, int, dict[str, object], bytes]]:
    """Frames reassembled from events: (op, request id, meta, payload)."""
    out: list[tuple[int, int, dict[str, object], bytes]] = []
    current: dict[int, tuple[FrameStart, bytearray]] = {}
    for ev in events:
        if isinstance(ev, FrameStart):
            current[ev.header.request_id] = (ev, bytearray())
        elif isinstance(ev, Payload):
            current[ev.request_id][1].extend(ev.data)
        else:
            assert isinstance(ev, FrameEnd)
            start, body = current.pop(ev.request_id)
            assert len(body) == start.header.payload_len
            out.append((start.header.op, start.header.request_id, start.meta, bytes(body)))
    assert not current
    return out


@settings(max_examples=300, deadline=None)
@given(frames, st.data())
def test_any_split_gives_the_same_frames(
    fs: list[tuple[Op, int, dict[str, object], bytes]], data: st.DataObject
) -> None:
    wire = b"".join(encode(op, rid, meta, len(body)) + body for op, rid, meta, body in fs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    reader = FrameReader()
    events: list[object] = []
    prev = 0
    for cut in [*cuts, len(wire)]:
        events += reader.feed(wire[prev:cut])
        prev = cut
    assert collect(events) == [(op, rid, meta, body) for op, rid, meta, body in fs]
    assert reader.idle


def test_byte_at_a_time_and_all_at_once() -> None:
    body = os.urandom(1000)
    wire = encode(Op.PUT, 7, {"name": "x"}, len(body)) + body + encode(Op.PING, 8)
    one = FrameReader()
    slow: list[object] = []
    for i in range(len(wire)):
        slow += one.feed(wire[i : i + 1])
    fast = FrameReader().feed(wire)
    assert (
        collect(slow) == collect(fast) == [(Op.PUT, 7, {"name": "x"}, body), (Op.PING, 8, {}, b"")]
    )


def test_payload_pieces_are_views_not_copies() -> None:
    body = b"x" * 100_000
    wire = bytearray(encode(Op.PUT, 1, {}, len(body)) + body)
    pieces = [e for e in FrameReader().feed(wire) if isinstance(e, Payload)]
    assert len(pieces) == 1 and pieces[0].data.obj is wire


def test_responses_carry_status_and_flag() -> None:
    (start, end) = FrameReader().feed(encode_error(Op.GET, 3, NotFound("default/x not found")))
    assert isinstance(start, FrameStart) and isinstance(end, FrameEnd)
    assert start.header.response and start.header.status == Status.NOT_FOUND
    err = error_of(start.header.status, start.meta["error"])
    assert isinstance(err, NotFound) and "default/x" in str(err)
    assert status_of(ValueError()) == Status.INTERNAL


@pytest.mark.parametrize(
    "wire, match",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(8), "not a shoal frame"),
        (HEADER.pack(MAGIC, 9, 0, 1, 0, 1, 0, 0, 0), "version 9"),
        (HEADER.pack(MAGIC, 1, 0, 1, 0, 1, 0, 2**31, 0), "meta of"),
        (HEADER.pack(MAGIC, 1, 0, 1, 0, 1, 0, 0, 2**50), "payload of"),
        (HEADER.pack(MAGIC, 1, 0, 1, 0, 1, 0, 3, 0) + b"\xc1\xc1\xc1", "not valid msgpack"),
        (HEADER.pack(MAGIC, 1, 0, 1, 0, 1, 0, 1, 0) + b"\x01", "not a map"),
    ],
)
def test_garbage_is_a_protocol_error(wire: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        FrameReader().feed(wire)


def test_server_limit_on_payload() -> None:
    reader = FrameReader(max_payload=1024)
    with pytest.raises(ProtocolError, match="limit of 1024"):
        reader.feed(encode(Op.PUT, 1, {}, 1025))
    assert struct.calcsize("<3sBBBHIQIQ") == 32
