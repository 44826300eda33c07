"""scripts/lib.sh's compile_sources: bytecode written at setup, cheaply, and never a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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


def test_a_read_only_checkout_is_skipped() -> None:
    """A checkout this account cannot write to is not compiled again, to nowhere, at every setup.
    Root writes anywhere, so as root the setup runs as `nobody` over a root-owned checkout."""
    base = Path(tempfile.mkdtemp(prefix="spendgate-ro-"))
    try:
        base.chmod(0o755)
        root = base / "checkout"
        for part in ("spendgate", "addons"):
            (root / part).mkdir(parents=True)
            (root / part / "mod.py").write_text("X = 1\n")
        seen = base / "seen"
        seen.mkdir(mode=0o777)
        seen.chmod(0o777)  # where the fake python would record a call, whoever runs it
        venv = base / "venv"
        (venv / "bin").mkdir(parents=True)
        py = venv / "bin" / "python"
        py.write_text(f'#!/bin/sh\necho "$@" >> "{seen}/args"\nexec "{sys.executable}" "$@"\n')
        py.chmod(0o755)
        for part in ("spendgate", "addons"):
            (root / part).chmod(0o555)
        script = f'source "{REPO}/scripts/lib.sh"; ROOT="{root}"; VENV="{venv}"; compile_sources; echo done'
        as_other = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if os.geteuid() == 0 else []
        cp = subprocess.run([*as_other, "bash", "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        assert cp.returncode == 0 and cp.stdout == "done\n", cp.stderr
        assert not (seen / "args").exists()  # python was never started
        assert not (root / "spendgate" / "__pycache__").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_syntax_error_is_no_setup_failure(tmp_path) -> None:
    root, venv = _tree(tmp_path)
    (root / "spendgate" / "bad.py").write_text("def (\n")
    cp = _compile(root, venv)
    assert cp.returncode == 0 and cp.stdout == "done\n" and cp.stderr == ""
    assert list((root / "spendgate" / "__pycache__").glob("mod.*.pyc"))
    shutil.rmtree(root)
