"""`recovery.rebuild_counters` fed rows directly, as if the ledger's aggregate query returned them."""

from __future__ import annotations

from datetime import datetime

from spendgate.budgets import recovery
from spendgate.budgets.book import BudgetBook


class RowsCursor:
    """A cursor whose every query answers `rows` (window, user, key, workspace, basis, plan, USD)."""

    def __init__(self, rows: list[tuple]) -> None:
        self.rows = rows

    def execute(self, sql: str, params: object = None) -> RowsCursor:
        return self

    def fetchall(self) -> list[tuple]:
        return list(self.rows)


def rebuild_from_rows(rows: list[tuple], book: BudgetBook, now: datetime) -> int:
    """rebuild_counters over `rows` with the rollups' source stubbed out; returns what it returns."""
    saved = recovery.rollups.source
    recovery.rollups.source = lambda cur, start, dims, measures: ("t", [])
    try:
        return recovery.rebuild_counters(RowsCursor(rows), book, now)
    finally:
        recovery.rollups.source = saved
