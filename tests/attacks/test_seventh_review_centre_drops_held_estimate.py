"""Seventh review: the centre re-priced a queued background POST to $0, dropping its held estimate.

The sixth review made a queued `POST /v1/responses` (`background: true`) charge its estimate
(`Admission._held_until_fetched`: cost_usd $0, charged_usd = the reservation), so a response read
without a fetch (a follow-up's `previous_response_id`, a conversation's items) is not free. A
laptop reporting to a centre pushes that row; `central.ingest.centre_priced` re-prices every API
row from its usage ("never the laptop's word"), and the queued row has no usage: its charge becomes
$0 at the centre, whose budgets are then blind to the background response (the fetch row, when
there is one, is re-priced to its full cost, so only the never-fetched case leaked, as before C2).
Fixed: the row's price_source marks it held (admission.HELD_SOURCE), and the centre keeps the
laptop's charge for it when it is above the usage's price (never below).
"""

from __future__ import annotations

from decimal import Decimal

from spendgate.budgets.admission import HELD_SOURCE
from spendgate.budgets.book import BudgetBook
from spendgate.central.ingest import Ingest
from spendgate.policy.model import parse
from spendgate.pricing.rates import Pricer
from spendgate.store.ledger import DuckDBLedger
from tests.unit.test_central import NOW, POLICY, _row, wire

QUEUED_NOTE = "background response: charged when its result is fetched; its estimate, $0.040978, is charged until then"


def test_the_centre_keeps_a_queued_background_responses_estimate(tmp_path):
    led = DuckDBLedger(tmp_path / "centre.duckdb")
    ingest = Ingest(led.cursor, BudgetBook(parse(POLICY), now=lambda: NOW), pricer=lambda: Pricer())
    # the laptop's row for the queued POST, as Admission.settle leaves it
    row = _row("r-queued01", provider="openai", endpoint="responses", model="gpt-5-2025-08-07", client="openai-sdk",
               input_tokens=0, output_tokens=0, charged="0.040978", cost_usd=Decimal(0), note=QUEUED_NOTE,
               price_source=HELD_SOURCE)
    got = ingest.ingest("alice", "alice@laptop", [wire(row)], now=NOW)
    assert got.accepted == ["r-queued01"], got
    charged, note = led.cursor().execute("SELECT charged_usd, note FROM requests").fetchone()
    led.close()
    assert charged == Decimal("0.040978"), (charged, note)


def test_a_held_row_never_charges_less_than_its_usage_at_the_centre(tmp_path):
    """The held mark only ever keeps a laptop's higher charge: a row with usage that says $0 is priced."""
    led = DuckDBLedger(tmp_path / "centre.duckdb")
    ingest = Ingest(led.cursor, BudgetBook(parse(POLICY), now=lambda: NOW), pricer=lambda: Pricer())
    row = _row("r-queued02", provider="openai", endpoint="responses", model="gpt-5-2025-08-07", client="openai-sdk",
               input_tokens=1000, output_tokens=400000, charged="0", cost_usd=Decimal(0), price_source=HELD_SOURCE)
    assert ingest.ingest("alice", "alice@laptop", [wire(row)], now=NOW).accepted == ["r-queued02"]
    charged = led.cursor().execute("SELECT charged_usd FROM requests").fetchone()[0]
    led.close()
    assert charged == Decimal("4.00125")
