"""engine: one disk, synchronous. The rustor seed's components, under their names.

ObjectStore (the entry point) uses KeyGen/ObjKey, Placer over a FreeList, Manifest, KeyStore
and a BlockStore over a BlockDevice. Nothing here imports asyncio; callers that need a loop
run these calls in threads (the blocking I/O releases the GIL).
"""

from shoal.engine.blockstore import BlockStore
from shoal.engine.check import CheckReport, check
from shoal.engine.device import BLOCK_SIZE, BlockDevice, Superblock
from shoal.engine.freelist import Extent, FreeList
from shoal.engine.keys import KeyGen, ObjKey
from shoal.engine.keystore import KeyStore, Record
from shoal.engine.manifest import Manifest
from shoal.engine.objectstore import DEFAULT_NAMESPACE, ObjectStore, ObjectWriter
from shoal.engine.placer import Placer

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
