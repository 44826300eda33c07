"""The per-request shortcuts taken for speed (issue 6) give the same answers as the slow ways."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from spendgate.budgets import windows
from spendgate.store.ledger import COLUMNS, LedgerRow, _values
from spendgate.usage import Usage

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"])
@pytest.mark.parametrize("window", windows.WINDOWS)
def test_bounds_memo_agrees_with_the_computation(tz: str, window: str) -> None:
    zone = ZoneInfo(tz)
    t = datetime(2026, 3, 7, 22, 10, tzinfo=UTC)  # walks over the March DST changes
    for _ in range(800):
        t += timedelta(minutes=37)
        got = windows.bounds(window, t, zone)
        assert got[0] <= t < got[1]
        assert got == windows._bounds(window, t, zone)


def test_bounds_memo_follows_time_backwards() -> None:
    zone = ZoneInfo("UTC")
    late = datetime(2026, 5, 2, 10, 30, tzinfo=UTC)
    early = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
    assert windows.bounds("hour", late, zone)[0].hour == 10
    assert windows.bounds("hour", early, zone) == (early, early + timedelta(hours=1))


def test_ledger_values_are_the_columns_in_order() -> None:
    row = LedgerRow(
        ts=datetime.now(UTC), request_id="r", provider="anthropic", endpoint="messages", model="m", user="u",
        key_fingerprint=None, client="other", session_id=None, stream=False, status=200, outcome="ok",
        estimated=False, input_tokens=1, cache_read_tokens=2, cache_write_tokens=3, cache_write_1h_tokens=1,
        output_tokens=4, reasoning_tokens=0, web_search_requests=0, cost_usd=Decimal("0.5"),
        price_source="x", latency_ms=1.0, ttft_ms=None, charged_usd=Decimal("0.5"),
    )  # fmt: skip
    assert _values(row) == tuple(getattr(row, c) for c in COLUMNS)  # card_json travels along, no column
    assert len(_values(row)) == len(COLUMNS)


def test_usage_as_dict_is_asdict() -> None:
    u = Usage(input_tokens=10, cache_read_tokens=2, cache_write_tokens=3, cache_write_1h_tokens=1, output_tokens=7,
              reasoning_tokens=2, web_search_requests=1)  # fmt: skip
    assert u.as_dict() == dataclasses.asdict(u)


def _addon_module():
    sys.path.insert(0, str(REPO / "addons"))
    spec = importlib.util.spec_from_file_location("spendgate_addon_under_test", REPO / "addons" / "gateway.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fields", [
    [],
    [(b"Host", b"api.anthropic.com"), (b"X-Api-Key", b"k"), (b"content-type", b"application/json")],
    [(b"X-Foo", b"1"), (b"x-foo", b"2"), (b"X-FOO", b"3"), (b"accept", b"a")],  # folded like Headers.items()
    [(b"x-n\xc3\xa4me", b"caf\xc3\xa9"), (b"x-bad", b"\xff\xfe")],  # non-ASCII and undecodable bytes
])  # fmt: skip
def test_addon_headers_match_headers_items(fields: list[tuple[bytes, bytes]]) -> None:
    from mitmproxy import http

    h = http.Headers(fields)
    assert _addon_module()._headers(h) == {k.lower(): v for k, v in h.items()}


def _text_cost_cases():
    """Every catalogue model of the three main providers, standard and fast, at token counts around
    each of its tier thresholds, plus rates with a request fee and without an output rate."""
    from spendgate.pricing.rates import Price, Pricer, Rates

    pricer = Pricer()
    at = datetime(2026, 11, 30, 12, tzinfo=UTC)
    out = []
    for provider in ("anthropic", "openai", "gemini"):
        for model in pricer.catalogue_models(provider, "*"):
            for variant in ("standard", "fast", "flex"):
                rates = pricer.rates(provider, model, at, variant)
                if rates is not None:
                    out.append(rates)
    fee = Price(Decimal("0.0035"), source="t")
    tiered = Price(Decimal("1.25"), ((200_000, Decimal("2.5")), (1_000_000, Decimal("3.75"))), source="t")
    out += [Rates({"input_mtok": tiered, "output_mtok": Price(Decimal("10"), source="t"), "request": fee}),
            Rates({"input_mtok": Price(Decimal("0.1"), source="t")}),
            Rates({"output_mtok": Price(Decimal("1"), source="t")}),
            Rates({"request": fee})]
    return out


def test_text_cost_is_compute_over_the_catalogue() -> None:
    """Admission's estimate takes `text_cost`; it must be `compute(...).cost` to the last digit."""
    from spendgate.pricing.rates import compute, text_cost

    cases = _text_cost_cases()
    assert len(cases) > 50  # the catalogue was read
    tiered = 0
    for rates in cases:
        edges = {0, 1, 7, 999, 24_000, 128_000, 200_000, 200_001, 1_000_000, 1_000_001, 10**12}
        for p in rates.prices.values():
            tiered += bool(p.tiers)
            for start, _ in p.tiers:
                edges |= {start - 1, start, start + 1}
        for i in sorted(edges):
            for o in (0, 1, 450, 32_000, 128_000):
                assert text_cost(rates, i, o) == compute(rates, Usage(input_tokens=i, output_tokens=o)).cost, \
                    (rates.model_id, i, o)
    assert tiered  # some model has tiers, so the tier choice is exercised


def test_text_cost_random_counts() -> None:
    from hypothesis import given, settings, strategies as st

    from spendgate.pricing.rates import compute, text_cost

    cases = _text_cost_cases()

    @settings(max_examples=400, deadline=None)
    @given(st.sampled_from(cases), st.integers(0, 3_000_000), st.integers(0, 200_000))
    def check(rates, i: int, o: int) -> None:
        assert text_cost(rates, i, o) == compute(rates, Usage(input_tokens=i, output_tokens=o)).cost

    check()


def test_try_reserve_is_all_or_none_like_the_plain_loop() -> None:
    """MemoryCounters.try_reserve against the obvious loop: same refusals, same counters, same
    snapshot, over random books (including one key named twice and zero limits)."""
    import random

    from spendgate.budgets.book import Budget, Counter, MemoryCounters

    def reference(c: dict, budgets: list, amount: Decimal):
        for i, b in enumerate(budgets):
            x = c.get(b.key) or Counter()
            if x.spent + x.reserved + amount > b.limit or b.limit == 0:
                return i, [(c.get(b.key) or Counter()).spent for b in budgets]
        for b in budgets:
            c.setdefault(b.key, Counter()).reserved += amount
        return None, [(c[b.key].spent, c[b.key].reserved) for b in budgets]

    rng = random.Random(7)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    for _ in range(300):
        store, ref = MemoryCounters(), {}
        budgets = [Budget(f"user:u{rng.randrange(4)}", rng.choice(["day", "month"]),
                          Decimal(rng.choice([0, 1, 5, 50])), start, start + timedelta(days=1))
                   for _ in range(rng.randrange(1, 6))]
        for _ in range(12):
            amount = Decimal(rng.randrange(1, 300)) / 100
            got = store.try_reserve(budgets, amount)
            want, counts = reference(ref, budgets, amount)
            assert got.refused == want
            if want is None:
                assert [(x.spent, x.reserved) for x in got.counters] == counts
            assert {k: (v.spent, v.reserved) for k, v in store.items()} == \
                {k: (v.spent, v.reserved) for k, v in ref.items()}


def test_addon_routes_once_unless_the_request_changed() -> None:
    """requestheaders routes the request and hands the Route to meter.begin; a request whose path
    or method changed since (another addon) is routed again by begin, never metered on the old route."""
    from types import SimpleNamespace

    from mitmproxy.test import taddons, tflow

    mod = _addon_module()
    gate = mod.SpendGate()
    seen: list = []
    gate.gateway = SimpleNamespace(meter=SimpleNamespace(begin=lambda *a, **k: seen.append(k["route"])))
    with taddons.context(gate):
        for change in (None, "path", "method"):
            flow = tflow.tflow()
            flow.request.host, flow.request.port, flow.request.method = "api.anthropic.com", 443, "POST"
            flow.request.path = "/v1/messages"
            gate.requestheaders(flow)
            routed = flow.metadata[mod.ROUTE][-1]
            assert routed.endpoint == "messages"
            if change == "path":
                flow.request.path = "/v1/messages/count_tokens"
            elif change == "method":
                flow.request.method = "GET"
            flow.request.content = b"{}"
            gate._request(flow)
            assert (seen[-1] is routed) == (change is None)
            assert seen[-1] == mod.providers.route("api.anthropic.com", flow.request.path, flow.request.method)


def test_response_headers_prepared_while_the_provider_works() -> None:
    """An admitted request's x-spendgate-* values are computed right after it goes upstream, and
    responseheaders sends exactly those; without them (no event loop, or not run yet) it computes
    them itself. A refused request prepares nothing. In the event loop a stream's parser gets the
    loop's call_later, to read chunks in batches after they were handed on (streams.AfterForwarding)."""
    import asyncio
    from types import SimpleNamespace

    from mitmproxy.test import taddons, tflow, tutils

    mod = _addon_module()
    calls: list = []

    def response_headers(ex):
        calls.append(ex)
        return {"x-spendgate-remaining-usd": f"{len(calls)}"}

    gw = SimpleNamespace(admission=SimpleNamespace(response_headers=response_headers),
                         meter=SimpleNamespace(clock=lambda: 0.0, saw_headers=lambda ex, h: None,
                                               stream_parser=lambda ex, path, ct, later: schedules.append(later),
                                               finish=lambda ex, r: None))
    schedules: list = []

    def exchange():
        return SimpleNamespace(extra={}, status=None, request=SimpleNamespace(
            rewritten_body=None, rewritten_path=None, drop_usage_chunk=False))

    gate = mod.SpendGate()
    gate.gateway = gw
    with taddons.context(gate):
        async def admitted_then_answered(answer):
            flow, ex = tflow.tflow(), exchange()
            mod.SpendGate._admitted(flow, gw, ex, answer)
            await asyncio.sleep(0)  # the provider is working
            return flow, ex

        _, refused = asyncio.run(admitted_then_answered(SimpleNamespace(status=429, body=b"{}", headers={})))
        assert mod.HEADERS not in refused.extra and not calls

        flow, ex = asyncio.run(admitted_then_answered(None))
        assert ex.extra[mod.HEADERS] == {"x-spendgate-remaining-usd": "1"} and len(calls) == 1
        flow.metadata[mod.META], flow.response = ex, tutils.tresp()
        gate.responseheaders(flow)
        assert flow.response.headers["x-spendgate-remaining-usd"] == "1" and len(calls) == 1  # not computed again
        assert schedules == [None]  # no running loop: a stream would be read before it is handed on

        flow, ex = tflow.tflow(), exchange()  # no event loop: nothing prepared, computed at the response
        mod.SpendGate._admitted(flow, gw, ex, None)
        assert mod.HEADERS not in ex.extra
        flow.metadata[mod.META], flow.response = ex, tutils.tresp()
        gate.responseheaders(flow)
        assert flow.response.headers["x-spendgate-remaining-usd"] == "2"

        async def answered_in_the_loop():
            flow, ex = tflow.tflow(), exchange()
            flow.metadata[mod.META], flow.response = ex, tutils.tresp()
            gate.responseheaders(flow)
            return asyncio.get_running_loop()

        loop = asyncio.run(answered_in_the_loop())
        assert schedules[-1] == loop.call_later  # in mitmproxy: chunks read in batches after they were handed on


def test_addon_routes_again_after_the_provider_hosts_changed() -> None:
    """The operator re-maps an extra host while a request's body uploads: the request is metered
    on the mapping in force when it is forwarded, as when begin routed every request itself."""
    from types import SimpleNamespace

    from mitmproxy.test import taddons, tflow

    from spendgate.metering import providers

    mod = _addon_module()
    gate = mod.SpendGate()
    seen: list = []
    gate.gateway = SimpleNamespace(meter=SimpleNamespace(begin=lambda *a, **k: seen.append(k["route"])))
    try:
        providers.configure_extra([providers.parse_extra("llm.corp.example=vendora:openai")])
        with taddons.context(gate):
            flow = tflow.tflow()
            flow.request.host, flow.request.port, flow.request.method = "llm.corp.example", 443, "POST"
            flow.request.path = "/v1/chat/completions"
            gate.requestheaders(flow)
            assert flow.metadata[mod.ROUTE][-1].provider == "vendora"
            providers.configure_extra([providers.parse_extra("llm.corp.example=vendorb:anthropic")])
            flow.request.content = b"{}"
            gate._request(flow)
            assert seen[-1].provider == "vendorb"  # routed again
    finally:
        providers.configure_extra([])
