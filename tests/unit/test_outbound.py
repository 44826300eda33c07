"""Our own HTTP clients decide their proxy: loopback never through one (issue 14, part 5)."""

from __future__ import annotations

import http.server
import threading
import urllib.request
from datetime import UTC, date, datetime

import pytest

from spendgate import outbound
from spendgate.budgets.book import scopes
from spendgate.identity import Identity
from spendgate.policy.model import parse


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "api.localhost"])
def test_loopback_hosts_are_recognized(host):
    assert outbound.is_loopback(host)


@pytest.mark.parametrize("host", ["hooks.slack.com", "10.0.0.1", "", None, "localhost.evil.com"])
def test_other_hosts_are_not_loopback(host):
    assert not outbound.is_loopback(host)


def test_loopback_is_direct_and_external_hosts_use_the_environment(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3129")
    assert outbound.proxy_for("http://127.0.0.1:8080/api/ledger") == "direct"
    assert outbound.proxy_for("http://localhost:8080/") == "direct"
    assert outbound.proxy_for("https://hooks.slack.com/services/x") == "http://proxy.corp:3129"
    assert outbound.proxy_for("http://billing.example/") == "http://proxy.corp:3128"
    monkeypatch.setenv("NO_PROXY", "hooks.slack.com")
    assert outbound.proxy_for("https://hooks.slack.com/services/x") == "direct"


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        body = b"direct" if self.path.startswith("/") else b"proxied"  # a proxy gets an absolute URL
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_open_url_to_loopback_ignores_http_proxy(monkeypatch):
    """HTTP_PROXY points at a dead port: only a direct connection can answer."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
        for name in ("NO_PROXY", "no_proxy"):  # another test may have left loopback exempted
            monkeypatch.delenv(name, raising=False)
        url = f"http://127.0.0.1:{srv.server_address[1]}/x"
        with pytest.raises(OSError):  # what plain urlopen does: through the (dead) proxy
            urllib.request.build_opener().open(url, timeout=5)  # a fresh opener: reads the env proxies
        with outbound.open_url(url, timeout=5) as resp:
            assert resp.read() == b"direct"
    finally:
        srv.shutdown()


def test_scopes_judge_exceptions_at_the_now_they_are_given():
    policy = parse("version: 1\ndefaults: {user: {day: 10}}\nusers:\n  alice: {budgets: {day: 50}, until: 2026-03-01}\n",
                   today=date(2026, 1, 1))
    alice = Identity(user="alice", source="test")
    before = dict((s, (b, u)) for s, b, u in scopes(policy, alice, datetime(2026, 2, 28, 12, tzinfo=UTC)))
    after = dict((s, (b, u)) for s, b, u in scopes(policy, alice, datetime(2026, 3, 2, 12, tzinfo=UTC)))
    assert before["user:alice"][0]["day"] == 50 and before["user:alice"][1] == date(2026, 3, 1)
    assert after["user:alice"][0]["day"] == 10 and after["user:alice"][1] is None


def test_every_outbound_client_goes_through_the_one_proxy_decision(monkeypatch):
    """Sinks, the reconcile fetch, prices update and the CLI's admin calls all ask `opener_for`."""
    from spendgate.pricing import catalogue
    from spendgate.reconcile import fetch
    from spendgate.workflow import sinks

    asked: list[str] = []

    class Refuse:
        def open(self, req, timeout=None):
            raise OSError("refused by the test")

    def opener_for(url):
        asked.append(url)
        return Refuse()

    monkeypatch.setattr(outbound, "opener_for", opener_for)
    with pytest.raises(sinks.SinkError):
        sinks.post_json("https://hooks.slack.com/services/T/B/X", {"text": "hi"}, (), 5)
    with pytest.raises(fetch.FetchError):
        fetch.http_get("https://api.anthropic.com/v1/organizations/cost_report", {})
    with pytest.raises(OSError):
        catalogue.fetch("https://example.org/data.json")
    assert asked == ["https://hooks.slack.com/services/T/B/X", "https://api.anthropic.com/v1/organizations/cost_report",
                     "https://example.org/data.json"]
