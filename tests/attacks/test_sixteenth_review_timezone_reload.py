"""Sixteenth review (time and windows): changing the policy's `timezone` empties every budget's
current window.

Counters are keyed (scope, window, window start), and a window's start depends on the policy's
time zone. `Gateway.reload_policy` (spendgate/gateway.py) swaps the policy object and keeps the
counters keyed by the old zone's window starts; the new zone's current windows have other starts,
whose counters do not exist, so every hour/day/week/month budget reads $0 spent. On DuckDB this
lasts until a restart (which rebuilds the counters from the ledger in the new zone); on the shared
PostgreSQL store counters are never rebuilt from the ledger, so even a restart with the edited
policy gives everyone fresh windows for the rest of the hour/day/week/month. An organization
moving its policy from UTC to its own zone mid-month gets a second monthly budget.
"""

from __future__ import annotations

from pathlib import Path

from tests.attacks.sixteenth_review_support import gateway, spend

UTC_POLICY = "version: 1\ntimezone: UTC\ndefaults:\n  user: {day: 0.05, month: 0.05}\n"
PARIS_POLICY = UTC_POLICY.replace("timezone: UTC", "timezone: Europe/Paris")


def test_a_live_timezone_edit_does_not_give_everyone_a_fresh_window(tmp_path: Path):
    gw = gateway(tmp_path, UTC_POLICY)
    try:
        assert spend(gw)[1] is None  # $0.15 spent: past both caps
        assert spend(gw)[1].status == 429  # at the cap: refused
        (tmp_path / "policy.yaml").write_text(PARIS_POLICY)
        assert gw.reload_policy()
        # the $0.15 was spent seconds ago: it is in today's and this month's windows in Paris too
        admitted_again = spend(gw)[1] is None
    finally:
        gw.close()
    gw = gateway(tmp_path, PARIS_POLICY)  # the same policy after a restart: counters rebuilt from the ledger
    try:
        assert spend(gw)[1].status == 429  # what the live gateway should have answered
    finally:
        gw.close()
    assert not admitted_again, ("after the policy's timezone changed, the live gateway admitted a user already "
                                "$0.15 past a $0.05 day and month cap (a restart refuses the same request)")


def test_on_the_shared_store_a_timezone_change_gives_fresh_windows_even_after_a_restart(tmp_path: Path, pg_url):
    from spendgate.store.postgres import PostgresStore

    PostgresStore(pg_url).open().migrate()
    gw = gateway(tmp_path, UTC_POLICY, store=pg_url)
    try:
        assert spend(gw)[1] is None  # $0.15: past both caps
        assert spend(gw)[1].status == 429
    finally:
        gw.close()
    gw = gateway(tmp_path, PARIS_POLICY, store=pg_url)  # restarted with the zone edited
    try:
        refused = spend(gw)[1]
    finally:
        gw.close()
    assert refused is not None and refused.status == 429, (
        "the store's ledger has $0.15 for today and this month in Paris too, but its counters are keyed by "
        "UTC window starts and never rebuilt: the user is admitted against a fresh $0.05")
