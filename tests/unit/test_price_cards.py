"""Slim rows (issue 22): the price detail is recomputed from the row's rate card and usage, and is
exactly what the gateway computed when it priced the row (tiers, multipliers, modality fallbacks,
variants, provider-reported costs, Copilot views), whatever the catalogue says later."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.cli.prices import explain_lines
from spendgate.pricing import cards, reprice
from spendgate.pricing.rates import Pricer, reported
from spendgate.store.ledger import COLUMNS, LedgerRow, migrate, write_cards, write_rows
from spendgate.usage import Usage

REPO = Path(__file__).resolve().parents[2]
AT = datetime(2026, 11, 30, 12, tzinfo=UTC)
PRICER = Pricer(REPO / "pricing" / "overrides.yaml")

CASES = [
    ("anthropic", "claude-sonnet-4-5", Usage(input_tokens=250_000, cache_read_tokens=100_000, cache_write_tokens=20_000,
                                              cache_write_1h_tokens=5_000, output_tokens=3_000, reasoning_tokens=700,
                                              web_search_requests=2), None),  # >200k tier, 1h writes, searches
    ("anthropic", "claude-opus-5", Usage(input_tokens=20_000, output_tokens=3_000), {"speed": "fast"}),
    ("anthropic", "claude-opus-5", Usage(input_tokens=20_000, output_tokens=3_000), {"inference_geo": "us"}),
    ("anthropic", "claude-opus-5", Usage(input_tokens=20_000, output_tokens=3_000), {"inference_geo": "mars"}),
    ("openai", "gpt-4o-mini", Usage(input_tokens=1_000, output_tokens=10), {"service_tier": "flex"}),
    ("openai", "gpt-4o", Usage(input_tokens=5_000, input_audio_tokens=2_000, output_tokens=900,
                               output_audio_tokens=300), None),
    ("gemini", "gemini-2.5-pro", Usage(input_tokens=300_000, output_tokens=1_000, input_image_tokens=1_000), None),
]


def _same(card_result, original) -> None:
    card_id, text = cards.encode(cards.card_of(original))
    assert len(card_id) == 32 and json.loads(text)  # canonical JSON, round-trips
    assert cards.detail(json.loads(text), card_result[0], card_result[1]) == original.detail()


@pytest.mark.parametrize("provider,model,usage,modifiers", CASES)
def test_detail_recomputed_from_the_card_is_the_detail_priced(provider, model, usage, modifiers) -> None:
    price = PRICER.price(provider, model, usage, AT, modifiers=modifiers)
    assert price.lines, "every case prices line by line"
    _same((usage, None), price)


def test_a_provider_reported_cost_and_a_copilot_view_are_recomputed_too() -> None:
    usage = Usage(input_tokens=1_600, cache_read_tokens=400, output_tokens=450)
    listed = PRICER.price("openai", "gpt-4o", usage, AT)
    stated = reported(listed, Decimal("0.0123456789"), "openrouter")
    stated = replace(stated, alternatives={**stated.alternatives, "copilot_premium": {"multiplier": "3"}})
    _same((usage, Decimal("0.0123456789")), stated)


@settings(max_examples=60, deadline=None)
@given(inp=st.integers(0, 400_000), cached=st.integers(0, 200_000), write=st.integers(0, 50_000),
       out=st.integers(0, 40_000), reasoning=st.integers(0, 40_000),
       model=st.sampled_from(["claude-sonnet-4-5", "claude-haiku-4-5", "gemini-2.5-pro", "gpt-5"]))
def test_one_card_explains_every_usage_priced_with_it(inp, cached, write, out, reasoning, model) -> None:
    """The card does not depend on the usage: any row priced on that day with those rates shares it."""
    provider = "anthropic" if "claude" in model else "gemini" if "gemini" in model else "openai"
    usage = Usage(input_tokens=inp + cached + write, cache_read_tokens=cached, cache_write_tokens=write,
                  output_tokens=out, reasoning_tokens=min(reasoning, out))
    price = PRICER.price(provider, model, usage, AT)
    if not price.lines:
        return
    probe = PRICER.price(provider, model, Usage(input_tokens=1, output_tokens=1), AT)
    assert cards.encode(cards.card_of(probe)) == cards.encode(cards.card_of(price))
    assert cards.detail(cards.card_of(probe), usage) == price.detail()


def test_the_remembered_card_is_the_card_built_afresh_for_every_input() -> None:
    """cards.of_result remembers a card per distinct input (rates object, multipliers, modifiers,
    notes, reported cost, alternatives); every input still gets exactly the card built from it."""
    usage = Usage(input_tokens=1_600, cache_read_tokens=400, output_tokens=450)
    results = [PRICER.price(p, m, u, AT, modifiers=mods) for p, m, u, mods in CASES]
    listed = PRICER.price("openai", "gpt-4o", usage, AT)
    stated = reported(listed, Decimal("0.0123456789"), "openrouter")
    results += [listed, stated, replace(stated, alternatives={**stated.alternatives, "copilot_premium": {"x": "3"}}),
                replace(listed, late_notes=("a note added after pricing",)),
                PRICER.price("openai", "gpt-4o", Usage(input_tokens=9, output_tokens=9), AT)]  # same card, other usage
    cards._MEMO.clear()
    for _ in range(2):  # cold, then remembered
        for r in results:
            assert cards.of_result(r) == cards.encode(cards.card_of(r))
    built = [cards.encode(cards.card_of(r))[1] for r in results]
    ids = [cards.of_result(r)[0] for r in results]
    for i in range(len(results)):  # two rows share a card id exactly when their cards are equal
        for j in range(len(results)):
            assert (ids[i] == ids[j]) == (built[i] == built[j])
    assert ids[-1] == ids[len(CASES)]  # other usage, same rates: one card
    # a Rates object equal in content but new (the pricer reloaded): its own entry, the same card
    fresh = replace(listed, rates=replace(listed.rates))
    assert cards.of_result(fresh) == cards.of_result(listed)
    assert cards.of_result(replace(listed, lines=())) == (None, None)


def _row(rid: str, usage: Usage, price, **kw) -> LedgerRow:
    card_id, text = cards.of_result(price)
    return LedgerRow(ts=AT, request_id=rid, provider="anthropic", endpoint="messages", model="claude-sonnet-4-5",
                     user="alice", key_fingerprint=None, client="claude-code", session_id=None, stream=True,
                     status=200, outcome="ok", estimated=False, cost_usd=price.cost, price_source=price.source,
                     latency_ms=1.0, ttft_ms=None, charged_usd=price.cost, price_card=card_id, card_json=text,
                     **usage.as_dict(), **kw)


def test_rows_keep_a_card_id_and_explain_recomputes_the_detail(tmp_path) -> None:
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    migrate(con)
    usages = [Usage(input_tokens=1_000 + i, output_tokens=10 * i) for i in range(1, 50)]
    rows = [_row(f"req-{i}", u, PRICER.price("anthropic", "claude-sonnet-4-5", u, AT)) for i, u in enumerate(usages)]
    assert "card_json" not in COLUMNS and "price_card" in COLUMNS
    known: set[str] = set()
    write_cards(con, rows, known)
    write_rows(con, rows)
    assert con.execute("SELECT count(*) FROM price_cards").fetchone()[0] == 1  # 49 rows, one card
    assert con.execute("SELECT count(*) FROM requests WHERE price_detail IS NULL").fetchone()[0] == 49
    got = reprice.request_row(con, "req-7")
    assert json.loads(got["price_detail"]) == PRICER.price("anthropic", "claude-sonnet-4-5", usages[7], AT).detail()
    assert got["price_detail_from"].startswith("rate card ")
    text = "\n".join(explain_lines(got))
    assert "WARNING" not in text and "uncached input" in text and "price version: catalogue" in text


def test_explain_with_an_ambiguous_prefix_says_so(tmp_path) -> None:
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    migrate(con)
    u = Usage(input_tokens=10, output_tokens=1)
    rows = [_row(rid, u, PRICER.price("anthropic", "claude-sonnet-4-5", u, AT)) for rid in ("req-a1", "req-a2")]
    write_cards(con, rows, set())
    write_rows(con, rows)
    with pytest.raises(ValueError, match="matches several requests"):
        reprice.request_row(con, "req-a")
    assert reprice.request_row(con, "req-a2")["request_id"] == "req-a2"


def test_reprice_skips_groups_whose_rates_did_not_change_and_reprices_the_rest(tmp_path) -> None:
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    migrate(con)
    u = Usage(input_tokens=10_000, output_tokens=1_000)
    good = PRICER.price("anthropic", "claude-sonnet-4-5", u, AT)
    stale = replace(good, cost=good.cost * 2)  # priced with a card whose money differs from now
    stale_card = cards.card_of(good)
    stale_card["rates"]["input_mtok"]["base"] = "6"
    sid, stext = cards.encode(stale_card)
    rows = [_row("same-1", u, good), _row("same-2", u, good),
            replace(_row("stale", u, stale), price_card=sid, card_json=stext),
            replace(_row("charged-off", u, good), charged_usd=Decimal("0.5"))]  # not settled: priced row by row
    write_cards(con, rows, set())
    write_rows(con, rows)
    examined, changes = reprice.plan(con, PRICER, datetime(2026, 11, 1, tzinfo=UTC))
    assert examined == 4
    assert sorted(c.request_id for c in changes) == ["charged-off", "stale"]
    stale_change = next(c for c in changes if c.request_id == "stale")
    assert stale_change.new_cost == good.cost and stale_change.old_card == sid
    reprice.apply(con, changes, PRICER.version)
    audit = con.execute("SELECT request_id, old_price_card, new_price_card FROM price_audit ORDER BY 1").fetchall()
    assert audit == [("charged-off", stale_change.new_card, stale_change.new_card),
                     ("stale", sid, stale_change.new_card)]
    after = reprice.request_row(con, "stale")
    assert json.loads(after["price_detail"]) == good.detail() and after["reprice_history"]
    assert reprice.plan(con, PRICER, datetime(2026, 11, 1, tzinfo=UTC))[1] == []  # settled now


def test_prices_slim_moves_old_details_to_cards_only_when_identical(tmp_path) -> None:
    from spendgate.pricing import slim

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    migrate(con)
    usages = [Usage(input_tokens=2_000 * i, cache_read_tokens=500 * i, output_tokens=30 * i) for i in range(1, 6)]
    rows = []
    for i, u in enumerate(usages):  # rows as written before slim rows: the detail on the row, no card
        price = PRICER.price("anthropic", "claude-sonnet-4-5", u, AT)
        rows.append(replace(_row(f"old-{i}", u, price), price_card=None, card_json=None,
                            price_detail=json.dumps(price.detail())))
    doctored = json.loads(rows[0].price_detail)
    doctored["lines"][0]["rate"] = "2.5"  # priced with other files: cannot be reproduced, so it stays
    rows[0] = replace(rows[0], price_detail=json.dumps(doctored))
    write_rows(con, rows)
    report = slim.convert(con, PRICER)
    assert (report.rows, report.converted, report.kept, report.cards) == (5, 4, 1, 1)
    assert report.kept_examples == ["old-0"]
    assert json.loads(reprice.request_row(con, "old-0")["price_detail"]) == doctored  # verbatim
    for i in range(1, 5):
        got = reprice.request_row(con, f"old-{i}")
        assert got["price_detail_from"].startswith("rate card")
        assert json.loads(got["price_detail"]) == json.loads(rows[i].price_detail)
    con.close()
    before, after = slim.compact(path)
    assert after > 0 and oct(path.stat().st_mode & 0o777) == "0o600"
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT count(*), count(price_card) FROM requests").fetchone() == (5, 4)


def test_the_card_travels_with_the_row_through_the_journal_and_the_pg_outbox() -> None:
    from spendgate.store.ledger import row_from_dict, row_to_dict
    from spendgate.store.postgres import row_from_json, row_json

    u = Usage(input_tokens=100, output_tokens=10)
    row = _row("j-1", u, PRICER.price("anthropic", "claude-sonnet-4-5", u, AT))
    back = row_from_dict(json.loads(json.dumps(row_to_dict(row))))
    assert (back.price_card, back.card_json) == (row.price_card, row.card_json)
    payload = json.loads(json.dumps(row_json(row, "replica-1"), default=str))
    assert payload["price_card"] == row.price_card and payload["card_json"] == row.card_json
    again = row_from_json(payload)
    assert (again.price_card, again.card_json) == (row.price_card, row.card_json)


def test_prices_check_reads_fallbacks_and_unknown_modifiers_from_cards_as_from_details(tmp_path) -> None:
    """The same rows stored the old way (detail on each row) and the slim way give the same report."""
    specs = [("anthropic", "claude-opus-5", Usage(input_tokens=2_000, output_tokens=30), {"inference_geo": "mars"}),
             ("openai", "gpt-4o", Usage(input_tokens=5_000, input_audio_tokens=2_000, output_tokens=900,
                                        output_audio_tokens=300), None),
             ("gemini", "gemini-2.5-pro", Usage(input_tokens=300_000, output_tokens=1_000, input_image_tokens=1_000), None)]
    reports = []
    for slim_rows in (False, True):
        con = duckdb.connect(str(tmp_path / f"l{slim_rows}.duckdb"))
        migrate(con)
        rows = []
        for i, (provider, model, usage, mods) in enumerate(specs * 3):
            price = PRICER.price(provider, model, usage, AT, modifiers=mods)
            r = replace(_row(f"m-{i}", usage, price), provider=provider, model=model,
                        modifiers=json.dumps(mods) if mods else None)
            if not slim_rows:
                r = replace(r, price_card=None, card_json=None, price_detail=json.dumps(price.detail()))
            rows.append(r)
        write_cards(con, rows, set())
        write_rows(con, rows)
        reports.append(reprice.modifier_report(con))
    assert reports[0] == reports[1]
    assert reports[1]["unknown_modifiers"] and reports[1]["unknown_modifiers"][0]["requests"] == 3
