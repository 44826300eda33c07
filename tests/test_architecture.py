"""The layout contracts: one-way imports (import-linter) and a wheel that ships every package."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    """pyproject.toml's [tool.importlinter] contracts: layers, no mitmproxy/HTTP in the domain, no cycles."""
    exe = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cp = subprocess.run([str(exe), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert cp.returncode == 0, cp.stdout[-6000:] + cp.stderr[-2000:]
    assert "0 broken" in cp.stdout


def test_every_package_is_in_the_wheel():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "spendgate").rglob("__init__.py")}
    assert found - listed == set(), "add these packages to [tool.setuptools] packages in pyproject.toml"
