"""USD for people: one rounding rule and one choice of digits, everywhere.

The rule: round half to even (banker's rounding) on the exact decimal value, never on a binary
float. The ledger stores DECIMAL, so $0.03435 is exactly 0.03435 and shows as $0.0344 at four
places, in the CLI, in headers and messages, and in the dashboard (spendgate/web/charts.js
implements the same rule on the number's shortest decimal form, which is the value the API sent).
A float argument is read through `str()` (its shortest round-trip form) for the same reason.

Digits: amounts of $1 or more show cents; smaller non-zero amounts show four places
(`usd(x)`). Next to a budget, both numbers use `places_for(limit)`: enough places that 1% of
the limit is visible, so a $0.05 budget at 92% reads "$0.0460 of $0.0500", not "$0.05 of $0.05".
Machine-readable values (headers such as x-spendgate-spent-usd) use `budgets.refusal.usd_plain`.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, ROUND_UP, Context, Decimal, InvalidOperation, getcontext, localcontext
from typing import Any

ROUNDING = ROUND_HALF_EVEN
_FORMAT = Context(rounding=ROUNDING)  # `usd` formats under it, whatever context the caller's thread has
MAX_PLACES = 6  # micro-dollars: the precision of every stored amount that matters to people


def to_decimal(x: Any) -> Decimal:
    """Decimal of an amount from the ledger, JSON or a float, via its shortest decimal form."""
    if isinstance(x, Decimal):
        return x
    try:
        return Decimal(str(x))
    except (InvalidOperation, ValueError):
        raise ValueError(f"not an amount of USD: {x!r}") from None


def default_places(x: Decimal) -> int:
    """2 for $1 and more (and for zero), 4 below a dollar."""
    return 2 if x == 0 or abs(x) >= 1 else 4


def places_for(limit: Any) -> int:
    """Places that show 1% of `limit` (2 at least, MAX_PLACES at most): $0.05 -> 4, $5 -> 2."""
    d = abs(to_decimal(limit))
    if d == 0:
        return 2
    return max(2, min(MAX_PLACES, -(d / 100).adjusted()))


def round_usd(x: Any, places: int) -> Decimal:
    return to_decimal(x).quantize(Decimal(1).scaleb(-places), rounding=ROUNDING)


def usd(x: Any, places: int | None = None) -> str:
    """"$1,234.50", "$0.0344", "-$2.00": the one way spendgate shows an amount to a person."""
    d = to_decimal(x)
    if not d.is_finite():
        raise ValueError(f"not an amount of USD: {x!r}")
    p = default_places(d) if places is None else places
    # Decimal's format rounds with the current context's rounding: under our own context, that is
    # round_usd's result, ~2x cheaper (long tables print thousands of amounts)
    if getcontext().rounding == ROUNDING:  # Python's default: no context switch (~1.5 µs)
        s = format(d, f",.{p}f")
    else:
        with localcontext(_FORMAT):
            s = format(d, f",.{p}f")
    if s[0] == "-":  # an amount that rounds to zero shows no sign, as round_usd's zero does
        return "-$" + s[1:] if s.strip("-0.,") else "$" + s[1:]
    return "$" + s


def usd_of(spent: Any, limit: Any) -> str:
    """ "$0.0460 of $0.0500": spent and limit with the digits the limit needs."""
    p = places_for(limit)
    return f"{usd(spent, p)} of {usd(limit, p)}"


def suggested_increase(limit: Any, spent: Any = 0) -> Decimal:
    """What `spendgate request --amount` suggests: half the limit, two significant digits, at
    least $0.01 (a $0.05 budget suggests 0.025, a $10 budget 5, a $600 budget 300). Past the cap
    (`spent` over `limit`, grants included) the overshoot comes on top, rounded up, so that the
    grant asked for leaves room again (forty-second review: at $0.1433 spent of $0.05 it suggested
    0.025, which could never unblock)."""
    half = abs(to_decimal(limit)) / 2
    over = max(to_decimal(spent) - to_decimal(limit), Decimal(0))
    d = half + over
    if d <= Decimal("0.01"):
        return Decimal("0.01")
    return d.quantize(Decimal(1).scaleb(d.adjusted() - 1), rounding=ROUND_UP if over else ROUNDING).normalize()


def plain(x: Decimal) -> str:
    """A Decimal without exponent or trailing zeros, for command lines: 300, 0.025."""
    return format(x.normalize(), "f")
