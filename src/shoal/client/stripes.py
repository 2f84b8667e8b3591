"""Striping: a large object is cut into stripes (4 MiB), each stored as its own engine object
and placed on its own, so that one object spreads over the cluster and moves in parallel.

    pool/NAME                      the head: a small object (msgpack {size, stripe, wid,
                                   count, hash}) marked by the reference HEAD_REF
    pool#stripes/NAME/WID/000000   stripe 0, placed by its own name
    ...

Stripes go first (several at once), the head last: the head is the commit point, so a reader
sees the old object or the new one, never a mix. WID is new at every write, so a rewrite never
touches the stripes readers of the old head are reading; those are deleted after the new head
is in place. An object of at most one stripe is stored whole, under its name. HEAD_REF is
reserved: an object with that reference is a head.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import blake3
import msgpack

from shoal.errors import IntegrityError

STRIPE = 4 << 20
PARALLEL = 8  # stripes in flight per object
HEAD_REF = b"shoal:striped\x00\x00\x00"  # a 16-byte consumer id that marks heads


def stripe_namespace(pool: str) -> str:
    return f"{pool}#stripes"


@dataclass(frozen=True)
class Head:
    size: int
    stripe: int
    wid: str
    count: int
    hash: bytes

    def stripe_name(self, name: str, i: int) -> str:
        return f"{name}/{self.wid}/{i:06d}"

    def encode(self) -> bytes:
        body: bytes = msgpack.packb(
            {"size": self.size, "stripe": self.stripe, "wid": self.wid, "count": self.count,
             "hash": self.hash}, use_bin_type=True)  # fmt: skip
        return body

    @classmethod
    def decode(cls, raw: bytes | bytearray | memoryview) -> Head:
        try:
            d: dict[str, Any] = msgpack.unpackb(bytes(raw), raw=False)
            head = cls(int(d["size"]), int(d["stripe"]), str(d["wid"]), int(d["count"]),
                       bytes(d["hash"]))  # fmt: skip
        except Exception:
            raise IntegrityError("a striped object's head is damaged") from None
        if head.stripe <= 0 or head.count != -(-head.size // head.stripe):
            raise IntegrityError("a striped object's head does not add up")
        return head

    @classmethod
    def new(cls, size: int, digest: bytes) -> Head:
        return cls(size, STRIPE, os.urandom(6).hex(), -(-size // STRIPE), digest)


def digest(data: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest()


def stripes_of(head: Head, offset: int, length: int) -> list[tuple[int, int, int]]:
    """(stripe index, offset in it, length) covering [offset, offset + length)."""
    out, pos, end = [], offset, offset + length
    while pos < end:
        i = pos // head.stripe
        start = pos - i * head.stripe
        n = min(end - pos, head.stripe - start)
        out.append((i, start, n))
        pos += n
    return out
