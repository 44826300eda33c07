"""A big policy's schema shortcut (model._valid_fast) agrees with the full check, entry by entry.

The shortcut validates one `users` entry per distinct `repr`; it may say False where the full
check passes (the caller then runs the full check), never True where the full check fails.
"""

from __future__ import annotations

from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.policy import model

# values a YAML document builds, with the look-alikes that differ only in type (1, 1.0, True, "1")
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(-3, 3, allow_nan=False),
                    st.sampled_from(["1", "5", "", "2026-01-01", "2026-02-30", "team-a", "[...]"]),
                    st.dates(date(2025, 1, 1), date(2027, 1, 1)))  # fmt: skip
AMOUNT = st.one_of(st.integers(0, 9), st.floats(0, 9), SCALARS)  # mostly good, sometimes a look-alike
BUDGETS = st.dictionaries(st.sampled_from(["day", "month", "day", "month", "bogus"]), AMOUNT, min_size=1, max_size=2)
ENTRY = st.fixed_dictionaries(  # few key sets, so entries that differ only in a value are common
    {"budgets": BUDGETS},
    optional={"until": st.one_of(st.sampled_from(["2026-01-01", "2099-12-31"]), SCALARS),
              "workspaces": st.lists(st.one_of(st.just("team-a"), SCALARS), max_size=2)})


def _doc(entries: list) -> dict:
    return {"version": 1, "users": {f"dev{i}@x.example": e for i, e in enumerate(entries)}}


@settings(max_examples=300, deadline=None)
@given(st.lists(ENTRY, min_size=1, max_size=6), st.integers(64, 90), st.randoms(use_true_random=False))
def test_the_shortcut_never_passes_what_the_full_check_fails(kinds: list, n: int, rnd) -> None:
    """Many users drawn from a few distinct entries, some of them alike but for a value's type."""
    doc = _doc([kinds[rnd.randrange(len(kinds))] for _ in range(n)])
    full = model._validator().is_valid(doc)
    assert model._valid_fast(doc) == full


def test_type_look_alikes_are_told_apart() -> None:
    """`{day: 5}` and `{day: "5"}` print alike as JSON keys would not; the string one fails the
    schema, so it must be checked on its own, wherever it sits among thousands of good ones."""
    good = {"budgets": {"day": 5}}
    for bad in ({"budgets": {"day": "5"}}, {"budgets": {"day": True}}, {"until": date(2026, 1, 1)}):
        entries = [good] * 100
        entries[73] = bad
        assert not model._valid_fast(_doc(entries))
        assert model._valid_fast(_doc([good] * 100))


def test_a_reference_cycle_is_a_false_not_a_crash() -> None:
    entry: dict = {"budgets": {"day": 5}}
    entry["workspaces"] = [entry]  # what an alias to its own ancestor builds
    assert model._valid_fast(_doc([{"budgets": {"day": 5}}] * 70 + [entry])) is False
