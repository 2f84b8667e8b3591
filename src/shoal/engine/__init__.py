"""engine: one disk, synchronous. The rustor seed's components, under their names.

ObjectStore (the entry point) uses KeyGen/ObjKey, Placer over a FreeList, Manifest, KeyStore
and a BlockStore over a BlockDevice. Nothing here imports asyncio; callers that need a loop
run these calls in threads (the blocking I/O releases the GIL).

The names below are loaded when first used (PEP 562): `from shoal.engine import ObjectStore`
loads the store, while a client that needs only ObjKey (`shoal.engine.keys`, whose import runs
this file first) loads neither the store nor crc32c nor sqlite3 (~40 ms of a `shoal read`).
`check` is the function, as before (loading its module here binds the function over the
module's name).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.engine.blockstore import BlockStore
    from shoal.engine.check import CheckReport, check
    from shoal.engine.device import BLOCK_SIZE, BlockDevice, Superblock
    from shoal.engine.freelist import Extent, FreeList
    from shoal.engine.keys import KeyGen, ObjKey
    from shoal.engine.keystore import KeyStore, Record
    from shoal.engine.manifest import Manifest
    from shoal.engine.objectstore import DEFAULT_NAMESPACE, ObjectStore, ObjectWriter
    from shoal.engine.placer import Placer

# name: the module that defines it
_WHERE = {
    "BlockStore": "blockstore",
    "CheckReport": "check",
    "check": "check",
    "BLOCK_SIZE": "device",
    "BlockDevice": "device",
    "Superblock": "device",
    "Extent": "freelist",
    "FreeList": "freelist",
    "KeyGen": "keys",
    "ObjKey": "keys",
    "KeyStore": "keystore",
    "Record": "keystore",
    "Manifest": "manifest",
    "DEFAULT_NAMESPACE": "objectstore",
    "ObjectStore": "objectstore",
    "ObjectWriter": "objectstore",
    "Placer": "placer",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    loaded = importlib.import_module(f"{__name__}.{module}")
    # every name of that module, bound after the import (which binds the submodule's own
    # name here: `check`, the module, is then replaced by `check`, the function)
    for n, m in _WHERE.items():
        if m == module:
            globals()[n] = getattr(loaded, n)
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_NAMESPACE",
    "BlockDevice",
    "BlockStore",
    "CheckReport",
    "Extent",
    "FreeList",
    "KeyGen",
    "KeyStore",
    "Manifest",
    "ObjKey",
    "ObjectStore",
    "ObjectWriter",
    "Placer",
    "Record",
    "Superblock",
    "check",
]
