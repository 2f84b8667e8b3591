"""The HTTP gateway as minikeyvalue's clients use it, through real curl against a cluster
started the way `shoal up` starts it, once per index backend (SQLite: the gateway `shoal up`
started; Redis and PostgreSQL: real servers, a gateway each on a pool of its own):
HEAD gives Content-Md5 (the MD5 of the value in hex, checked against md5sum's), recorded in
the index at PUT and in the object's own metadata, new after an overwrite, and in the index
again straight after `shoal index drop` and `shoal index rebuild` (taken from the objects'
metadata; an object written without it is read and hashed by its first HEAD); a missing key
is 404 with Content-Length: 0; an empty value is stored."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.index import Entry, open_index
from shoal.up import LocalCluster
from tests.integration.cluster_helpers import shoal, shoal_env
from tests.integration.http_helpers import CurlResult, Gateway, local_cluster, start_gateway
from tests.servers import postgres_server, redis_server

BACKENDS = ["sqlite", "redis", "postgresql"]
STRIPED = (9 << 20) + 12345  # over two stripes (4 MiB each), the last one short
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Gateway]]:
    with local_cluster(tmp_path_factory.mktemp("mkv") / "shoal-data") as (cluster, gateway):
        yield cluster, gateway


class Backend:
    """A gateway over one index backend; `shoal` runs the CLI against its cluster."""

    def __init__(self, name: str, cluster: LocalCluster, gateway: Gateway) -> None:
        self.name, self.cluster, self.gw = name, cluster, gateway
        self.env = shoal_env(cluster.data.parent / "home")

    def shoal(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        config = str(self.cluster.data / "client.json")
        return shoal(*args, "--config", config, env=self.env, cwd=self.cluster.data)

    def indexed(self, key: str) -> Entry | None:
        """The index's live entry for `key` (read with an index of our own)."""

        async def get() -> Entry | None:
            async with open_index(self.gw.index) as index:
                return await index.get(self.gw.pool, key)

        return asyncio.run(get())


@pytest.fixture(scope="module", params=BACKENDS)
def backend(
    request: pytest.FixtureRequest,
    cluster: tuple[LocalCluster, Gateway],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Backend]:
    lc, default_gw = cluster
    name = request.param
    if name == "sqlite":
        yield Backend(name, lc, default_gw)
        return
    starter = redis_server if name == "redis" else postgres_server
    with starter(tmp_path_factory.mktemp(name)) as server:
        b = Backend(name, lc, default_gw)
        pool = f"p-{name}"
        b.shoal("pool", "create", pool, "--replicas", "3", "--failure-domain", "daemon")
        b.gw = start_gateway(lc, pool, server.url, lc.data / f"http-{name}.log")
        try:
            yield b
        finally:
            b.gw.stop()


def head(gw: Gateway, key: str) -> CurlResult:
    return gw.curl("-I", "-o", "/dev/null", gw.url(key))


def md5_header(r: CurlResult) -> str | None:
    """The Content-Md5 of a reply, as sent (one header line, in any case)."""
    lines = re.findall(rb"(?im)^content-md5:[ \t]*(\S*)\s*$", r.stderr)
    assert len(lines) <= 1, r.stderr
    return lines[0].decode() if lines else None


def md5sum(path: Path) -> str:
    out = subprocess.run(["md5sum", str(path)], capture_output=True, check=True).stdout
    return out.split()[0].decode()


def put_file(gw: Gateway, key: str, path: Path, *extra: str) -> CurlResult:
    return gw.curl("-X", "PUT", "-T", str(path), *extra, gw.url(key))


def values(tmp_path: Path) -> dict[str, Path]:
    """Files to PUT: small, one byte, empty, a whole 4 MiB stripe and a striped one."""
    out = {}
    for name, data in [
        ("small", b"hello minikeyvalue\n"),
        ("byte", b"\x00"),
        ("empty", b""),
        ("stripe", os.urandom(4 << 20)),
        ("striped", os.urandom(STRIPED)),
    ]:
        out[name] = tmp_path / name
        out[name].write_bytes(data)
    return out


def test_head_gives_the_md5_of_what_was_put(backend: Backend, tmp_path: Path) -> None:
    gw = backend.gw
    files = values(tmp_path)
    for name, path in files.items():
        key = f"md5/{name}"
        assert put_file(gw, key, path).status == 201, name
        want = md5sum(path)
        entry = backend.indexed(key)  # recorded at PUT: no HEAD has read it yet
        assert entry is not None and entry.md5 is not None and entry.md5.hex() == want, name
        r = head(gw, key)
        assert (r.status, r.body) == (200, b""), name
        assert md5_header(r) == want, (name, r.stderr)
        assert r.headers["content-length"] == str(path.stat().st_size)
        got = gw.get(key)
        assert got.status == 200 and got.body == path.read_bytes(), name
        assert md5_header(got) is None, "GET does not look the MD5 up"
    # a PUT with its own Content-MD5 (base64, RFC 1864): the same MD5 in hex on HEAD
    data = os.urandom(1 << 20)
    given = base64.b64encode(hashlib.md5(data).digest()).decode()
    assert gw.put("md5/given", data, "-H", f"Content-MD5: {given}").status == 201
    assert md5_header(head(gw, "md5/given")) == hashlib.md5(data).hexdigest()
    # a range asked on HEAD: the MD5 is still the whole value's (as minikeyvalue)
    r = gw.curl("-I", "-o", "/dev/null", "-r", "0-3", gw.url("md5/small"))
    assert r.status == 206 and md5_header(r) == md5sum(files["small"])


def test_an_overwrite_gives_the_new_md5(backend: Backend) -> None:
    gw = backend.gw
    key = "over/k"
    for data in [
        b"first",
        b"second, longer",  # small over small
        os.urandom(STRIPED),  # striped over small
        os.urandom(STRIPED + 1),  # striped over striped
        b"small again",  # small over striped
        b"",  # empty over small
        b"back",
    ]:
        r = gw.put(key, data)
        assert r.status == 201, "PUT over an existing key is allowed"
        assert md5_header(head(gw, key)) == hashlib.md5(data).hexdigest(), len(data)
        assert gw.get(key).body == data
        entry = backend.indexed(key)
        assert entry is not None and entry.md5 == hashlib.md5(data).digest()
    assert gw.keys("over/") == ["/over/k"]


def test_the_md5_after_an_index_drop_and_rebuild(backend: Backend) -> None:
    gw = backend.gw
    data = {
        "rb5/small": b"small",
        "rb5/empty": b"",
        "rb5/striped": os.urandom(STRIPED),
        "rb5/over": b"to be replaced",
    }
    for key, value in data.items():
        assert gw.put(key, value).status == 201
    data["rb5/over"] = os.urandom(5 << 20)
    assert gw.put("rb5/over", data["rb5/over"]).status == 201
    idx = ["--pool", gw.pool, "--index", gw.index]
    backend.shoal("index", "drop", *idx)
    assert gw.keys("rb5/") == []
    backend.shoal("index", "rebuild", *idx)
    assert gw.keys("rb5/") == sorted(f"/{k}" for k in data)
    for key, value in data.items():  # rebuilt from the daemons, MD5 and all (their metadata)
        entry = backend.indexed(key)
        assert entry is not None and entry.md5 == hashlib.md5(value).digest(), key
    # objects written without it (by a shoal before the gateway kept it with the object, or
    # by another client): listed by a rebuild without an MD5, the first HEAD reads and hashes
    # the object and records its MD5; several at once share one read; later HEADs find it
    old = {"rb5/old-small": b"written by another client", "rb5/old-striped": os.urandom(STRIPED)}
    for key, value in old.items():
        path = backend.cluster.data.parent / "old-value"
        path.write_bytes(value)
        backend.shoal("write", "--pool", gw.pool, key, "--data-file", str(path))
    backend.shoal("index", "rebuild", *idx)
    for key in old:
        entry = backend.indexed(key)
        assert entry is not None and entry.md5 is None, key
    for key in data:
        entry = backend.indexed(key)
        assert entry is not None and entry.md5 is not None, "a rebuild keeps the MD5s"
    data |= old
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        heads = list(pool.map(lambda k: head(gw, k), [*data, *data]))
    for r, (key, value) in zip(heads, [*data.items(), *data.items()], strict=True):
        assert r.status == 200 and md5_header(r) == hashlib.md5(value).hexdigest(), key
    for key, value in data.items():
        entry = backend.indexed(key)
        assert entry is not None and entry.md5 == hashlib.md5(value).digest(), key
        assert md5_header(head(gw, key)) == hashlib.md5(value).hexdigest(), key
    # dropped and not rebuilt: a HEAD finds the object, gives its MD5 and lists it again
    backend.shoal("index", "drop", *idx)
    assert md5_header(head(gw, "rb5/striped")) == hashlib.md5(data["rb5/striped"]).hexdigest()
    assert gw.keys("rb5/") == ["/rb5/striped"]
    # a rebuild over entries that have their MD5 keeps it
    backend.shoal("index", "rebuild", *idx)
    entry = backend.indexed("rb5/striped")
    assert entry is not None and entry.md5 == hashlib.md5(data["rb5/striped"]).digest()
    assert gw.get("rb5/empty").body == b"" and gw.get("rb5/over").body == data["rb5/over"]


def test_a_missing_key_is_404_with_content_length_0(backend: Backend) -> None:
    gw = backend.gw
    for key in ("missing/never", "missing/deleted"):
        if key.endswith("deleted"):
            assert gw.put(key, b"x").status == 201
            assert gw.delete(key).status == 204
        r = head(gw, key)
        assert (r.status, r.headers.get("content-length"), r.body) == (404, "0", b""), key
        assert md5_header(r) is None
        r = gw.get(key)
        assert (r.status, r.headers.get("content-length"), r.body) == (404, "0", b""), key
    assert backend.indexed("missing/deleted") is None, "a HEAD lists nothing deleted"


def test_an_empty_value_is_stored(backend: Backend) -> None:
    """shoal stores an empty value (as S3 does) where minikeyvalue answers 411."""
    gw = backend.gw
    assert gw.put("empty/sized", b"").status == 201  # Content-Length: 0
    chunked = gw.curl("-X", "PUT", "-H", "Transfer-Encoding: chunked", "--data-binary", "",
                      gw.url("empty/chunked"))  # fmt: skip
    assert chunked.status == 201, chunked.stderr
    for key in ("empty/sized", "empty/chunked"):
        got = gw.get(key)
        assert (got.status, got.body, got.headers["content-length"]) == (200, b"", "0")
        r = head(gw, key)
        assert (r.status, r.headers["content-length"], md5_header(r)) == (200, "0", EMPTY_MD5)
    assert gw.keys("empty/") == ["/empty/chunked", "/empty/sized"]
    assert gw.delete("empty/sized").status == 204 and gw.get("empty/sized").status == 404


def test_redirect_mode_gives_content_md5_on_the_302_of_a_head(
    cluster: tuple[LocalCluster, Gateway],
) -> None:
    lc, gw = cluster
    data = b"redirected"
    assert gw.put("redir5/k", data).status == 201
    r2 = start_gateway(lc, gw.pool, gw.index, lc.data / "http-redirect5.log", "--redirect")
    try:
        r = head(r2, "redir5/k")
        assert r.status == 302 and "location" in r.headers
        assert md5_header(r) == hashlib.md5(data).hexdigest()
        followed = r2.curl("-I", "-L", "-o", "/dev/null", r2.url("redir5/k"))
        assert followed.status == 200 and followed.headers["content-length"] == "10"
        missing = head(r2, "redir5/missing")
        assert (missing.status, missing.headers.get("content-length")) == (404, "0")
    finally:
        r2.stop()
