"""Reviewer's reproductions (branch review): the dashboard poll cache."""

from __future__ import annotations

import json

import pytest

from spendgate.web.app import WebApp, WebRequest


def _session(app: WebApp, token: str) -> dict[str, str]:
    resp = app.handle(WebRequest("POST", "/login", {"content-type": "application/json"},
                                 json.dumps({"token": token}).encode()))
    assert resp.status == 200
    return {"cookie": resp.headers["Set-Cookie"].split(";")[0]}


def test_r6_laptop_leases_do_not_flush_the_dashboard_cache() -> None:
    calls: list[str] = []

    def overview(params, caller):
        calls.append(caller.name)
        return {"n": len(calls)}

    app = WebApp(routes={"/api/overview": overview},
                 post_routes={"/api/lease": lambda p, c: {"granted_usd": "1"},
                              "/api/ingest": lambda p, c: {"accepted": 0}},
                 tokens=lambda: ["tok"], person=lambda t: "alice" if t == "sgt_alice" else None)
    tab = _session(app, "tok")
    app.handle(WebRequest("GET", "/api/overview?window=month", tab))
    laptop = {"authorization": "Bearer sgt_alice"}
    assert app.handle(WebRequest("POST", "/api/lease", laptop, b'{"gateway_id": "a@l", "want_usd": "1"}')).status == 200
    app.handle(WebRequest("GET", "/api/overview?window=month", tab))  # 0.1 s later, another tab
    assert len(calls) == 1, f"recomputed {len(calls)} times: a lease (no data change) emptied the cache"
