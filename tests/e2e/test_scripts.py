"""The README's first command, `scripts/run`, starts a working gateway with the embedded defaults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.support.gateway import BIN, free_port

REPO = Path(__file__).resolve().parents[2]


def test_scripts_run_starts_the_gateway_and_prints_how_to_use_it(tmp_path):
    port = free_port()
    db = tmp_path / "ledger.duckdb"
    env = {**os.environ, "SPENDGATE_CONFDIR": str(tmp_path / "conf")}
    proc = subprocess.Popen(
        [str(REPO / "scripts" / "run"), "-p", str(port), "--set", f"spendgate_db={db}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, start_new_session=True,
    )
    out = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if "proxy listening at" in line:
                break
        text = "".join(out)
        assert f"listening at 127.0.0.1:{port}" in text, text
        assert f"export HTTPS_PROXY=http://127.0.0.1:{port}" in text  # the real port, not the default
        assert "NODE_EXTRA_CA_CERTS=" in text and "SSL_CERT_FILE=" in text
        assert (tmp_path / "conf" / "mitmproxy-ca-cert.pem").exists()
        bundle = (REPO / "data" / "ca-bundle.pem").read_text()
        assert (REPO / "data").stat().st_mode & 0o777 == 0o700  # the ledger, CA bundle, tokens: this account's
        assert (tmp_path / "conf" / "mitmproxy-ca-cert.pem").read_text().strip() in bundle
        # the CLI finds the running gateway through the ledger's discovery file
        deadline = time.monotonic() + 30
        while not Path(f"{db}.gateway.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        r = subprocess.run([str(BIN / "spendgate"), "budgets", "--db", str(db), "--json"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        scopes = {b["scope"] for b in json.loads(r.stdout)}
        assert "organization:example" in scopes
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert not Path(f"{db}.gateway.json").exists()  # removed on a clean stop


def _start_run(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([str(REPO / "scripts" / "run"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, text=True, start_new_session=True)
    out = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        out.append(line)
        if "proxy listening at" in line:
            break
    return proc, "".join(out)


def test_scripts_run_lets_the_callers_set_replace_its_defaults(tmp_path):
    """`--set confdir/spendgate_db/spendgate_policy` and `--listen-port` replace the defaults
    instead of repeating them (mitmproxy refused the pair, and the addon never took charge)."""
    port = free_port()
    db = tmp_path / "mine.duckdb"
    conf = tmp_path / "myconf"
    pol = tmp_path / "policy.yaml"
    pol.write_text("version: 1\norganization: {name: overridden-org, budgets: {month: 123}}\n")
    env = {**os.environ, "SPENDGATE_CONFDIR": str(tmp_path / "not-this-one")}
    proc, text = _start_run(["--listen-port", str(port), "--set", f"confdir={conf}", "--set", f"spendgate_db={db}",
                             "--set", f"spendgate_policy={pol}"], env)
    try:
        assert f"listening at 127.0.0.1:{port}" in text, text
        assert f"export HTTPS_PROXY=http://127.0.0.1:{port}" in text
        assert "Received multiple values" not in text
        assert (conf / "mitmproxy-ca-cert.pem").exists() and not (tmp_path / "not-this-one").exists()
        assert f"NODE_EXTRA_CA_CERTS={conf}/mitmproxy-ca-cert.pem" in text
        deadline = time.monotonic() + 30
        while not Path(f"{db}.gateway.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert db.exists()  # the caller's ledger, in charge
        r = subprocess.run([str(BIN / "spendgate"), "budgets", "--db", str(db), "--json"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        scopes = {b["scope"] for b in json.loads(r.stdout)}
        assert "organization:overridden-org" in scopes  # the caller's policy
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
