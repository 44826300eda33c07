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
        assert "export HTTPS_PROXY=http://127.0.0.1:8080" in text
        assert "NODE_EXTRA_CA_CERTS=" in text and "SSL_CERT_FILE=" in text
        assert (tmp_path / "conf" / "mitmproxy-ca-cert.pem").exists()
        bundle = (REPO / "data" / "ca-bundle.pem").read_text()
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
