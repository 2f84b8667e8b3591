"""Large GETs sent straight from the page cache by a daemon thread, against a real daemon:
a reader that stalls lets go of its pin and, if the object is overwritten meanwhile, gets a
prefix of it and a closed connection, never another object's bytes; a reader that hangs up
mid-GET leaves nothing pinned; a damaged block is an error reply before the first byte, a
short payload after it, never a wrong byte."""

from __future__ import annotations

import mmap
import os
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from shoal.client import Client
from shoal.errors import IntegrityError, NoSpace
from shoal.proto.frames import FrameEnd, FrameReader, FrameStart, Op, Payload, Status, encode
from tests.conftest import DaemonProcess, start_daemon
from tests.integration.daemon_helpers import (
    LOG_LEAK,
    MiB,
    RawConn,
    check_disk,
    daemon_log,
    data,
    digest,
    discard_disk,
    host_port,
    tidy,
)

pytestmark = pytest.mark.filterwarnings(LOG_LEAK)

BS = 4096
PIECE = 4 * MiB  # the daemon's streamed piece (server.PIECE)


@contextmanager
def running(directory: Path, size: str) -> Iterator[DaemonProcess]:
    d = tidy(start_daemon(directory, size=size))
    try:
        yield d
    finally:
        assert d.stop() == 0, "the daemon should stop cleanly on SIGTERM"
        discard_disk(d)


def device_offset(d: DaemonProcess, block: bytes) -> int:
    """Where the daemon's data file holds `block` (4 KiB of random bytes: found once)."""
    assert len(block) == BS
    with open(d.dir / "blocks", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        at = m.find(block)
        assert at >= 0, "block not found in the data file"
        assert at % BS == 0 and m.find(block, at + 1) < 0
        return at


def device_read(d: DaemonProcess, offset: int, n: int) -> bytes:
    with open(d.dir / "blocks", "rb") as f:
        f.seek(offset)
        return f.read(n)


def flip_byte(d: DaemonProcess, offset: int) -> None:
    """Damage one byte of the daemon's data file behind its back (a buffered write: the page
    cache the daemon sends from has it)."""
    fd = os.open(d.dir / "blocks", os.O_RDWR)
    try:
        old = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([old[0] ^ 0xA5]), offset)
    finally:
        os.close(fd)


def put_when_freed(c: Client, name: str, body: bytes, patience: float = 5.0) -> None:
    """Put, retrying while the device is full: a sending thread lets go of its pin a moment
    after its last byte is out, or after it sees its client gone. Blocks that stay pinned
    fail the test."""
    deadline = time.monotonic() + patience
    while True:
        try:
            c.put("p", name, body)
            return
        except NoSpace:
            assert time.monotonic() < deadline, f"p/{name}: no space: retired blocks never freed"
            time.sleep(0.05)


class SlowReader:
    """A raw socket with a small receive buffer that sends one GET and reads its reply at
    the pace the test chooses."""

    def __init__(self, d: DaemonProcess, rcvbuf: int = 128 << 10, timeout: float = 20) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect
        self.sock.settimeout(timeout)
        self.sock.connect(host_port(d.address))
        self.reader = FrameReader()
        self.start: FrameStart | None = None
        self.payload = bytearray()
        self.ended = False
        self.eof = False

    def get(self, pool: str, name: str, rid: int = 1, **kw: Any) -> None:
        meta = {"namespace": pool, "name": name, "offset": 0, "length": None, **kw}
        self.sock.sendall(encode(Op.GET, rid, meta))

    def read(self, until: int | None = None) -> None:
        """Read until `until` payload bytes are in (None: the end of the reply or of the
        connection)."""
        while not self.ended and not self.eof:
            if until is not None and len(self.payload) >= until:
                return
            try:
                chunk = self.sock.recv(64 << 10)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
                return
            for ev in self.reader.feed(chunk):
                if isinstance(ev, FrameStart):
                    self.start = ev
                elif isinstance(ev, Payload):
                    self.payload += ev.data
                elif isinstance(ev, FrameEnd):
                    self.ended = True

    def hang_up(self) -> None:
        """Close with unread bytes and SO_LINGER 0: the daemon sees a reset at once."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


# -- a slow reader while its object is overwritten -------------------------------------------


BIG = 48 * MiB


def test_a_stalled_reader_lets_go_of_its_pin_and_never_gets_wrong_bytes(tmp_path: Path) -> None:
    """A client that stops reading in the middle of a large GET must not hold back the
    store's frees (nor DELETEs that zero or discard, which wait for pinned readers): once a
    piece has waited FAST_SEND on the socket, the daemon copies it and lets go of the pin.
    The object is then overwritten and its blocks reused by another object; the stalled
    reader, when it reads on, gets a prefix of the original and a closed connection, never
    a byte of anything else."""
    t0 = time.monotonic()
    original = data("original", BIG)
    with running(tmp_path / "d", "264M") as d, Client(d.address, timeout=30) as c:
        c.put("p", "big", original)
        for i in range(16):
            c.put("p", f"small{i}", data(f"small{i}", 64 << 10))
        probe = BIG - 5 * MiB  # a block the stalled reader has not been sent
        where = device_offset(d, original[probe : probe + BS])

        slow = SlowReader(d)
        try:
            slow.get("p", "big")
            slow.read(until=300 << 10)
            assert slow.start is not None and slow.start.header.status == Status.OK
            time.sleep(0.8)  # > FAST_SEND: the sending thread copies and unpins

            t1 = time.monotonic()
            for i in range(16):
                c.delete("p", f"small{i}", discard=True)
            assert time.monotonic() - t1 < 5, "DELETE --discard waited for a stalled reader"

            c.put("p", "big", data("v1", BIG))
            c.put("p", "other", data("other", BIG))  # best fit: the original's blocks
            assert device_read(d, where, BS) != original[probe : probe + BS], (
                "the original's blocks were still held back by a stalled reader"
            )

            slow.read()
        finally:
            slow.close()
        assert not slow.ended, "the GET went on over blocks that now hold another object"
        assert 300 << 10 <= len(slow.payload) < BIG
        assert bytes(slow.payload) == original[: len(slow.payload)], "wrong bytes were sent"
        assert "closing connection mid-GET of p/big" in daemon_log(d)

        assert digest(c.get("p", "big")) == digest(data("v1", BIG))
        check_disk(d)
    assert time.monotonic() - t0 < 30


# -- a reader that hangs up mid-GET --------------------------------------------------------------


MID = 32 * MiB


def test_client_hanging_up_mid_get_leaves_nothing_pinned(tmp_path: Path) -> None:
    """On a device with room for two copies of the object but not three, it can be
    overwritten again and again only if the hung-up GET's pin was let go."""
    first = data("first", MID)
    with running(tmp_path / "d", "80M") as d, Client(d.address, timeout=30, retries=0) as c:
        c.put("p", "big", first)
        c.put("p", "small", b"small one")
        for _ in range(2):
            slow = SlowReader(d)
            slow.get("p", "big")
            slow.read(until=200 << 10)
            assert slow.start is not None and slow.start.header.status == Status.OK
            assert bytes(slow.payload) == first[: len(slow.payload)]
            slow.hang_up()

        # Other clients are served, large and small, reads and writes.
        assert c.ping()
        assert c.get("p", "small") == b"small one"
        c.put("p", "new", b"new one")
        assert c.get("p", "new") == b"new one"
        assert digest(c.get("p", "big")) == digest(first)
        assert digest(c.get("p", "big", offset=MiB + 3, length=5 * MiB)) == digest(
            first[MiB + 3 : 6 * MiB + 3]
        )

        body = first
        for i in range(6):
            body = data(f"over{i}", MID)
            put_when_freed(c, "big", body)
        assert digest(c.get("p", "big")) == digest(body)
        assert c.stat("p", "big").version == 7
        assert "Traceback" not in daemon_log(d)
        check_disk(d)


# -- damage --------------------------------------------------------------------------------------


DAMAGED = 12 * MiB


def _raw_get(d: DaemonProcess, name: str, **kw: Any) -> SlowReader:
    r = SlowReader(d, rcvbuf=4 << 20)
    r.get("p", name, **kw)
    r.read()
    return r


def test_damaged_large_object_is_an_error_reply_before_the_first_byte(tmp_path: Path) -> None:
    body = data("damaged", DAMAGED)
    with running(tmp_path / "d", "128M") as d, Client(d.address, timeout=30, retries=0) as c:
        c.put("p", "bad", body)
        assert digest(c.get("p", "bad")) == digest(body)  # read once: span crcs cached
        assert digest(c.get("p", "bad")) == digest(body)
        bad_block = 100  # in the first piece
        where = device_offset(d, body[bad_block * BS : (bad_block + 1) * BS])
        flip_byte(d, where + 77)

        with pytest.raises(IntegrityError, match="p/bad"):
            c.get("p", "bad")
        with pytest.raises(IntegrityError):
            c.get("p", "bad", offset=bad_block * BS, length=10)  # small: the other path
        with pytest.raises(IntegrityError):
            c.get("p", "bad", offset=256 << 10, length=2 * MiB)  # large, through it

        # An error reply on a connection that stays open.
        with RawConn.open(d) as raw:
            r = raw.call(Op.GET, 7, {"namespace": "p", "name": "bad"})
            assert r.header.status == Status.INTEGRITY and r.payload == b""
            assert "does not match its checksum" in r.meta["error"]
            assert raw.call(Op.PING, 8, {}).meta == {"pong": True}
            r = raw.call(Op.GET, 9, {"namespace": "p", "name": "bad", "offset": 4 * MiB})
            assert r.header.status == Status.OK
            assert digest(r.payload) == digest(body[4 * MiB :])

        # The undamaged parts still read, large and small.
        assert digest(c.get("p", "bad", offset=4 * MiB, length=4 * MiB)) == digest(
            body[4 * MiB : 8 * MiB]
        )
        assert c.get("p", "bad", offset=0, length=bad_block * BS) == body[: bad_block * BS]
        assert (
            c.get("p", "bad", offset=(bad_block + 1) * BS, length=1000)
            == body[(bad_block + 1) * BS : (bad_block + 1) * BS + 1000]
        )
        assert c.ping()


def test_damage_past_the_first_piece_cuts_the_reply_short(tmp_path: Path) -> None:
    body = data("late", DAMAGED)
    with running(tmp_path / "d", "128M") as d, Client(d.address, timeout=30, retries=0) as c:
        c.put("p", "late", body)
        assert digest(c.get("p", "late")) == digest(body)  # span crcs cached
        bad_block = 2 * PIECE // BS + 123  # in the third piece
        where = device_offset(d, body[bad_block * BS : (bad_block + 1) * BS])
        flip_byte(d, where + 4000)

        r = _raw_get(d, "late")
        try:
            assert r.start is not None and r.start.header.status == Status.OK
            assert r.eof and not r.ended, "the connection should close mid-payload"
            got = bytes(r.payload)
            assert len(got) <= bad_block * BS, "bytes of the damaged block were sent"
            assert got == body[: len(got)], "wrong bytes were sent"
        finally:
            r.close()
        with pytest.raises(ConnectionError):
            c.get("p", "late")
        # The daemon goes on; the parts before and after still read.
        assert c.ping()
        assert digest(c.get("p", "late", length=2 * PIECE)) == digest(body[: 2 * PIECE])
        tail = (bad_block + 1) * BS
        assert digest(c.get("p", "late", offset=tail)) == digest(body[tail:])
        assert "closing connection mid-GET of p/late" in daemon_log(d)
