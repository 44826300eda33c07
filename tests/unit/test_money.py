"""One rounding rule for USD shown to people: Python (spendgate/money.py) and the dashboard's JS
(spendgate/web/charts.js, evaluated by Node) agree digit for digit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.money import places_for, round_usd, suggested_increase, to_decimal, usd, usd_of

REPO = Path(__file__).resolve().parents[2]
NODE = shutil.which("node") or shutil.which("nodejs")
needs_node = pytest.mark.skipif(NODE is None and not os.environ.get("CI"), reason="node is not installed")

AMOUNTS = [0.03435, 0.03445, 0.00005, 0.00015, 2.675, 2.665, 0.125, 0.135, -0.03435, 1e-7, 0, 1234.565,
           12345678.995, 0.99995, 0.0460, 5e-5, 0.1 + 0.2, 3.0000001, 1e21 / 1e15]
LIMITS = [0.05, 5, 100, 0.001, 0.3, 1, 0.01, 1234, 0.0001, 0.02]


def test_round_half_even_on_the_decimal_value():
    assert usd(Decimal("0.03435")) == usd(0.03435) == "$0.0344"  # the engineer view and the CLI agree
    assert usd(0.03445) == "$0.0344" and usd(2.675, 2) == "$2.68" and usd(2.665, 2) == "$2.66"
    assert usd(1234.565) == "$1,234.56" and usd(-0.03435) == "-$0.0344" and usd(0) == "$0.00"
    assert usd(Decimal("0.011790"), 6) == "$0.011790"


def test_small_budgets_keep_enough_digits():
    assert places_for(Decimal("0.05")) == 4 and places_for(5) == 2 and places_for(100) == 2
    assert places_for(Decimal("0.001")) == 5 and places_for(0) == 2
    assert usd_of(Decimal("0.046"), Decimal("0.05")) == "$0.0460 of $0.0500"  # not "$0.05 of $0.05"
    assert usd_of(Decimal(8), Decimal(10)) == "$8.00 of $10.00"


def test_suggested_increase_is_in_proportion_to_the_limit():
    assert [str(suggested_increase(Decimal(x))) for x in ("0.05", "10", "600", "0.013", "1", "7.77")] == [
        "0.025", "5", "3E+2", "0.01", "0.5", "3.9"]
    # past the cap the overshoot comes on top, rounded up: the grant asked for leaves room again
    assert suggested_increase(Decimal("0.05"), Decimal("0.1433")) == Decimal("0.12")
    assert suggested_increase(Decimal("0.075"), Decimal("0.1433")) == Decimal("0.11")
    assert Decimal("0.075") + suggested_increase(Decimal("0.075"), Decimal("0.1433")) > Decimal("0.1433")
    assert suggested_increase(Decimal("10"), Decimal("4")) == Decimal("5")  # under the cap: as before


@needs_node
def test_the_dashboard_rounds_exactly_like_python():
    harness = r"""
      const vm = require("vm"), fs = require("fs");
      const ctx = {window: {}, document: {}, Node: function () {}};
      vm.createContext(ctx);
      vm.runInContext(fs.readFileSync(process.argv[1], "utf8"), ctx);
      const input = JSON.parse(fs.readFileSync(0, "utf8"));
      const C = ctx.window.Charts;
      process.stdout.write(JSON.stringify({
        dflt: input.amounts.map((v) => C.usd(v)),
        two: input.amounts.map((v) => C.usd(v, 2)),
        six: input.amounts.map((v) => C.usd(v, 6)),
        places: input.limits.map((l) => C.placesFor(l)),
      }));
    """
    cp = subprocess.run([NODE, "-e", harness, str(REPO / "spendgate" / "web" / "charts.js")], check=False,
                        input=json.dumps({"amounts": AMOUNTS, "limits": LIMITS}), capture_output=True, text=True,
                        timeout=30)
    assert cp.returncode == 0, cp.stderr
    js = json.loads(cp.stdout)
    assert js["dflt"] == [usd(v) for v in AMOUNTS]
    assert js["two"] == [usd(v, 2) for v in AMOUNTS]
    assert js["six"] == [usd(v, 6) for v in AMOUNTS]
    assert js["places"] == [places_for(v) for v in LIMITS]
    assert js["dflt"][0] == "$0.0344"


def test_the_429_message_shows_small_budgets_and_a_proportional_increase():
    from datetime import UTC, datetime, timedelta

    from spendgate.budgets.book import Budget
    from spendgate.budgets.refusal import budget_message

    start = datetime(2026, 11, 30, tzinfo=UTC)
    b = Budget("user:tester", "day", Decimal("0.05"), start, start + timedelta(days=1))
    msg = budget_message(b, Decimal("0.0512"), start)
    # half the limit plus the overshoot (0.0012), rounded up: 0.025 alone would leave it at the cap
    assert "$0.0512 spent of $0.0500" in msg and "--amount 0.027 --window day --scope user:tester" in msg
    big = Budget("user:tester", "day", Decimal(150), start, start + timedelta(days=1))
    msg = budget_message(big, Decimal("150.12"), start)
    assert "$150.12 spent of $150.00" in msg and "--amount 76 " in msg


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12),
                 st.decimals(allow_nan=False, allow_infinity=False, min_value=-10**12, max_value=10**12, places=8)),
       st.sampled_from([None, 2, 4, 6]))
def test_usd_is_round_usd_of_the_decimal_value_with_its_sign(x, places) -> None:
    """`usd` formats with Decimal's own rounding (the default context's ROUND_HALF_EVEN): always
    what quantizing with ROUNDING gives, a zero shown without a sign."""
    d = to_decimal(x)
    p = (2 if d == 0 or abs(d) >= 1 else 4) if places is None else places
    q = round_usd(d, p)
    assert usd(x, places) == f"{'-' if q < 0 else ''}${abs(q):,.{p}f}"


def test_usd_keeps_its_rounding_under_another_context_and_refuses_what_is_not_an_amount() -> None:
    from decimal import ROUND_HALF_UP, localcontext

    with localcontext() as ctx:
        ctx.rounding = ROUND_HALF_UP
        assert usd(0.125, 2) == "$0.12" and usd(Decimal("0.00005")) == "$0.0000"
    for bad in (float("nan"), float("inf"), Decimal("-Infinity"), Decimal("sNaN")):
        with pytest.raises(ValueError):
            usd(bad, 4)
