"""Installing shoal says nothing but that it installed: its pyproject.toml uses no form that
setuptools calls deprecated (each one printed a banner on every `make up`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The build backend, run as pip runs it, with setuptools' deprecation warnings made errors.
_PROBE = """
import tempfile, warnings
from setuptools.warnings import SetuptoolsDeprecationWarning
warnings.simplefilter("error", SetuptoolsDeprecationWarning)
from setuptools import build_meta
print(build_meta.prepare_metadata_for_build_wheel(tempfile.mkdtemp()))
"""


def test_the_metadata_builds_without_a_deprecation() -> None:
    p = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True,
                       timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    assert p.stdout.strip().endswith(b".dist-info")
