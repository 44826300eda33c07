"""Eleventh review (F8): after a 429, `spendgate request` said "Approvers have been notified" when
the policy named nobody who could decide (the example policy: no `approvals:`, no owners), so the
request waited for ever while the requester waited for an answer. The answer now names who was
told, or says plainly that nobody can decide it and what to add."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.attacks.tenth_review_support import make

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("extra, said", [
    ("", "Nobody can decide it: the policy names no approvers or owners"),
    ("approvals: {organization: {approvers: [lead]}}\n", "Notified: lead; one of them runs: spendgate approve r-"),
], ids=["nobody", "lead"])
def test_the_requester_is_told_who_can_decide(tmp_path, extra, said):
    make(tmp_path, "organization: {name: acme, budgets: {day: 100}}\ndefaults: {user: {day: 1}}\n" + extra).close()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "USER": "mallory", "LOGNAME": "mallory", "COLUMNS": "300"}
    env.pop("SPENDGATE_TOKEN", None)
    done = subprocess.run([sys.executable, "-m", "spendgate", "request", "--amount", "2", "--window", "day",
                           "--reason", "a long refactor", "--db", str(tmp_path / "l.duckdb"),
                           "--policy", str(tmp_path / "policy.yaml")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert said in " ".join(done.stdout.split()), done.stdout


def test_dashboard_after_a_kill_says_the_gateway_does_not_answer(tmp_path):
    """F11: a gateway killed with -9 leaves its discovery file; `spendgate dashboard` printed its
    URL and a token for a port nobody listens on."""
    import json
    import socket

    from spendgate.fsutil import discovery_path

    db = tmp_path / "l.duckdb"
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    discovery_path(db).write_text(json.dumps({"url": f"http://127.0.0.1:{port}", "token": "t", "pid": 1}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "spendgate", "dashboard", "--db", str(db)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "does not answer" in done.stderr and "#token=" not in done.stdout
