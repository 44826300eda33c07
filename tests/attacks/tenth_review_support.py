"""Tenth review (media metering) helpers: the real gateway core (spendgate.gateway.Gateway: meter,
admission, pricer with the shipped pricing/overrides.yaml, DuckDB ledger) driven the way the proxy
edge (addons/gateway.py) drives it; only the provider's answers are canned bytes. No sockets."""

from __future__ import annotations

from pathlib import Path

from spendgate.gateway import Gateway, Settings
from spendgate.metering.meter import Body, Exchange
from spendgate.reports.queries import ledger as ledger_rows

ROOT = Path(__file__).resolve().parents[2]
OPENAI = "api.openai.com"
GEMINI = "generativelanguage.googleapis.com"
OPENAI_AUTH = {"authorization": "Bearer sk-mallory-SECRET-0001", "user-agent": "OpenAI/Python 2.8.0"}
GEMINI_AUTH = {"x-goog-api-key": "AIza-mallory-SECRET-0001", "user-agent": "google-genai-sdk/1.40.0"}


def make(tmp: Path, policy: str = "defaults: {user: {day: 10}}\n", central: bool = False) -> Gateway:
    p = tmp / "policy.yaml"
    p.write_text("version: 1\ntimezone: UTC\n" + policy)
    return Gateway(Settings(db=tmp / "l.duckdb", policy=p, pricing=ROOT / "pricing" / "overrides.yaml",
                            user="mallory", admin_port=-1, reload_interval=0, central=central))


def send(gw: Gateway, host: str, path: str, body: bytes, headers: dict, method: str = "POST") -> tuple[Exchange, object]:
    """addons/gateway.py _meter + _admitted: begin, then admit (None: forwarded upstream)."""
    ex = gw.meter.begin(host, path, headers, body, method=method)
    answer = gw.admission.admit(ex, path, body)
    if answer is not None:
        gw.meter.finish(ex, None)
    return ex, answer


def answered(gw: Gateway, ex: Exchange, body: bytes, status: int = 200) -> None:
    """responseheaders + response: the provider's whole (non-streamed) answer."""
    ex.status = status
    gw.meter.finish(ex, Body(body), bytes_out=len(body))


def rows(gw: Gateway) -> list[dict]:
    gw.meter.flush()
    return ledger_rows(gw.ledger.cursor())
