"""The routes the dashboard polls are computed once per POLL_TTL for any number of tabs (issue 22)."""

from __future__ import annotations

import json
import threading
import time

from spendgate.web.app import WebApp, WebRequest
from spendgate.web.pollcache import PollCache


def test_single_flight_and_ttl() -> None:
    now = [0.0]
    cache = PollCache(ttl=4.0, clock=lambda: now[0])
    calls: list[int] = []
    gate = threading.Event()

    def slow() -> int:
        calls.append(1)
        gate.wait(5)
        return len(calls)

    out: list[tuple[int, bool]] = []
    threads = [threading.Thread(target=lambda: out.append(cache.get("k", slow))) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # every thread is in: one computes, three wait for it
    gate.set()
    for t in threads:
        t.join(5)
    assert calls == [1] and sorted(out) == [(1, False), (1, True), (1, True), (1, True)]
    now[0] = 3.9
    assert cache.get("k", slow) == (1, True)
    now[0] = 4.1  # expired: computed again
    assert cache.get("k", slow) == (2, False) and cache.computed == 2


def test_a_failed_computation_is_not_cached() -> None:
    cache = PollCache()

    def boom() -> int:
        raise RuntimeError("store away")

    for _ in range(2):
        try:
            cache.get("k", boom)
        except RuntimeError:
            pass
    assert cache.get("k", lambda: 7) == (7, False)


def _session(app: WebApp, token: str) -> dict[str, str]:
    resp = app.handle(WebRequest("POST", "/login", {"content-type": "application/json"},
                                 json.dumps({"token": token}).encode()))
    assert resp.status == 200
    return {"cookie": resp.headers["Set-Cookie"].split(";")[0]}


def test_tabs_share_the_overview_but_not_across_callers() -> None:
    calls: list[tuple[str, dict]] = []

    def overview(params, caller):
        calls.append((caller.name, dict(params)))
        return {"n": len(calls)}

    app = WebApp(routes={"/api/overview": overview, "/api/spend": overview, "/api/budgets": overview},
                 post_routes={"/api/grant": lambda params, caller: {"ok": True}},
                 tokens=lambda: ["tok"], person=lambda t: "bob" if t == "bobs-token" else None)
    tab = _session(app, "tok")
    first = app.handle(WebRequest("GET", "/api/overview?window=month", tab))
    second = app.handle(WebRequest("GET", "/api/overview?window=month", _session(app, "tok")))  # another tab
    assert first.status == 200 and first.body == second.body and len(calls) == 1
    app.handle(WebRequest("GET", "/api/overview?window=week", tab))  # other params: its own answer
    bob = app.handle(WebRequest("GET", "/api/overview?window=month", _session(app, "bobs-token")))
    assert json.loads(bob.body) == {"n": 3} and calls[-1] == ("bob", {"window": "month", "user": "bob"})  # his own view
    app.handle(WebRequest("GET", "/api/spend", tab))
    app.handle(WebRequest("GET", "/api/spend", tab))  # not polled by the page: never cached
    app.handle(WebRequest("GET", "/api/budgets", tab))
    app.handle(WebRequest("GET", "/api/budgets", tab))  # every budget (no ?top): never cached
    assert len(calls) == 7
    api = {"authorization": "Bearer tok"}  # the CLI, scripts: always fresh
    app.handle(WebRequest("GET", "/api/overview?window=month", api))
    app.handle(WebRequest("GET", "/api/overview?window=month", api))
    assert len(calls) == 9
    app.handle(WebRequest("GET", "/api/overview?window=month", tab))  # still cached for the page
    assert len(calls) == 9
    assert app.handle(WebRequest("POST", "/api/grant", api, b"{}")).status == 200  # a write: the page sees it
    app.handle(WebRequest("GET", "/api/overview?window=month", tab))
    assert len(calls) == 10


def test_sliced_encoding_is_the_whole_encoding_and_means_what_json_dumps_meant() -> None:
    import json
    from datetime import UTC, datetime
    from decimal import Decimal
    from pathlib import Path

    import msgspec

    from spendgate.web import jsonbody

    rows = [{"user": f"u{i}", "cost_usd": i / 7, "n": i, "d": Decimal("1.5"), "p": Path("/x"),
             "tags": ["a", None, True]} for i in range(5 * jsonbody.SLICE + 3)]
    payload = {"totals": {"month": 1.0}, "breakdowns": {"user": rows, "model": rows[:3], "empty": []},
               "latest": rows[:15], "x": None, "s": "é\"\u2028", "e": {}, 1: "int key"}
    whole = msgspec.json.Encoder(enc_hook=str)
    for value in (payload, rows, {"a": {"b": {"c": {"d": {"e": rows}}}}}, [], {}, rows[:3]):
        body = jsonbody.dumps(value)
        assert body == whole.encode(value)  # the slices join to exactly the one-call text
        assert json.loads(body) == json.loads(json.dumps(value, default=str))  # and mean what json.dumps said
    # datetimes: RFC 3339 text (json.dumps' default=str gave a space instead of the T)
    when = datetime(2026, 1, 1, 12, 30, tzinfo=UTC)
    assert json.loads(jsonbody.dumps({"when": when})) == {"when": "2026-01-01T12:30:00Z"}
    assert datetime.fromisoformat(json.loads(jsonbody.dumps([when]))[0]) == when
    assert jsonbody.dumps([float("nan")]) == b"[null]"  # valid JSON, where json.dumps wrote NaN
    # a lone surrogate (a JSON request body may carry one, an error may echo it): escaped, not a raise
    odd = {"error": "unknown scope user:x\ud800", "rows": rows}
    assert json.loads(jsonbody.dumps(odd)) == json.loads(json.dumps(odd, default=str))


def test_an_error_echoing_a_lone_surrogate_is_still_answered() -> None:
    app = WebApp(routes={}, post_routes={}, tokens=lambda: ["tok"], person=lambda t: None)
    resp = app.handle(WebRequest("GET", "/api/\udcff", {"authorization": "Bearer tok"}))
    assert resp.status == 404 and "\udcff" in json.loads(resp.body)["error"]


def test_sql_dicts_in_steps_is_the_whole_result() -> None:
    import duckdb

    from spendgate.store import sql

    con = duckdb.connect()
    for n in (0, 1, sql.FETCH_ROWS, sql.FETCH_ROWS + 1, 3 * sql.FETCH_ROWS + 7):
        got = sql.dicts(con.execute(f"SELECT i, i * 2 AS j FROM range({n}) t(i)"))
        assert got == [{"i": i, "j": 2 * i} for i in range(n)]
