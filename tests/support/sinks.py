"""Alert sinks as the workflow tests need them: a listener that never answers (a hung sink), and a
Workflow over a real DuckDB file."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from spendgate.budgets.book import BudgetBook
from spendgate.policy.model import parse
from spendgate.store.ledger import migrate
from spendgate.workflow.service import Workflow


@contextmanager
def hung_listener(port: int) -> Iterator[None]:
    """127.0.0.1:`port` accepts connections (in the kernel) and never reads or answers them."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    try:
        yield
    finally:
        s.close()


@contextmanager
def workflow(tmp: Path, policy_text: str) -> Iterator[tuple[Workflow, BudgetBook, duckdb.DuckDBPyConnection]]:
    """A Workflow (its real Dispatcher and sinks) over a migrated DuckDB file, closed after."""
    con = duckdb.connect(str(tmp / "l.duckdb"))
    migrate(con)
    policy = parse(policy_text, str(tmp / "p.yaml"))
    book = BudgetBook(policy)
    wf = Workflow(policy, book, con.cursor, housekeeping_interval=0)
    try:
        yield wf, book, con
    finally:
        wf.close(grace=0)
        con.close()
