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

A head may also be composed of segments stored before it (an S3 multipart upload's parts):
each segment is a run of stripes of its own (BASE/WID/NNNNNN, its own size, stripe size and
BLAKE3), and the head lists them in order. Putting such a head moves no data: the object is
the segments, end to end, from the moment the head is stored. Its hash is the BLAKE3 of the
segments' hashes (each segment is checked against its own as it is read).
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
class Segment:
    """`size` bytes stored as stripes of `stripe` bytes named BASE/WID/NNNNNN; `hash`: their
    BLAKE3."""

    base: str
    wid: str
    size: int
    stripe: int
    hash: bytes

    @property
    def count(self) -> int:
        return -(-self.size // self.stripe)

    def stripe_name(self, i: int) -> str:
        return f"{self.base}/{self.wid}/{i:06d}"

    def stripe_names(self) -> list[str]:
        return [self.stripe_name(i) for i in range(self.count)]

    @classmethod
    def new(cls, base: str) -> Segment:
        return cls(base, os.urandom(6).hex(), 0, STRIPE, b"")


@dataclass(frozen=True)
class Head:
    size: int
    stripe: int  # 0 in a composed head (its segments have their own)
    wid: str
    count: int  # stripes, of every segment
    hash: bytes
    parts: tuple[Segment, ...] = ()  # a composed head's segments, in order

    def stripe_name(self, name: str, i: int) -> str:
        return f"{name}/{self.wid}/{i:06d}"

    def segments(self, name: str) -> tuple[Segment, ...]:
        """The runs of stripes that make the object `name` whose head this is."""
        if self.parts:
            return self.parts
        return (Segment(name, self.wid, self.size, self.stripe, self.hash),)

    def encode(self) -> bytes:
        d: dict[str, Any] = {"size": self.size, "stripe": self.stripe, "wid": self.wid,
                             "count": self.count, "hash": self.hash}  # fmt: skip
        if self.parts:
            d["parts"] = [[p.base, p.wid, p.size, p.stripe, p.hash] for p in self.parts]
        body: bytes = msgpack.packb(d, use_bin_type=True)
        return body

    @classmethod
    def decode(cls, raw: bytes | bytearray | memoryview) -> Head:
        try:
            d: dict[str, Any] = msgpack.unpackb(bytes(raw), raw=False)
            parts = tuple(
                Segment(str(b), str(w), int(n), int(st), bytes(h))
                for b, w, n, st, h in d.get("parts", ())
            )
            head = cls(int(d["size"]), int(d["stripe"]), str(d["wid"]), int(d["count"]),
                       bytes(d["hash"]), parts)  # fmt: skip
        except Exception:
            raise IntegrityError("a striped object's head is damaged") from None
        if parts:
            if (
                any(p.stripe <= 0 or p.size < 0 for p in parts)
                or head.size != sum(p.size for p in parts)
                or head.count != sum(p.count for p in parts)
            ):
                raise IntegrityError("a composed object's head does not add up")
        elif head.stripe <= 0 or head.count != -(-head.size // head.stripe):
            raise IntegrityError("a striped object's head does not add up")
        return head

    @classmethod
    def new(cls, size: int, digest: bytes) -> Head:
        return cls(size, STRIPE, os.urandom(6).hex(), -(-size // STRIPE), digest)

    @classmethod
    def composed(cls, parts: tuple[Segment, ...]) -> Head:
        """The head of the object that is `parts` end to end (at least one)."""
        if not parts:
            raise ValueError("a composed object needs at least one segment")
        h = blake3.blake3()
        for p in parts:
            h.update(p.hash)
        size, count = sum(p.size for p in parts), sum(p.count for p in parts)
        return cls(size, 0, os.urandom(6).hex(), count, h.digest(), parts)


def digest(data: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest()


def stripes_of(
    segments: tuple[Segment, ...], offset: int, length: int
) -> list[tuple[int, int, int, int]]:
    """(segment index, stripe index in it, offset in the stripe, length) covering [offset,
    offset + length) of the object that is `segments` end to end."""
    out: list[tuple[int, int, int, int]] = []
    base, end = 0, offset + length
    for k, seg in enumerate(segments):
        pos, stop = max(offset, base), min(end, base + seg.size)
        while pos < stop:
            i = (pos - base) // seg.stripe
            start = pos - base - i * seg.stripe
            n = min(stop - pos, seg.stripe - start)
            out.append((k, i, start, n))
            pos += n
        base += seg.size
        if base >= end:
            break
    return out
