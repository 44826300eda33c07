"""Shared output helpers: rich tables for people, JSON for scripts."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from spendgate.cli.source import Source, default_db, open_source, open_store_source
from spendgate.money import round_usd, usd

# Piped output (files, CI logs) gets room for whole columns instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 200)


def add_db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, default=None, help="ledger file (default: data/spendgate.duckdb or $SPENDGATE_DB)")
    p.add_argument("--store", default=None, metavar="URL",
                   help="read the ledger shared by gateway replicas in PostgreSQL instead (postgresql://...)")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def source(args: argparse.Namespace, write: bool = False) -> Source:
    if getattr(args, "store", None):
        return open_store_source(args.store, write=write)
    return open_source(args.db or default_db(), write=write)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{round_usd(value, 4):,.4f}"  # the one rounding rule (spendgate/money.py)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def table(
    title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str], money: Sequence[str] = (),
    no_wrap: Sequence[str] = (),
) -> None:
    """`no_wrap` columns (e.g. URLs) are printed whole, never folded or cut.

    Past `PLAIN_ROWS` rows the table is plain aligned text: rich lays out ~1.5 ms per row, so a
    month by 2,000 users took seconds to print; the columns and values are the same.
    """
    if len(rows) > PLAIN_ROWS:
        plain_table(title, rows, columns, money)
        return
    t = Table(title=title, header_style="bold")
    for c in columns:
        t.add_column(c, justify="right" if rows and isinstance(rows[0].get(c), int | float) else "left",
                     no_wrap=c in no_wrap, overflow="ignore" if c in no_wrap else "ellipsis",
                     min_width=max((len(str(r.get(c) or "")) for r in rows), default=0) if c in no_wrap else None)
    for r in rows:
        t.add_row(*(usd(r[c], 4) if c in money and r.get(c) is not None else fmt(r.get(c)) for c in columns))
    console.print(t)


PLAIN_ROWS = 200


def plain_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str], money: Sequence[str] = ()) -> None:
    """A long table as aligned text (numbers right-aligned), written straight to stdout."""
    cells = [[usd(r[c], 4) if c in money and r.get(c) is not None else fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    right = [isinstance(rows[0].get(c), int | float) or c in money for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)).rstrip()

    out = [title, line(columns), "  ".join("-" * w for w in widths)] + [line(row) for row in cells]
    console.file.write("\n".join(out) + "\n")
    console.file.flush()
