"""Sinks against real local servers: a JSON webhook, Slack's format, SMTP; retries and dead sinks."""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spendgate.policy.sections import SinkConfig  # noqa: E402
from spendgate.workflow.sinks import Delivery, Dispatcher, Notice  # noqa: E402
from tests.support.webhook import Hook  # noqa: E402


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens: connection refused
    return f"http://127.0.0.1:{port}/dead"


def notice(**kw) -> Notice:
    base = dict(kind="alert", title="user:alice: 80% of the daily budget", text="spendgate: alice has used 80%",
                recipients=("alice@acme.com",), payload={"scope": "user:alice", "window": "day", "threshold": 80.0,
                                                          "spent_usd": 8.0, "limit_usd": 10.0,
                                                          "resets_at": "2026-12-01T00:00:00Z"},
                scope="user:alice", ref="day:threshold:80")
    base.update(kw)
    return Notice(**base)


def run(sinks: list[SinkConfig], *notices: Notice) -> list[Delivery]:
    out: list[Delivery] = []
    d = Dispatcher(out.append)
    for n in notices:
        d.submit(n, sinks)
    assert d.flush(20)
    d.close()
    return out


def test_webhook_posts_the_alert_json_with_enrichment(hook):
    sink = SinkConfig("ops", "webhook", url=hook.url, headers=(("X-Team", "platform"),))
    n = notice(enrich=lambda: {"top_models": [{"model": "claude-sonnet-4-5", "spent_usd": 7.5, "requests": 3}],
                               "top_clients": [{"client": "claude-code", "spent_usd": 8.0, "requests": 4}]})
    assert run([sink], n) == [Delivery("ops", "alert", "delivered", 1, None, "user:alice", "day:threshold:80")]
    (path, headers, body), = hook.posts
    assert path == "/hook" and headers["Content-Type"] == "application/json" and headers["X-Team"] == "platform"
    assert body == {
        "event": "alert", "title": "user:alice: 80% of the daily budget", "text": "spendgate: alice has used 80%",
        "recipients": ["alice@acme.com"], "scope": "user:alice", "window": "day", "threshold": 80.0,
        "spent_usd": 8.0, "limit_usd": 10.0, "resets_at": "2026-12-01T00:00:00Z",
        "top_models": [{"model": "claude-sonnet-4-5", "spent_usd": 7.5, "requests": 3}],
        "top_clients": [{"client": "claude-code", "spent_usd": 8.0, "requests": 4}],
    }


def test_slack_gets_its_incoming_webhook_format(hook, monkeypatch):
    monkeypatch.setenv("TEST_SLACK_URL", hook.url)
    run([SinkConfig("slack", "slack", url_env="TEST_SLACK_URL")], notice())
    (_, _, body), = hook.posts
    assert body["text"] == "user:alice: 80% of the daily budget: spendgate: alice has used 80%"
    assert body["blocks"][0]["type"] == "section" and body["blocks"][0]["text"]["type"] == "mrkdwn"
    assert "For: alice@acme.com" in body["blocks"][0]["text"]["text"]


def test_retries_with_backoff_then_succeeds():
    h = Hook(statuses=[500, 503])
    try:
        out = run([SinkConfig("ops", "webhook", url=h.url, retries=3, backoff_seconds=0.01)], notice())
    finally:
        h.close()
    assert [(d.outcome, d.attempts) for d in out] == [("delivered", 3)]
    assert len(h.posts) == 3


def test_a_dead_sink_is_recorded_and_does_not_hold_up_the_others(hook):
    dead = SinkConfig("dead", "webhook", url=dead_url(), retries=2, backoff_seconds=0.01)
    ok = SinkConfig("ops", "webhook", url=hook.url)
    out = run([dead, ok], notice(), notice(ref="day:threshold:95"))
    by = {(d.sink, d.ref): d for d in out}
    assert by[("ops", "day:threshold:80")].outcome == "delivered"
    assert by[("ops", "day:threshold:95")].outcome == "delivered"
    failed = by[("dead", "day:threshold:80")]
    assert (failed.outcome, failed.attempts) == ("failed", 3) and "Connection" in failed.error
    assert len(hook.posts) == 2


def test_sinks_only_take_the_events_they_list(hook):
    only_requests = SinkConfig("approvers", "webhook", url=hook.url, events=("request",))
    assert run([only_requests], notice()) == []
    assert hook.posts == []


class SMTPRecorder(socketserver.ThreadingTCPServer):
    """Just enough SMTP (RFC 5321) to accept one message per connection and keep it."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], str]] = []
        server = self

        class H(socketserver.StreamRequestHandler):
            def handle(self):
                w = lambda s: self.wfile.write((s + "\r\n").encode())  # noqa: E731
                w("220 test ESMTP")
                sender, rcpts, data = "", [], []
                while line := self.rfile.readline().decode():
                    cmd = line.strip()
                    up = cmd.upper()
                    if up.startswith(("EHLO", "HELO")):
                        w("250 test")
                    elif up.startswith("MAIL FROM:"):
                        sender = cmd[10:].strip("<> ")
                        w("250 ok")
                    elif up.startswith("RCPT TO:"):
                        rcpts.append(cmd[8:].strip("<> "))
                        w("250 ok")
                    elif up == "DATA":
                        w("354 go")
                        while (d := self.rfile.readline().decode()) not in (".\r\n", ""):
                            data.append(d)
                        server.messages.append((sender, rcpts, "".join(data)))
                        w("250 queued")
                    elif up == "QUIT":
                        w("221 bye")
                        return
                    else:
                        w("250 ok")

        super().__init__(("127.0.0.1", 0), H)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_email_goes_to_the_people_named_over_smtp():
    smtp = SMTPRecorder()
    try:
        sink = SinkConfig("mail", "email", host="127.0.0.1", port=smtp.server_address[1],
                          sender="spendgate@acme.com", to=("finops@acme.com",))
        out = run([sink], notice(), notice(recipients=("bob",), ref="no-email-address"))
    finally:
        smtp.shutdown()
        smtp.server_close()
    (sender, rcpts, data), = smtp.messages[:1]
    assert sender == "spendgate@acme.com" and sorted(rcpts) == ["alice@acme.com", "finops@acme.com"]
    assert "Subject: [spendgate] user:alice: 80% of the daily budget" in data
    assert "spendgate: alice has used 80%" in data
    assert {d.ref: d.outcome for d in out} == {"day:threshold:80": "delivered", "no-email-address": "delivered"}
    assert len(smtp.messages) == 2  # `to:` still gets the notice whose recipient has no address


def test_request_notices_never_crowd_the_alerts_out_of_the_queue():
    """Eighth review (E2): while a sink hangs, request notices (anyone may file one) hold at most a
    quarter of the queue; alerts still get a slot."""
    from spendgate.workflow.sinks import MAX_PENDING

    release = threading.Event()
    out: list[Delivery] = []
    d = Dispatcher(out.append, deliver=lambda sink, n: release.wait(30))
    sink = SinkConfig("ops", "webhook", url="http://127.0.0.1:9/never")
    try:
        for i in range(MAX_PENDING // 4 + 3):
            d.submit(notice(kind="request", ref=f"r-{i}"), [sink])
        dropped = [x for x in out if x.outcome == "dropped"]
        assert [x.kind for x in dropped] == ["request"] * 3
        for i in range(10):
            d.submit(notice(ref=f"day:threshold:{i}"), [sink])
        assert len([x for x in out if x.outcome == "dropped"]) == 3  # every alert queued
    finally:
        release.set()
        assert d.flush(20)
        d.close()
    assert sum(x.outcome == "delivered" for x in out) == MAX_PENDING // 4 + 10


def test_the_log_sink_writes_one_line_per_notice(caplog):
    """A request's reason with line breaks cannot forge lines of the gateway log (eighth review)."""
    sink = SinkConfig("log", "log")
    with caplog.at_level("WARNING"):
        run([sink], notice(kind="request", text="bob asks: ok\nERROR spendgate: forged line\r\tand 5 €"))
    (line,) = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
    assert "\n" not in line and "\r" not in line
    assert line.endswith("ok\\x0aERROR spendgate: forged line\\x0d\\x09and 5 €")


def test_alerts_keep_a_quarter_of_the_queue_whatever_else_waits():
    """Ninth review (N4): decisions (auto-approval makes them at once) and requests together hold
    at most three quarters of the queue; the last quarter is the alerts'."""
    from spendgate.workflow.sinks import MAX_PENDING

    release = threading.Event()
    out: list[Delivery] = []
    d = Dispatcher(out.append, deliver=lambda sink, n: release.wait(30))
    sink = SinkConfig("ops", "webhook", url="http://127.0.0.1:9/never")
    try:
        for i in range(MAX_PENDING):
            d.submit(notice(kind="decision", ref=f"r-{i}"), [sink])
        dropped = [x for x in out if x.outcome == "dropped"]
        assert len(dropped) == MAX_PENDING - MAX_PENDING * 3 // 4 and {x.kind for x in dropped} == {"decision"}
        for i in range(MAX_PENDING // 4):
            d.submit(notice(ref=f"day:threshold:{i}"), [sink])
        assert not [x for x in out if x.outcome == "dropped" and x.kind == "alert"]
    finally:
        release.set()
        assert d.flush(30)
        d.close()
