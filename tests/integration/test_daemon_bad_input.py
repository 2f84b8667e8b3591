"""Bad input against a real daemon: bytes that are not frames, oversized frames, payloads cut
short, uploads dropped by the client library, requests with bad fields. Each test seeds a set
of witness objects first and reads them back (by hash) afterwards and while the bad
connection is still open; the daemon is then stopped (exit status 0) and its disk checked
offline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgpack
import pytest

from shoal.client import AsyncClient, Client
from shoal.proto.frames import HEADER, MAGIC, MAX_META, MAX_PAYLOAD, VERSION, Op, Status, encode
from tests.conftest import DaemonProcess
from tests.integration.daemon_helpers import (
    LOG_LEAK,
    MiB,
    RawConn,
    Reply,
    Witness,
    assert_absent,
    check_disk,
    chunked,
    discard_disk,
    tidy,
)

pytestmark = pytest.mark.filterwarnings(LOG_LEAK)


@pytest.fixture
def daemon(daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """tests/conftest.py's daemon (stopped with SIGTERM after the test, exit status 0)."""
    yield tidy(daemon)
    discard_disk(daemon)


@pytest.fixture
def witness(daemon: DaemonProcess) -> Iterator[Witness]:
    w = Witness(daemon).seed()
    yield w
    w.check()
    w.close()
    check_disk(daemon)  # stops it: exit status 0, then every checksum and block accounted for


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[Client]:
    with Client(daemon.address, timeout=30) as c:
        yield c


def header(
    op: int, meta_len: int, payload_len: int, *, rid: int = 1, version: int = VERSION
) -> bytes:
    return HEADER.pack(MAGIC, version, 0, op, 0, rid, 0, meta_len, payload_len)


def assert_hung_up(replies: list[Reply], message: str) -> None:
    """The daemon closed the connection after (at most) one error frame saying `message`."""
    assert len(replies) <= 1, replies
    for r in replies:
        assert r.header.response and r.header.status == Status.PROTOCOL
        assert message in r.meta["error"], r.meta


def send_quietly(raw: RawConn, b: bytes) -> None:
    """Send what the daemon may stop reading half-way (it hangs up on bad input)."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        raw.send(b)


# -- bytes that are not frames ----------------------------------------------------------------


def test_http_request_on_the_native_port(daemon: DaemonProcess, witness: Witness) -> None:
    with RawConn.open(daemon) as raw:
        raw.send(b"GET /witness/small HTTP/1.1\r\n")
        witness.check()  # others are served while that connection sits there
        raw.send(b"Host: 127.0.0.1\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n")
        replies = raw.wait_closed()
    assert len(replies) == 1, "an error frame, then the daemon hangs up"
    assert_hung_up(replies, "not a shoal frame")
    assert replies[0].header.request_id == 0
    witness.check()


@pytest.mark.parametrize(
    ("garbage", "message"),
    [
        (b"\x00" + os.urandom(256 * 1024 - 1), "not a shoal frame"),
        (bytes(32), "not a shoal frame"),
        (b"SHL\x07" + os.urandom(60), "protocol version 7"),
        (header(Op.PING, 9, 0) + b"\xc1" * 9, "not valid msgpack"),  # 0xc1 is never used
        (header(Op.PING, 4, 0) + msgpack.packb([1, 2, 3]), "not a map"),
        (header(Op.PING, 3, 0) + msgpack.packb({1: 2}) + b"\x00", "not valid msgpack"),
    ],
    ids=["random", "zeros", "version", "bad-msgpack", "meta-array", "int-key-and-junk"],
)
def test_garbage_closes_only_that_connection(
    daemon: DaemonProcess, witness: Witness, garbage: bytes, message: str
) -> None:
    with RawConn.open(daemon) as bystander:  # open before the garbage, used after it
        assert bystander.call(Op.PING, 1, {}).meta == {"pong": True}
        with RawConn.open(daemon) as raw:
            send_quietly(raw, garbage)
            assert_hung_up(raw.wait_closed(), message)
        assert bystander.call(Op.PING, 2, {}).meta == {"pong": True}
    witness.check()


def test_garbage_after_good_requests(daemon: DaemonProcess, witness: Witness) -> None:
    with RawConn.open(daemon) as raw:
        r = raw.call(Op.PUT, 1, {"namespace": "g", "name": "ok"}, b"stored")
        assert r.header.status == Status.OK
        send_quietly(raw, b"GARBAGE GARBAGE GARBAGE GARBAGE GARBAGE\n")
        assert_hung_up(raw.wait_closed(), "not a shoal frame")
    with Client(daemon.address) as c:
        assert c.get("g", "ok") == b"stored"
    witness.check()


# -- oversized frames -------------------------------------------------------------------------


def test_meta_over_one_mib(daemon: DaemonProcess, witness: Witness, client: Client) -> None:
    with RawConn.open(daemon) as raw:
        raw.send(header(Op.PUT, MAX_META + 1, 10))  # refused on its header: no meta follows
        assert_hung_up(raw.wait_closed(), f"frame meta of {MAX_META + 1} bytes is over")
    witness.check()


def test_payload_over_the_limit(daemon: DaemonProcess, witness: Witness, client: Client) -> None:
    meta = msgpack.packb({"namespace": "big", "name": "huge"})
    with RawConn.open(daemon) as raw:
        send_quietly(raw, header(Op.PUT, len(meta), MAX_PAYLOAD + 1) + meta + bytes(64 * 1024))
        assert_hung_up(raw.wait_closed(), "over the limit")
    assert_absent(client, "big", "huge")
    assert client.list("big") == ([], None)
    witness.check()


@pytest.mark.parametrize(
    ("op", "meta", "size", "message"),
    [
        (Op.WRITE_AT, {"namespace": "wa", "name": "w", "offset": 0}, 65 * MiB, "at most"),
        (Op.PUT, {"namespace": "wa", "name": 123}, 300 * MiB, "'name' must be a str"),
    ],
    ids=["write-at-over-64MiB", "large-put-bad-name"],
)
def test_a_large_request_refused_at_its_header_is_answered_at_once(
    daemon: DaemonProcess,
    witness: Witness,
    client: Client,
    op: int,
    meta: dict[str, Any],
    size: int,
    message: str,
) -> None:
    """A request with a large payload that is refused from its header alone gets its error
    before the payload is sent (not after hundreds of MiB), then the connection closes."""
    with RawConn.open(daemon, timeout=30) as raw:
        raw.send(encode(op, 1, meta, size))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            raw.send(bytes(MiB))  # a little of it: the answer does not wait for the rest
        replies = raw.wait_closed()
    assert [r.header.status for r in replies] == [Status.INVALID]
    assert message in replies[0].meta["error"]
    assert_absent(client, "wa", "w")
    witness.check()


# -- payloads cut short -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "sent"), [(600_000, 200_000), (40 * MiB, 13 * MiB)], ids=["small", "large"]
)
def test_truncated_payload_stores_nothing(
    daemon: DaemonProcess, witness: Witness, client: Client, size: int, sent: int
) -> None:
    """A PUT announcing `size` bytes, `sent` of them sent, then the socket closed: for an
    existing name (it keeps its old content), a new name and no name."""
    client.put("trunc", "victim", b"old content")
    with contextlib.ExitStack() as stack:
        for i, name in enumerate(["victim", "fresh", None]):
            raw = stack.enter_context(RawConn.open(daemon))
            raw.send(encode(Op.PUT, 1, {"namespace": "trunc", "name": name}, size))
            for piece in chunked(i, sent, MiB):
                raw.send(piece)
        time.sleep(0.3)  # the daemon takes in what came (a large one streams to the engine)
        witness.check()  # served meanwhile
        assert client.get("trunc", "victim") == b"old content"
    time.sleep(0.3)  # the daemon sees the connections go
    assert client.get("trunc", "victim") == b"old content"
    assert client.stat("trunc", "victim").version == 1
    assert_absent(client, "trunc", "fresh")
    assert [i.name for i in client.list("trunc")[0]] == ["victim"]
    witness.check()


def test_truncated_then_half_closed(
    daemon: DaemonProcess, witness: Witness, client: Client
) -> None:
    """The client says it is done sending (FIN) with the payload still short."""
    with RawConn.open(daemon) as raw:
        raw.send(encode(Op.PUT, 1, {"namespace": "trunc", "name": "half"}, 3 * MiB) + bytes(MiB))
        raw.sock.shutdown(socket.SHUT_WR)
        assert raw.wait_closed() == []
    assert_absent(client, "trunc", "half")
    witness.check()


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["cancel", "close"])
async def test_upload_dropped_by_the_client_library(
    daemon: DaemonProcess, witness: Witness, how: str
) -> None:
    """put_stream cut in the middle (the task cancelled and the client closed, or the client
    closed under it): nothing of it is stored, an old object of that name is untouched."""
    async with AsyncClient(daemon.address) as c:
        await c.put("cut", "victim", b"old content")
    started: list[asyncio.Event] = []
    more = asyncio.Event()

    async def source(seed: int) -> AsyncIterator[bytes]:
        started.append(ev := asyncio.Event())
        for piece in chunked(seed, 12 * MiB, MiB):
            yield piece
        ev.set()
        await more.wait()
        yield bytes(MiB)

    clients = [AsyncClient(daemon.address) for _ in range(2)]
    tasks = [
        asyncio.create_task(c.put_stream("cut", name, 32 * MiB, source(i)))
        for i, (c, name) in enumerate(zip(clients, ["victim", "fresh"], strict=True))
    ]
    while len(started) < 2:
        await asyncio.sleep(0.01)
    await asyncio.gather(*(ev.wait() for ev in started))
    await asyncio.sleep(0.3)  # the daemon has the pieces: its writers exist
    await asyncio.to_thread(witness.check)
    for t, c in zip(tasks, clients, strict=True):
        if how == "cancel":
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            await c.close()
        else:
            conns = list(c._conns)
            await c.close()
            while any(conn.pending for conn in conns):  # until each has seen its end
                await asyncio.sleep(0.01)
    if how == "close":
        more.set()
        for t in tasks:
            with pytest.raises(ConnectionError):
                await t
    await asyncio.sleep(0.3)
    async with AsyncClient(daemon.address) as c:
        assert await c.get("cut", "victim") == b"old content"
        page, _ = await c.list("cut")
        assert [(i.name, i.version) for i in page] == [("victim", 1)]
    await asyncio.to_thread(witness.check)


# -- requests with bad fields: an error reply, and the connection goes on ---------------------

N = "namespace"
BAD_REQUESTS: list[tuple[int, dict[str, Any], bytes, Status, str]] = [
    (99, {N: "bad", "name": "exists"}, b"", Status.INVALID, "unknown operation 99"),
    (Op.PUT, {N: "bad", "name": 123}, b"x", Status.INVALID, "'name' must be a string"),
    (Op.PUT, {N: 5, "name": "n"}, b"x", Status.INVALID, "'namespace' must be a string"),
    (Op.PUT, {N: "", "name": "n"}, b"x", Status.INVALID, "non-empty"),
    (Op.PUT, {N: "bad", "name": "a\x00b"}, b"x", Status.INVALID, "NUL"),
    (Op.PUT, {N: "bad", "name": "n" * 5000}, b"x", Status.INVALID, "limit"),
    (Op.PUT, {N: "bad", "name": "ü" * 400_000}, b"x", Status.INVALID, "limit"),  # 800 KB meta
    (Op.PUT, {N: "bad", "name": "n", "refs": "abc"}, b"x", Status.INVALID, "byte strings"),
    (Op.PUT, {N: "bad", "name": "n", "refs": [b"short"]}, b"x", Status.INVALID, "16 bytes"),
    (Op.GET, {N: "bad", "name": "exists", "offset": -1}, b"", Status.INVALID, "'offset' must"),
    (Op.GET, {N: "bad", "name": "exists", "offset": "3"}, b"", Status.INVALID, "'offset' must"),
    (Op.GET, {N: "bad", "name": "exists", "offset": 1.5}, b"", Status.INVALID, "'offset' must"),
    (Op.GET, {N: "bad", "name": "exists", "offset": True}, b"", Status.INVALID, "'offset' must"),
    (Op.GET, {N: "bad", "name": "exists", "length": -5}, b"", Status.INVALID, "'length' must"),
    (Op.GET, {N: "bad"}, b"", Status.INVALID, "'name' must be a string"),
    (Op.GET, {N: "bad", "name": "exists", "offset": 99}, b"", Status.INVALID, "beyond the end"),
    (Op.GET, {N: "bad", "name": "missing"}, b"", Status.NOT_FOUND, "not found"),
    (Op.WRITE_AT, {N: "bad", "name": "w", "offset": -1}, b"x", Status.INVALID, "'offset'"),
    (Op.WRITE_AT, {N: "bad", "name": "w"}, b"x", Status.INVALID, "'offset'"),
    (Op.WRITE_AT, {N: "bad", "offset": 0}, b"x", Status.INVALID, "'name' must be a string"),
    (Op.STAT, {N: "bad", "name": None}, b"", Status.INVALID, "'name' must be a string"),
    (Op.STAT, {N: "bad", "name": b"bytes"}, b"", Status.INVALID, "'name' must be a string"),
    (Op.DELETE, {N: "bad", "name": "missing"}, b"", Status.NOT_FOUND, "not found"),
    (Op.LIST, {N: "bad", "limit": "ten"}, b"", Status.INVALID, "'limit' must"),
    (Op.LIST, {N: "bad", "limit": 0}, b"", Status.INVALID, "limit must be > 0"),
    (Op.LIST, {N: "bad", "prefix": 7}, b"", Status.INVALID, "'prefix' must be a string"),
    (Op.REFS, {N: "bad", "name": "exists", "add": [b"x"]}, b"", Status.INVALID, "16 bytes"),
    (Op.REFS, {N: "bad", "name": "exists", "remove": "x"}, b"", Status.INVALID, "byte strings"),
]


def test_bad_requests_get_clear_errors(
    daemon: DaemonProcess, witness: Witness, client: Client
) -> None:
    client.put("bad", "exists", b"0123456789")
    with RawConn.open(daemon, timeout=30) as raw:
        _bad_requests(raw)
    assert client.get("bad", "exists") == b"0123456789"
    assert [i.name for i in client.list("bad")[0]] == ["exists", "late"]
    witness.check()


def _bad_requests(raw: RawConn) -> None:
    for rid, (op, meta, payload, status, message) in enumerate(BAD_REQUESTS, start=1):
        what = f"request {rid}: op {op} {str(meta)[:80]}"
        r = raw.call(op, rid, meta, payload)
        assert r.header.response and r.header.op == op, what
        assert r.header.status == status, f"{what}: {r}"
        assert message in r.meta["error"], f"{what}: {r.meta['error']!r}"
        assert r.payload == b"", what
        pong = raw.call(Op.PING, 10_000 + rid, {})  # the same connection still works
        assert pong.header.status == Status.OK and pong.meta == {"pong": True}, what
    # ... and still takes real work
    assert raw.call(Op.PUT, 1, {N: "bad", "name": "late"}, b"fine").header.status == Status.OK
    assert raw.call(Op.GET, 2, {N: "bad", "name": "late"}).payload == b"fine"


def test_pipelined_bad_and_good_requests(daemon: DaemonProcess, witness: Witness) -> None:
    """Bad requests sent in one go with good ones: each gets its own answer."""
    batch = b"".join(
        encode(op, rid, meta, len(payload)) + payload
        for rid, (op, meta, payload) in enumerate(
            [
                (Op.PUT, {N: "pipe", "name": "a"}, b"A"),
                (Op.GET, {N: "pipe", "name": "zzz"}, b""),
                (77, {}, b""),
                (Op.PUT, {N: "pipe", "name": 1}, b"B"),
                (Op.PING, {}, b""),
            ],
            start=1,
        )
    )
    with RawConn.open(daemon) as raw:
        raw.send(batch)
        got = {rid: raw.recv_reply(rid).header.status for rid in range(1, 6)}
    assert got == {1: 0, 2: Status.NOT_FOUND, 3: Status.INVALID, 4: Status.INVALID, 5: 0}
    witness.check()


@pytest.mark.parametrize(
    "frame",
    [
        encode(Op.GET, 1, {N: "x", "name": "y"}, 10) + bytes(10),  # a payload where none goes
        encode(Op.PING, 1, {}, response=True),  # a response sent to the daemon
    ],
    ids=["payload-on-get", "response-flag"],
)
def test_frames_the_daemon_never_expects(
    daemon: DaemonProcess, witness: Witness, frame: bytes
) -> None:
    with RawConn.open(daemon) as raw:
        send_quietly(raw, frame)
        replies = raw.wait_closed()
    assert len(replies) == 1 and replies[0].header.status == Status.PROTOCOL
    assert "unexpected" in replies[0].meta["error"]
    witness.check()


# -- bugs found while writing these tests -----------------------------------------------------


def test_unknown_op_is_named_in_the_error(daemon: DaemonProcess) -> None:
    with RawConn.open(daemon) as raw:
        r = raw.call(42, 1, {})
        assert r.header.status == Status.INVALID
        assert "unknown operation 42" in r.meta["error"], r.meta


@pytest.mark.asyncio
async def test_cancelled_put_stream_does_not_poison_the_connection(
    daemon: DaemonProcess,
) -> None:
    async with AsyncClient(daemon.address, pool_size=1, timeout=1) as c:
        await c.put("p", "victim", b"old content")
        size, follow = 2 * MiB, b"B" * 1000
        meta = {N: "p", "name": "other", "refs": [], "permanent": False}
        rest = len(encode(Op.PUT, 3, meta, len(follow))) + len(follow)  # the next frame
        stop = asyncio.Event()

        async def source() -> AsyncIterator[bytes]:
            yield b"A" * (size - rest)
            stop.set()
            await asyncio.sleep(3600)
            yield b""

        task = asyncio.create_task(c.put_stream("p", "victim", size, source()))
        await stop.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await c.put("p", "other", follow)
    async with AsyncClient(daemon.address) as c:
        got = await c.get("p", "victim")
        assert got == b"old content", (
            f"victim is now {len(got)} bytes: ...{got[-rest - 8 :][:40]!r}"
        )


def test_nothing_after_a_refused_frame_is_carried_out(
    daemon: DaemonProcess, client: Client
) -> None:
    client.put("p", "victim", b"keep me")
    with RawConn.open(daemon) as raw:
        raw.send(
            encode(Op.GET, 1, {N: "p", "name": "victim"}, 3) + b"abc"  # a payload on a GET
            + encode(Op.PUT, 2, {N: "p", "name": "after"}, 5) + b"hello"
            + encode(Op.DELETE, 3, {N: "p", "name": "victim"})
        )  # fmt: skip
        replies = raw.wait_closed()
    assert [r.header.status for r in replies] == [Status.PROTOCOL]
    time.sleep(0.3)
    assert [i.name for i in client.list("p")[0]] == ["victim"]
    assert client.get("p", "victim") == b"keep me"
