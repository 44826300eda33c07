"""`spendgate outbox`: a laptop gateway's rows waiting for the centre (docs/scale-out.md, Laptops).

    spendgate outbox [--db FILE] [--json]

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
