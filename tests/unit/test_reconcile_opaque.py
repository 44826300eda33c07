"""Opaque host matching, the recorder's queue (nothing lost on close) and imports through a gateway."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from spendgate.gateway import Gateway, Settings
from spendgate.metering import opaque
from spendgate.store.ledger import connect, migrate

REPO = Path(__file__).resolve().parents[2]


def test_patterns_and_clients():
    pats = opaque.patterns({"opaque_hosts": ["*.Windsurf.example", " "]})
    assert opaque.is_opaque("api2.cursor.sh", pats) and opaque.is_opaque("CURSOR.SH.", pats)
    assert opaque.is_opaque("server.windsurf.example", pats)
    assert not opaque.is_opaque("cursor.sh.evil.test", pats) and not opaque.is_opaque("api.anthropic.com", pats)
    assert not opaque.is_opaque(None, pats)
    assert opaque.client_of("api2.cursor.sh") == "cursor"
    assert opaque.client_of("server.windsurf.example") == "windsurf.example"


def conn(user: str, host: str, up: int, down: int, seconds: float) -> opaque.OpaqueConnection:
    t = datetime(2026, 3, 2, 10, tzinfo=UTC)
    return opaque.OpaqueConnection(t, t + timedelta(seconds=seconds), host, 443, user, "proxy_auth", None,
                                   opaque.client_of(host), up, down, seconds * 1000, "closed")  # fmt: skip


def test_recorder_writes_everything_queued_before_close(tmp_path):
    con = connect(tmp_path / "l.duckdb")
    migrate(con)
    rec = opaque.OpaqueRecorder(con.cursor, batch_interval=10)  # long interval: close() must still drain
    for i in range(500):
        rec.record(conn("alice" if i % 2 else "bob", "api2.cursor.sh", 100, 1000, 0.5))
    rec.close()
    rows = {r["group"]: r for r in opaque.summary(con.cursor())}
    assert rows["alice"] == {"group": "alice", "connections": 250, "bytes_up": 25_000, "bytes_down": 250_000,
                             "seconds": 125.0, "clients": "cursor"}  # fmt: skip
    assert rows["bob"]["connections"] == 250


def test_import_goes_through_the_gateway_holding_the_file(tmp_path):
    db = tmp_path / "ledger.duckdb"
    gw = Gateway(Settings(db=db, policy=REPO / "policies" / "example.yaml", reload_interval=0))
    try:
        cli = [sys.executable, "-m", "spendgate.cli"]
        fixture = REPO / "tests" / "fixtures" / "billing" / "openai_costs.json"
        cp = subprocess.run([*cli, "reconcile", "import", str(fixture), "--provider", "openai", "--db", str(db),
                             "--json"], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert cp.returncode == 0, cp.stderr
        out = json.loads(cp.stdout)
        assert out["into"].startswith("gateway http://127.0.0.1:") and out["new"] == 3, out
        # written by the gateway's own process, visible to it at once
        assert gw.ledger.cursor().execute("SELECT count(*) FROM billing_lines").fetchone() == (3,)
        cp = subprocess.run([*cli, "reconcile", "report", "--db", str(db), "--json"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
        assert cp.returncode == 0, cp.stderr
        assert json.loads(cp.stdout)["totals"][0]["billed_usd"] == 1.75
    finally:
        gw.close()


def test_an_idle_recorder_sleeps_and_a_failed_write_is_retried(tmp_path, monkeypatch):
    """No wake-ups while nothing comes (a timer woke it four times a second at rest); rows a
    write could not take are retried on the interval without a new connection coming."""
    con = connect(tmp_path / "l.duckdb")
    migrate(con)
    calls = []
    real = opaque.OpaqueRecorder._write

    def counting(self, cur, batch):
        calls.append(len(batch))
        if len(calls) <= 2 and batch:  # the first write fails, as on a full disk
            self._pending = list(batch)
            self.failures += 1
            return
        return real(self, cur, batch)

    monkeypatch.setattr(opaque.OpaqueRecorder, "_write", counting)
    rec = opaque.OpaqueRecorder(con.cursor, batch_interval=0.005)
    try:
        time.sleep(0.3)
        assert calls == []  # asleep: the old timer wrote an empty batch ~60 times in this time
        rec.record(conn("alice", "api2.cursor.sh", 100, 1000, 0.5))
        deadline = time.monotonic() + 5
        while rec.written < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rec.written == 1 and rec.failures == 1  # retried with nothing new queued
    finally:
        rec.close()
