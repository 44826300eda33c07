"""Pricing as a system: overrides (validation, dates, merging, variants), the pinned catalogue
(round trip, diff, update input), re-pricing a real DuckDB ledger with its audit trail and budget
counters, and explanations that add up to the charge."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import Usage as GPUsage
from genai_prices.data_snapshot import _bundled_snapshot

from spendgate.budgets.book import BudgetBook, row_scopes
from spendgate.cli.prices import explain_lines
from spendgate.policy.model import parse as parse_policy
from spendgate.pricing import catalogue as pc
from spendgate.pricing import reprice
from spendgate.pricing.rates import (
    Pricer,
    PricingError,
    compare_overrides,
    compute,
    parse_overrides,
)
from spendgate.store.ledger import LedgerRow, connect, migrate, write_rows
from spendgate.usage import Usage

REPO = Path(__file__).resolve().parents[2]
AT = datetime(2026, 11, 20, 12, tzinfo=UTC)
D = Decimal


def write_overrides(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "overrides.yaml"
    path.write_text("version: 1\nmodels:\n" + body)
    return path


# --- overrides: validation with positions ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "where", "words"),
    [
        ("  - provider: anthropic\n    model: m\n    effective_from: 2026-01-01\n    rates: {input_mtok: -1}\n",
         ":4:", "non-negative"),
        ("  - provider: anthropic\n    model: m\n    effective_from: 2026-01-01\n    rates: {inptu_mtok: 1}\n",
         ":4:", "unknown key 'inptu_mtok'"),
        ("  - provider: anthropic\n    model: m\n    effective_from: soon\n    rates: {input_mtok: 1}\n",
         ":3:", "not a date"),
        ("  - provider: azure\n    model: m\n    effective_from: 2026-01-01\n    rates: {input_mtok: 1}\n",
         ":1:", "provider"),
        ("  - provider: anthropic\n    model: m\n    effective_from: 2026-01-01\n", ":1:", "give rates, tiers or variants"),
        ("  - provider: anthropic\n    model: m\n    effective_from: 2026-01-01\n    rates: {input_mtok: 1}\n"
         "  - provider: anthropic\n    model: m\n    effective_from: 2026-01-01\n    rates: {input_mtok: 2}\n",
         ":5:", "already defined on line 3"),
        ("  - provider: anthropic\n    model: m\n    effective_from: 2026-01-01\n    tiers:\n"
         "      - {above_input_tokens: 200000, rates: {input_mtok: 2}}\n"
         "      - {above_input_tokens: 100000, rates: {input_mtok: 3}}\n", ":6:", "increasing"),
        ("  - provider: anthropic\n    model: m\n    effective_from: 2026-01-01\n    rates: {input_mtok: 1\n",
         ":", "YAML syntax"),
    ],
    ids=["negative", "typo", "date", "provider", "empty", "duplicate", "tier-order", "syntax"],
)
def test_override_problems_name_file_line_col(body, where, words):
    with pytest.raises(PricingError) as e:
        parse_overrides("version: 1\nmodels:\n" + body, "pricing/overrides.yaml")
    text = str(e.value)
    # models start on line 3 of the file; `where` is relative to the entry list above
    line_offset = {":1:": ":3:", ":3:": ":5:", ":4:": ":6:", ":5:": ":7:", ":6:": ":8:"}.get(where, where)
    assert text.startswith("pricing/overrides.yaml" + line_offset), text
    assert words in text


def test_shipped_overrides_are_valid_and_documented():
    overrides = parse_overrides((REPO / "pricing" / "overrides.yaml").read_text(), "overrides.yaml")
    assert overrides, "the Sonnet 4 long-context correction is expected"
    assert all(o.effective_from <= date.today() for o in overrides)


# --- overrides: dates, matching, merging, variants -------------------------------------------


def test_dated_override_applies_from_its_day_and_keeps_unlisted_catalogue_rates(tmp_path):
    path = write_overrides(tmp_path, "  - provider: anthropic\n    model: claude-sonnet-4-5\n"
                                     "    effective_from: 2026-12-01\n    rates: {input_mtok: 2.7, output_mtok: 13.5}\n")  # fmt: skip
    p = Pricer(path)
    u = Usage(input_tokens=100_000, output_tokens=100_000, web_search_requests=1)
    before = p.price("anthropic", "claude-sonnet-4-5-20250929", u, datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
    after = p.price("anthropic", "claude-sonnet-4-5-20250929", u, datetime(2026, 12, 1, 0, 0, tzinfo=UTC))
    assert before.cost == D("0.3") + D("1.5") + D("0.01")
    assert after.cost == D("0.27") + D("1.35") + D("0.01")  # web search still the catalogue's
    sources = {ln.rate_name: ln.source for ln in after.lines}
    assert sources["input_mtok"].startswith("override:overrides.yaml@2026-12-01")
    assert sources["web_search"] == p.catalogue.version


def test_override_matches_catalogue_id_and_globs_and_unknown_models(tmp_path):
    path = write_overrides(tmp_path, (
        "  - provider: anthropic\n    model: claude-opus-4-1\n    effective_from: 2026-01-01\n    rates: {output_mtok: 70}\n"
        "  - provider: openai\n    model: 'ft:gpt-4.1:acme:*'\n    effective_from: 2026-01-01\n"
        "    rates: {input_mtok: 3, output_mtok: 12}\n"
        "  - provider: gemini\n    model: gemini-9-internal\n    effective_from: 2026-01-01\n"
        "    rates: {input_mtok: 1, output_mtok: 2, request: 0.001}\n"))  # fmt: skip
    p = Pricer(path)
    u = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert p.price("anthropic", "claude-opus-4-1-20250805", u, AT).cost == D(15 + 70)
    assert p.price("openai", "ft:gpt-4.1:acme:abc123", u, AT).cost == D(3 + 12)
    assert p.price("gemini", "gemini-9-internal", u, AT).cost == D("3.001")  # per-request fee
    assert p.price("gemini", "gemini-9-other", u, AT).cost is None


def test_variant_lookup_most_specific_first(tmp_path):
    path = write_overrides(tmp_path, (
        "  - provider: openai\n    model: gpt-5\n    effective_from: 2026-01-01\n"
        "    rates: {input_mtok: 1, output_mtok: 8}\n"
        "    variants:\n      priority: {rates: {input_mtok: 2}}\n"))  # fmt: skip
    p = Pricer(path)
    u = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    standard = p.price("openai", "gpt-5", u, AT)
    priority = p.price("openai", "gpt-5", u, AT, "priority")
    flex = p.price("openai", "gpt-5", u, AT, "flex")
    assert standard.cost == D(9)
    assert priority.cost == D(2) + D(20)  # override's priority input, catalogue's priority output
    assert flex.cost == D("0.625") + D(5)  # catalogue's flex beats the override's standard rate
    # a variant the catalogue does not list: standard rates, and the row says so
    batch = p.price("anthropic", "claude-opus-4-1", u, AT, "batch")
    assert batch.cost == D(15 + 75) and "no batch rates" in batch.notes[0]


def test_tier_only_override_keeps_catalogue_base():
    p = Pricer(REPO / "pricing" / "overrides.yaml")
    rates = p.rates("anthropic", "claude-sonnet-4-0", AT)
    assert rates.prices["input_mtok"].base == D(3) and rates.prices["input_mtok"].tiers == ((200_000, D(6)),)
    assert "(base)" in rates.prices["input_mtok"].source and "(tiers)" in rates.prices["input_mtok"].source


def test_compute_cache_fallbacks_and_searches_without_rate():
    from spendgate.pricing.rates import Price, Rates

    rates = Rates({"input_mtok": Price(D(2), (), "x"), "output_mtok": Price(D(8), (), "x")}, "m")
    u = Usage(input_tokens=3_000_000, cache_read_tokens=1_000_000, cache_write_tokens=1_000_000,
              cache_write_1h_tokens=500_000, output_tokens=0)  # fmt: skip
    r = compute(rates, u)
    assert r.cost == D(6)  # no cache rates published: billed at the input rate
    assert {ln.rate_name for ln in r.lines} == {"input_mtok"}
    searched = compute(rates, Usage(input_tokens=10, output_tokens=10, web_search_requests=1))
    assert searched.cost is None and "web_search" in searched.notes[0]


def test_rates_are_cached_per_model_day_and_variant(monkeypatch):
    p = Pricer(REPO / "pricing" / "overrides.yaml")
    calls = []
    real = p._resolve
    monkeypatch.setattr(p, "_resolve", lambda *a: calls.append(a) or real(*a))
    for _ in range(3):
        p.price("anthropic", "claude-sonnet-4-5", Usage(input_tokens=10, output_tokens=10), AT)
    p.price("anthropic", "claude-sonnet-4-5", Usage(input_tokens=10, output_tokens=10), AT, "batch")
    p.price("anthropic", "claude-sonnet-4-5", Usage(input_tokens=10, output_tokens=10), AT + timedelta(days=1))
    assert len(calls) == 3


def test_agrees_with_genai_prices_on_every_catalogue_model():
    """Our one formula vs genai-prices' own calc_price, for every model of the providers we meter."""
    snap = _bundled_snapshot()
    p = Pricer(None, catalogue=pc.bundled())
    u = Usage(input_tokens=250_000, cache_read_tokens=30_000, cache_write_tokens=20_000, cache_write_1h_tokens=0,
              output_tokens=7_000)  # fmt: skip
    gu = GPUsage(input_tokens=250_000, cache_read_tokens=30_000, cache_write_tokens=20_000, output_tokens=7_000)
    ours = {"anthropic": "anthropic", "openai": "openai", "google": "gemini"}
    checked = 0
    for prov in snap.providers:
        if prov.id not in ours:
            continue
        for m in prov.models:
            mp = m.get_prices(AT)
            if getattr(mp, "input_mtok", None) is None or getattr(mp, "output_mtok", None) is None:
                continue
            if any(getattr(mp, k, None) is not None for k in ("input_audio_mtok", "requests_kcount")):
                continue  # parts we do not meter
            try:
                if snap.find_provider_model(m.id, None, prov.id, None)[1] is not m:
                    continue  # an id another model's pattern claims first: not reachable by name
            except LookupError:
                continue  # ids such as ft:gpt-4o only match longer names
            theirs = m.calc_price(gu, prov, genai_request_timestamp=AT).total_price
            mine = p.price(ours[prov.id], m.id, u, AT).cost
            assert mine == theirs, (prov.id, m.id, mine, theirs)
            checked += 1
    assert checked > 100


# --- the pinned catalogue --------------------------------------------------------------------


def test_pinned_catalogue_matches_its_lock_and_round_trips():
    folder = REPO / "pricing"
    cat = pc.load(folder)
    lock = pc.read_lock(folder)
    assert cat.sha256 == lock["sha256"] and cat.version == lock["version"]
    text = (folder / pc.CATALOGUE_FILE).read_text()
    assert pc.dumps(pc.providers_to_raw(cat.providers)) == text  # our writer reproduces the file


def test_bundled_data_round_trips_through_the_json_format():
    bundled = pc.bundled()
    _, again = pc.prepare(pc.dumps(pc.providers_to_raw(bundled.providers)), "bundled")
    assert pc.diff(bundled, again) == []


def _edited(folder: Path) -> str:
    raw = json.loads((folder / pc.CATALOGUE_FILE).read_text())
    for prov in raw:
        for m in prov["models"]:
            if prov["id"] == "anthropic" and m["id"] == "claude-haiku-4-5":
                m["prices"] = [{"prices": m["prices"]},
                               {"constraint": {"start_date": "2027-01-01"}, "prices": {**m["prices"], "output_mtok": 4}}]
    raw[0]["models"].append({"id": "claude-new-1", "match": {"equals": "claude-new-1"},
                             "prices": {"input_mtok": 1, "output_mtok": 2}})  # fmt: skip
    return json.dumps(raw)


def test_diff_names_model_field_old_new_and_when():
    pinned = pc.load(REPO / "pricing")
    _, new = pc.prepare(_edited(REPO / "pricing"), "candidate")
    changes = {(c.model, c.field): c for c in pc.diff(pinned, new)}
    assert changes[("claude-haiku-4-5", "output_mtok")].as_dict() == {
        "provider": "anthropic", "model": "claude-haiku-4-5", "field": "output_mtok", "old": "5", "new": "4",
        "effective": "2027-01-01"}  # fmt: skip
    assert changes[("claude-new-1", "(model)")].new == "added"
    assert len(changes) == 2


def test_prepare_rejects_what_is_not_genai_prices_data():
    with pytest.raises(pc.CatalogueError, match="not JSON"):
        pc.prepare("<html>", "x")
    with pytest.raises(pc.CatalogueError, match="array of providers"):
        pc.prepare('{"a": 1}', "x")
    with pytest.raises(pc.CatalogueError, match="not genai-prices data"):
        pc.prepare('[{"id": "anthropic"}]', "x")
    with pytest.raises(pc.CatalogueError, match="none of the providers"):
        pc.prepare('[{"id": "x", "name": "X", "api_pattern": "x", "models": []}]', "x")


def test_write_pins_catalogue_and_lock(tmp_path):
    text, cat = pc.prepare(_edited(REPO / "pricing"), "candidate")
    lock = pc.write(tmp_path, text, "https://mirror.example/data.json", "old")
    assert pc.load(tmp_path).version == cat.version == lock["version"]
    assert pc.read_lock(tmp_path)["source"] == "https://mirror.example/data.json"
    assert Pricer(None, catalogue_dir=tmp_path).price(
        "anthropic", "claude-new-1", Usage(input_tokens=1_000_000, output_tokens=1_000_000), AT).cost == D(3)


def test_compare_overrides_flags_disagreement_gaps_and_redundancy(tmp_path):
    path = write_overrides(tmp_path, (
        "  - provider: anthropic\n    model: claude-sonnet-4-5\n    effective_from: 2026-01-01\n"
        "    rates: {input_mtok: 2.7, output_mtok: 15}\n"
        "    tiers: [{above_input_tokens: 500000, rates: {input_mtok: 9}}]\n"))  # fmt: skip
    rows = {r["field"]: r["status"] for r in compare_overrides(Pricer(path), date(2026, 11, 29))}
    assert rows == {"input_mtok": "differs", "output_mtok": "same", "input_mtok >500000": "catalogue lacks"}


# --- re-pricing a real ledger ------------------------------------------------------------------


def _row(rid: str, ts: datetime, model: str, use: Usage, cost: Decimal | None, *, user="alice",
         outcome="ok", charged: Decimal | None = None, detail: dict | None = None) -> LedgerRow:  # fmt: skip
    return LedgerRow(
        ts=ts, request_id=rid, provider="anthropic", endpoint="messages", model=model, user=user,
        key_fingerprint=None, client="claude-code", session_id=None, stream=True, status=200, outcome=outcome,
        estimated=False, cost_usd=cost, price_source="old prices", latency_ms=1.0, ttft_ms=1.0,
        price_detail=json.dumps(detail) if detail else None, charged_usd=charged if charged is not None else cost,
        **use.as_dict(),
    )  # fmt: skip


@pytest.fixture
def ledger(tmp_path):
    con = connect(tmp_path / "l.duckdb")
    migrate(con)
    yield con
    con.close()


def test_reprice_updates_rows_keeps_audit_and_moves_counters(tmp_path, ledger):
    now = datetime.now(UTC).replace(microsecond=0)
    long = Usage(input_tokens=210_000, output_tokens=1_000)
    write_rows(ledger, [
        # priced with the catalogue's flat rate, before the Sonnet 4 long-context override existed
        _row("r1", now - timedelta(minutes=5), "claude-sonnet-4-20250514", long, D("0.645")),
        # a model nobody knew: charged the policy's fallback rate
        _row("r2", now - timedelta(minutes=4), "claude-new-1", Usage(input_tokens=1_000_000, output_tokens=0),
             None, user="bob", outcome="unpriced", charged=D(15)),
        # already right (only its source label is older): untouched
        _row("r3", now - timedelta(minutes=3), "claude-haiku-4-5", Usage(input_tokens=1_000_000, output_tokens=0),
             D(1)),
        # outside the window: untouched
        _row("r4", now - timedelta(days=40), "claude-sonnet-4-20250514", long, D("0.645")),
        # blocked: never re-priced
        _row("r5", now - timedelta(minutes=2), "claude-sonnet-4-20250514", long, D(0), outcome="blocked"),
    ])  # fmt: skip
    cat_text = json.loads((REPO / "pricing" / pc.CATALOGUE_FILE).read_text())
    cat_text[0]["models"].append({"id": "claude-new-1", "match": {"equals": "claude-new-1"},
                                  "prices": {"input_mtok": 4, "output_mtok": 20}})  # fmt: skip
    folder = tmp_path / "pricing"
    folder.mkdir()
    (folder / pc.CATALOGUE_FILE).write_text(pc.dumps(cat_text))
    (folder / "overrides.yaml").write_text((REPO / "pricing" / "overrides.yaml").read_text())
    pricer = Pricer(folder / "overrides.yaml")
    since = now - timedelta(days=1)

    dry = reprice.run(ledger, pricer, since, dry_run=True)
    assert (dry["examined"], dry["changed"], dry["run_id"]) == (3, 2, None)
    assert ledger.execute("SELECT count(*) FROM price_audit").fetchone()[0] == 0

    policy = parse_policy("version: 1\norganization: {name: acme, budgets: {day: 1000}}\n")
    book = BudgetBook(policy)
    res = reprice.run(ledger, pricer, since, dry_run=False,
                      on_applied=lambda ch: book.move([(c.ts, row_scopes(book.policy.org_name, c.user, c.key_fingerprint, c.workspace), c.charged_delta) for c in ch], datetime.now(UTC)))  # fmt: skip
    new_r1 = D(210_000 * 6 + 1_000 * D("22.5")) / 1_000_000
    assert res["changed"] == 2 and res["delta_usd"] == pytest.approx(float(new_r1 - D("0.645") + D(4) - D(15)))
    got = dict(ledger.execute("SELECT request_id, cost_usd FROM requests").fetchall())
    assert got["r1"] == new_r1 and got["r2"] == D(4) and got["r3"] == D(1) and got["r4"] == D("0.645")
    outcome, charged = ledger.execute("SELECT outcome, charged_usd FROM requests WHERE request_id='r2'").fetchone()
    assert (outcome, charged) == ("ok", D(4))
    audit = ledger.execute("SELECT request_id, old_cost_usd, new_cost_usd, old_charged_usd, price_version "
                           "FROM price_audit ORDER BY request_id").fetchall()  # fmt: skip
    assert [a[:4] for a in audit] == [("r1", D("0.645"), new_r1, D("0.645")), ("r2", None, D(4), D(15))]
    assert audit[0][4] == pricer.version
    by_user = {(r["user"], r["model"]): r["delta_usd"] for r in res["by_user_model"]}
    assert by_user[("bob", "claude-new-1")] == -11.0
    from spendgate.budgets.windows import bounds

    day = bounds("day", datetime.now(UTC), policy.timezone)[0]
    assert book.store.get(("organization:acme", "day", day)).spent == new_r1 - D("0.645") - D(11)
    assert book.store.get(("user:bob", "day", day)).spent == D(-11)
    # a second run finds nothing to change
    assert reprice.run(ledger, pricer, since, dry_run=False)["changed"] == 0
    row = reprice.request_row(ledger, "r1")
    assert len(row["reprice_history"]) == 1


def test_reprice_keeps_the_variant_a_row_was_priced_with(ledger):
    pricer = Pricer(REPO / "pricing" / "overrides.yaml")
    u = Usage(input_tokens=100_000, output_tokens=100_000)
    batch = pricer.price("anthropic", "claude-sonnet-4-5", u, AT, "batch")
    write_rows(ledger, [_row("b1", AT, "claude-sonnet-4-5", u, D(99), detail=batch.detail())])
    reprice.run(ledger, pricer, AT - timedelta(hours=1), dry_run=False)
    assert ledger.execute("SELECT cost_usd FROM requests").fetchone()[0] == D("0.9") == batch.cost


def test_unpriced_report_lists_models_and_fallback_rows(ledger):
    write_rows(ledger, [
        _row("u1", AT, "mystery-1", Usage(input_tokens=10, output_tokens=5), None, outcome="unpriced", charged=D(1)),
        _row("u2", AT, "mystery-1", Usage(input_tokens=20, output_tokens=5), None, outcome="unpriced", charged=D(2)),
        _row("ok", AT, "claude-haiku-4-5", Usage(input_tokens=20, output_tokens=5), D("0.1")),
    ])  # fmt: skip
    rep = reprice.unpriced_report(ledger)
    assert [(r["model"], r["requests"], r["input_tokens"]) for r in rep["unpriced_models"]] == [("mystery-1", 2, 30)]
    assert [(r["model"], r["charged_usd"]) for r in rep["fallback_charged"]] == [("mystery-1", 3.0)]


# --- explanations ------------------------------------------------------------------------------


def test_explain_prints_each_part_with_rate_tier_and_source(ledger):
    pricer = Pricer(REPO / "pricing" / "overrides.yaml")
    u = Usage(input_tokens=205_000, cache_read_tokens=40_000, cache_write_tokens=15_000, cache_write_1h_tokens=5_000,
              output_tokens=3_000, reasoning_tokens=1_000, web_search_requests=2)  # fmt: skip
    result = pricer.price("anthropic", "claude-sonnet-4-20250514", u, AT)
    write_rows(ledger, [_row("e1", AT, "claude-sonnet-4-20250514", u, result.cost, detail=result.detail())])
    text = "\n".join(explain_lines(reprice.request_row(ledger, "e1")))
    assert "every token takes the >200,000 tier rate" in text
    assert "150,000 tokens x $6/MTok" in text and "5,000 tokens x $12/MTok" in text  # 1h writes at 1h rate
    assert "output (incl. 1,000 reasoning)" in text and "2 x $0.01 each" in text
    assert "override:overrides.yaml@2025-08-12" in text and pricer.catalogue.version in text
    # an override line names the entry's own `source:` and the overrides file's hash, both
    sha = hashlib.sha256((REPO / "pricing" / "overrides.yaml").read_bytes()).hexdigest()[:12]
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("uncached input"))
    assert "[input_mtok, tier >200,000; https://docs.claude.com/en/docs/about-claude/pricing#long-context-pricing; " \
           in line and f"override:overrides.yaml@2025-08-12#{sha} (tiers)]" in line
    base = next(ln for ln in text.splitlines() if ln.strip().startswith("web search"))
    assert "https://docs.claude.com" not in base  # a catalogue rate has no entry source
    total = next(line for line in text.splitlines() if line.strip().startswith("total"))
    assert total.endswith(f"${result.cost:,.6f}") and "WARNING" not in text


def test_explain_an_unpriced_row_says_why_not_zero(ledger):
    write_rows(ledger, [_row("n1", AT, "mystery", Usage(input_tokens=5, output_tokens=5), None, outcome="unpriced",
                             charged=D("0.5"))])  # fmt: skip
    text = "\n".join(explain_lines(reprice.request_row(ledger, "n1")))
    assert "never $0" in text and "$0.500000" in text


def test_pricing_speed_is_reported(capsys):
    """Not an assertion on time: prints the per-request cost of pricing for the report."""
    import time

    p = Pricer(REPO / "pricing" / "overrides.yaml")
    u = Usage(input_tokens=50_000, cache_read_tokens=40_000, cache_write_tokens=5_000, output_tokens=2_000)
    p.price("anthropic", "claude-sonnet-4-5", u, AT)
    n = 20_000
    t = time.perf_counter()
    for _ in range(n):
        p.price("anthropic", "claude-sonnet-4-5", u, AT)
    warm = (time.perf_counter() - t) / n
    t = time.perf_counter()
    fresh = Pricer(REPO / "pricing" / "overrides.yaml")
    load = time.perf_counter() - t
    t = time.perf_counter()
    fresh.price("anthropic", "claude-sonnet-4-5", u, AT)
    first = time.perf_counter() - t
    with capsys.disabled():
        print(f"\npricing: {warm * 1e6:.1f} us/request cached; first request of a model/day/variant "
              f"{first * 1e3:.2f} ms; loading catalogue + overrides {load * 1e3:.0f} ms")


# --- seventeenth review G1: Google Search grounding, per grounded prompt or per query -----------


@pytest.mark.parametrize(("provider", "model", "searches", "fee", "label"), [
    ("gemini", "gemini-2.5-flash", 3, D("0.035"), "grounded prompt"),  # one prompt, three queries: one fee
    ("gemini", "gemini-2.5-pro", 1, D("0.035"), "grounded prompt"),
    ("gemini", "gemini-2.0-flash", 5, D("0.035"), "grounded prompt"),
    ("vertex", "gemini-2.5-flash", 3, D("0.035"), "grounded prompt"),
    ("gemini", "gemini-3-pro-preview", 3, D("0.042"), "web search"),  # Gemini 3: per query, $14 / 1,000
])
def test_grounding_fee_per_prompt_before_gemini_3_per_query_from_it(provider, model, searches, fee, label):
    p = Pricer(REPO / "pricing" / "overrides.yaml")
    plain = p.price(provider, model, Usage(input_tokens=1000, output_tokens=500), AT)
    searched = p.price(provider, model, Usage(input_tokens=1000, output_tokens=500, web_search_requests=searches), AT)
    assert searched.cost - plain.cost == fee
    (line,) = [ln for ln in searched.lines if ln.per == 1]
    assert line.label == label and line.quantity == (1 if label == "grounded prompt" else searches)
    assert not any(ln.rate_name == "grounded_prompt" for ln in plain.lines)  # no search, no fee


def test_grounded_prompt_rate_replaces_web_search_in_compute():
    from spendgate.pricing.rates import Price, Rates

    rates = Rates({"input_mtok": Price(D(1), (), "x"), "output_mtok": Price(D(1), (), "x"),
                   "web_search": Price(D("0.01"), (), "x"), "grounded_prompt": Price(D("0.035"), (), "y")}, "m")
    assert compute(rates, Usage(web_search_requests=4)).cost == D("0.035")
    assert compute(rates, Usage(web_search_requests=0)).cost == D(0)
