"""No way around the keys: a daemon's HTTP read endpoint serves only URLs signed with a ticket
that may read the object's pool (as its native port takes only such tickets), and the HTTP
gateway's redirect carries such a URL. A cluster started the way `shoal up` starts it, real
curl."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from shoal.client import AsyncClient
from shoal.client.cluster import ClusterClient
from shoal.cluster.auth import sign_read
from shoal.errors import NotAuthenticated
from shoal.up import LocalCluster
from tests.integration.cluster_helpers import TidyClusterClient
from tests.integration.http_helpers import CurlResult, Gateway, local_cluster, start_gateway

T = TypeVar("T")
POOL = "default"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Gateway]]:
    with local_cluster(tmp_path_factory.mktemp("auth") / "shoal-data") as (cluster, gateway):
        yield cluster, gateway


def with_client(
    lc: LocalCluster,
    go: Callable[[ClusterClient], Awaitable[T]],
    key: tuple[str, str] | None = None,
) -> T:
    """`go(client)` with a connected client of the cluster: the admin key of its client.json,
    or `key`."""
    cfg = json.loads((lc.data / "client.json").read_text())
    access, secret = key or (cfg["access_key"], cfg["secret_key"])

    async def run() -> T:
        c = TidyClusterClient(cfg["master"], access, secret, ca=cfg["ca_cert"], timeout=20)
        try:
            await c.connect()
            return await go(c)
        finally:
            await c.close()

    return asyncio.run(run())


def new_key(lc: LocalCluster, rights: dict[str, str]) -> tuple[str, str]:
    async def go(c: ClusterClient) -> tuple[str, str]:
        out = await c.admin("key_create", rights=rights, comment="test_http_auth")
        return str(out["access_key"]), str(out["secret"])

    return with_client(lc, go)


def holders(c: ClusterClient, name: str) -> list[str]:
    """The HTTP addresses of the daemons of `name`'s acting set."""
    return [c.map.daemons[i].http_address for i in c.acting(POOL, name)]


def curl(gw: Gateway, *args: str) -> CurlResult:
    return gw.curl(*args)


def test_the_daemon_endpoint_serves_only_signed_urls(
    cluster: tuple[LocalCluster, Gateway],
) -> None:
    lc, gw = cluster
    a, b = os.urandom(100), os.urandom(3000)
    odd = "dir/sub dir/файл ü €.bin"

    async def setup(c: ClusterClient) -> tuple[bytes, dict[str, list[str]], dict[str, str]]:
        for name, body in (("signed/a", a), ("signed/b", b), (odd, b"odd name")):
            await c.put(POOL, name, body)
        names = ("signed/a", "signed/b", odd)
        queries = {n: await c.sign_read(POOL, n) for n in names}
        assert c.ticket is not None
        return c.ticket, {n: holders(c, n) for n in names}, queries

    ticket, where, query = with_client(lc, setup)
    assert len(where["signed/a"]) == 3

    def url(name: str, q: str, daemon: str | None = None) -> str:
        d = daemon or where.get(name, where["signed/a"])[0]
        return f"http://{d}/{POOL}/{quote(name)}" + (f"?{q}" if q else "")

    # signed: every replica serves it, whole, in ranges, HEAD; names of any UTF-8
    for d in where["signed/a"]:
        r = curl(gw, url("signed/a", query["signed/a"], d))
        assert (r.status, r.body) == (200, a), (d, r.status, r.body[:200])
    r = curl(gw, "-r", "20-59", url("signed/a", query["signed/a"]))
    assert (r.status, r.body, r.headers["content-range"]) == (206, a[20:60], "bytes 20-59/100")
    r = curl(gw, "-I", url("signed/b", query["signed/b"]))
    assert r.status == 200 and r.headers["content-length"] == "3000"
    r = curl(gw, url(odd, query[odd]))
    assert (r.status, r.body) == (200, b"odd name")

    # unsigned (what `curl http://DAEMON/default/NAME` did before): 403, and why
    for name in ("signed/a", odd):
        for extra in ((), ("-I",), ("-r", "0-9")):
            r = curl(gw, *extra, url(name, ""))
            assert r.status == 403, (name, extra, r.status)
    r = curl(gw, url("signed/a", ""))
    assert b"unsigned URL" in r.body and a not in r.body
    assert curl(gw, url("signed/a", "list")).status == 403
    assert curl(gw, url("no/such", "")).status == 403  # (not 404: nothing is told)

    # signed for another object: 403
    r = curl(gw, url("signed/a", query["signed/b"]))
    assert r.status == 403 and b"does not match this object" in r.body
    assert curl(gw, url("signed/ab", query["signed/a"])).status == 403

    # tampered with: the expiry moved, the signature or the ticket's body changed
    p = dict(parse_qsl(query["signed/a"]))
    later = {**p, "expires": str(int(p["expires"]) + 3600)}
    sig = p["sig"]
    other_sig = {**p, "sig": sig[:5] + ("B" if sig[5] != "B" else "C") + sig[6:]}
    body = base64.urlsafe_b64decode(p["ticket"] + "==")
    changed = base64.urlsafe_b64encode(body[:-1] + bytes([body[-1] ^ 1])).rstrip(b"=").decode()
    for bad in (later, other_sig, {**p, "ticket": changed}):
        q = "&".join(f"{k}={v}" for k, v in bad.items())
        r = curl(gw, url("signed/a", q))
        assert r.status == 403 and b"does not match" in r.body, (bad, r.body)

    # expired: signed with a good ticket, but 61 s ago for 60 s
    q = sign_read(ticket, POOL, "signed/a", ttl=60, now=time.time() - 61)
    r = curl(gw, url("signed/a", q))
    assert r.status == 403 and b"expired" in r.body, r.body
    q = sign_read(ticket, POOL, "signed/a", ttl=60, now=time.time() - 30)  # (still good)
    assert curl(gw, url("signed/a", q)).status == 200

    # the URL holds no ticket: what it carries is refused on the daemon's native port
    for t in (body, body + base64.urlsafe_b64decode(sig + "=")):
        with pytest.raises(NotAuthenticated):
            with_client(lc, lambda c, t=t: _native_get(c, t))  # type: ignore[misc]
    assert with_client(lc, lambda c: _native_get(c, ticket)) == a  # (the ticket itself: yes)


async def _native_get(c: ClusterClient, t: bytes) -> bytes:
    """`signed/a` from its primary's native port, with `t` as the ticket."""
    d = c.map.daemons[c.acting(POOL, "signed/a")[0]]
    direct = AsyncClient(d.address, pool_size=1, timeout=10, retries=1)
    direct.ticket, direct.epoch = t, c.map.epoch
    try:
        return bytes(await direct.get(POOL, "signed/a"))
    finally:
        await direct.close()


def test_a_ticket_that_may_not_read_signs_no_url(cluster: tuple[LocalCluster, Gateway]) -> None:
    """The right checked is the ticket's read right on the pool, as on the native port."""
    lc, gw = cluster
    data = os.urandom(500)

    async def setup(c: ClusterClient) -> str:
        await c.put(POOL, "rights/x", data)
        return holders(c, "rights/x")[0]

    daemon = with_client(lc, setup)
    for rights, status in (
        ({POOL: "w"}, 403), ({POOL: "wd"}, 403), ({"elsewhere": "rwda"}, 403),
        ({POOL: "r"}, 200), ({"*": "r"}, 200),
    ):  # fmt: skip
        key = new_key(lc, rights)

        async def sign(c: ClusterClient) -> str:
            return await c.sign_read(POOL, "rights/x")

        q = with_client(lc, sign, key)
        r = curl(gw, f"http://{daemon}/{POOL}/rights/x?{q}")
        assert r.status == status, (rights, r.status, r.body)
        if status == 403:
            assert f"key {key[0]} may not read".encode() in r.body, r.body
        else:
            assert r.body == data


def test_redirect_mode_carries_a_signed_url(cluster: tuple[LocalCluster, Gateway]) -> None:
    """`shoal http --redirect`: the 302's Location is signed, so `curl -L` works; the same
    URL unsigned, or signed for another key, is refused."""
    lc, default_gw = cluster
    gw = start_gateway(lc, POOL, default_gw.index, lc.data / "http-auth-redirect.log", "--redirect")
    try:
        small, other = os.urandom(1000), os.urandom(10)
        assert gw.put("redir/one", small).status == 201
        assert gw.put("redir/two", other).status == 201
        r = gw.get("redir/one")
        assert r.status == 302 and r.body == b""
        loc = urlsplit(r.headers["location"])
        assert loc.path == f"/{POOL}/redir/one"
        params = dict(parse_qsl(loc.query))
        assert set(params) == {"ticket", "expires", "sig"}
        assert time.time() < int(params["expires"]) <= time.time() + 61

        got = gw.get("redir/one", "-L")
        assert (got.status, got.body) == (200, small)
        got = gw.get("redir/one", "-L", "-r", "100-199")
        assert (got.status, got.body) == (206, small[100:200])
        assert gw.get("redir/two", "-L").body == other
        assert gw.get("redir/none", "-L").status == 404

        base = f"{loc.scheme}://{loc.netloc}"
        assert gw.curl(f"{base}{loc.path}").status == 403  # the signature left off
        assert gw.curl(f"{base}/{POOL}/redir/two?{loc.query}").status == 403  # another key
        assert gw.curl(f"{base}{loc.path}?{loc.query}").body == small
    finally:
        gw.stop()


async def _put(address: str) -> None:
    async with AsyncClient(address) as c:
        await c.put("testpool", "x", b"hello")


def test_a_daemon_without_a_master_is_open_on_loopback(tmp_path: Path) -> None:
    """No master, no ticket key: the endpoint serves unsigned reads when it listens on
    loopback (as the daemon's native port, which checks nothing then). (On any other address
    it refuses them: tests/faults/test_http_auth_netns.py.)"""
    from tests.conftest import start_daemon

    d = start_daemon(tmp_path / "lo")
    try:
        asyncio.run(_put(d.address))
        assert d.http is not None and d.http.startswith("127.0.0.1:")
        r = Gateway("", "", "", tmp_path / "none.log").curl(f"http://{d.http}/testpool/x")
        assert (r.status, r.body) == (200, b"hello")
    finally:
        assert d.stop() == 0
        (d.dir / "blocks").unlink(missing_ok=True)
