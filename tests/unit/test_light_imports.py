"""What a small command loads: `shoal read` and its kin import the client, which places a
name without numpy and takes ObjKey without the engine's store. And the engine's names,
loaded lazily, are still all there (`check` the function)."""

from __future__ import annotations

import json
import subprocess
import sys

import shoal.engine

HEAVY = ["numpy", "shoal.engine.objectstore", "shoal.engine.keystore", "crc32c", "sqlite3",
         "shoal.master", "shoal.daemon", "shoal.gateway", "rich"]  # fmt: skip

PLACE_ONE = """
import json, sys
import shoal.cli.objects
from shoal.client.cluster import ClusterClient
from shoal.cluster.map import ClusterMap, DaemonInfo, Pool
m = ClusterMap(1, {i: DaemonInfo(i, "a", f"h{i}") for i in range(5)}, {})
c = ClusterClient("127.0.0.1:1", "k", "s")
c._set(m.with_pool(Pool(1, "p", 3, 2, 64)))
c.acting("p", "a name")
print(json.dumps(sorted(sys.modules)))
"""


def test_the_client_places_a_name_without_numpy_or_the_store() -> None:
    out = subprocess.run([sys.executable, "-c", PLACE_ONE], capture_output=True, text=True,
                         check=True)  # fmt: skip
    loaded = set(json.loads(out.stdout))
    assert "shoal.client.cluster" in loaded and "shoal.engine.keys" in loaded
    heavy = {m for m in loaded for h in HEAVY if m == h or m.startswith(h + ".")}
    assert not heavy, f"a small command would load {sorted(heavy)}"


LAZY = """
import json
from shoal.engine import CheckReport  # (loads the module named check first)
from shoal.engine import check, ObjectStore, ObjKey, BLOCK_SIZE, blockstore
import shoal.engine as e
print(json.dumps([callable(check), e.check is check, ObjectStore.__name__, ObjKey.__name__,
                  BLOCK_SIZE, blockstore.__name__, CheckReport.__name__]))
"""


def test_engine_names_load_when_used() -> None:
    out = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert json.loads(out.stdout) == [True, True, "ObjectStore", "ObjKey", 4096,
                                      "shoal.engine.blockstore", "CheckReport"]  # fmt: skip
    for name in shoal.engine.__all__:
        assert getattr(shoal.engine, name) is not None
    assert set(shoal.engine.__all__) <= set(dir(shoal.engine))
