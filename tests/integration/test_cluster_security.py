"""A real cluster with TLS on: the master's peer address takes daemons over mutual TLS, its
client address speaks TLS; certificates come from `shoal certs` (and shoal.certs.issue).
Every refusal is an error that says what is wrong, and is logged where it happened: a wrong
secret or an unknown key, an expired or forged ticket, a right the key lacks, a daemon with a
certificate of another CA, a client that does not trust the cluster's CA."""

from __future__ import annotations

import asyncio
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.client.client import parse_address
from shoal.client.cluster import ClusterClient
from shoal.client.connection import Connection
from shoal.cluster.auth import issue
from shoal.daemon.process import DaemonProcess, spawn
from shoal.errors import Forbidden, NotAuthenticated, NotFound
from shoal.proto.frames import Op
from shoal.tls import client_context
from tests.integration.cluster_helpers import (
    FAST,
    MasterProcess,
    TidyClusterClient,
    Tls,
    daemon_log,
    daemons_by_id,
    direct,
    eventually,
    map_at,
    run_sync,
    shoal,
    shoal_env,
    start_master,
    start_member,
    state,
    stop_all,
    wait_closed,
    wait_current,
    wait_registered,
)

N = 2


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MasterProcess]:
    """A master with TLS and two daemons with certificates (made by `shoal certs`), a pool
    `p` (1 replica, spread over daemons) holding p/a, and an empty pool `q`."""
    root = tmp_path_factory.mktemp("secure")
    env = shoal_env(root / "home")
    out = shoal("certs", "--dir", str(root / "tls"), "master", "daemon0", "daemon1",
                env=env, cwd=root).stdout.decode()  # fmt: skip
    assert out.splitlines()[0].startswith(f"{root / 'tls' / 'ca.crt'} (the CA;")
    for name in ("ca", "master", "daemon0", "daemon1"):
        assert stat.S_IMODE((root / "tls" / f"{name}.key").stat().st_mode) == 0o600
        assert (root / "tls" / f"{name}.crt").is_file()
    m = start_master(root / "master", *FAST, tls=Tls(root / "tls"))
    try:
        for i in range(N):
            start_member(m, root / f"daemon{i}", f"h{i}")

        async def ready() -> None:
            async with m.client_for() as c:
                await wait_registered(c, N)
                for name in ("p", "q"):
                    out = await c.admin("pool_create", name=name, replicas=1, pg_num=16,
                                        failure_domain="daemon")  # fmt: skip
                await map_at(c, out["epoch"])
                await c.put("p", "a", b"the object a")
                await wait_current(c)

        run_sync(ready)
        yield m
    finally:
        assert not stop_all(m)


def logs(m: MasterProcess) -> str:
    """The master's log and every daemon's, one after the other."""
    return m.log + "".join(daemon_log(d) for d in m.daemons)


async def refused_within(coro: object, seconds: float = 10.0) -> BaseException:
    """The exception `coro` fails with, which must come within `seconds` (no hang)."""
    try:
        async with asyncio.timeout(seconds):
            await coro  # type: ignore[misc]
    except TimeoutError:
        raise AssertionError(f"no answer within {seconds} s") from None
    except Exception as exc:
        return exc
    raise AssertionError("it worked")


async def connect_refused(c: ClusterClient, seconds: float = 10.0) -> BaseException:
    """Why `c` cannot connect (within `seconds`). `c` is closed after: a failed connect
    leaves its connection to the master open (see the report)."""
    try:
        return await refused_within(c.connect(), seconds)
    finally:
        await c.close()


@pytest.mark.asyncio
async def test_tls_cluster_serves_clients_with_the_ca(secure: MasterProcess) -> None:
    async with secure.client_for() as c:
        assert c.ssl is not None
        ds = await daemons_by_id(c)
        assert len(ds) == N and all(state(d) == "up,in" for d in ds.values())
        assert {d["host"] for d in ds.values()} == {"h0", "h1"}
        assert await c.get("p", "a") == b"the object a"
        for i in range(10):
            await c.put("p", f"tls-{i}", b"%d" % i)
        assert [await c.get("p", f"tls-{i}") for i in range(10)] == [b"%d" % i for i in range(10)]
    # the `shoal` command with --ca-cert (here: SHOAL_CA_CERT) too
    home = secure.dir / "home"
    env = shoal_env(home, secure)
    assert shoal("read", "--pool", "p", "a", env=env, cwd=home).stdout == b"the object a"

    # the client address speaks only TLS; the peer address only mutual TLS
    host, port = parse_address(secure.client)
    exc = await connect_refused(TidyClusterClient(secure.client, "k", "s", timeout=5))
    assert isinstance(exc, ConnectionError), exc
    host, port = parse_address(secure.peer)
    conn = await Connection.open(host, port, 5, ssl=client_context(secure.ca))  # no cert
    exc = await refused_within(conn.request(Op.REGISTER, {"uuid": "x", "address": "y:1",
                                                          "host": "z"}))  # fmt: skip
    await wait_closed([conn])
    assert isinstance(exc, ConnectionError), exc
    assert len(await daemons_with(secure)) == N


async def daemons_with(m: MasterProcess) -> dict[int, dict[str, object]]:
    async with m.client_for() as c:
        return await daemons_by_id(c)


@pytest.mark.asyncio
async def test_wrong_secret_and_unknown_key(secure: MasterProcess) -> None:
    assert secure.access_key
    exc = await connect_refused(secure.client_for(secret="not-the-secret"))
    assert isinstance(exc, NotAuthenticated) and str(exc) == "unknown access key or wrong secret"
    exc = await connect_refused(secure.client_for(access="SKNOSUCHKEY000000000"))
    assert isinstance(exc, NotAuthenticated) and str(exc) == "unknown access key or wrong secret"
    log = secure.log
    assert f"WARNING authentication refused for key '{secure.access_key}'" in log
    assert "WARNING authentication refused for key 'SKNOSUCHKEY000000000'" in log


@pytest.fixture
def short_tickets(tmp_path: Path) -> Iterator[MasterProcess]:
    """A master of its own whose tickets are good for 1 s, with one daemon."""
    m = start_master(tmp_path / "master", *FAST, "--ticket-ttl", "1", tls=Tls(tmp_path / "tls"))
    try:
        start_member(m, tmp_path / "daemon0", "h0")
        yield m
    finally:
        assert not stop_all(m)


@pytest.mark.asyncio
async def test_expired_ticket(short_tickets: MasterProcess) -> None:
    """A request with a ticket past its time is refused; ClusterClient renews its ticket
    without the caller noticing."""
    m, d = short_tickets, short_tickets.daemons[0]
    async with m.client_for() as c:
        await wait_registered(c, 1)
        out = await c.admin("pool_create", name="p", replicas=1, pg_num=4)
        await map_at(c, out["epoch"])
        await c.put("p", "x", b"before")
        old = c.ticket
        assert old is not None
        await asyncio.sleep(1.2)

        async with direct(c, d.address) as raw:
            raw.ticket = old
            exc = await refused_within(raw.get("p", "x"))
            assert isinstance(exc, NotAuthenticated)
            assert re.fullmatch(r"the ticket of key SK\w+ has expired: authenticate again",
                                str(exc))  # fmt: skip

        # the client renews the ticket before it runs out ...
        assert await c.get("p", "x") == b"before" and c.ticket != old
        # ... and when a daemon refuses one it took for good, it authenticates again
        c.ticket, c._ticket_until = old, time.monotonic() + 3600
        await c.put("p", "x", b"after")
        assert c.ticket != old and await c.get("p", "x") == b"after"
    log = daemon_log(d)
    assert re.search(r"WARNING refused op \d+: the ticket of key SK\w+ has expired", log)


@pytest.mark.asyncio
async def test_forged_tampered_and_missing_tickets(secure: MasterProcess) -> None:
    assert secure.access_key
    async with secure.client_for() as c:
        ds = await daemons_by_id(c)
        primary = ds[c.acting("p", "a")[0]]
        async with direct(c, primary["address"]) as raw:
            assert await raw.get("p", "a") == b"the object a"  # (the real ticket works)
            real = raw.ticket
            assert real is not None

            forged = issue(b"another cluster's key...........", secure.access_key,
                           {"*": "rwda"}, 3600)  # fmt: skip
            tampered = real[:-33] + bytes([real[-33] ^ 1]) + real[-32:]
            for ticket in (forged, tampered):
                raw.ticket = ticket
                exc = await refused_within(raw.get("p", "a"))
                assert isinstance(exc, NotAuthenticated)
                assert str(exc) == "the ticket's signature does not match (another cluster?)"
                exc = await refused_within(raw.put("p", "forged", b"x"))
                assert isinstance(exc, NotAuthenticated)

            raw.ticket = None
            exc = await refused_within(raw.stat("p", "a"))
            assert isinstance(exc, NotAuthenticated)
            assert str(exc) == "no ticket: authenticate with the master first"

            raw.ticket = real  # nothing was stored, there or anywhere
            assert "forged" not in [x.name for x in (await raw.list("p"))[0]]
            exc = await refused_within(c.stat("p", "forged"))
            assert isinstance(exc, NotFound)
        # at the master, a forged ticket is no better
        conn = await Connection.open(*parse_address(secure.client), 5, ssl=c.ssl)
        exc = await refused_within(
            conn.request(Op.ADMIN, {"ticket": forged, "cmd": "key_create", "args": {}})
        )
        await wait_closed([conn])
        assert isinstance(exc, NotAuthenticated)

    log = logs(secure)
    forged_msg = "the ticket's signature does not match (another cluster?)"
    assert f"refused op {int(Op.GET)}: {forged_msg}" in log
    assert f"refused op {int(Op.PUT)}: {forged_msg}" in log
    assert f"refused op {int(Op.STAT)}: no ticket: authenticate with the master first" in log
    assert f"client request {int(Op.ADMIN)} refused: {forged_msg}" in secure.log


@pytest.mark.asyncio
async def test_rights(secure: MasterProcess) -> None:
    home = secure.dir / "home"
    out = shoal("key", "create", "--rights", "p=r", "--comment", "reader",
                env=shoal_env(home, secure), cwd=home).stdout.decode()  # fmt: skip
    m = re.fullmatch(r"access key: (\S+)\nsecret key: (\S+)\n", out)
    assert m, out
    reader = m.group(1), m.group(2)
    async with secure.client_for() as admin:
        other = await admin.admin("key_create", rights={"q": "rw"}, comment="q only")
        keys = {k["access_key"]: k for k in (await admin.admin("key_ls"))["keys"]}
        assert keys[reader[0]]["rights"] == {"p": "r"} and keys[reader[0]]["comment"] == "reader"

    async with secure.client_for(*reader) as r:
        assert await r.get("p", "a") == b"the object a"
        assert (await r.stat("p", "a")).size == len(b"the object a")
        assert "a" in [x.name async for x in r.list("p")]
        exc = await refused_within(r.put("p", "b", b"no"))
        assert isinstance(exc, Forbidden) and str(exc) == f"key {reader[0]} may not write 'p'"
        exc = await refused_within(r.delete("p", "a"))
        assert isinstance(exc, Forbidden) and str(exc) == f"key {reader[0]} may not delete 'p'"
        exc = await refused_within(r.write_at("p", "a", 0, b"no"))
        assert isinstance(exc, Forbidden)
        for cmd, args in (("daemon_ls", {}), ("pool_create", {"name": "mine"}),
                          ("key_create", {"rights": {"*": "rwda"}})):  # fmt: skip
            exc = await refused_within(r.admin(cmd, **args))
            assert isinstance(exc, Forbidden) and str(exc) == f"key {reader[0]} is not an admin key"
        assert (await r.admin("status"))["up"] == N  # (status is for any key)
        assert await r.get("p", "a") == b"the object a"  # untouched

    async with secure.client_for(other["access_key"], other["secret"]) as q:
        exc = await refused_within(q.get("p", "a"))
        assert isinstance(exc, Forbidden)
        assert str(exc) == f"key {other['access_key']} may not read 'p'"
        await q.put("q", "mine", b"q's own")
        assert await q.get("q", "mine") == b"q's own"

    log = logs(secure)
    assert (
        f"key {reader[0]} may not write 'p'" in log and f"key {reader[0]} may not delete 'p'" in log
    )
    assert f"key {other['access_key']} may not read 'p'" in log
    assert f"admin command daemon_ls refused for key {reader[0]}" in secure.log
    assert f"admin command key_create refused for key {reader[0]}" in secure.log


def rogue(m: MasterProcess, directory: Path, cert: tuple[str, str], ca: str) -> DaemonProcess:
    """A daemon that tries to join `m` with `cert` and trusting `ca`."""
    d = spawn(directory, size="256M", http="off",
              extra=["--master", m.peer, "--host", "rogue", "--peer-cert", cert[0],
                     "--peer-key", cert[1], "--peer-ca-cert", ca])  # fmt: skip
    assert d.proc.stdout is not None
    d.proc.stdout.close()
    d.proc.stdout = None
    m.daemons.append(d)
    return d


@pytest.mark.asyncio
async def test_daemon_of_another_ca_cannot_join(secure: MasterProcess, tmp_path: Path) -> None:
    other = Tls(tmp_path / "other-tls")
    # a daemon of another cluster altogether: it does not trust this master either
    stranger = rogue(secure, tmp_path / "stranger", other.cert("daemon0"), other.ca)
    # a daemon with a certificate of another CA, that trusts this cluster's CA
    impostor = rogue(secure, tmp_path / "impostor", other.cert("daemon1"), secure.ca)

    def attempts(d: DaemonProcess) -> int:
        return len(re.findall(r"WARNING master at \S+: .*; retrying in", daemon_log(d)))

    async def tried() -> tuple[int, int]:
        return attempts(stranger), attempts(impostor)

    await eventually(tried, lambda n: min(n) >= 3, timeout=10)
    ds = await daemons_with(secure)
    assert len(ds) == N and {d["host"] for d in ds.values()} == {"h0", "h1"}
    assert "rogue" not in secure.log
    assert "CERTIFICATE_VERIFY_FAILED" in daemon_log(stranger)
    assert "registered" not in daemon_log(stranger) + daemon_log(impostor)
    # (the impostor's log says only "connection lost": see the next test)
    for d in (stranger, impostor):
        assert d.proc.poll() is None, "it keeps trying"


@pytest.mark.asyncio
async def test_refused_daemon_certificate_is_logged(secure: MasterProcess, tmp_path: Path) -> None:
    other = Tls(tmp_path / "other-tls")
    impostor = rogue(secure, tmp_path / "impostor", other.cert("daemon1"), secure.ca)

    async def its_log() -> str:
        return daemon_log(impostor)

    await eventually(its_log, lambda log: log.count("retrying") >= 2)
    assert re.search(r"peer connection from \S+ refused: TLS handshake failed", secure.log), (
        secure.log
    )


@pytest.mark.asyncio
async def test_client_with_the_wrong_ca(secure: MasterProcess, tmp_path: Path) -> None:
    other = Tls(tmp_path / "other-tls")
    other.cert("x")  # (makes the CA)
    assert secure.access_key and secure.secret
    t0 = time.monotonic()
    c = TidyClusterClient(secure.client, secure.access_key, secure.secret, ca=other.ca)
    exc = await connect_refused(c)
    assert time.monotonic() - t0 < 5
    assert isinstance(exc, ConnectionError)
    assert str(exc).startswith(f"cannot reach the master at {secure.client}: ")
    assert "CERTIFICATE_VERIFY_FAILED" in str(exc)

    home = tmp_path / "home"
    p = shoal("status", "--ca-cert", other.ca, env=shoal_env(home, secure), cwd=home, ok=False,
              timeout=30)  # fmt: skip
    assert p.returncode == 1
    err = p.stderr.decode()
    assert err.startswith("shoal: error: cannot reach the master") and "certificate" in err, err
