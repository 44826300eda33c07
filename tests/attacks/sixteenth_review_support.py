"""Sixteenth review (time and windows) helpers: the real gateway core driven as the proxy edge
drives it (tests/attacks/tenth_review_support.py), with an Anthropic request and its answer."""

from __future__ import annotations

import json
from pathlib import Path

from spendgate.gateway import Gateway, Settings
from tests.attacks.tenth_review_support import ROOT, answered, send

ANTHROPIC = "api.anthropic.com"
AUTH = {"x-api-key": "sk-ant-api03-mallory-SECRET", "anthropic-version": "2023-06-01"}
REQUEST = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64,
                      "messages": [{"role": "user", "content": "hi"}]}).encode()


def answer(output_tokens: int) -> bytes:
    """A whole Messages answer: claude-sonnet-4-5 at $15/MTok output, so 10,000 tokens cost $0.15."""
    return json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                       "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                       "usage": {"input_tokens": 10, "output_tokens": output_tokens}}).encode()


def gateway(tmp: Path, policy: str, store: str | None = None) -> Gateway:
    """A Gateway on tmp/l.duckdb with `policy` written verbatim to tmp/policy.yaml (`store`: a
    PostgreSQL URL for the shared counters)."""
    p = tmp / "policy.yaml"
    p.write_text(policy)
    return Gateway(Settings(db=tmp / "l.duckdb", policy=p, pricing=ROOT / "pricing" / "overrides.yaml",
                            user="mallory", admin_port=-1, reload_interval=0, store=store))


def spend(gw: Gateway, output_tokens: int = 10_000):
    """One admitted request answered with `output_tokens`; returns (exchange, refusal or None)."""
    ex, refused = send(gw, ANTHROPIC, "/v1/messages", REQUEST, AUTH)
    if refused is None:
        body = answer(output_tokens)
        answered(gw, ex, body)
        gw.meter.flush()
    return ex, refused


class Clock:
    """The wall clock the gateway reads (`datetime.now`), set by the test: `install` replaces the
    `datetime` name in the modules that read it (the gateway's housekeeping, admission, meter, book,
    workflow). Every one of them: a module left on the real clock made a test pass or fail with the
    time of day it ran at."""

    MODULES = ("spendgate.gateway", "spendgate.budgets.admission", "spendgate.metering.meter",
               "spendgate.budgets.book", "spendgate.workflow.service", "spendgate.workflow.approvals",
               "spendgate.workflow.audit")

    def __init__(self, at) -> None:
        self.at = at

    def install(self, monkeypatch) -> "Clock":
        import importlib
        from datetime import datetime as real

        clock = self

        class FakeDatetime(real):
            @classmethod
            def now(cls, tz=None):
                return clock.at if tz is None else clock.at.astimezone(tz)

        for name in self.MODULES:
            monkeypatch.setattr(importlib.import_module(name), "datetime", FakeDatetime)
        return self


# a $0.05 day for every user, and grants up to $5 approved at once: the grant tests' policy
GRANT_POLICY = """\
version: 1
timezone: UTC
organization: {name: acme, owners: [boss]}
defaults:
  user: {day: 0.05}
approvals:
  organization: {approvers: [boss], auto_approve_up_to: 5}
"""
