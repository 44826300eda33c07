"""`spendgate ledger` and `spendgate spend`: what was spent, row by row or grouped."""

from __future__ import annotations

import argparse
import os
import sys
from decimal import Decimal
from pathlib import Path

from spendgate.cli.output import (
    TERMINAL_ROWS,
    add_db_arg,
    add_json_arg,
    print_json,
    say,
    source,
    table,
)
from spendgate.money import to_decimal, usd
from spendgate.reports.queries import GROUPS, WINDOWS
from spendgate.telemetry import links


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ledger", help="the latest metered requests, newest first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--user", help="only this user's rows")
    p.add_argument("--trace-url", default=None, metavar="TEMPLATE",
                   help="link each row to its trace: an http(s) URL with {trace_id}, {trace_uuid} or {span_id} "
                        f"(default: ${links.ENV}, else the running gateway's spendgate_trace_url)")
    add_db_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_ledger)

    p = sub.add_parser("spend", help="spend grouped by user, key, model, provider, client or workspace")
    p.add_argument("--by", choices=sorted(GROUPS), default="user")
    p.add_argument("--window", choices=WINDOWS, help="only the current hour/day/week/month (UTC)")
    p.add_argument("--since", help="only rows at or after this ISO 8601 time")
    p.add_argument("--user", help="only this user's rows")
    p.add_argument("--policy", type=Path, help="policy with seat plans, when no gateway runs (default: the example)")
    p.add_argument("--all", action="store_true",
                   help=f"in a terminal, print every row (default: the top {TERMINAL_ROWS} by cost; pipes get all)")
    add_db_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_spend)


def cmd_ledger(args: argparse.Namespace) -> int:
    template = args.trace_url if args.trace_url is not None else os.environ.get(links.ENV) or None
    if template:
        try:
            links.check_template(template)
        except links.TemplateError as e:
            print(f"spendgate: {e}", file=sys.stderr)
            return 2
    rows = source(args).query("ledger", limit=args.limit, user=args.user, trace_url=template)
    if args.json:
        print_json(rows)
        return 0
    cols = ["ts", "user", "client", "provider", "model", "outcome", "billing_basis", "input_tokens", "output_tokens",
            "cost_usd", "notional_usd"]
    for r in rows:
        r["ts"] = r["ts"][:19].replace("T", " ")
        if r.get("billing_basis") != "subscription":
            r["notional_usd"] = None
        r["trace"] = r.get("trace_url") or r.get("trace_id")  # a link when a template is known, else the id
    if any(r["trace"] for r in rows):
        cols.append("trace")
    table(f"Latest {len(rows)} requests (cost_usd: invoiced per token; notional_usd: subscription usage at list price)",
          rows, cols, money=["cost_usd", "notional_usd"], no_wrap=["trace"])
    return 0


def cmd_spend(args: argparse.Namespace) -> int:
    rows = source(args).query("spend", by=args.by, window=args.window, since=args.since, user=args.user)
    if args.json:
        print_json(rows)
        return 0
    scope = f"this {args.window}" if args.window else (f"since {args.since}" if args.since else "all time")
    cols = ["group", "requests", "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "api_usd",
            "subscription_requests", "subscription_notional_usd"]
    shown = [{**r, "api_usd": r["cost_usd"], "subscription_notional_usd": r["notional_usd"]} for r in rows]
    table(f"Spend by {args.by}, {scope}", shown, cols, money=["api_usd", "subscription_notional_usd"],
          top=not getattr(args, "all", False))  # a terminal shows the top rows by cost; the totals below count every row
    api = sum((to_decimal(r["cost_usd"] or 0) for r in rows), Decimal(0))
    subs = sum((to_decimal(r["notional_usd"] or 0) for r in rows), Decimal(0))
    n_subs = sum(r["subscription_requests"] for r in rows)
    say(f"API spend (invoiced per token): {usd(api, 4)} over {sum(r['requests'] for r in rows) - n_subs:,} requests",
        bold=True)
    if n_subs:
        say(f"Subscription usage (sign-in traffic covered by seats, not invoiced; not included above): "
            f"{usd(subs, 4)} notional at list price over {n_subs:,} requests")
    if blocked := sum(r.get("blocked") or 0 for r in rows):  # a request refused at a cap is a row too
        say(f"{blocked:,} of these requests were refused by the gateway (never sent to a provider, $0)")
    if args.by in ("user", "workspace") and not args.user:
        from spendgate.cli import (
            reconcile_cmds,  # policy, plans, billing: only this view needs them
        )

        reconcile_cmds.print_spend_extras(args, rows)  # seat plans, opaque clients, billed vs metered
    return 0
