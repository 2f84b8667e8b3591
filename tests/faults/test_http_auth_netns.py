"""The HTTP gateway off loopback takes keys; a daemon without a master off loopback serves no
unsigned read.

A network namespace joined to ours by a veth pair stands for another machine: the cluster (a
master and 3 daemons, as `shoal up` starts them) listens on 127.0.0.1, a gateway listens on
our end of the veth pair (an address that is not loopback), and curl runs inside the
namespace. Without `--no-auth` that gateway answers 401 (with a Basic challenge) to a request
without a key, with a malformed one, an unknown key or a wrong secret; 403 to a key without
the right its method takes on the pool (r for GET, HEAD and ?list, w for PUT, d for DELETE);
and serves a key that has it, given as HTTP Basic or as a bearer. With `--no-auth` it is
open. Needs root (network namespaces) and iproute2: skipped when not root.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.up import LocalCluster
from tests.conftest import start_daemon
from tests.faults.netns import Link, veth_namespace
from tests.integration.cluster_helpers import shoal, shoal_env
from tests.integration.http_helpers import Gateway, local_cluster, start_gateway

pytestmark = [pytest.mark.slow, pytest.mark.root]


@pytest.fixture(scope="module")
def link() -> Iterator[Link]:
    if os.geteuid() != 0:
        pytest.skip(
            "needs root: makes a network namespace and a veth pair (ip netns, ip link); "
            "run the fault tests as root, as CI does"
        )
    with veth_namespace("shoalauth") as ln:
        yield ln


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Gateway]]:
    with local_cluster(tmp_path_factory.mktemp("netauth") / "shoal-data") as (cluster, gateway):
        yield cluster, gateway


class Remote:
    """curl from inside the namespace (another machine, as far as the gateway can tell)."""

    def __init__(self, link: Link, gateway: Gateway) -> None:
        self.link, self.gw = link, gateway

    def curl(self, key: str, *args: str, query: str = "", data: bytes | None = None) -> Result:
        argv = self.link.argv(
            "curl", "-sS", "-D", "/dev/stderr", *args, "-w", "\n%{http_code}",
            self.gw.url(key, query),
        )  # fmt: skip
        p = subprocess.run(argv, input=data, capture_output=True, timeout=60)
        body, _, code = p.stdout.rpartition(b"\n")
        return Result(int(code or 0), body, p.stderr.decode("latin-1"))

    def put(self, key: str, body: bytes, *args: str) -> Result:
        return self.curl(key, "-X", "PUT", "--data-binary", "@-", *args, data=body)


class Result:
    def __init__(self, status: int, body: bytes, head: str) -> None:
        self.status, self.body, self.head = status, body, head

    def __repr__(self) -> str:
        return f"Result({self.status}, {self.body[:200]!r})"


def new_key(lc: LocalCluster, rights: str) -> tuple[str, str]:
    """`shoal key create --rights RIGHTS`, as an operator makes one: (access, secret)."""
    p = shoal("key", "create", "--rights", rights, "--config", str(lc.data / "client.json"),
              env=shoal_env(lc.data.parent / "home"), cwd=lc.data)  # fmt: skip
    out = p.stdout.decode()
    access = re.search(r"access key: (\S+)", out)
    secret = re.search(r"secret key: (\S+)", out)
    assert access and secret, out
    return access.group(1), secret.group(1)


def basic(access: str, secret: str) -> tuple[str, str]:
    return (
        "-H",
        "Authorization: Basic " + base64.b64encode(f"{access}:{secret}".encode()).decode(),
    )


def bearer(access: str, secret: str) -> tuple[str, str]:
    return ("-H", f"Authorization: Bearer {access}:{secret}")


def test_a_gateway_off_loopback_takes_keys(
    link: Link, cluster: tuple[LocalCluster, Gateway]
) -> None:
    lc, local = cluster
    cfg = json.loads((lc.data / "client.json").read_text())
    admin = (cfg["access_key"], cfg["secret_key"])
    reader, writer = new_key(lc, "default=r"), new_key(lc, "default=rwd")
    elsewhere = new_key(lc, "other=rwda")
    value = os.urandom(2000)
    assert local.put("auth/x", value).status == 201  # (loopback: open, as minikeyvalue)
    assert local.get("auth/x").body == value

    log = lc.data / "http-netns.log"
    gw = start_gateway(lc, "default", local.index, log, "--host", link.host_ip)
    try:
        assert gw.address.startswith(f"{link.host_ip}:"), gw.address
        far = Remote(link, gw)

        # no key, a malformed one, an unknown key, a wrong secret: 401 and a challenge
        for args in (
            (), ("-H", "Authorization: Basic !!!"), ("-H", "Authorization: Token x"),
            bearer(admin[0], ""), basic("SKNOSUCHKEY", "x"), bearer(admin[0], "wrong"),
            ("-u", f"{admin[0]}:wrong"), ("-u", f"{reader[0]}:{writer[1]}"),
        ):  # fmt: skip
            r = far.curl("auth/x", *args)
            assert r.status == 401, (args, r)
            assert 'www-authenticate: basic realm="shoal"' in r.head.lower(), r.head
            assert value not in r.body
            assert far.curl("auth/x", *args, "-I").status == 401
            assert far.curl("", *args, query="list").status == 401
            assert far.put("auth/new", b"no", *args).status == 401
            assert far.curl("auth/x", *args, "-X", "DELETE").status == 401
        assert local.get("auth/x").body == value and local.get("auth/new").status == 404

        # a key without the right: 403
        for args in (basic(*elsewhere), bearer(*elsewhere)):
            assert far.curl("auth/x", *args).status == 403
            assert far.curl("", *args, query="list").status == 403
        r = far.put("auth/new", b"no", "-u", f"{reader[0]}:{reader[1]}")
        assert r.status == 403 and b"may not write" in r.body, r
        r = far.curl("auth/x", *bearer(*reader), "-X", "DELETE")
        assert r.status == 403 and b"may not delete" in r.body, r
        assert local.get("auth/x").body == value and local.get("auth/new").status == 404

        # a key with the right, as HTTP Basic (curl -u) or as a bearer
        r = far.curl("auth/x", "-u", f"{reader[0]}:{reader[1]}")
        assert (r.status, r.body) == (200, value)
        assert far.curl("auth/x", *bearer(*reader), "-r", "10-19").body == value[10:20]
        r = far.curl("", *basic(*reader), query="list")
        assert r.status == 200 and "/auth/x" in json.loads(r.body)["keys"]
        assert far.put("auth/w", b"written", *bearer(*writer)).status == 201
        assert far.curl("auth/w", "-u", f"{writer[0]}:{writer[1]}").body == b"written"
        assert far.curl("auth/w", *basic(*writer), "-X", "DELETE").status == 204
        assert far.put("auth/a", b"admin", "-u", f"{admin[0]}:{admin[1]}").status == 201
        assert local.get("auth/a").body == b"admin"
        # the right key remembered does not make a wrong secret good
        assert far.curl("auth/x", *bearer(reader[0], reader[1] + "x")).status == 401
    finally:
        gw.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert {ln["status"] for ln in lines} >= {401, 403, 200, 201, 204}

    # --no-auth: open on that address too
    gw = start_gateway(lc, "default", local.index, log, "--host", link.host_ip, "--no-auth")
    try:
        far = Remote(link, gw)
        assert far.put("auth/open", b"open").status == 201
        assert far.curl("auth/open").body == b"open"
        assert far.curl("auth/x", "-u", "SKNOSUCHKEY:x").body == value  # (keys not looked at)
        assert far.curl("auth/open", "-X", "DELETE").status == 204
    finally:
        gw.stop()


def test_a_daemon_without_a_master_off_loopback_serves_no_unsigned_read(
    link: Link, tmp_path: Path
) -> None:
    """Without a master it has no key to check a signature with: on an address other than
    loopback its HTTP endpoint answers 403 to every read."""
    from shoal.client import Client

    d = start_daemon(tmp_path / "d", "--http", f"{link.host_ip}:0")
    try:
        with Client(d.address) as c:
            c.put("testpool", "x", b"hello")
        assert d.http is not None and d.http.startswith(f"{link.host_ip}:"), d.http
        for args in ((), ("-I",)):
            p = subprocess.run(
                link.argv("curl", "-sS", *args, "-w", "\n%{http_code}",
                          f"http://{d.http}/testpool/x"),
                capture_output=True, timeout=60,
            )  # fmt: skip
            body, _, code = p.stdout.rpartition(b"\n")
            assert code == b"403" and b"hello" not in body, p.stdout
            if not args:
                assert b"no master" in body, body
    finally:
        assert d.stop() == 0
        (d.dir / "blocks").unlink(missing_ok=True)
