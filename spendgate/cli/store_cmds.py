"""`spendgate store`: the PostgreSQL store shared by gateway replicas (see docs/scale-out.md).

    spendgate store migrate --store postgresql://spendgate@db/spendgate
    spendgate store status  --store ...      # schema version, open reservations, rows

The URL may carry a password; prefer SPENDGATE_STORE in the environment (or a ~/.pgpass file)
to keep it out of shell history. Messages never print the password.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from spendgate.store.postgres import SCHEMA_VERSION, PostgresStore, StoreError, redact


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="the PostgreSQL store shared by gateway replicas: migrate, status")
    ssub = p.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    for name, helptext, func in (
        ("migrate", "apply the store's schema migrations (idempotent; replicas refuse to start without)", cmd_migrate),
        ("status", "schema version, open reservations and ledger rows of the store", cmd_status),
    ):
        q = ssub.add_parser(name, help=helptext)
        q.add_argument("--store", default=os.environ.get("SPENDGATE_STORE", ""),
                       help="postgresql:// URL (default: $SPENDGATE_STORE)")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.set_defaults(func=func)


def _open(args: argparse.Namespace) -> PostgresStore | None:
    if not args.store.startswith(("postgresql://", "postgres://")):
        print("spendgate: --store postgresql://... (or SPENDGATE_STORE) is required", file=sys.stderr)
        return None
    try:
        return PostgresStore(args.store, timeout=5).open()
    except StoreError as e:
        print(f"spendgate: {e}", file=sys.stderr)
        return None


def cmd_migrate(args: argparse.Namespace) -> int:
    store = _open(args)
    if store is None:
        return 2
    try:
        before, after = store.migrate()
    except StoreError as e:
        print(f"spendgate: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.json:
        print(json.dumps({"store": redact(args.store), "from": before, "to": after}))
    elif before == after:
        print(f"{redact(args.store)}: schema version {after}, up to date")
    else:
        print(f"{redact(args.store)}: schema version {before} -> {after}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    store = _open(args)
    if store is None:
        return 2
    try:
        version = store.schema_version()
        out = {"store": redact(args.store), "schema_version": version, "expected": SCHEMA_VERSION}
        if version == SCHEMA_VERSION:
            res = store._run("SELECT count(*) FILTER (WHERE state = 'open'), count(DISTINCT owner) FILTER "
                             "(WHERE state = 'open' AND lease_expires > now()) FROM reservations", fetch="one")
            # from the month rollups (kept exact by a trigger): no scan of every ledger row
            rows = store._run("SELECT coalesce(sum(requests), 0)::BIGINT, coalesce(sum(charged_usd), 0) FROM rollup_month",
                              fetch="one")
            out.update(open_reservations=res[0], live_replicas_with_reservations=res[1], ledger_rows=rows[0],
                       charged_usd=float(rows[1]))
    except StoreError as e:
        print(f"spendgate: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:34} {v}")
    if version < SCHEMA_VERSION:  # what to do, not only the numbers (a new user's first run)
        print(f"spendgate: the store is at schema version {version}, this version needs {SCHEMA_VERSION}: run "
              f"`spendgate store migrate --store URL` (once, before the replicas start)", file=sys.stderr)
    elif version > SCHEMA_VERSION:
        print(f"spendgate: the store is at schema version {version}, newer than this version's {SCHEMA_VERSION}: "
              "upgrade spendgate here", file=sys.stderr)
    return 0 if version == SCHEMA_VERSION else 1
