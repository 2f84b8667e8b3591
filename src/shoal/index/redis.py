"""The index in Redis, for several gateways on several machines.

Per namespace, a hash key -> entry (JSON; tombstones included) and a sorted set of the live
keys only, all at score 0, so ZRANGEBYLEX lists them bytewise however many tombstones there
are. Every change is a Lua script, so comparing versions and writing is atomic across
gateways. In the JSON, the version and mtime are decimal strings: a script that rewrites an
entry must not pass them through Lua's number formatting, which keeps 14 digits. A live
entry's MD5 is "5" (hex), absent from records made before it existed (read as no MD5).

The client reconnects by itself; a server that is down or stops answering within a few
seconds gives IndexUnavailable.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterable, Iterator
from dataclasses import replace
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.typing import EncodableT

from shoal.index.base import (
    Entry,
    Index,
    IndexUnavailable,
    batches,
    check_ns,
    checked,
    encode_key,
    key_range,
    mask_url,
    unavailable,
)

PREFIX = "shoal:index:"
NAMESPACES = PREFIX + "namespaces"  # a set: the namespaces with at least one row
log = logging.getLogger("shoal.index")

TIMEOUT = 3.0  # seconds to connect, and for one reply
SEEN_TTL = 24 * 3600  # a rebuild's set of keys seen, should the rebuild die half-way

# a server that cannot be reached, refuses the login or the database, or fails a command
_DOWN = (redis.exceptions.RedisError, OSError)

# KEYS rows, live, namespaces; ARGV ns, key, version, entry, deleted
_PUT = """
local old = redis.call('HGET', KEYS[1], ARGV[2])
if old and tonumber(cjson.decode(old).v) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
if ARGV[5] == '1' then
    redis.call('ZREM', KEYS[2], ARGV[2])
else
    redis.call('ZADD', KEYS[2], 0, ARGV[2])
end
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""

# KEYS rows, live; ARGV key, mtime. Returns the entry hidden, or nil.
_HIDE = """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return false end
local old = redis.call('HGET', KEYS[1], ARGV[1])
local v = cjson.decode(old).v
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode({v = v, m = ARGV[2], d = true}))
return old
"""

# KEYS live, rows; ARGV min, max, limit. Returns key, entry, key, entry, ...
_LIST = """
local keys = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3])
local out = {}
for i = 1, #keys, 500 do
    local chunk = {}
    for j = i, math.min(i + 499, #keys) do chunk[#chunk + 1] = keys[j] end
    local rows = redis.call('HMGET', KEYS[2], unpack(chunk))
    for j = 1, #chunk do
        out[#out + 1] = chunk[j]
        out[#out + 1] = rows[j]
    end
end
return out
"""

# KEYS rows; ARGV key, version, entry. The entry in place of the live one at that version.
_AMEND = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
local row = cjson.decode(old)
if row.d or tonumber(row.v) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# KEYS rows, live, namespaces, seen; ARGV ns, ttl of seen, started, then key, version, entry,
# deleted for each item. Returns how many items hold the stored version afterwards. A live
# item also replaces a tombstone at its own version made before `started` (a delete that hid
# the key and stopped there).
_PUT_MANY = """
local current, started = 0, tonumber(ARGV[3])
for i = 4, #ARGV, 4 do
    local key, v = ARGV[i], tonumber(ARGV[i + 1])
    local old = redis.call('HGET', KEYS[1], key)
    local row = old and cjson.decode(old)
    local stored = row and tonumber(row.v)
    if not stored or stored < v or (stored == v and row.d and ARGV[i + 3] == '0'
                                     and tonumber(row.m) < started) then
        redis.call('HSET', KEYS[1], key, ARGV[i + 2])
        if ARGV[i + 3] == '1' then
            redis.call('ZREM', KEYS[2], key)
        else
            redis.call('ZADD', KEYS[2], 0, key)
        end
        stored = v
    end
    if stored == v then current = current + 1 end
    redis.call('SADD', KEYS[4], key)
end
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[2]))
return current
"""

# KEYS rows, live; ARGV key, version, entry. The entry back if the key's row is still the
# tombstone hide() left at that version.
_RESTORE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
local row = cjson.decode(old)
if not row.d or tonumber(row.v) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
"""

# KEYS rows, live, namespaces, seen; ARGV ns, started, then keys. Removes the keys not seen
# whose mtime is before started; returns how many.
_SWEEP = """
local removed, started = 0, tonumber(ARGV[2])
for i = 3, #ARGV do
    local key = ARGV[i]
    if redis.call('SISMEMBER', KEYS[4], key) == 0 then
        local row = redis.call('HGET', KEYS[1], key)
        if row and tonumber(cjson.decode(row).m) < started then
            redis.call('HDEL', KEYS[1], key)
            redis.call('ZREM', KEYS[2], key)
            removed = removed + 1
        end
    end
end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
return removed
"""


def _record(e: Entry) -> bytes:
    body: dict[str, Any] = {"v": str(e.version), "m": repr(float(e.mtime)), "d": e.deleted}
    if not e.deleted:
        body |= {"s": e.size, "h": e.hash.hex() if e.hash is not None else None, "x": e.meta}
        if e.md5 is not None:
            body["5"] = e.md5.hex()
    return json.dumps(body, separators=(",", ":")).encode()


def _entry(raw: bytes) -> Entry:
    body = json.loads(raw)
    h, md5 = body.get("h"), body.get("5")
    return Entry(
        size=body.get("s", 0),
        hash=bytes.fromhex(h) if h else None,
        version=int(body["v"]),
        mtime=float(body["m"]),
        meta=body.get("x") or {},
        deleted=bool(body["d"]),
        md5=bytes.fromhex(md5) if md5 else None,
    )


def _bytes(reply: bytes | str) -> bytes:
    """A reply as bytes (the client is made without decode_responses)."""
    return reply if isinstance(reply, bytes) else reply.encode()


def _keys(ns: str) -> tuple[str, str]:
    """The hash of entries and the sorted set of live keys of `ns`."""
    return f"{PREFIX}rows:{ns}", f"{PREFIX}live:{ns}"


class RedisIndex(Index):
    def __init__(self, url: str) -> None:
        self.url = mask_url(url)
        self._client = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
            retry=Retry(NoBackoff(), 1),  # once more on a fresh connection: after a restart
        )
        self._put = self._client.register_script(_PUT)
        self._hide = self._client.register_script(_HIDE)
        self._list = self._client.register_script(_LIST)
        self._put_many = self._client.register_script(_PUT_MANY)
        self._sweep = self._client.register_script(_SWEEP)
        self._restore = self._client.register_script(_RESTORE)
        self._amend = self._client.register_script(_AMEND)

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except _DOWN as e:
            raise unavailable(self.url, e) from e

    async def open(self) -> None:
        try:
            await self.ping()
        except IndexUnavailable as e:
            log.warning("%s (each operation will try again)", e)

    async def close(self) -> None:
        await self._client.aclose()

    async def ping(self) -> None:
        with self._reaching():
            await self._client.ping()

    async def get(self, ns: str, key: str) -> Entry | None:
        check_ns(ns)
        rows, _ = _keys(ns)
        with self._reaching():
            raw = await self._client.hget(rows, encode_key(key))
        if raw is None:
            return None
        entry = _entry(_bytes(raw))
        return None if entry.deleted else entry

    async def put(self, ns: str, key: str, entry: Entry) -> bool:
        check_ns(ns)
        args: builtins.list[EncodableT] = [ns, encode_key(key), checked(entry).version]
        args += [_record(entry), int(entry.deleted)]
        with self._reaching():
            return bool(await self._put(keys=[*_keys(ns), NAMESPACES], args=args))

    async def hide(self, ns: str, key: str) -> Entry | None:
        check_ns(ns)
        args: builtins.list[EncodableT] = [encode_key(key), repr(time.time())]
        with self._reaching():
            old = await self._hide(keys=_keys(ns), args=args)
        return None if old is None else _entry(old)

    async def restore(self, ns: str, key: str, entry: Entry) -> bool:
        check_ns(ns)
        live = replace(checked(entry), deleted=False)
        args: builtins.list[EncodableT] = [encode_key(key), live.version, _record(live)]
        with self._reaching():
            return bool(await self._restore(keys=_keys(ns), args=args))

    async def amend(self, ns: str, key: str, entry: Entry) -> bool:
        check_ns(ns)
        live = replace(checked(entry), deleted=False)
        rows, _ = _keys(ns)
        args: builtins.list[EncodableT] = [encode_key(key), live.version, _record(live)]
        with self._reaching():
            return bool(await self._amend(keys=[rows], args=args))

    async def list(
        self, ns: str, prefix: str = "", start: str = "", limit: int = 1000
    ) -> builtins.list[tuple[str, Entry]]:
        check_ns(ns)
        low, high = key_range(prefix, start, limit)
        rows, live = _keys(ns)
        args: builtins.list[EncodableT] = [b"[" + low, b"+" if high is None else b"(" + high]
        with self._reaching():
            out = await self._list(keys=[live, rows], args=[*args, limit])
        return [(bytes(out[i]).decode(), _entry(out[i + 1])) for i in range(0, len(out), 2)]

    async def rebuild(
        self, ns: str, items: AsyncIterable[tuple[str, Entry]], started: float
    ) -> tuple[int, int]:
        check_ns(ns)
        rows, live = _keys(ns)
        seen = f"{PREFIX}rebuild:{uuid.uuid4().hex}"
        keys = [rows, live, NAMESPACES, seen]
        written = removed = 0
        try:
            async for batch in batches(items):
                args: builtins.list[EncodableT] = [ns, SEEN_TTL, repr(float(started))]
                for key, e in batch:
                    args += [key, e.version, _record(e), int(e.deleted)]
                with self._reaching():
                    written += await self._put_many(keys=keys, args=args)
            cursor = 0
            while True:
                with self._reaching():
                    cursor, fields = await self._client.hscan(rows, cursor, count=1000)
                    if fields:
                        found = await self._sweep(keys=keys, args=[ns, started, *fields])
                        removed += int(found)
                if cursor == 0:
                    break
        finally:
            with contextlib.suppress(*_DOWN):
                await self._client.unlink(seen)
        return written, removed

    async def drop(self, ns: str) -> None:
        check_ns(ns)
        with self._reaching():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.unlink(*_keys(ns))
                pipe.srem(NAMESPACES, ns)
                await pipe.execute()

    async def namespaces(self) -> builtins.list[str]:
        with self._reaching():
            names = await self._client.smembers(NAMESPACES)
        return sorted(_bytes(n).decode() for n in names)
