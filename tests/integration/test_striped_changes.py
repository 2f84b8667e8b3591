"""Changes of striped objects and the client's read path, at their edges (each test failed
on the code a second review read): a head never sent twice after a lost answer, stripes freed
by a short-lived client, a damaged head copy that must not block writes, the replaced bytes
only for who may read them, a slow but steady reader through the gateway, put_stream counting
bytes. One cluster for the module, started the way `shoal up` starts it."""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import socket
import subprocess
import time
from array import array
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from shoal.client import AsyncClient
from shoal.client.cluster import ClusterClient
from shoal.client.stripes import HEAD_REF
from shoal.errors import Forbidden, OutcomeUnknown
from shoal.up import LocalCluster
from tests.integration.cluster_helpers import TidyClusterClient, shoal, shoal_env
from tests.integration.http_helpers import (
    Gateway,
    live_stripes,
    local_cluster,
    start_gateway,
    status_of,
)

STRIPE = 4 << 20
POOL = "default"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Gateway]]:
    with local_cluster(tmp_path_factory.mktemp("review2") / "shoal-data") as (lc, gw):
        yield lc, gw


def _cli(lc: LocalCluster, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = shoal_env(lc.data.parent / "home")
    return shoal(*args, "--config", str(lc.data / "client.json"), env=env, cwd=lc.data)


def _client(lc: LocalCluster, access: str | None = None, secret: str | None = None,
            **kw: Any) -> ClusterClient:  # fmt: skip
    cfg = json.loads((lc.data / "client.json").read_text())
    return TidyClusterClient(cfg["master"], access or cfg["access_key"],
                             secret or cfg["secret_key"], ca=cfg["ca_cert"], **kw)  # fmt: skip


async def _stripes_gone(lc: LocalCluster, key: str, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while (n := live_stripes(lc, key)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return n


# -- retiring stripes (b4751fd, 237a6d6) ------------------------------------------------------


def test_a_cli_overwrite_or_rm_of_a_striped_object_frees_its_stripes(
    cluster: tuple[LocalCluster, Gateway],
) -> None:
    """client/cluster.py close(): a retirement scheduled by _retire (ensure_future) and not
    yet started when close() cancels it never runs its body, so its `finally` (the drop)
    never runs either: a task cancelled before its first step is thrown CancelledError
    before its `try`. `shoal write` over a striped object and `shoal rm` of one call
    close() right after put/delete returns, with no await between: every set of stripes
    such a short-lived client replaces or deletes stays on the disks for ever."""
    lc, _ = cluster
    f = lc.data.parent / "rv2-big.bin"
    f.write_bytes(os.urandom(2 * STRIPE + 1))
    _cli(lc, "write", "rv2/cli-over", "-f", str(f))
    _cli(lc, "write", "rv2/cli-rm", "-f", str(f))
    assert live_stripes(lc, "rv2/cli-over") == 3 * 3  # 3 stripes, 3 replicas
    _cli(lc, "write", "rv2/cli-over", "--data-literal", "small now")
    _cli(lc, "rm", "rv2/cli-rm")
    left = live_stripes(lc, "rv2/cli-over"), live_stripes(lc, "rv2/cli-rm")
    assert left == (0, 0), f"stripes left behind by clients that have exited: {left}"


def _lose_first_reply(
    monkeypatch: pytest.MonkeyPatch, key: str, meanwhile: Any = None, heads_only: bool = False
) -> None:
    """AsyncClient.put_over: the first call for `key` takes effect on the primary, then its
    reply is lost (the connection breaks, or the client times out): what AsyncClient._call
    raises then, ConnectionError (which ClusterClient._retrying retries), or OutcomeUnknown
    for a write that is not to be sent twice. `meanwhile` runs between the two."""
    real = AsyncClient.put_over
    armed = [True]

    async def lossy(self: AsyncClient, pool: str, name: str, data: Any, **kw: Any) -> Any:
        got = await real(self, pool, name, data, **kw)
        if name == key and armed[0] and (not heads_only or HEAD_REF in kw.get("refs", ())):
            armed[0] = False
            if meanwhile is not None:
                await meanwhile()
            if kw.get("resend") is False:
                raise OutcomeUnknown("connection lost: the change may or may not be made")
            raise ConnectionError("connection lost (the reply of a write that took effect)")
        return got

    monkeypatch.setattr(AsyncClient, "put_over", lossy)


@pytest.mark.asyncio
async def test_a_retried_head_write_racing_another_writer_keeps_its_stripes(
    cluster: tuple[LocalCluster, Gateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data loss, as reviewed. Writer A's head (wid a) is committed but its reply is lost;
    meanwhile B writes its head (wid b) and, given back A's head as `prev`, retires wid a.
    A's retry wrote head a again, was given back B's head and retired wid b: the key's head
    was A's, whose stripes B deleted: unreadable, though both writes were acknowledged.
    A head is now never sent twice: A hears OutcomeUnknown (not acknowledged) and the key
    reads as B wrote it."""
    lc, _ = cluster
    key = "rv2/race"
    a_body, b_body = os.urandom(2 * STRIPE + 1), os.urandom(2 * STRIPE + 2)
    async with _client(lc, grace=0.2) as a, _client(lc, grace=0.2) as b:
        await a.put(POOL, key, os.urandom(2 * STRIPE + 3))

        async def b_writes() -> None:
            await b.put(POOL, key, b_body)

        _lose_first_reply(monkeypatch, key, b_writes, heads_only=True)
        with pytest.raises(OutcomeUnknown):
            await a.put(POOL, key, a_body)  # (not acknowledged: no second try)
        monkeypatch.undo()
        await asyncio.sleep(1.5)  # both graces over, both retirements done
        try:
            got: bytes | Exception = await a.get(POOL, key)
        except Exception as exc:
            got = exc
    ok = got == b_body  # (not in the assert: pytest would print 8 MiB)
    assert ok, f"after B's write (A's outcome unknown) the key reads as {got!r:.200}"


@pytest.mark.asyncio
async def test_prev_if_ref_does_not_give_a_write_only_key_the_bytes_it_replaces(
    cluster: tuple[LocalCluster, Gateway],
) -> None:
    """daemon/server.py _replaced: a PUT (right "w") or DELETE (right "d") that names any
    reference the current object carries gets its bytes back (up to 64 KiB) without the
    right to read ("r"); prev_if_ref is not limited to the heads' reference either."""
    lc, _ = cluster
    ref = b"consumer-0000001"
    async with _client(lc) as admin:
        made = await admin.admin("key_create", rights={POOL: "w"}, comment="write only")
        await admin.put(POOL, "rv2/secret", b"the secret bytes")
        await admin._on_primary(POOL, "rv2/secret",
                                lambda c: c.add_refs(POOL, "rv2/secret", [ref]))  # fmt: skip
    async with _client(lc, made["access_key"], made["secret"]) as w:
        try:
            _, prev = await w._on_primary(
                POOL, "rv2/secret", lambda c: c.put_over(POOL, "rv2/secret", b"x", over_ref=ref)
            )
        except Forbidden:
            prev = None  # (refused: as good)
    assert prev is None, f"a write-only key read {prev!r}"


@pytest.mark.asyncio
async def test_a_damaged_copy_of_a_head_on_the_primary_does_not_block_writes_to_its_key(
    cluster: tuple[LocalCluster, Gateway],
) -> None:
    """daemon/server.py _replaced: the primary reads the head being replaced from its own
    copy (repl.whole) before it writes; when that copy is damaged (a bad block), the PUT or
    DELETE fails with IntegrityError (the gateway answers 500; ClusterClient does not retry
    it) until a scrub repairs it: the key can be neither overwritten nor deleted. Before
    b4751fd the client read the head from the first replica that had a good copy (and the
    write itself never reads the old bytes), so both succeeded."""
    lc, _ = cluster
    key = "rv2/damaged"
    async with _client(lc, grace=0.2) as c:
        await c.put(POOL, key, os.urandom(STRIPE + 5))
        head = await c._head(POOL, key)
        assert head is not None
        primary = c.map.daemons[c.acting(POOL, key)[0]].address
        folder = lc.daemon_folders()[primary]
        with open(folder / "blocks", "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
            at = mm.find(head.encode())
            assert at >= 0, "the head's bytes are not in the primary's blocks file"
            mm[at + 3] ^= 0xFF  # (one bad byte in the primary's copy of the head)
            mm.flush()
        errors = []
        try:
            await c.put(POOL, key, b"small now")
        except Exception as exc:
            errors.append(f"PUT: {type(exc).__name__}: {exc}")
        try:
            await c.delete(POOL, key)
        except Exception as exc:
            errors.append(f"DELETE: {type(exc).__name__}: {exc}")
    assert not errors, errors


# -- put_stream (0ce7c6b) -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_put_stream_of_known_size_counts_bytes_not_items(
    cluster: tuple[LocalCluster, Gateway],
) -> None:
    """client/cluster.py put_stream (size <= STRIPE): `n = len(chunk)` counts the items of
    a memoryview, not its bytes, and `whole[fill:fill+n] = chunk` then grows `whole`: a
    memoryview of 4-byte items (which the stripe path handles, with cast("B"), as the old
    code did) is refused ("the source gave 4 of the announced 16 bytes"), or stored with
    the wrong length when the item count happens to add up."""
    lc, _ = cluster
    words = array("I", [1, 2, 3, 4])

    async def chunks() -> AsyncIterator[memoryview]:
        yield memoryview(words)

    async with _client(lc) as c:
        await c.put_stream(POOL, "rv2/words", len(words) * words.itemsize, chunks())
        assert await c.get(POOL, "rv2/words") == words.tobytes()


# -- the gateway (237a6d6) ----------------------------------------------------------------------


def test_a_slow_but_steady_reader_is_not_cut_off(cluster: tuple[LocalCluster, Gateway]) -> None:
    """gateway/http.py _get: the idle timeout wraps the send of a whole stripe (4 MiB), and
    uvicorn's send first waits for the previous one to drain: a client has to take about a
    stripe within --idle-timeout, not "something". With the default 60 s a client slower
    than ~70 KB/s is cut off mid-download although it never stops reading; here (3 s) one
    reading steadily at ~1 MiB/s is. (The gateway gives up at once and logs 499; the client
    sees the end only after what was buffered for it, so the log is what is watched.)"""
    lc, main = cluster
    total = 5 * STRIPE
    assert main.put("rv2/slow", os.urandom(total)).status == 201
    log = lc.data / "http-rv2-slow.log"
    gw = start_gateway(lc, POOL, main.index, log, "--idle-timeout", "3")
    got, cut = 0, ""
    try:
        host, _, port = gw.address.rpartition(":")
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.settimeout(10)
            s.connect((host, int(port)))
            s.sendall(b"GET /rv2/slow HTTP/1.1\r\nHost: x\r\n\r\n")
            first = s.recv(65536)
            assert status_of(first) == 200, first[:200]
            got, t0 = len(first), time.monotonic()
            while time.monotonic() - t0 < 7 and got < total:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    cut = "the connection ended"
                    break
                got += len(chunk)
                if log.exists() and '"status": 499' in log.read_text():
                    cut = "the gateway gave the client up (499)"
                    break
                time.sleep(0.06)  # (at most ~1 MiB/s; it never stops for 3 s)
    finally:
        gw.stop()
    assert not cut, f"a client reading ~1 MiB/s: {cut} after it took {got} bytes"
