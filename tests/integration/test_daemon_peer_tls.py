"""The daemon's peer address (where other daemons connect) speaks mutual TLS when given
certificates: a peer with a certificate of the cluster's CA is served, large GETs included
(they go through TLS, not around it); a peer without one, or with one of another CA, is
turned away at the handshake."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.certs import issue
from shoal.client.connection import Connection
from shoal.proto.frames import Op
from shoal.tls import client_context
from tests.conftest import DaemonProcess, remove_data, start_daemon
from tests.integration.daemon_helpers import MiB, data, digest, host_port


@pytest.fixture
def tls_daemon(tmp_path: Path) -> Iterator[tuple[DaemonProcess, Path]]:
    tls = tmp_path / "tls"
    issue(tls, "daemon0", [])
    issue(tls, "peer", [])
    d = start_daemon(
        tmp_path / "d", "--peer-address", "127.0.0.1:0",
        "--peer-cert", str(tls / "daemon0.crt"), "--peer-key", str(tls / "daemon0.key"),
        "--peer-ca-cert", str(tls / "ca.crt"), size="256M",
    )  # fmt: skip
    yield d, tls
    assert d.stop() == 0
    remove_data(d)


async def _open(d: DaemonProcess, ctx: ssl.SSLContext | None) -> Connection:
    assert d.peer is not None
    host, port = host_port(d.peer)
    return await Connection.open(host, port, 10.0, ssl=ctx)


@pytest.mark.asyncio
async def test_a_peer_of_the_cluster_is_served_over_mutual_tls(
    tls_daemon: tuple[DaemonProcess, Path],
) -> None:
    d, tls = tls_daemon
    ctx = client_context(str(tls / "ca.crt"), str(tls / "peer.crt"), str(tls / "peer.key"))
    conn = await _open(d, ctx)
    try:
        body = data("tls", 10 * MiB + 123)
        meta = {"namespace": "p", "name": "big", "refs": [], "permanent": False}
        await conn.request(Op.PUT, meta, body)
        _, got = await conn.request(Op.GET, {"namespace": "p", "name": "big"})
        assert digest(got) == digest(body)
        part = {"namespace": "p", "name": "big", "offset": 4 * MiB - 7, "length": 5 * MiB}
        _, got = await conn.request(Op.GET, part)
        assert bytes(got) == body[4 * MiB - 7 : 9 * MiB - 7]
    finally:
        conn.close()
        await conn.wait_closed()


@pytest.mark.asyncio
async def test_a_peer_without_the_clusters_certificate_is_turned_away(
    tls_daemon: tuple[DaemonProcess, Path], tmp_path: Path
) -> None:
    d, tls = tls_daemon
    other = tmp_path / "other-ca"
    issue(other, "intruder", [])
    cases = {
        "no TLS at all": None,
        "no certificate": client_context(str(tls / "ca.crt")),
        "another CA's certificate": client_context(
            str(tls / "ca.crt"), str(other / "intruder.crt"), str(other / "intruder.key")
        ),
    }
    for what, ctx in cases.items():
        refused = False
        try:
            conn = await _open(d, ctx)
            try:  # TLS 1.3: the server's verdict on the certificate arrives with the reply
                await asyncio.wait_for(conn.request(Op.PING, {}), 5.0)
            finally:
                conn.close()
                await conn.wait_closed()
        except (ConnectionError, ssl.SSLError, OSError):
            refused = True
        assert refused, f"{what}: the daemon's peer address answered"
    # and the daemon still serves its own clients
    ctx = client_context(str(tls / "ca.crt"), str(tls / "peer.crt"), str(tls / "peer.key"))
    conn = await _open(d, ctx)
    try:
        meta, _ = await conn.request(Op.PING, {})
        assert meta.get("pong") is True
    finally:
        conn.close()
        await conn.wait_closed()
