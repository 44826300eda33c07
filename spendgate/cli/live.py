"""`spendgate top` (live terminal view), `spendgate export` (finance files), `spendgate dashboard` (its URL).

All three go through `Source`: the ledger file when nobody holds it, else the running gateway's
admin API, so `top` stays live while traffic flows and `export` never needs the gateway stopped.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
import webbrowser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from spendgate import fsutil
from spendgate.cli.output import add_db_arg, console, escaped, source
from spendgate.cli.source import Source, SourceError, default_db
from spendgate.identity import local_user
from spendgate.money import usd
from spendgate.reports import dashboard
from spendgate.reports import queries as reports
from spendgate.store.engine import duckdb
from spendgate.store.sql import parse_time
from spendgate.web.server import discovery_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("top", help="live view of spend: totals, breakdowns, budgets near their cap, latest requests")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--window", choices=reports.WINDOWS, default="day", help="window of the breakdowns (default day)")
    p.add_argument("--once", action="store_true", help="print one frame and exit (scripts, tests, CI logs)")
    p.add_argument("--policy", type=Path, help="policy for budgets when no gateway runs (default: the example)")
    add_db_arg(p)
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("export", help="ledger rows as Parquet or CSV for finance (through the gateway if it runs)")
    p.add_argument("--format", choices=dashboard.EXPORT_FORMATS, default="parquet")
    p.add_argument("--since", help="rows at or after this ISO 8601 time (UTC unless it says otherwise)")
    p.add_argument("--until", help="rows before this ISO 8601 time")
    p.add_argument("--user", help="only this user's rows")
    p.add_argument("--out", type=Path, help="output file (default spendgate-export-<time>.<format>; - for stdout)")
    add_db_arg(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("dashboard", help="print (or open) the running gateway's dashboard URL, signed in as admin")
    p.add_argument("--open", action="store_true", help="open it in the default browser")
    add_db_arg(p)
    p.set_defaults(func=cmd_dashboard)


# -- top --------------------------------------------------------------------------------------


def money(v: float | None) -> str:
    return "-" if v is None else usd(v)  # the one rounding rule (spendgate/money.py)


def spark(values: list[float]) -> str:
    """A one-line bar chart (▁..█) of the last hour, per minute."""
    bars = "▁▂▃▄▅▆▇█"
    top = max(values, default=0)
    return "".join(bars[min(7, int(v / top * 7.999))] if top > 0 else bars[0] for v in values)


def _table(title: str, rows: list[dict[str, Any]], cols: list[tuple[str, str]], empty: str, n: int = 8) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold", expand=True, pad_edge=False, show_edge=False)
    for key, head in cols:
        t.add_column(head, justify="right" if key in NUMERIC else "left", overflow="ellipsis", no_wrap=True)
    for r in rows[:n]:
        t.add_row(*(_cell(key, r.get(key)) for key, _ in cols))
    if not rows:
        t.add_row(Text(empty, style="dim italic"), *[""] * (len(cols) - 1))
    return t


NUMERIC = {"cost_usd", "requests", "limit_usd", "spent_usd", "used", "charged_usd", "input_tokens", "output_tokens",
           "notional_usd"}


def _cell(key: str, v: Any) -> RenderableType:
    if key in ("cost_usd", "limit_usd", "spent_usd", "charged_usd", "notional_usd"):
        return money(v)
    if key == "used":
        style = "red" if v >= 0.95 else "yellow" if v >= 0.8 else "green"
        return Text(f"{v * 100:.1f}%", style=style)
    if key == "ts" or key == "last_seen":
        return str(v or "")[11:19]
    if key == "outcome":
        return Text(str(v), style={"ok": "green", "blocked": "red", "unpriced": "yellow"}.get(v, "yellow"))
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    # client-supplied text (models, user names, reasons): never rich markup, never terminal escapes
    return Text("-" if v is None else escaped(str(v)))


def frame(o: dict[str, Any], budgets: list[dict[str, Any]], where: str) -> RenderableType:
    """One screen of `spendgate top` from an overview and the budget status."""
    t = o["totals"]
    head = Table.grid(expand=True)
    for _ in range(4):
        head.add_column(justify="center")
    head.add_row(*(Text.assemble((label + " · API spend\n", "dim"), (money(t[w]["cost_usd"]), "bold cyan"),
                                 (f"\n{t[w]['requests'] - t[w].get('subscription_requests', 0):,} API requests" + (f", {t[w]['blocked']} blocked" if t[w]["blocked"] else ""), "dim"),  # noqa: E501
                                 (f"\nsubscription {money(t[w].get('notional_usd'))} notional, {t[w]['subscription_requests']:,} requests" if t[w].get("subscription_requests") else "", "magenta"))  # noqa: E501
                   for w, label in (("hour", "this hour"), ("day", "today"), ("week", "this week"), ("month", "this month"))))  # fmt: skip
    minutes = [p["cost_usd"] for p in o["series"]["minute"]]
    trend = Text.assemble(("last hour, per minute  ", "dim"), (spark(minutes), "cyan"))
    cols = [("group", "name"), ("cost_usd", "API"), ("notional_usd", "subs (notional)"), ("requests", "requests")]
    b = o["breakdowns"]
    breakdowns = Columns(
        [_table(f"by {k}", b[k], cols, "no spend", 6) for k in ("workspace", "user", "model", "client")],
        equal=True, expand=True,
    )  # fmt: skip
    near = _table("budgets closest to their cap", dashboard.closest_to_cap(budgets, 6),
                  [("scope", "scope"), ("window", "window"), ("spent_usd", "spent"), ("limit_usd", "limit"),
                   ("used", "used")], "no budgets")  # fmt: skip
    latest = _table("latest requests", o["latest"],
                    [("ts", "time"), ("user", "user"), ("client", "client"), ("model", "model"),
                     ("outcome", "outcome"), ("billing_basis", "basis"), ("cost_usd", "API cost"),
                     ("notional_usd", "notional")], "no requests yet", 8)  # fmt: skip
    blocks = _table("blocks", o["blocks"], [("ts", "time"), ("user", "user"), ("reason", "reason")], "none", 5)
    unpriced = _table("unpriced models", o["unpriced"],
                      [("model", "model"), ("requests", "requests"), ("charged_usd", "charged")], "none", 5)  # fmt: skip
    subs = _table("subscription usage by plan and user (notional: list price, covered by seats, not invoiced)",
                  o.get("subscriptions") or [], [("plan", "plan"), ("user", "user"), ("requests", "requests"),
                                                 ("notional_usd", "notional")], "none", 5)  # fmt: skip
    body = Group(head, trend, Text(""), breakdowns, Text(""), Columns([near, latest], equal=True, expand=True),
                 Text(""), Columns([blocks, unpriced, subs], equal=True, expand=True))  # fmt: skip
    stamp = o["generated_at"][11:19]
    return Panel(body, title=f"[bold]spendgate top[/] · breakdowns for this {o['window']}",
                 subtitle=f"{where} · {stamp} UTC · Ctrl-C to quit", border_style="blue")  # fmt: skip


def _budgets(src: Source, args: argparse.Namespace) -> list[dict[str, Any]]:
    if src.where.startswith("gateway"):
        return src.query("budgets")
    from spendgate.cli.budget_cmds import default_policy, offline_status, store_status
    from spendgate.policy.model import PolicyError

    try:
        if getattr(args, "store", None):  # the counters every replica shares, not a local file's
            return store_status(args.store, args.policy or default_policy())
        return offline_status(args.db or default_db(), args.policy or default_policy())
    except PolicyError as e:  # said like `spendgate budgets` says it (FILE:LINE:COL), not a traceback
        raise SourceError(f"invalid policy:\n{e}") from None


def snapshot(src: Source, args: argparse.Namespace) -> RenderableType:
    return frame(src.query("overview", window=args.window), _budgets(src, args), src.where)


def cmd_top(args: argparse.Namespace) -> int:
    src = source(args)
    if args.once:
        Console(width=max(console.width, 140) if not sys.stdout.isatty() else None).print(snapshot(src, args))
        return 0
    with Live(snapshot(src, args), console=console, screen=True, auto_refresh=False) as live:
        while True:
            time.sleep(max(args.interval, 0.2))
            try:
                live.update(snapshot(src, args), refresh=True)
            except SourceError as e:  # the gateway restarted: say so and keep trying
                live.update(Panel(Text(str(e), style="red"), title="spendgate top"), refresh=True)
                try:
                    src = source(args)
                except SourceError:
                    pass


# -- export -----------------------------------------------------------------------------------


def exported_rows(path: Path, fmt: str) -> int:
    """Rows in an export file, read with flat memory: Parquet's footer, or CSV records streamed
    (csv.reader: quoted newlines stay inside their record). DuckDB's read_csv would buffer ~200 MB."""
    if fmt == "parquet":
        return int(duckdb.connect().execute("SELECT coalesce(sum(num_rows), 0) FROM parquet_file_metadata(?)",
                                            [str(path)]).fetchone()[0])
    import csv

    with open(path, newline="") as f:
        return max(sum(1 for _ in csv.reader(f)) - 1, 0)  # minus the header


def cmd_export(args: argparse.Namespace) -> int:
    for v in (args.since, args.until):
        try:
            if v:
                parse_time(v)  # fail here with a clear message, not on the gateway
        except ValueError:
            print(f"spendgate: {v!r} is not an ISO 8601 time (e.g. 2026-03-01 or 2026-03-01T12:00Z)", file=sys.stderr)
            return 2
    src = source(args)
    # streamed chunk by chunk (never the whole file in memory: a month can be hundreds of MB)
    chunks = src.download_chunks("export", format=args.format, since=args.since, until=args.until, user=args.user)
    if str(args.out) == "-":
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        return 0
    out = args.out or Path(dashboard.default_export_name(args.format))
    size = fsutil.write_atomic_chunks(out, chunks)  # 0600: an export is the ledger
    rows = exported_rows(out, args.format)
    print(f"wrote {rows:,} rows to {out} ({args.format}, {size:,} bytes, from {src.where})", file=sys.stderr)
    return 0


# -- dashboard --------------------------------------------------------------------------------


def cmd_dashboard(args: argparse.Namespace) -> int:
    disc = discovery_path(args.db or default_db())
    try:
        info = json.loads(disc.read_text())
    except (OSError, ValueError):
        raise SourceError(f"no running gateway found ({disc} is missing); start one with scripts/run") from None
    where = urlsplit(info["url"])
    try:  # a gateway killed with -9 leaves its file: a URL and token that lead nowhere
        socket.create_connection((where.hostname, where.port), timeout=2).close()
    except OSError as e:
        raise SourceError(f"the gateway at {info['url']} does not answer ({e}); start it with scripts/run "
                          f"(if it is gone for good, remove {disc})") from None
    url = f"{info['url']}/#token={info['token']}&name={quote(local_user())}"
    if args.open:
        webbrowser.open(url)
    print(url)
    print("The token after # stays in the browser: the page trades it for a session cookie and removes it.",
          file=sys.stderr)  # fmt: skip
    return 0
