"""The HTTP gateway (minikeyvalue's API) through real curl, against a cluster started the way
`shoal up` starts it, once per index backend: SQLite (the gateway `shoal up` started, pool
`default`), Redis and PostgreSQL (real servers started here, a gateway each on a pool of its
own)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from shoal.up import LocalCluster
from tests.integration.cluster_helpers import (
    TidyClusterClient,
    eventually_sync,
    shoal,
    shoal_env,
)
from tests.integration.http_helpers import (
    Gateway,
    local_cluster,
    raw_request,
    start_gateway,
    status_of,
)
from tests.servers import postgres_server, redis_server

BACKENDS = ["sqlite", "redis", "postgresql"]
BIG = 9 << 20  # striped (stripes are 4 MiB)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Gateway]]:
    with local_cluster(tmp_path_factory.mktemp("http") / "shoal-data") as (cluster, gateway):
        yield cluster, gateway


class Backend:
    """A gateway over one index backend, and what the tests need to reach around it."""

    def __init__(self, name: str, cluster: LocalCluster, gateway: Gateway, server: object) -> None:
        self.name, self.cluster, self.gw, self.server = name, cluster, gateway, server
        self.env = shoal_env(cluster.data.parent / "home")
        self.extra: list[Gateway] = []

    def shoal(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[bytes]:
        config = str(self.cluster.data / "client.json")
        return shoal(*args, "--config", config, env=self.env, cwd=self.cluster.data, ok=ok)

    def another_gateway(self) -> Gateway:
        log = self.cluster.data / f"http-{self.name}-{len(self.extra) + 2}.log"
        g = start_gateway(self.cluster, self.gw.pool, self.gw.index, log)
        self.extra.append(g)
        return g


@pytest.fixture(scope="module", params=BACKENDS)
def backend(
    request: pytest.FixtureRequest,
    cluster: tuple[LocalCluster, Gateway],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Backend]:
    lc, default_gw = cluster
    name = request.param
    if name == "sqlite":
        b = Backend(name, lc, default_gw, None)
        yield b
        for g in b.extra:
            g.stop()
        return
    tmp = tmp_path_factory.mktemp(name)
    starter = redis_server if name == "redis" else postgres_server
    with starter(tmp) as server:
        pool = f"p-{name}"
        b = Backend(name, lc, default_gw, server)
        b.shoal("pool", "create", pool, "--replicas", "3", "--failure-domain", "daemon")
        b.gw = start_gateway(lc, pool, server.url, lc.data / f"http-{name}.log")
        try:
            yield b
        finally:
            for g in [b.gw, *b.extra]:
                g.stop()


def test_the_seed_curl_commands_verbatim(backend: Backend, tmp_path: Path) -> None:
    port = backend.gw.port

    def run(cmd: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(cmd, shell=True, capture_output=True, timeout=60, cwd=tmp_path)

    assert run(f"curl -d bar -X PUT http://localhost:{port}/foo").returncode == 0
    assert run(f"curl -L http://localhost:{port}/foo").stdout == b"bar"
    listed = json.loads(run(f"curl -L http://localhost:{port}/foo?list").stdout)
    assert listed == {"next": "", "keys": ["/foo"]}
    assert run(f"curl -X DELETE http://localhost:{port}/foo").returncode == 0
    assert backend.gw.get("foo").status == 404
    assert json.loads(run(f"curl -L http://localhost:{port}/foo?list").stdout)["keys"] == []

    local = tmp_path / "path" / "to" / "local"
    local.mkdir(parents=True)
    data = os.urandom(BIG + 12345)
    (local / "file.txt").write_bytes(data)
    put = run(f"curl -L -X PUT -T {local}/file.txt localhost:{port}/file.txt")
    assert put.returncode == 0, put.stderr
    (local / "file.txt").unlink()
    got = run(f"curl -L -o {local}/file.txt localhost:{port}/file.txt")
    assert got.returncode == 0, got.stderr
    assert (local / "file.txt").read_bytes() == data
    assert backend.gw.delete("file.txt").status == 204


def test_status_codes_headers_and_ranges(backend: Backend) -> None:
    gw = backend.gw
    body = b"0123456789"
    put = gw.put("codes/a", body)
    assert put.status == 201
    etag = put.headers["etag"]
    assert len(etag) == 66 and etag.startswith('"')

    got = gw.get("codes/a")
    assert (got.status, got.body) == (200, body)
    assert got.headers["etag"] == etag and got.headers["content-length"] == "10"
    assert got.headers["accept-ranges"] == "bytes" and "last-modified" in got.headers

    head = gw.curl("-I", "-o", "/dev/null", gw.url("codes/a"))
    assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "10")
    assert head.headers["etag"] == etag

    part = gw.get("codes/a", "-r", "2-5")
    assert (part.status, part.body, part.headers["content-range"]) == (206, b"2345", "bytes 2-5/10")
    tail = gw.get("codes/a", "-H", "Range: bytes=-3")
    assert (tail.status, tail.body) == (206, b"789")
    bad = gw.get("codes/a", "-H", "Range: bytes=10-20")
    assert (bad.status, bad.headers["content-range"]) == (416, "bytes */10")

    assert gw.put("codes/a", b"second").status == 201  # an overwrite
    assert gw.get("codes/a").body == b"second"
    assert gw.delete("codes/a").status == 204
    assert gw.delete("codes/a").status == 404
    assert gw.get("codes/a").status == 404
    assert gw.curl("-I", gw.url("codes/a")).status == 404
    assert gw.curl("-X", "POST", "-d", "x", gw.url("codes/a")).status == 405

    # 411: a PUT with neither Content-Length nor a chunked body (curl always sends one)
    reply = raw_request(gw.address, b"PUT /codes/nolength HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(reply) == 411, reply
    # an empty value is a value
    assert gw.put("codes/empty", b"").status == 201
    empty = gw.get("codes/empty")
    assert (empty.status, empty.body, empty.headers["content-length"]) == (200, b"", "0")

    # Content-MD5: checked when given; a mismatch stores nothing
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    assert gw.put("codes/md5", body, "-H", f"Content-MD5: {md5}").status == 201
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    r = gw.put("codes/md5-bad", body, "-H", f"Content-MD5: {wrong}")
    assert r.status == 400 and b"Content-MD5" in r.body
    assert gw.put("codes/md5-bad", body, "-H", "Content-MD5: nonsense").status == 400
    big = os.urandom(BIG)
    assert gw.put("codes/md5-big", big, "-H", f"Content-MD5: {wrong}").status == 400
    assert gw.get("codes/md5-bad").status == 404 and gw.get("codes/md5-big").status == 404
    assert gw.keys("codes/md5") == ["/codes/md5"]

    # a chunked upload (no Content-Length), large enough to be striped
    r = gw.curl("-X", "PUT", "-H", "Transfer-Encoding: chunked", "-T", "-", gw.url("codes/chunked"),
                data=big)  # fmt: skip
    assert r.status == 201, r.body
    assert gw.get("codes/chunked").body == big
    assert (
        gw.get("codes/chunked", "-r", f"{(4 << 20) - 5}-{(4 << 20) + 4}").body
        == big[(4 << 20) - 5 : (4 << 20) + 5]
    )


def test_a_key_being_changed_is_409(backend: Backend) -> None:
    gw = backend.gw
    host, _, port = gw.address.rpartition(":")
    import socket

    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(b"PUT /busy HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
        busy = eventually_sync(lambda: gw.put("busy", b"other"), lambda r: r.status == 409,
                               timeout=10, what="409 while the key is being written")  # fmt: skip
        assert b"retry" in busy.body
        s.sendall(b"56789")
        reply = s.recv(65536)
        assert status_of(reply) == 201, reply
    assert gw.get("busy").body == b"0123456789"
    assert gw.put("busy", b"other").status == 201


def test_utf8_keys_with_slashes_and_paged_listing(backend: Backend) -> None:
    gw = backend.gw
    keys = ["u/a.txt", "u/sub/b ü.txt", "u/☃", "u0", "u/ä/ö", "u/a", "u/日本/語", "u/sp ace?&=#"]
    for k in keys:
        assert gw.put(k, k.encode()).status == 201, k
    for k in keys:
        assert gw.get(k).body == k.encode(), k
    under = sorted((k for k in keys if k.startswith("u/")), key=lambda k: k.encode())
    assert gw.keys("u/") == ["/" + k for k in under]
    assert gw.list("u/", limit=3) == {"next": "/" + under[3], "keys": ["/" + k for k in under[:3]]}
    assert gw.list("u/", limit=3, start="/" + under[3])["keys"] == ["/" + k for k in under[3:6]]

    for i in range(23):
        assert gw.put(f"page/{i:03d}", b"x").status == 201
    assert gw.keys("page/") == [f"/page/{i:03d}" for i in range(23)]
    assert len(gw.list("page/")["keys"]) == 23  # type: ignore[arg-type]
    assert gw.curl(gw.url("page/", "list&limit=x")).status == 400
    assert gw.curl(gw.url("page/", "frobnicate")).status == 400


def test_bad_input_is_refused_and_stores_nothing(backend: Backend) -> None:
    gw = backend.gw
    # a body shorter than its Content-Length, then the client goes: small and striped
    raw_request(gw.address, b"PUT /short HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                + os.urandom(5000), then_close=True)  # fmt: skip
    head = f"PUT /short-big HTTP/1.1\r\nHost: x\r\nContent-Length: {BIG}\r\n\r\n".encode()
    raw_request(gw.address, head + os.urandom(6 << 20), then_close=True)
    time.sleep(0.5)
    assert gw.get("short").status == 404 and gw.get("short-big").status == 404
    assert gw.keys("short") == []
    # a key too long, a key that is not UTF-8
    r = gw.put("k" * 1100, b"x")
    assert r.status == 400 and b"1024" in r.body
    assert gw.curl("-X", "PUT", "-d", "x", f"http://{gw.address}/%FF%FE").status == 400
    # garbage on the socket
    reply = raw_request(gw.address, b"\x00\xff\xfeNOT HTTP\r\n\r\n", timeout=5)
    assert reply == b"" or status_of(reply) == 400
    # the gateway serves on
    assert gw.put("after-garbage", b"fine").status == 201
    assert gw.get("after-garbage").body == b"fine"


def test_index_rebuild_gives_the_same_listing(backend: Backend) -> None:
    gw = backend.gw
    for i in range(30):
        assert gw.put(f"rb/{i:02d}", os.urandom(100 + i)).status == 201
    assert gw.put("rb/big", os.urandom(BIG)).status == 201
    for i in range(0, 30, 3):
        assert gw.put(f"rb/{i:02d}", b"again").status == 201
    for i in range(0, 30, 5):
        assert gw.delete(f"rb/{i:02d}").status == 204
    before = gw.keys()
    assert "/rb/big" in before and "/rb/05" not in before and "/rb/01" in before

    idx = ["--pool", gw.pool, "--index", gw.index]
    backend.shoal("index", "drop", *idx)
    assert gw.keys() == []
    assert gw.get("rb/01").status == 200  # the data never needed the index
    out = backend.shoal("index", "rebuild", *idx).stdout.decode()
    assert f"{len(before)} keys" in out, out
    assert gw.keys() == before

    # an object written without the gateway (an orphan to the index) is found by a rebuild
    backend.shoal("write", "--pool", gw.pool, "rb/native", "--data-literal", "hi")
    assert "/rb/native" not in gw.keys("rb/")
    backend.shoal("index", "rebuild", *idx)
    assert "/rb/native" in gw.keys("rb/")
    assert gw.get("rb/native").body == b"hi"


def test_the_request_log(backend: Backend) -> None:
    gw = backend.gw
    assert gw.put("logged/one", b"abc").status == 201
    assert gw.get("logged/one").status == 200
    assert gw.get("logged/none").status == 404

    def lines() -> list[dict[str, object]]:
        text = gw.log.read_text() if gw.log.exists() else ""
        return [json.loads(line) for line in text.splitlines() if "logged/" in line]

    got = eventually_sync(lines, lambda ls: len(ls) >= 3, timeout=5, what="three log lines")
    put, get, miss = got[-3:]
    assert (put["method"], put["key"], put["status"], put["bytes"]) == ("PUT", "logged/one", 201, 3)
    assert (get["method"], get["status"], get["bytes"]) == ("GET", 200, 3)
    assert (miss["status"], miss["key"]) == (404, "logged/none")
    assert all(isinstance(x["seconds"], float) and isinstance(x["time"], float) for x in got)


def test_several_gateways_over_one_index(backend: Backend) -> None:
    """(Over SQLite too: gateways on one machine, one per core, may share its file.)"""
    a, b = backend.gw, backend.another_gateway()
    for i in range(12):
        assert (a if i % 2 else b).put(f"two/{i:02d}", f"v{i}".encode()).status == 201
    assert a.keys("two/") == b.keys("two/") == [f"/two/{i:02d}" for i in range(12)]
    assert b.delete("two/03").status == 204  # written through a
    assert a.get("two/03").status == 404
    assert a.keys("two/") == b.keys("two/") and "/two/03" not in a.keys("two/")

    # the same keys written through both at once: both list them, and read the same bytes
    def writer(g: Gateway, tag: bytes) -> None:
        for round_ in range(5):
            for k in range(4):
                g.put(f"race/{k}", tag + bytes([round_]) * 1000)

    threads = [threading.Thread(target=writer, args=(g, t)) for g, t in ((a, b"A"), (b, b"B"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.keys("race/") == b.keys("race/") == [f"/race/{k}" for k in range(4)]
    for k in range(4):
        ga, gb = a.get(f"race/{k}"), b.get(f"race/{k}")
        assert ga.body == gb.body and ga.headers["etag"] == gb.headers["etag"]


@pytest.mark.parametrize("backend", ["redis", "postgresql"], indirect=True)
def test_the_index_server_stopped_mid_run(backend: Backend) -> None:
    gw = backend.gw
    assert gw.put("down/kept", b"before").status == 201
    backend.server.stop()  # type: ignore[attr-defined]
    try:
        t0 = time.monotonic()
        r = gw.put("down/during", b"while the index is down")
        assert r.status == 503 and b"index" in r.body, (r.status, r.body)
        assert time.monotonic() - t0 < 15
        assert gw.get("down/kept").body == b"before"  # reads need no index
        assert gw.curl(gw.url("down/", "list")).status == 503
        d = gw.delete("down/kept")
        assert d.status == 503
        assert gw.get("down/kept").body == b"before"  # nothing deleted
    finally:
        backend.server.start()  # type: ignore[attr-defined]
    # the gateway recovers by itself
    eventually_sync(lambda: gw.put("down/after", b"back").status, lambda s: s == 201,
                    timeout=20, every=0.5, what="a PUT once the index is back")  # fmt: skip
    assert "/down/after" in gw.keys("down/")
    # what was stored while the index was down (not listed), a rebuild finds
    backend.shoal("index", "rebuild", "--pool", gw.pool, "--index", gw.index)
    listed = gw.keys("down/")
    assert {"/down/during", "/down/kept", "/down/after"} <= set(listed)
    assert gw.get("down/during").body == b"while the index is down"


def test_an_unknown_index_url_is_refused(cluster: tuple[LocalCluster, Gateway]) -> None:
    lc = cluster[0]
    config = str(lc.data / "client.json")
    env = shoal_env(lc.data.parent / "home")
    for url in ("memcached://127.0.0.1:1", "redis://", "http://example.com/x"):
        p = shoal("http", "--port", "0", "--config", config, "--index", url, env=env,
                  cwd=lc.data, ok=False, timeout=20)  # fmt: skip
        assert p.returncode != 0, url
        assert b"not an index URL" in p.stderr and b"redis://" in p.stderr, p.stderr


def test_redirect_mode_sends_reads_to_a_daemon(cluster: tuple[LocalCluster, Gateway]) -> None:
    """--redirect: a GET of an object stored whole is a 302 to a daemon's read endpoint, as
    minikeyvalue's; `curl -L` follows it. A striped object is proxied (only a client joins
    its stripes)."""
    lc, default_gw = cluster
    gw = start_gateway(lc, "default", default_gw.index, lc.data / "http-redirect.log", "--redirect")
    try:
        assert gw.put("redir/small", b"small value").status == 201
        r = gw.get("redir/small")
        assert r.status == 302 and r.body == b""
        listed = Backend("redirect", lc, default_gw, None).shoal("daemon", "ls", "--json")
        daemons = {d["http_address"] for d in json.loads(listed.stdout)}
        location = r.headers["location"]
        assert location.startswith("http://") and location.split("/")[2] in daemons, location
        assert urlsplit(location).path == "/default/redir/small"  # (and a signature)
        assert gw.get("redir/small", "-L").body == b"small value"
        assert gw.get("redir/small", "-L", "-r", "6-10").body == b"value"
        big = os.urandom(BIG)
        assert gw.put("redir/big", big).status == 201
        whole = gw.get("redir/big")
        assert (whole.status, whole.body) == (200, big)
        assert gw.get("redir/none").status == 404
    finally:
        gw.stop()


def _signed_queries(lc: LocalCluster, pool: str, names: list[str]) -> dict[str, str]:
    """Signed read URLs' query strings (a daemon's endpoint serves no other), by name."""
    cfg = json.loads((lc.data / "client.json").read_text())

    async def go() -> dict[str, str]:
        c = TidyClusterClient(cfg["master"], cfg["access_key"], cfg["secret_key"],
                              ca=cfg["ca_cert"])  # fmt: skip
        try:
            await c.connect()
            return {n: await c.sign_read(pool, n) for n in names}
        finally:
            await c.close()

    return asyncio.run(go())


def test_a_pool_on_chosen_disks(cluster: tuple[LocalCluster, Gateway]) -> None:
    """The seed's "number of volumes" per pool: `shoal pool create --daemons` keeps a pool's
    copies on the daemons (disks) named, and a gateway serves it as any other."""
    lc, _ = cluster
    b = Backend("chosen", lc, cluster[1], None)
    daemons = json.loads(b.shoal("daemon", "ls", "--json").stdout)
    chosen, other = daemons[:2], daemons[2:]
    ids = ",".join(str(d["id"]) for d in chosen)
    out = b.shoal("pool", "create", "two", "--replicas", "2", "--failure-domain", "daemon",
                  "--daemons", ids, "--pg-num", "16").stdout.decode()  # fmt: skip
    assert f"daemons {ids}" in out, out
    assert f"daemons {ids}" in b.shoal("pool", "ls").stdout.decode()
    bad = b.shoal("pool", "create", "nowhere", "--daemons", "99", ok=False)
    assert bad.returncode != 0 and b"no daemon 99" in bad.stderr

    gw = start_gateway(lc, "two", f"sqlite:///{lc.data / 'index-two.db'}", lc.data / "h2.log")
    try:
        for i in range(20):
            assert gw.put(f"k{i}", f"v{i}".encode()).status == 201
        assert len(gw.keys()) == 20
        folder = lc.daemon_folders()  # a daemon's address: its folder
        signed = _signed_queries(lc, "two", [f"k{i}" for i in range(20)])
        for d in daemons:
            keys = sqlite3.connect(f"file:{folder[d['address']] / 'keys.db'}?mode=ro", uri=True)
            with contextlib.closing(keys):
                (held,) = keys.execute("SELECT count(*) FROM objects WHERE namespace = 'two'")
            # two replicas on the two daemons chosen: each holds every object, the other none
            assert held[0] == (0 if d in other else 20), d
            if d not in other:
                url = f"http://{d['http_address']}/two/k"
                got = [gw.curl(f"{url}{i}?{signed[f'k{i}']}").body for i in range(20)]
                assert got == [f"v{i}".encode() for i in range(20)]
                assert gw.curl(f"{url}0").status == 403  # (unsigned)
    finally:
        gw.stop()
