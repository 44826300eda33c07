"""scripts/lib.sh's compile_sources: bytecode written at setup, cheaply, and never a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    """A checkout's two source folders and a venv whose python records its arguments."""
    root = tmp_path / "checkout"
    for part in ("spendgate", "addons"):
        (root / part).mkdir(parents=True)
        (root / part / "mod.py").write_text("X = 1\n")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/args"\nexec "{sys.executable}" "$@"\n')
    py.chmod(0o755)
    return root, venv


def _compile(root: Path, venv: Path) -> subprocess.CompletedProcess:
    script = f'source "{REPO}/scripts/lib.sh"; ROOT="{root}"; VENV="{venv}"; compile_sources; echo done'
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env)


def test_bytecode_written_in_process_without_a_worker_pool(tmp_path) -> None:
    root, venv = _tree(tmp_path)
    cp = _compile(root, venv)
    assert cp.returncode == 0 and cp.stdout == "done\n" and cp.stderr == ""
    for part in ("spendgate", "addons"):
        assert list((root / part / "__pycache__").glob("mod.*.pyc")), part
    args = (tmp_path / "args").read_text().split()
    assert "compileall" in args and "-j" not in args  # a pool cost ~0.2 s at every setup, for nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_checkout_is_skipped(tmp_path) -> None:
    root, venv = _tree(tmp_path)
    for part in ("spendgate", "addons"):
        (root / part).chmod(0o555)
    try:
        cp = _compile(root, venv)
    finally:
        for part in ("spendgate", "addons"):
            (root / part).chmod(0o755)
    assert cp.returncode == 0 and cp.stdout == "done\n"
    assert not (tmp_path / "args").exists()


def test_a_syntax_error_is_no_setup_failure(tmp_path) -> None:
    root, venv = _tree(tmp_path)
    (root / "spendgate" / "bad.py").write_text("def (\n")
    cp = _compile(root, venv)
    assert cp.returncode == 0 and cp.stdout == "done\n" and cp.stderr == ""
    assert list((root / "spendgate" / "__pycache__").glob("mod.*.pyc"))
    shutil.rmtree(root)
