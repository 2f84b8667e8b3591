"""The name index's contract: `Entry`, `Index` and the checks every backend shares.

The index maps (namespace, key) to an `Entry`. It is derived data: the daemons hold the truth
and `rebuild` makes the index again from them. Several gateways may share one index, so every
write is ordered by the object's version (given by the storage cluster): a write applies only
when its version is newer than the stored one, tombstones included, and each write is atomic
per key across processes. Keys are ordered bytewise in UTF-8, the order S3 lists in.

An entry's MD5 (minikeyvalue's Content-Md5, S3's ETag): the gateway computes it while a PUT's
body streams in and stores it here and in the object's own metadata (under MD5_META, hex),
from which a rebuild takes it back (`of_object`). Objects written by versions of shoal before
that carry none, nor do rows made by them: `amend` adds it later to the row of that very
version, which a gateway does the first time a HEAD asks for it (shoal.gateway.http). Every
backend takes a database made before the field existed as it is (SQLite and PostgreSQL add
the column when they open it, Redis reads records without it as without an MD5).
"""

from __future__ import annotations

import abc
import builtins
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

from shoal.errors import InvalidArgument, ShoalError

MAX_KEY = 1024  # bytes of UTF-8, as S3
# the longest name kept: an S3 gateway's object names are its bucket's (at most 63 bytes), '/'
# and a key of MAX_KEY
MAX_NAME = MAX_KEY + 64
MAX_NAMESPACE = 255  # bytes of UTF-8; namespaces are pool names
REBUILD_BATCH = 1000  # items written per round trip by rebuild


@dataclass(frozen=True, slots=True)
class Entry:
    """What the index knows of one object (or of its deletion, when `deleted`)."""

    size: int
    hash: bytes | None  # BLAKE3 (32 bytes) or None
    version: int
    mtime: float  # unix seconds, when the gateway wrote it
    meta: dict[str, str] = field(default_factory=dict)  # content-type, x-amz-meta-*
    deleted: bool = False  # a tombstone
    md5: bytes | None = None  # MD5 of the value (16 bytes), if known; None on tombstones


MD5_META = "md5"  # the key of an object's MD5 (hex) in its own metadata (ObjectInfo.meta)


def md5_of(meta: Mapping[str, str]) -> bytes | None:
    """The MD5 an object's metadata records (MD5_META: 32 hex digits), or None."""
    value = meta.get(MD5_META)
    if not isinstance(value, str) or len(value) != 32:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def of_object(
    size: int, hash: bytes | None, version: int, mtime: float, meta: Mapping[str, str]
) -> Entry:
    """The entry a rebuild makes of an object from its record (a stat or a listing): its MD5
    and the rest of what was stored with it (Entry.meta) are taken from its metadata."""
    rest = {k: v for k, v in meta.items() if k != MD5_META}
    return Entry(size, hash, version, mtime, rest, md5=md5_of(meta))


def tombstone(version: int, mtime: float | None = None) -> Entry:
    """A deletion at `version` (mtime now unless given)."""
    return Entry(0, None, version, time.time() if mtime is None else mtime, {}, deleted=True)


class IndexUnavailable(ShoalError):
    """The index cannot be reached, or its server failed the request. A write may or may not
    have been made; every write is ordered by version, so retrying one is safe."""


class Index(abc.ABC):
    """One namespace-keyed index. An object serves one event loop; its methods may run
    concurrently as tasks of that loop."""

    url: str  # as given, the password masked

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if missing. A server that is down is not an error:
        every operation tries to connect again (and creates the schema when it first can)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raises IndexUnavailable when the index cannot be reached."""

    @abc.abstractmethod
    async def get(self, ns: str, key: str) -> Entry | None:
        """The live entry, or None if there is none (or only a tombstone)."""

    @abc.abstractmethod
    async def put(self, ns: str, key: str, entry: Entry) -> bool:
        """Store `entry` if it is newer than what is stored (live or tombstone) or nothing is.
        Returns whether it applied."""

    @abc.abstractmethod
    async def hide(self, ns: str, key: str) -> Entry | None:
        """Step one of a delete: the live entry becomes a tombstone at its own version (so a
        newer put still wins). Returns the entry hidden, or None if there was none."""

    @abc.abstractmethod
    async def restore(self, ns: str, key: str, entry: Entry) -> bool:
        """Undo `hide` (the delete that hid `entry` failed): the entry is live again if the
        key's row is still the tombstone `hide` left (at entry.version). Whether it was."""

    @abc.abstractmethod
    async def amend(self, ns: str, key: str, entry: Entry) -> bool:
        """Replace the live entry at exactly `entry.version` (the same object, with more known
        of it: the MD5 a rebuild could not give) by `entry`. Nothing else changes: a key
        hidden or deleted, or at another version, stays as it is. Returns whether it applied."""

    async def delete(self, ns: str, key: str, version: int) -> None:
        """A tombstone at `version` (mtime now), if `version` is newer than what is stored."""
        await self.put(ns, key, tombstone(version))

    @abc.abstractmethod
    async def list(
        self, ns: str, prefix: str = "", start: str = "", limit: int = 1000
    ) -> builtins.list[tuple[str, Entry]]:
        """Live entries whose key starts with `prefix`, from `start` (inclusive) on, in
        bytewise UTF-8 order, at most `limit`. Fewer than `limit` means there are no more."""

    @abc.abstractmethod
    async def rebuild(
        self, ns: str, items: AsyncIterable[tuple[str, Entry]], started: float
    ) -> tuple[int, int]:
        """Put every item (newer wins; a live item also wins over a tombstone at its own
        version made before `started`: a delete that hid the key and stopped there, since a
        finished delete leaves a newer version), then remove every row of `ns` (live or
        tombstone) whose key was not among the items and whose mtime is before `started` (rows
        written since are concurrent writes of gateways). Returns (items whose version is the
        stored one, rows removed)."""

    @abc.abstractmethod
    async def drop(self, ns: str) -> None:
        """Forget the namespace entirely."""

    @abc.abstractmethod
    async def namespaces(self) -> builtins.list[str]:
        """The namespaces with at least one row, sorted."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()


def mask_url(url: str) -> str:
    """`url` with its password (if any) replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def unavailable(url: str, cause: BaseException) -> IndexUnavailable:
    reason = " ".join(str(cause).split()) or type(cause).__name__
    return IndexUnavailable(f"index {url} is unavailable: {reason}")


def check_ns(ns: str) -> None:
    if not ns or "\x00" in ns or len(ns.encode()) > MAX_NAMESPACE:
        raise InvalidArgument(
            f"namespace {ns!r}: must be 1 to {MAX_NAMESPACE} bytes of UTF-8, without NUL"
        )


def encode_key(key: str) -> bytes:
    """The key as stored: its UTF-8 bytes, at most MAX_NAME."""
    try:
        raw = key.encode()
    except UnicodeEncodeError as e:
        raise InvalidArgument(f"key {key!r} is not valid UTF-8: {e}") from None
    if len(raw) > MAX_NAME:
        raise InvalidArgument(f"key of {len(raw)} bytes: at most {MAX_NAME} bytes of UTF-8")
    return raw


def key_range(prefix: str, start: str, limit: int) -> tuple[bytes, bytes | None]:
    """The bytes range [low, high) of keys a list covers (high None: no bound). Since 0xFF
    never occurs in UTF-8, the keys starting with p are exactly those in [p, p + 0xFF)."""
    if limit < 1:
        raise InvalidArgument(f"list limit {limit}: must be at least 1")
    p, s = encode_key(prefix), encode_key(start)
    return max(p, s), (p + b"\xff" if p else None)


def checked(entry: Entry) -> Entry:
    if not 0 <= entry.version < 2**53:
        raise InvalidArgument(f"version {entry.version}: must be in [0, 2**53)")
    if entry.md5 is not None and len(entry.md5) != 16:
        raise InvalidArgument(f"an MD5 is 16 bytes, not {len(entry.md5)}")
    return entry


async def batches(
    items: AsyncIterable[tuple[str, Entry]], size: int = REBUILD_BATCH
) -> AsyncIterator[list[tuple[bytes, Entry]]]:
    """The items in lists of at most `size`, keys encoded and checked."""
    batch: list[tuple[bytes, Entry]] = []
    async for key, entry in items:
        batch.append((encode_key(key), checked(entry)))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def current(batch: list[tuple[bytes, Entry]], stored: dict[bytes, int]) -> int:
    """How many items of a batch hold the stored version, once the batch is written."""
    return sum(1 for key, entry in batch if stored.get(key) == entry.version)
