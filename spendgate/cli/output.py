"""Shared output helpers: tables for people, JSON for scripts.

rich is imported only when something needs it (`console` is created on first use, tables draw
themselves when they fit): importing and laying out with rich cost ~250 ms of a report's start,
more than the report's query (issue 22: CLI reports <= 300 ms wall).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spendgate.cli.source import Source, default_db, open_source, open_store_source
from spendgate.money import round_usd, usd

PIPED_WIDTH = 200  # columns: piped output (files, CI logs) gets room for whole columns, not rich's 80


class _LazyConsole:
    """rich's Console, created (and rich imported, ~30 ms) on first use."""

    _console: Any = None

    def _get(self) -> Any:
        if self._console is None:
            from rich.console import Console

            type(self)._console = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


console: Any = _LazyConsole()


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


def say(text: str, bold: bool = False) -> None:
    """One line of plain text (bold on a terminal), without importing rich: what report commands
    print under their tables. Text with rich markup goes through `console.print` instead."""
    if bold and sys.stdout.isatty():
        text = f"\x1b[1m{text}\x1b[0m"
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


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


TERMINAL_ROWS = 50  # rows a long table shows in a terminal (`top=True`); --all, pipes and --json show all


def table(
    title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str], money: Sequence[str] = (),
    no_wrap: Sequence[str] = (), top: bool = False, hint: str = "--all, or --json for everything",
) -> None:
    """`no_wrap` columns (e.g. URLs) are printed whole, never folded or cut.

    `top`: rows come largest first (by cost) and, in a terminal, only the first `TERMINAL_ROWS`
    are drawn, then a "... N more rows (hint)" line, as `top`-like tools do: a month by 2,000
    users is 2,000 lines nobody reads on a screen. Piped output (`| grep`, `> file`) stays whole.
    Past `PLAIN_ROWS` rows the table is plain aligned text: rich lays out ~1.5 ms per row, so a
    month by 2,000 users took seconds to print; the columns and values are the same.
    """
    if top and len(rows) > TERMINAL_ROWS and sys.stdout.isatty():
        table(title, rows[:TERMINAL_ROWS], columns, money, no_wrap)
        say(f"... {len(rows) - TERMINAL_ROWS:,} more rows ({hint})")
        return
    if len(rows) > PLAIN_ROWS:
        plain_table(title, rows, columns, money)
        return
    cells = _cells(rows, columns, money)
    if all(v.isascii() for col in [columns, *cells] for v in col):  # control characters are escaped already
        # plain string work, ~100x faster than rich's layout (~0.4 ms per cell: a 50-row spend by
        # user too wide for a 120-column terminal took ~300 ms in rich); what cannot be boxed even
        # with text cut is printed as aligned lines that wrap, as `ps` or `kubectl` output does
        if not box_table(title, rows, columns, cells, [*no_wrap, *money]):
            plain_table(title, rows, columns, money, cells)
        return
    # cells with other characters (wide, combining): rich measures them; as Text, never markup (a
    # user named "[link=...]" must not become a link, nor "[/]" a MarkupError)
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, header_style="bold")
    for c in columns:
        t.add_column(c, justify="right" if rows and isinstance(rows[0].get(c), int | float) else "left",
                     no_wrap=c in no_wrap, overflow="ignore" if c in no_wrap else "ellipsis",
                     min_width=max((len(str(r.get(c) or "")) for r in rows), default=0) if c in no_wrap else None)
    for row in zip(*cells):
        t.add_row(*(Text(v) for v in row))
    console.print(t)


PLAIN_ROWS = 200


def _money_cell(value: Any) -> str:
    return "-" if value is None else usd(value, 4)


def _column(values: list[Any], money: bool) -> list[str]:
    """One column's cells as text, exactly as `fmt` (or `usd(v, 4)` for money) writes each: the
    common types take a comprehension without a call per cell (a year's subscription usage is
    ~40,000 cells; ~0.9 -> ~0.3 µs a cell)."""
    if money:
        return [_money_cell(v) for v in values]
    kinds = {type(v) for v in values} - {type(None)}
    if kinds == {int}:
        return ["-" if v is None else f"{v:,}" for v in values]
    text = ["-" if v is None else v for v in values] if kinds == {str} else [fmt(v) for v in values]
    return [v if v.isprintable() else escaped(v) for v in text]


def escaped(text: str) -> str:
    """Control characters (ESC, CR, newlines, C1...) as \\xNN: ledger values are client-supplied
    (user names, models), and a table must never carry terminal escape sequences."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


def _cells(rows: Sequence[dict[str, Any]], columns: Sequence[str], money: Sequence[str]) -> list[list[str]]:
    """Every cell as text, a list per column (one formatter per column, not per cell)."""
    return [_column([r.get(c) for r in rows], c in money) for c in columns]


def _width() -> int:
    """Columns available: the terminal's, or PIPED_WIDTH when piped (what the rich console uses)."""
    if not sys.stdout.isatty():
        return PIPED_WIDTH
    import shutil

    return shutil.get_terminal_size().columns


def box_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str], cells: list[list[str]],
              no_wrap: Sequence[str] = ()) -> bool:
    """Draw the table as rich's default (heavy head box, a space of padding, numbers right-aligned)
    from `cells` (a list per column of printable ASCII: one character, one column). Too wide for a
    terminal, long text columns (over CUT_FROM) are cut with "…", widest first, as rich's
    `overflow="ellipsis"` does (numbers and `no_wrap` columns never); returns False, drawing
    nothing, when even that does not fit (or, piped, when the table is wider than PIPED_WIDTH:
    scripts get whole values)."""
    heads = list(columns)
    widths = [max([len(h), *map(len, col)]) for h, col in zip(heads, cells)]
    right = [bool(rows) and isinstance(rows[0].get(c), int | float) for c in columns]
    total = sum(widths) + 3 * len(widths) + 1
    if total > _width():
        # cut only long text (names, models, notes): short columns (times, providers, statuses) stay whole
        fitted = _fit(widths, [not r and c not in no_wrap and w > CUT_FROM for c, r, w in zip(columns, right, widths)],
                      total - _width()) if sys.stdout.isatty() else None
        if fitted is None:
            return False
        widths, total = fitted, _width()
        heads = [_cut(h, w) for h, w in zip(heads, widths)]
        cells = [[_cut(v, w) for v in col] for col, w in zip(cells, widths)]

    def line(values: Sequence[str], edge: str, sep: str, bold: bool = False) -> str:
        parts = [(v.rjust(w) if r else v.ljust(w)) for v, w, r in zip(values, widths, right)]
        if bold:
            parts = [f"\x1b[1m{p}\x1b[0m" for p in parts]
        return edge + sep.join(f" {p} " for p in parts) + edge

    def rule(left: str, fill: str, mid: str, end: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + end

    tty = sys.stdout.isatty()
    out = []
    if title:
        out.append(f"\x1b[3m{title.center(total).rstrip()}\x1b[0m" if tty else title.center(total).rstrip())
    out += [rule("┏", "━", "┳", "┓"), line(heads, "┃", "┃", bold=tty), rule("┡", "━", "╇", "┩")]
    out += [line(row, "│", "│") for row in zip(*cells)]
    out.append(rule("└", "─", "┴", "┘"))
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()
    return True


CUT_MIN = 12  # a cut column keeps at least this many characters (eleven and "…")
CUT_FROM = 24  # only columns wider than this are cut: a timestamp (20) or a status is never cut


def _fit(widths: list[int], cuttable: list[bool], excess: int) -> list[int] | None:
    """Widths `excess` columns narrower in all, taken from the widest cuttable column each time;
    None when the cuttable columns cannot give that much."""
    out = list(widths)
    for _ in range(excess):
        i = max((i for i, ok in enumerate(cuttable) if ok and out[i] > CUT_MIN), key=out.__getitem__, default=None)
        if i is None:
            return None
        out[i] -= 1
    return out


def _cut(v: str, w: int) -> str:
    return v if len(v) <= w else v[: w - 1] + "…"


def plain_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str], money: Sequence[str] = (),
                cells: list[list[str]] | None = None) -> None:
    """A long table as aligned text (numbers right-aligned), written straight to stdout. Padded a
    column at a time (one rjust or ljust per cell, no call per row)."""
    cells = _cells(rows, columns, money) if cells is None else cells
    padded = []
    for c, col in zip(columns, cells):
        w = max([len(c), *map(len, col)])
        pad = str.rjust if rows and isinstance(rows[0].get(c), int | float) or c in money else str.ljust
        padded.append([pad(c, w), "-" * w, *(pad(v, w) for v in col)])
    lines = ["  ".join(parts).rstrip() for parts in zip(*padded)]
    sys.stdout.write("\n".join([title, *lines]) + "\n")
    sys.stdout.flush()
