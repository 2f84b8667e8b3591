"""The storage daemon as a real process, driven over the network by the client library (and
by curl for its HTTP read endpoint): every operation, a 1 GiB object streamed both ways in
bounded memory, 100 concurrent clients, clean shutdown and restart."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import blake3
import pytest

from shoal.client import AsyncClient, Client
from shoal.engine.blockstore import MAP_BUDGET
from shoal.errors import InvalidArgument, NotFound
from tests.conftest import DaemonProcess, start_daemon
from tests.integration.daemon_helpers import (
    LOG_LEAK,
    MiB,
    check_disk,
    chunked,
    daemon_log,
    data,
    digest,
    discard_disk,
    read_proc_status,
    tidy,
)

GiB = 1 << 30
pytestmark = pytest.mark.filterwarnings(LOG_LEAK)


@pytest.fixture
def daemon(daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """tests/conftest.py's daemon (stopped with SIGTERM after the test, exit status 0)."""
    yield tidy(daemon)
    discard_disk(daemon)


REF_A, REF_B = bytes(range(16)), bytes(range(16, 32))


# -- operations, one by one -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_put_named_and_unnamed_get_whole_and_ranged(daemon: DaemonProcess) -> None:
    small, large = data("small", 10_000), data("large", 5 * MiB + 123)
    async with AsyncClient(daemon.address) as c:
        assert await c.ping()
        key = await c.put("p", "small", small)
        assert (key.size, key.hash) == (len(small), digest(small))
        assert await c.get("p", "small") == small
        assert await c.get("p", "small", offset=20, length=40) == small[20:60]
        assert await c.get("p", "small", offset=9_990) == small[9_990:]
        assert await c.get("p", "small", offset=9_990, length=1000) == small[9_990:]  # clipped
        assert await c.get("p", "small", offset=10_000) == b""
        with pytest.raises(InvalidArgument, match="beyond the end"):
            await c.get("p", "small", offset=10_001)

        # unnamed: named by its uuid
        ukey = await c.put("p", None, b"nameless")
        assert await c.get("p", str(ukey.uuid)) == b"nameless"
        info = await c.stat("p", str(ukey.uuid))
        assert info.uuid == ukey.uuid and info.name == str(ukey.uuid)

        # a large object takes the streaming paths both ways (PUT in pieces, GET in chunks)
        lkey = await c.put("p", "large", large)
        assert lkey.hash == digest(large)
        assert await c.get("p", "large") == large
        off, n = 4 * MiB - 5, MiB + 17  # unaligned, across the daemon's 4 MiB chunks
        assert await c.get("p", "large", offset=off, length=n) == large[off : off + n]
        got = bytearray()
        info = await c.get_to("p", "large", got.extend, offset=123, length=3 * MiB)
        assert got == large[123 : 123 + 3 * MiB] and info.size == len(large)

        # a put to a name that exists replaces the object
        await c.put("p", "small", b"replaced")
        assert await c.get("p", "small") == b"replaced"
        with pytest.raises(NotFound):
            await c.get("p", "never-written")
        with pytest.raises(NotFound):
            await c.get("other-pool", "small")


@pytest.mark.asyncio
async def test_write_at_offset_grows_unaligned(daemon: DaemonProcess) -> None:
    async with AsyncClient(daemon.address) as c:
        await c.write_at("p", "img", 8190, b"XYZW")  # creates it, straddling two blocks
        assert await c.get("p", "img") == bytes(8190) + b"XYZW"
        await c.write_at("p", "img", 3, b"abc")  # inside, unaligned
        expect = bytearray(8194)
        expect[3:6], expect[8190:] = b"abc", b"XYZW"
        assert await c.get("p", "img") == expect
        far = 3 * MiB + 7  # grows it with a never-written gap that reads as zeros
        key = await c.write_at("p", "img", far, b"tail")
        expect += bytes(far - len(expect)) + b"tail"
        assert key.size == len(expect) == (await c.stat("p", "img")).size
        assert await c.get("p", "img") == expect
        assert await c.get("p", "img", offset=far - 2, length=10) == b"\0\0tail"
        info = await c.stat("p", "img")
        assert info.version >= 3 and info.hash is None  # a patched object has no whole hash

        # over an object that was put whole: old bytes around the patch survive
        body = data("base", 20_000)
        await c.put("p", "base", body)
        await c.write_at("p", "base", 4095, b"!!")
        assert await c.get("p", "base") == body[:4095] + b"!!" + body[4097:]


@pytest.mark.asyncio
async def test_stat_and_delete(daemon: DaemonProcess) -> None:
    async with AsyncClient(daemon.address) as c:
        key = await c.put("p", "doomed", b"12345", refs=[REF_A])
        info = await c.stat("p", "doomed")
        assert (info.namespace, info.name, info.size, info.hash) == ("p", "doomed", 5, key.hash)
        assert info.uuid == key.uuid and info.version == 1 and not info.permanent
        assert info.refs == (REF_A,) and abs(info.mtime - time.time()) < 60
        await c.delete("p", "doomed")
        with pytest.raises(NotFound):
            await c.stat("p", "doomed")
        with pytest.raises(NotFound):
            await c.delete("p", "doomed")
        # a permanent object cannot be deleted
        await c.put("p", "forever", b"x", permanent=True)
        with pytest.raises(Exception, match="permanent"):
            await c.delete("p", "forever")
        assert await c.get("p", "forever") == b"x"


@pytest.mark.asyncio
async def test_list_with_prefix_and_pagination(daemon: DaemonProcess) -> None:
    async with AsyncClient(daemon.address) as c:
        names = [f"ls/{i:03d}" for i in range(25)]
        await asyncio.gather(*(c.put("p", n, n.encode()) for n in names))
        await asyncio.gather(*(c.put("p", n, b"x") for n in ("lr", "lt", "ls", "other/ls/1")))
        await c.put("q", "ls/000", b"another pool")

        page, nxt = await c.list("p", "ls/")
        assert [i.name for i in page] == names and nxt is None
        assert page[0].size == 6 and page[0].hash == digest(b"ls/000")

        seen: list[str] = []
        after, pages = "", 0
        while True:  # 25 names by 5: the 5th page is full, the 6th empty
            page, nxt = await c.list("p", "ls/", start_after=after, limit=5)
            pages += 1
            seen += [i.name for i in page]
            if nxt is None:
                break
            assert nxt == page[-1].name
            after = nxt
        assert seen == names and pages == 6

        page, nxt = await c.list("p", "ls/", start_after="ls/020", limit=100)
        assert [i.name for i in page] == names[21:] and nxt is None
        assert [i.name for i in (await c.list("p", "l"))[0]] == ["lr", "ls", *names, "lt"]
        assert [i.name for i in (await c.list("q"))[0]] == ["ls/000"]
        assert (await c.list("nothing-here")) == ([], None)


@pytest.mark.asyncio
async def test_references_add_remove_last_deletes(daemon: DaemonProcess) -> None:
    async with AsyncClient(daemon.address) as c:
        await c.put("p", "shared", b"data", refs=[REF_A])
        assert await c.add_refs("p", "shared", [REF_B]) == (REF_A, REF_B)
        assert await c.add_refs("p", "shared", [REF_B]) == (REF_A, REF_B)  # no duplicates
        assert (await c.stat("p", "shared")).refs == (REF_A, REF_B)
        assert await c.remove_refs("p", "shared", [REF_A]) == (REF_B,)
        assert await c.get("p", "shared") == b"data"
        assert await c.remove_refs("p", "shared", [REF_B]) == ()  # the last one: deleted
        with pytest.raises(NotFound):
            await c.stat("p", "shared")
        with pytest.raises(NotFound):
            await c.add_refs("p", "shared", [REF_A])
        with pytest.raises(InvalidArgument):
            await c.add_refs("p", "x", [b"too short"])


def test_blocking_client_facade(daemon: DaemonProcess) -> None:
    """The README's example, and the rest of the verbs through the blocking `Client`."""
    with Client(daemon.address) as c:
        c.put("testpool", "greeting", b"hello")
        assert c.get("testpool", "greeting", offset=1, length=3) == b"ell"
        key = c.put("testpool", None, b"anon")
        assert c.stat("testpool", str(key.uuid)).size == 4
        c.write_at("testpool", "greeting", 5, b" world")
        assert c.get("testpool", "greeting") == b"hello world"
        page, nxt = c.list("testpool", limit=1)
        assert len(page) == 1 and nxt == page[0].name
        assert c.add_refs("testpool", "greeting", [REF_A]) == (REF_A,)
        assert c.remove_refs("testpool", "greeting", [REF_A]) == ()
        with pytest.raises(NotFound):
            c.get("testpool", "greeting")
        c.delete("testpool", str(key.uuid))
        assert c.list("testpool") == ([], None)
        with pytest.raises(AttributeError):
            c.no_such_method()


# -- a 1 GiB object, streamed -----------------------------------------------------------------


@pytest.fixture
def big_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    d = tidy(start_daemon(tmp_path / "big", size="1100M"))
    yield d
    rc = d.stop()
    shutil.rmtree(d.dir, ignore_errors=True)  # do not keep 1 GiB per kept pytest run
    assert rc == 0, "the daemon should stop cleanly on SIGTERM"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_one_gib_object_streams_in_bounded_memory(big_daemon: DaemonProcess) -> None:
    up, seed = blake3.blake3(), 1
    sent = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal sent
        for piece in chunked(seed, GiB):
            up.update(piece)
            sent += len(piece)
            yield piece

    pid, peak = big_daemon.proc.pid, {"RssAnon": 0, "RssFile": 0}
    sampling = True

    async def sample() -> None:  # the daemon's own memory, and the page cache it maps
        while sampling:
            for field in peak:
                peak[field] = max(peak[field], read_proc_status(pid, field))
            await asyncio.sleep(0.02)

    sampler = asyncio.ensure_future(sample())
    async with AsyncClient(big_daemon.address, timeout=120) as c:
        key = await c.put_stream("big", "one-gib", GiB, source())
        assert sent == key.size == GiB and key.hash == up.digest()

        down, got = blake3.blake3(), 0

        def sink(piece: memoryview) -> None:
            nonlocal got
            down.update(piece)
            got += len(piece)

        info = await c.get_to("big", "one-gib", sink)
        assert got == info.size == GiB and down.digest() == up.digest() == info.hash

        # a range across the 4 MiB pieces, compared with the regenerated bytes
        pieces = chunked(seed, 12 * MiB)
        head = b"".join(pieces)
        part = bytearray()
        await c.get_to("big", "one-gib", part.extend, offset=4 * MiB - 3, length=4 * MiB + 6)
        assert part == head[4 * MiB - 3 : 8 * MiB + 3]

    sampling = False
    await sampler
    assert peak["RssAnon"] < 300 * MiB, (
        f"the daemon's own memory peaked at {peak['RssAnon'] / MiB:.0f} MiB for a 1 GiB object"
    )
    # GETs send from a mapping of the page cache, whose pages count as the daemon's resident
    # file pages: bounded by the mapping budget (plus the libraries' own file pages).
    assert peak["RssFile"] < MAP_BUDGET + 150 * MiB, f"mapped: {peak['RssFile'] / MiB:.0f} MiB"
    hwm = read_proc_status(pid, "VmHWM")
    assert hwm < MAP_BUDGET + 450 * MiB, f"the daemon's peak RSS was {hwm / MiB:.0f} MiB"


# -- many clients at once ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_hundred_concurrent_clients(daemon: DaemonProcess) -> None:
    go = asyncio.Event()

    async def client(i: int) -> int:
        bodies = {
            f"c{i:03d}/s{j}": data(f"{i}/{j}", 1024 * (1 + (i + j) % 8) + j) for j in range(3)
        }
        if i % 4 == 0:  # every 4th client also moves a few MiB
            bodies[f"c{i:03d}/large"] = data(f"{i}/large", 2 * MiB + 4099 * i)
        async with AsyncClient(daemon.address, pool_size=2) as c:
            await go.wait()
            keys = await asyncio.gather(*(c.put("conc", n, b) for n, b in bodies.items()))
            for k, b in zip(keys, bodies.values(), strict=True):
                assert k.hash == digest(b) and k.size == len(b)
            got = await asyncio.gather(*(c.get("conc", n) for n in bodies))
            for n, g in zip(bodies, got, strict=True):
                assert g == bodies[n], n
            if i % 4 == 0:
                n, b = f"c{i:03d}/large", bodies[f"c{i:03d}/large"]
                assert (
                    await c.get("conc", n, offset=MiB + i, length=MiB) == b[MiB + i : 2 * MiB + i]
                )
        return sum(map(len, bodies.values()))

    tasks = [asyncio.create_task(client(i)) for i in range(100)]
    await asyncio.sleep(0.2)  # let all 100 get ready, then start them together
    go.set()
    moved = await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    assert len(moved) == 100 and sum(moved) > 50 * MiB

    async with AsyncClient(daemon.address) as c:
        page, nxt = await c.list("conc", limit=1000)
        assert nxt is None and len(page) == 100 * 3 + 25


@pytest.mark.asyncio
async def test_many_requests_in_flight_on_one_connection(daemon: DaemonProcess) -> None:
    """Replies come back matched to their requests whatever their order."""
    async with AsyncClient(daemon.address, pool_size=1) as c:
        bodies = {f"m{i}": data(i, 100 + 5000 * (i % 7) + (2 * MiB if i % 10 == 0 else 0))
                  for i in range(60)}  # fmt: skip
        assert await c.ping()  # one connection, open before the burst
        await asyncio.gather(*(c.put("pipe", n, b) for n, b in bodies.items()))
        assert len(c._conns) == 1
        got = await asyncio.gather(*(c.get("pipe", n) for n in bodies))
        assert got == list(bodies.values())
        infos = await asyncio.gather(*(c.stat("pipe", n) for n in bodies))
        assert [i.name for i in infos] == list(bodies)


# -- the HTTP read endpoint, with curl --------------------------------------------------------


def curl(*args: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one curl request (headers and body kept apart)."""
    exe = shutil.which("curl")
    if exe is None:
        pytest.skip("curl is not installed")
    p = subprocess.run(
        [exe, "-sS", "--dump-header", "/dev/stderr", *args], capture_output=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    head = p.stderr.decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {}
    for line in head[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return status, headers, p.stdout


def test_http_read_endpoint_with_curl(daemon: DaemonProcess) -> None:
    small, large = data("http", 100), data("http-large", 5 * MiB + 3)
    odd_name = "dir/sub dir/файл ü €.bin"  # slashes, a space, UTF-8
    with Client(daemon.address) as c:
        key = c.put("testpool", "small", small)
        c.put("testpool", "large", large)
        c.put("testpool", odd_name, b"odd name")
        c.put("testpool", "empty", b"")
    base = f"http://{daemon.http}/testpool"

    status, h, body = curl(f"{base}/small")
    assert status == 200 and body == small and h["content-length"] == "100"
    assert h["etag"] == f'"{key.hash.hex()}"' and h["accept-ranges"] == "bytes"

    status, h, body = curl("-r", "20-59", f"{base}/small")
    assert status == 206 and body == small[20:60]
    assert h["content-range"] == "bytes 20-59/100" and h["content-length"] == "40"

    status, h, body = curl("-r", "-10", f"{base}/small")  # the last 10 bytes
    assert status == 206 and body == small[90:] and h["content-range"] == "bytes 90-99/100"
    status, h, body = curl("-r", "95-", f"{base}/small")
    assert status == 206 and body == small[95:]
    status, h, body = curl("-r", "90-500", f"{base}/small")  # clipped to the end
    assert status == 206 and body == small[90:] and h["content-range"] == "bytes 90-99/100"

    status, h, body = curl("-I", "-o", "/dev/null", f"{base}/small")
    assert status == 200
    assert h["content-length"] == "100" and h["etag"] == f'"{digest(small).hex()}"'
    assert "last-modified" in h

    status, h, body = curl("-r", "100-200", f"{base}/small")
    assert status == 416 and h["content-range"] == "bytes */100"
    status, h, _ = curl("-r", "0-0", f"{base}/empty")
    assert status == 416
    status, h, body = curl(f"{base}/empty")
    assert status == 200 and body == b"" and h["content-length"] == "0"

    status, _, _ = curl(f"{base}/missing")
    assert status == 404
    status, _, _ = curl(f"http://{daemon.http}/otherpool/small")
    assert status == 404

    for encoded in (quote(odd_name), quote(odd_name, safe="")):  # slashes raw or as %2F
        status, h, body = curl(f"{base}/{encoded}")
        assert status == 200 and body == b"odd name", encoded

    # a large body streams; a range inside it crosses the 1 MiB and 4 MiB marks
    status, h, body = curl(f"{base}/large")
    assert status == 200 and digest(body) == digest(large)
    status, h, body = curl("-r", f"{MiB - 10}-{4 * MiB + 10}", f"{base}/large")
    assert status == 206 and body == large[MiB - 10 : 4 * MiB + 11]

    status, h, _ = curl("-X", "PUT", "--data", "x", f"{base}/small")
    assert status == 405 and h["allow"] == "GET, HEAD"
    status, _, _ = curl(f"http://{daemon.http}/testpool")
    assert status == 400


# -- stopping and starting --------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_clean_stop_with_clients_connected_then_restart(tmp_path: Path, sig: int) -> None:
    d = tidy(start_daemon(tmp_path / "d"))
    try:
        bodies = {f"o{i}": data(f"restart{i}", 10**i) for i in range(7)}  # 1 B .. 1 MB
        with Client(d.address, timeout=5, retries=1) as c:
            for n, b in bodies.items():
                c.put("p", n, b)
            assert c.ping()  # a connection is open and idle as the signal comes
            t0 = time.monotonic()
            assert d.stop(sig) == 0, "the daemon should exit 0 on SIGTERM and SIGINT"
            assert time.monotonic() - t0 < 5
            with pytest.raises(ConnectionError):
                c.ping()
    finally:
        d.stop()

    d2 = tidy(start_daemon(tmp_path / "d"))  # the same directory: the same disk and key store
    try:
        with Client(d2.address) as c:
            for n, b in bodies.items():
                assert c.get("p", n) == b
            assert [i.name for i in c.list("p")[0]] == sorted(bodies)
        check_disk(d2)
        assert "Traceback" not in daemon_log(d2)
    finally:
        d2.stop()
        discard_disk(d2)


# -- bugs found while writing these tests -----------------------------------------------------


@pytest.mark.asyncio
async def test_request_timeout_is_a_timeout(daemon: DaemonProcess) -> None:
    async with AsyncClient(daemon.address, timeout=0.3, retries=2) as c:
        assert await c.ping()
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await c.stat("p", "x")
            assert time.monotonic() - t0 < 0.9, "a timed-out request should not be retried"
        finally:
            daemon.proc.send_signal(signal.SIGCONT)


@pytest.mark.asyncio
async def test_pool_size_bounds_connections(daemon: DaemonProcess) -> None:
    async with AsyncClient(daemon.address, pool_size=2) as c:
        assert all(await asyncio.gather(*(c.ping() for _ in range(20))))
        assert len(c._conns) <= 2, f"{len(c._conns)} connections with pool_size=2"


@pytest.mark.asyncio
async def test_sigterm_during_an_upload_is_quiet(daemon: DaemonProcess) -> None:
    sent, more = asyncio.Event(), asyncio.Event()

    async def source() -> AsyncIterator[bytes]:
        for piece in chunked(5, 16 * MiB, MiB):
            yield piece
        sent.set()
        await more.wait()
        yield bytes(MiB)

    async with AsyncClient(daemon.address) as c:
        task = asyncio.create_task(c.put_stream("p", "cut", 64 * MiB, source()))
        await sent.wait()
        await asyncio.sleep(0.3)  # the daemon has the pieces: its writer exists
        assert await asyncio.to_thread(daemon.stop) == 0
        more.set()
        with pytest.raises(ConnectionError):
            await task
    log = daemon_log(daemon)
    assert "Traceback" not in log, log


def test_ids_are_unique_uuids(daemon: DaemonProcess) -> None:
    with Client(daemon.address) as c:
        keys = [c.put("p", None, b"same bytes") for _ in range(20)]
    uuids = {k.uuid for k in keys}
    assert len(uuids) == 20 and all(isinstance(u, uuid.UUID) for u in uuids)
    assert len({k.hash for k in keys}) == 1
