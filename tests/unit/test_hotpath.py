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
