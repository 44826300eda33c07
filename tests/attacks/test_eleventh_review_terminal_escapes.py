"""Eleventh review (F5): a model name a client sent reached the admin's terminal raw.

Any client can name any model: `"model": "evil\\u001b[31mRED\\u001b]0;TITLE\\u0007\\u001b[2Jx"` is
stored as sent (it is the ledger's record of what was asked). `spendgate ledger`, `spend` and
`audit` escaped control characters already; `spendgate explain` and `spendgate top` printed them,
so a client could clear, recolour or overwrite a finance lead's report, or set the terminal's
title; `top` also read names as rich markup (`[link=...]`). Both now print them escaped (\\x1b).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.attacks.tenth_review_support import OPENAI, OPENAI_AUTH, answered, make, rows, send

ROOT = Path(__file__).resolve().parents[2]
EVIL = "evil\x1b[31mRED\x1b]0;TITLE\x07\x1b[2J[bold]x[/bold]\rz"


def _cli(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "spendgate", *args], capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode("utf-8", "replace")


def test_explain_and_top_print_a_client_supplied_model_escaped(tmp_path):
    gw = make(tmp_path, "defaults: {user: {day: 10}}\n")
    try:
        body = json.dumps({"model": EVIL, "messages": [{"role": "user", "content": "hi"}]}).encode()
        ex, refused = send(gw, OPENAI, "/v1/chat/completions", body, OPENAI_AUTH)
        assert refused is None
        answered(gw, ex, json.dumps({"model": EVIL, "choices": [], "usage": {
            "prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}).encode())
        (row,) = rows(gw)
        assert "\x1b" in row["model"]  # stored as sent: the record of what was asked
    finally:
        gw.close()
    db = str(tmp_path / "l.duckdb")
    for out in (_cli("explain", row["request_id"], "--db", db),
                _cli("top", "--once", "--db", db, "--policy", str(tmp_path / "policy.yaml"))):
        assert "\x1b]0;" not in out and "\x1b[2J" not in out and "\x07" not in out and "\r" not in out
        assert "\x1b[31mRED" not in out
        assert "\\x1b[31mRED" in out or "\\x1b" in out  # shown, escaped


def test_top_with_a_broken_policy_says_where_not_a_traceback(tmp_path):
    gw = make(tmp_path)
    gw.close()
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ndefaults: {user: {dayy: 1}}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "spendgate", "top", "--once", "--db", str(tmp_path / "l.duckdb"),
                           "--policy", str(bad)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{bad}:2:" in done.stderr and "invalid policy" in done.stderr
