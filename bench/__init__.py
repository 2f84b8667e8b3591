"""Benchmarks of shoal: `python -m bench.engine` measures the engine against the raw disk.

Each bench writes its latest result to bench/results/NAME.json (`write_result`); git keeps the
earlier ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write a bench's result to bench/results/NAME.json, say where, and return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out.relative_to(REPO)}")
    return out
