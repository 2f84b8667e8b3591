"""ObjKey and KeyGen: an object's identity (uuid), its content hash (BLAKE3) and its size."""

from __future__ import annotations

import random
import uuid as uuidlib
from dataclasses import dataclass, field

import blake3


@dataclass(frozen=True, slots=True)
class ObjKey:
    uuid: uuidlib.UUID
    hash: bytes | None  # BLAKE3 of the whole content; None after a write-at-offset
    size: int
    # The version a cluster gave this write (None from a bare engine); not part of identity.
    version: int | None = field(default=None, compare=False)

    def __str__(self) -> str:
        h = self.hash.hex() if self.hash is not None else "-"
        return f"{self.uuid} blake3:{h} {self.size}"


class Hasher:
    """Incremental BLAKE3 over the chunks of one object."""

    def __init__(self) -> None:
        self._h = blake3.blake3()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)  # releases the GIL for large inputs

    def digest(self) -> bytes:
        return bytes(self._h.digest())


class KeyGen:
    """Makes the ObjKey of a new object."""

    @staticmethod
    def uuid() -> uuidlib.UUID:
        """A random (version 4) uuid, drawn without a system call: under a contended GIL
        every system call costs a wait for the lock on return."""
        return uuidlib.UUID(bytes=random.randbytes(16), version=4)

    @staticmethod
    def new(content_hash: bytes | None, size: int) -> ObjKey:
        return ObjKey(KeyGen.uuid(), content_hash, size)

    @staticmethod
    def hash(data: bytes | bytearray | memoryview) -> bytes:
        return bytes(blake3.blake3(data).digest())
