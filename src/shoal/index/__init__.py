"""index: the name index ("filer store"), (namespace, key) -> Entry, for listings and S3's
per-object metadata. One small interface (`Index`, in base) and three backends: SQLite (the
embedded default), Redis and PostgreSQL for several gateways on several machines. Derived
data: `rebuild` makes it again from the daemons.

`open_index(url)` picks the backend; the Redis and PostgreSQL drivers are imported only
when one is asked for.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from shoal.errors import InvalidArgument
from shoal.index.base import (
    MAX_KEY,
    MAX_NAME,
    MD5_META,
    Entry,
    Index,
    IndexUnavailable,
    mask_url,
    md5_of,
    of_object,
    tombstone,
)

__all__ = [
    "MAX_KEY", "MAX_NAME", "MD5_META", "Entry", "Index", "IndexUnavailable", "md5_of", "of_object",
    "open_index", "tombstone",
]  # fmt: skip

URL_FORMS = (
    "sqlite:///absolute/path.db, sqlite://relative/path.db or a bare file path; "
    "redis://[:password@]host:port[/db] or rediss://...; "
    "postgresql://user[:password]@host:port/dbname or postgres://..."
)


def open_index(url: str) -> Index:
    """The index `url` names, not yet opened (call `await index.open()`, or use it with
    `async with`)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower() if sep else ""
    if not sep:
        if url and ":" not in url.split("/", 1)[0]:
            from shoal.index.sqlite import SqliteIndex

            return SqliteIndex(url)
    elif scheme == "sqlite" and rest:
        from shoal.index.sqlite import SqliteIndex

        return SqliteIndex(rest, url)  # sqlite:///abs -> "/abs", sqlite://rel -> "rel"
    elif scheme in ("redis", "rediss") and urlsplit(url).hostname:
        from shoal.index.redis import RedisIndex

        return RedisIndex(url)
    elif scheme in ("postgresql", "postgres"):
        from shoal.index.postgres import PostgresIndex

        return PostgresIndex(url)
    raise InvalidArgument(f"index {mask_url(url)!r}: not an index URL; use {URL_FORMS}")
