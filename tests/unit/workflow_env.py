"""A Workflow over a real DuckDB file with a controllable clock, for the alert/approval unit tests."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import duckdb

from spendgate.budgets.book import BudgetBook
from spendgate.identity import Identity
from spendgate.policy.model import parse
from spendgate.store.ledger import migrate
from spendgate.workflow import audit
from spendgate.workflow.service import Workflow
from spendgate.workflow.sinks import Dispatcher


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


class Env:
    """A workflow over a real DuckDB file; notices are captured instead of sent."""

    def __init__(self, path, t: datetime, text: str) -> None:
        self.path = path
        self.clock = Clock(t)
        self.text = text
        self.sent: list = []
        self.open()

    def open(self) -> None:
        self.con = duckdb.connect(str(self.path))
        migrate(self.con)
        self.policy = parse(self.text, "p.yaml")
        self.book = BudgetBook(self.policy, now=self.clock)

        def deliver(sink, notice):
            self.sent.append((sink.name, notice))
            return True

        self.wf = Workflow(self.policy, self.book, self.con.cursor, now=self.clock, housekeeping_interval=0,
                           dispatcher=Dispatcher(lambda d: self.wf._delivered(d), deliver=deliver))

    def restart(self) -> None:
        self.close()
        self.open()

    def close(self) -> None:
        self.wf.close()
        self.con.close()

    def spend(self, who: Identity, amount: str) -> bool:
        d = self.book.admit(who, Decimal(amount))
        if d.admitted:
            self.book.settle(d.reservation, Decimal(amount))
        return d.admitted

    def events(self) -> list[tuple[str, str]]:
        return [(r["event"], r["actor"]) for r in audit.rows(self.con.cursor()) if r["event"] != "delivery"]
