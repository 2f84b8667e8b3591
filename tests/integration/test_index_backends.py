"""The name index on real Redis and PostgreSQL servers: the contract of
tests/unit/test_index_sqlite.py on each, then what sharing a server brings: two gateways'
indexes seeing each other's writes, concurrent writers of one key, a server that stops and
comes back under an open index, and what an earlier version of shoal left in a server (no
MD5)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio

from shoal.index import Entry, Index, IndexUnavailable, open_index
from tests.servers import PostgresServer, RedisServer, postgres_server, redis_server
from tests.unit.test_index_sqlite import M1, M2, NS, H, IndexContract, entry, random_ops

Server = RedisServer | PostgresServer

UNAVAILABLE_WITHIN = 6.0  # seconds: the clients' timeouts are 3 s
BACK_WITHIN = 10.0  # seconds for an open index to serve again once its server is back


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def postgresql(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with postgres_server(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture(params=["redis", "postgresql"])
def server(request: pytest.FixtureRequest) -> Server:
    found: Server = request.getfixturevalue(request.param)
    if found.proc is None:  # a test that stopped it failed before starting it again
        found.start()
    return found


async def emptied(index: Index) -> None:
    for ns in await index.namespaces():
        await index.drop(ns)


@pytest_asyncio.fixture
async def index(server: Server) -> AsyncIterator[Index]:
    """An index over the server, empty at the start and emptied at the end."""
    async with open_index(server.url) as index:
        await emptied(index)
        yield index
        await emptied(index)


class TestSharedIndex(IndexContract):
    pass


@pytest.mark.asyncio
async def test_two_gateways_see_each_others_writes(server: Server, index: Index) -> None:
    async with open_index(server.url) as other:
        assert await index.put(NS, "a", entry(1))
        assert await other.get(NS, "a") == await index.get(NS, "a")
        assert not await other.put(NS, "a", entry(1)), "the other's version is seen"
        assert await other.put(NS, "b/é", entry(2))
        assert await other.hide(NS, "a") is not None
        assert await index.get(NS, "a") is None and not await index.put(NS, "a", entry(1))
        for seed in range(3):  # writes from both, interleaved
            for i, (op, key, version) in enumerate(random_ops(seed, 60)):
                which = (index, other)[i % 2]
                if op == "put":
                    await which.put(NS, key, entry(version))
                elif op == "hide":
                    await which.hide(NS, key)
                else:
                    await which.delete(NS, key, version)
            assert await index.list(NS) == await other.list(NS)
            assert await index.list(NS, prefix="a", limit=2) == await other.list(
                NS, prefix="a", limit=2
            )
        assert await index.namespaces() == await other.namespaces() == [NS]


@pytest.mark.asyncio
async def test_concurrent_writers_of_one_key_leave_the_highest_version(
    server: Server, index: Index
) -> None:
    async with open_index(server.url) as other:
        orders = [
            list(range(1, 41)),
            list(range(40, 0, -1)),
            random.Random(7).sample(range(1, 41), 40),
        ]
        applied = await asyncio.gather(
            *(
                (index, other)[v % 2].put(NS, f"k{n}", entry(v, size=v))
                for n, order in enumerate(orders)
                for v in order
            )
        )
        for n in range(len(orders)):
            got = await other.get(NS, f"k{n}")
            assert got is not None and got.version == 40 and got.size == 40
            assert 1 <= sum(applied[40 * n : 40 * (n + 1)]) <= 40
        # a hide racing newer puts: either the put comes after (live) or before (hidden, and
        # then the put at the same version is refused, a newer one applies)
        await index.put(NS, "h", entry(1))
        hidden, put = await asyncio.gather(index.hide(NS, "h"), other.put(NS, "h", entry(2)))
        got = await index.get(NS, "h")
        assert put and hidden is not None and (got is not None) == (hidden.version == 1)


async def wait_until_served(index: Index) -> float:
    """Seconds until `index` answers again (retried: the client may still be backing off)."""
    started = time.monotonic()
    while True:
        try:
            await index.put(NS, "after", entry(1))
            return time.monotonic() - started
        except IndexUnavailable:
            assert time.monotonic() - started < BACK_WITHIN, "the index did not come back"
            await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_a_server_that_stops_and_comes_back(server: Server, index: Index) -> None:
    await index.put(NS, "before", entry(1))
    server.stop()
    t0 = time.monotonic()
    errors = await asyncio.gather(
        index.put(NS, "k", entry(1)),
        index.list(NS),
        index.get(NS, "before"),
        index.ping(),
        return_exceptions=True,
    )
    assert time.monotonic() - t0 < UNAVAILABLE_WITHIN
    for error in errors:
        assert isinstance(error, IndexUnavailable), error
        assert f"index {server.url} is unavailable: " in str(error)

    async with open_index(server.url) as late:  # opening while the server is down: no error
        with pytest.raises(IndexUnavailable):
            await late.get(NS, "before")
        server.start()
        await wait_until_served(late)

    await wait_until_served(index)  # the same object, reconnected
    assert [k for k, _ in await index.list(NS)] == (
        ["after"] if isinstance(server, RedisServer) else ["after", "before"]
    ), "redis runs without persistence here; PostgreSQL keeps its rows"


@pytest.mark.asyncio
async def test_a_refused_login_names_its_cause_and_not_the_password(server: Server) -> None:
    if isinstance(server, RedisServer):
        url, cause = f"redis://nobody:secret@127.0.0.1:{server.port}/0", "password"
    else:
        url, cause = f"postgresql://shoal:secret@127.0.0.1:{server.port}/nope", '"nope"'
    async with open_index(url) as index:
        assert "secret" not in index.url
        with pytest.raises(IndexUnavailable) as error:
            await index.ping()
    assert str(error.value).startswith(f"index {index.url} is unavailable: ")
    assert cause in str(error.value) and "secret" not in str(error.value)


# what shoal wrote before entries had an MD5, verbatim: PostgreSQL's table, Redis's records
_PG_TABLE_1 = """CREATE TABLE shoal_index (
    ns text NOT NULL, key bytea NOT NULL, version bigint NOT NULL, deleted boolean NOT NULL,
    size bigint NOT NULL, hash bytea, mtime double precision NOT NULL, meta jsonb NOT NULL,
    PRIMARY KEY (ns, key))"""
_REDIS_OLD = b'{"v":"3","m":"1700000000.5","d":false,"s":5,"h":"%s","x":{}}' % H.hex().encode()


def _write_old_rows(server: Server) -> None:
    """A live row "old" (version 3, no MD5) and a tombstone "gone" (version 4) in `server`,
    as shoal wrote them before the MD5, in place of whatever is there."""
    if isinstance(server, RedisServer):
        import redis

        r = redis.Redis.from_url(server.url)
        try:
            r.flushdb()
            r.hset(f"shoal:index:rows:{NS}", b"old", _REDIS_OLD)
            r.zadd(f"shoal:index:live:{NS}", {b"old": 0})
            r.hset(f"shoal:index:rows:{NS}", b"gone", b'{"v":"4","m":"1700000000.5","d":true}')
            r.sadd("shoal:index:namespaces", NS)
        finally:
            r.close()
        return
    import psycopg

    with psycopg.connect(server.url, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS shoal_index")
        db.execute(_PG_TABLE_1)
        db.execute("CREATE INDEX shoal_index_live ON shoal_index (ns, key) WHERE NOT deleted")
        db.execute(
            "INSERT INTO shoal_index VALUES (%s, 'old', 3, false, 5, %s, 1700000000.5, '{}'),"
            " (%s, 'gone', 4, true, 0, NULL, 1700000000.5, '{}')",
            (NS, H, NS),
        )


@pytest.mark.asyncio
async def test_what_an_earlier_version_left_is_taken_as_it_is(server: Server) -> None:
    _write_old_rows(server)
    old = Entry(5, H, 3, 1700000000.5)
    # two gateways starting on it at once (PostgreSQL: the column is added once)
    async with open_index(server.url) as one, open_index(server.url) as two:
        try:
            got = await asyncio.gather(one.get(NS, "old"), two.get(NS, "old"))
            assert got == [old, old] and await one.list(NS) == [("old", old)]
            assert not await two.put(NS, "gone", entry(4)), "its tombstone still counts"
            assert await one.amend(NS, "old", replace(old, md5=M1))
            assert await two.get(NS, "old") == replace(old, md5=M1)
            assert await two.put(NS, "new", replace(entry(1), md5=M2))
            assert (await one.get(NS, "new") or entry(0)).md5 == M2
        finally:
            await one.drop(NS)


def test_a_missing_server_binary_fails_and_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="make install-test"):
        RedisServer(tmp_path / "redis")
