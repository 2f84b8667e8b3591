"""shoal.proto.s3 is pure: importing it loads no event loop, no TLS and nothing of the layers
above; and every name a module exports is there."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

MODULES = [
    "acl",
    "bucketpolicy",
    "checksums",
    "names",
    "chunked",
    "conditions",
    "cors",
    "errors",
    "postpolicy",
    "responses",
    "sigv2",
    "sigv4",
    "xml",
]

IMPORT_ALL = f"""
import json, sys
for name in {MODULES!r}:
    __import__("shoal.proto.s3." + name)
print(json.dumps(sorted(sys.modules)))
"""


def test_importing_loads_no_loop_no_tls_no_upper_layer() -> None:
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(out.stdout))
    banned = ["asyncio", "ssl", "shoal.client", "shoal.gateway", "shoal.daemon", "shoal.engine"]
    found = {m for m in loaded for b in banned if m == b or m.startswith(b + ".")}
    assert not found


@pytest.mark.parametrize("name", MODULES)
def test_exported_names_exist(name: str) -> None:
    module = importlib.import_module("shoal.proto.s3." + name)
    for exported in getattr(module, "__all__", []):
        assert hasattr(module, exported), f"{name}.{exported}"
