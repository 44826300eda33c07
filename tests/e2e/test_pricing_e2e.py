"""Pricing end to end: a real mitmdump gateway, the Anthropic SDK, the CLI as a subprocess.

* `spendgate explain` prints the calculation of a metered request, and it adds up to its cost;
* a contracted rate added to the gateway's overrides is applied by `spendgate prices reprice`
  through the gateway's admin API (the gateway holds the DuckDB file): dry run first, then for
  real, with the previous cost kept in `price_audit`, the budget counters moved by the delta, and
  new requests priced with the new rates;
* an unknown model is unpriced (never $0) and `spendgate prices check` lists it and its fallback
  charge;
* `spendgate prices update --from URL` reads a genai-prices catalogue from a loopback HTTP
  server, shows the change and pins it only with --yes.

Published prices (USD per million tokens), https://docs.claude.com/en/docs/about-claude/pricing:
claude-sonnet-4-5 input $3, output $15, cache read $0.30, 5-minute cache write $3.75, 1-hour $6.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anthropic
import duckdb
import httpx2
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
D = Decimal
M = D(1_000_000)
# the fake's Anthropic usage: 1200 uncached, 300 cache read, 200 5m writes, 100 1h writes, 450 output
LIST = (1200 * D(3) + 300 * D("0.30") + 200 * D("3.75") + 100 * D(6) + 450 * D(15)) / M  # 0.01179
CONTRACT = (1200 * D("1.5") + 300 * D("0.15") + 200 * D("1.875") + 100 * D(3) + 450 * D("7.5")) / M
CONTRACT_YAML = """
  - provider: anthropic
    model: claude-sonnet-4-5
    effective_from: 2020-01-01
    note: negotiated rate (test)
    rates: {input_mtok: 1.5, output_mtok: 7.5, cache_read_mtok: 0.15, cache_write_mtok: 1.875, cache_write_1h_mtok: 3}
"""


def pricing_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "pricing"
    folder.mkdir()
    for name in ("catalogue.json", "catalogue.lock.json", "overrides.yaml"):
        shutil.copy(REPO / "pricing" / name, folder / name)
    return folder


def cli_json(gw, *args: str):
    cp = gw.cli(*args, "--json", check=True)
    return json.loads(cp.stdout)


def ask(client, model: str = "claude-sonnet-4-5") -> None:
    client.messages.create(model=model, max_tokens=100, messages=[{"role": "user", "content": "hi"}])


def user_spent(gw, window: str = "day") -> D:
    rows = cli_json(gw, "budgets")
    (row,) = [r for r in rows if r["scope"] == "user:tester" and r["window"] == window]
    return D(str(row["spent_usd"]))


def _wait(predicate, what: str, gw, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen\n{gw.log_text()[-3000:]}")


def _pricing_events(gw) -> list[dict]:
    cp = gw.cli("audit", "--json")
    return [r for r in json.loads(cp.stdout) if r["event"].startswith("pricing_")] if cp.returncode == 0 else []


def test_overrides_reload_live_a_bad_edit_is_rejected_and_the_last_good_prices_kept(tmp_path, gateway_factory):
    folder = pricing_dir(tmp_path)
    overrides = folder / "overrides.yaml"
    original = overrides.read_text()
    gw = gateway_factory("gw", extra_args=["--set", f"spendgate_pricing={overrides}"]).start()
    client = anthropic.Anthropic(api_key="sk-ant-test-SECRET123", max_retries=0,
                                 http_client=httpx2.Client(proxy=gw.proxy_url, verify=gw.client_ssl_context(),
                                                           trust_env=False, timeout=30))  # fmt: skip

    def newest_cost(n: int) -> D:
        rows = sorted(gw.ledger(wait_for=n), key=lambda r: r["ts"])
        assert len(rows) == n
        return D(str(rows[-1]["cost_usd"]))

    ask(client)
    assert newest_cost(1) == LIST
    assert [e["detail"]["trigger"] for e in _pricing_events(gw)] == ["start"]

    # a bad edit: rejected with its position, audited, and the gateway keeps pricing at list
    overrides.write_text(original.replace("models:\n", "models:" + CONTRACT_YAML.replace("1.5,", "cheap,", 1), 1))
    rejected = _wait(lambda: [e for e in _pricing_events(gw) if e["event"] == "pricing_rejected"], "rejection", gw)
    assert "overrides.yaml:" in rejected[0]["detail"]["problems"]
    assert "non-negative number" in rejected[0]["detail"]["problems"]
    assert "pricing overrides edit rejected" in gw.log_text()
    ask(client)
    assert newest_cost(2) == LIST

    # a good edit applies to the next request, with no restart and no re-price
    overrides.write_text(original.replace("models:\n", "models:" + CONTRACT_YAML, 1))
    loads = _wait(lambda: [e for e in _pricing_events(gw) if e["event"] == "pricing_load"
                           and e["detail"]["trigger"] == "file change"], "reload", gw)
    assert loads[0]["detail"]["sha256"] == hashlib.sha256(overrides.read_bytes()).hexdigest()
    ask(client)
    assert newest_cost(3) == CONTRACT
    rows = sorted(gw.ledger(), key=lambda r: r["ts"])
    assert rows[-1]["price_source"].startswith("override:overrides.yaml@2020-01-01")
    assert [D(str(r["cost_usd"])) for r in rows[:2]] == [LIST, LIST]  # past rows keep their price
    assert [e["event"] for e in _pricing_events(gw)] == ["pricing_load", "pricing_rejected", "pricing_load"]
    client.close()


def test_explain_and_reprice_through_the_running_gateway(tmp_path, gateway_factory):
    folder = pricing_dir(tmp_path)
    gw = gateway_factory("gw", extra_args=["--set", f"spendgate_pricing={folder / 'overrides.yaml'}"]).start()
    client = anthropic.Anthropic(api_key="sk-ant-test-SECRET123", max_retries=0,
                                 http_client=httpx2.Client(proxy=gw.proxy_url, verify=gw.client_ssl_context(),
                                                           trust_env=False, timeout=30))  # fmt: skip
    ask(client)
    (row,) = gw.ledger(wait_for=1)
    assert D(str(row["cost_usd"])) == LIST

    text = gw.cli("explain", row["request_id"][:10], check=True).stdout
    assert "1,200 tokens x $3/MTok" in text and "100 tokens x $6/MTok" in text and "450 tokens x $15/MTok" in text
    total = next(line for line in text.splitlines() if line.strip().startswith("total"))
    assert total.rstrip().endswith("$0.011790")
    assert "below every tier threshold" in text and "WARNING" not in text

    # a contracted rate lands in the gateway's overrides; past rows keep their price until a re-price
    overrides = folder / "overrides.yaml"
    overrides.write_text(overrides.read_text().replace("models:\n", "models:" + CONTRACT_YAML, 1))
    today = datetime.now(UTC).date().isoformat()
    dry = cli_json(gw, "prices", "reprice", "--since", today, "--dry-run")
    assert dry["where"].startswith("gateway") and dry["dry_run"] is True
    assert (dry["changed"], dry["run_id"]) == (1, None)
    assert D(str(dry["delta_usd"])).quantize(D("1e-9")) == (CONTRACT - LIST).quantize(D("1e-9"))
    assert D(str(gw.ledger()[0]["cost_usd"])) == LIST and user_spent(gw) == LIST

    done = cli_json(gw, "prices", "reprice", "--since", today)
    assert done["changed"] == 1 and done["run_id"]
    assert done["by_user_model"][0]["user"] == "tester" and done["by_user_model"][0]["model"] == "claude-sonnet-4-5"
    (row,) = gw.ledger()
    assert D(str(row["cost_usd"])) == CONTRACT and row["price_source"].startswith("override:overrides.yaml@2020-01-01")
    assert user_spent(gw) == CONTRACT  # the gateway's in-memory counters followed
    explained = cli_json(gw, "explain", row["request_id"])
    assert explained["reprice_history"][0]["old_cost_usd"] == pytest.approx(float(LIST))
    assert {ln["source"].split("#")[0] for ln in explained["price_detail"]["lines"]} == {
        "override:overrides.yaml@2020-01-01"}

    # new requests are priced with the prices the gateway switched to
    ask(client)
    rows = gw.ledger(wait_for=2)
    assert [D(str(r["cost_usd"])) for r in rows] == [CONTRACT, CONTRACT]
    assert user_spent(gw) == 2 * CONTRACT
    client.close()

    # a broken override is refused with its position, and the gateway keeps its prices
    overrides.write_text(overrides.read_text().replace("input_mtok: 1.5,", "input_mtok: cheap,", 1))
    cp = gw.cli("prices", "reprice", "--since", today)
    assert cp.returncode == 2 and "overrides.yaml:" in cp.stderr and "non-negative number" in cp.stderr

    gw.stop()
    with duckdb.connect(str(gw.db), read_only=True) as con:
        audit = con.execute("SELECT old_cost_usd, new_cost_usd, old_charged_usd, new_charged_usd FROM price_audit"
                            ).fetchall()  # fmt: skip
    assert audit == [(LIST, CONTRACT, LIST, CONTRACT)]


def test_unknown_model_is_unpriced_and_check_lists_it(gateway, anthropic_client):
    ask(anthropic_client(), model="claude-imaginary-7")
    (row,) = gateway.ledger(wait_for=1)
    assert row["outcome"] == "unpriced" and row["cost_usd"] is None
    # the example policy's fallback: $15 / $75 per million input / output tokens
    assert D(str(row["charged_usd"])) == (1800 * D(15) + 450 * D(75)) / M
    report = cli_json(gateway, "prices", "check")
    assert [(m["model"], m["requests"]) for m in report["unpriced_models"]] == [("claude-imaginary-7", 1)]
    assert D(str(report["unpriced_models"][0]["fallback_charged_usd"])) == D(str(row["charged_usd"]))
    assert report["fallback_charged"][0]["model"] == "claude-imaginary-7"
    assert "never $0" in gateway.cli("explain", row["request_id"], check=True).stdout
    assert gateway.cli("prices", "check", "--strict").returncode == 1


class _Catalogue(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def catalogue_server():
    raw = json.loads((REPO / "pricing" / "catalogue.json").read_text())
    for prov in raw:
        for m in prov["models"]:
            if prov["id"] == "anthropic" and m["id"] == "claude-haiku-4-5":
                m["prices"] = [{"prices": m["prices"]},
                               {"constraint": {"start_date": "2027-02-01"}, "prices": {**m["prices"], "output_mtok": 4}}]
    handler = type("H", (_Catalogue,), {"body": json.dumps(raw).encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/prices/data.json"
    server.shutdown()
    server.server_close()


def test_update_from_url_shows_changes_and_pins_only_with_yes(tmp_path, catalogue_server):
    folder = pricing_dir(tmp_path)
    before = (folder / "catalogue.json").read_text()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "spendgate"), *args, "--pricing-dir", str(folder)], capture_output=True,
                              text=True, check=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip

    shown = json.loads(run("prices", "update", "--from", catalogue_server, "--json").stdout)
    assert shown["written"] is None and (folder / "catalogue.json").read_text() == before
    assert [(c["model"], c["field"], c["old"], c["new"], c["effective"]) for c in shown["changes"]] == [
        ("claude-haiku-4-5", "output_mtok", "5", "4", "2027-02-01")]

    written = json.loads(run("prices", "update", "--from", catalogue_server, "--yes", "--json").stdout)["written"]
    assert written["source"] == catalogue_server and written["previous"] == shown["pinned"]
    lock = json.loads((folder / "catalogue.lock.json").read_text())
    assert lock["version"] == shown["candidate"] != shown["pinned"]
    assert json.loads(run("prices", "diff", "--from", catalogue_server, "--json").stdout)["changes"] == []
    shown = json.loads(run("prices", "show", "claude-haiku-4-5", "--at", "2027-02-01", "--json").stdout)
    assert shown["rates"]["output_mtok"]["base"] == "4" and shown["rates"]["output_mtok"]["source"] == lock["version"]
