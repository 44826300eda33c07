"""`spendgate outbox`: a laptop gateway's rows waiting for the centre; `spendgate laptops`: the
laptops a centre knows, and the silent ones (docs/scale-out.md, Laptops).

    spendgate outbox [--db FILE] [--json]
    spendgate laptops [--silent] [--silent-after HOURS] [--db FILE] [--json]

Reads the ledger file, or asks the running gateway that holds it. Pending rows are pushed by the
gateway itself; rejected rows keep the centre's reason and are offered again at the next start.
"""

from __future__ import annotations

import argparse

from spendgate.cli.output import add_db_arg, add_json_arg, print_json, source, table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("outbox", help="a laptop's rows not yet acknowledged by the centre, and those it rejected")
    add_db_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_outbox)
    p = sub.add_parser("laptops", help="a centre's laptops: last contact and push, and which went silent")
    p.add_argument("--silent", action="store_true", help="only the laptops silent for --silent-after hours")
    p.add_argument("--silent-after", type=float, default=72.0, metavar="HOURS",
                   help="hours without a lease or push that make a laptop silent (default 72)")
    add_db_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_laptops)


def cmd_outbox(args: argparse.Namespace) -> int:
    got = source(args).query("outbox")
    if args.json:
        print_json(got)
        return 0
    print(f"pending: {got['pending_rows']} rows (${got['pending_usd']:.4f}), oldest {got['oldest_pending'] or '-'}; "
          f"landed: {got['landed_rows']}; rejected: {got['rejected_rows']}; admitted offline: {got['offline_rows']}")
    if got["rejected"]:
        table("Rejected by the centre (offered again at the next start)", got["rejected"],
              ["pushed_at", "request_id", "error"])
    return 0


def cmd_laptops(args: argparse.Namespace) -> int:
    """Exit 0; 1 when --silent found silent laptops (for scripts and monitoring)."""
    got = source(args).query("laptops", silent_hours=args.silent_after, silent="1" if args.silent else None)
    if args.json:
        print_json(got)
    else:
        silent = sum(1 for r in got if r["silent"])
        table(f"Laptops ({len(got)}; silent for {args.silent_after:g} hours or more: {silent})", got,
              ["user", "origin", "last_seen", "last_push", "silent_hours", "silent"])
    return 1 if args.silent and got else 0
