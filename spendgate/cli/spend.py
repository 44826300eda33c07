"""`spendgate ledger` and `spendgate spend`: what was spent, row by row or grouped."""

from __future__ import annotations

import argparse
from pathlib import Path

from spendgate.cli import reconcile_cmds
from spendgate.cli.output import (
    add_db_arg,
    add_json_arg,
    console,
    print_json,
    source,
    table,
)
from spendgate.reports.queries import GROUPS, WINDOWS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ledger", help="the latest metered requests, newest first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--user", help="only this user's rows")
    add_db_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_ledger)

    p = sub.add_parser("spend", help="spend grouped by user, key, model, provider, client or workspace")
    p.add_argument("--by", choices=sorted(GROUPS), default="user")
    p.add_argument("--window", choices=WINDOWS, help="only the current hour/day/week/month (UTC)")
    p.add_argument("--since", help="only rows at or after this ISO 8601 time")
    p.add_argument("--user", help="only this user's rows")
    p.add_argument("--policy", type=Path, help="policy with seat plans, when no gateway runs (default: the example)")
    add_db_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_spend)


def cmd_ledger(args: argparse.Namespace) -> int:
    rows = source(args).query("ledger", limit=args.limit, user=args.user)
    if args.json:
        print_json(rows)
        return 0
    cols = ["ts", "user", "client", "provider", "model", "outcome", "input_tokens", "output_tokens", "cost_usd"]
    for r in rows:
        r["ts"] = r["ts"][:19].replace("T", " ")
    table(f"Latest {len(rows)} requests", rows, cols, money=["cost_usd"])
    return 0


def cmd_spend(args: argparse.Namespace) -> int:
    rows = source(args).query("spend", by=args.by, window=args.window, since=args.since, user=args.user)
    if args.json:
        print_json(rows)
        return 0
    scope = f"this {args.window}" if args.window else (f"since {args.since}" if args.since else "all time")
    cols = ["group", "requests", "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "cost_usd"]
    table(f"Spend by {args.by}, {scope}", rows, cols, money=["cost_usd"])
    total = sum(r["cost_usd"] for r in rows)
    console.print(f"[bold]Total: ${total:,.4f}[/] over {sum(r['requests'] for r in rows):,} requests")
    if args.by in ("user", "workspace") and not args.user:
        reconcile_cmds.print_spend_extras(args, rows)  # seat plans, opaque clients, billed vs metered
    return 0
