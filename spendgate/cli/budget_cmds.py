"""`spendgate policy check`, `spendgate fingerprint` and `spendgate budgets`."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import sys
from datetime import UTC, datetime
from pathlib import Path

from spendgate import resources
from spendgate.budgets.book import BudgetBook
from spendgate.budgets.recovery import rebuild_counters
from spendgate.budgets.runway import check_targets, step_downs_in_force, unmatched_globs
from spendgate.cli.output import (
    add_db_arg,
    add_json_arg,
    console,
    print_json,
    source,
    table,
)
from spendgate.cli.source import SourceError, default_db, default_policy
from spendgate.identity import fingerprint
from spendgate.policy.model import PolicyError, load, positioned
from spendgate.pricing.rates import Pricer
from spendgate.store.ledger import connect
from spendgate.workflow.approvals import attach_grants


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="work with policy files")
    psub = p.add_subparsers(dest="policy_command", required=True)
    c = psub.add_parser("check", help="validate a policy: FILE:LINE:COL: message per problem; exit 1 if any")
    c.add_argument("file", type=Path)
    c.set_defaults(func=cmd_check)

    p = sub.add_parser("fingerprint", help="read an API key from stdin, print its fingerprint (never pass keys as arguments)")
    p.set_defaults(func=cmd_fingerprint)

    p = sub.add_parser("budgets", help="every active budget: limit, spent, reserved, remaining, reset")
    p.add_argument("--policy", type=Path, help="policy to evaluate when no gateway runs (default: the example)")
    add_db_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_budgets)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        policy = load(args.file)
    except PolicyError as e:
        for prob in e.problems:
            print(prob.render(str(args.file)))
        return 1
    pricer = Pricer(_default_overrides())
    problems = positioned(policy, check_targets(policy, pricer, datetime.now(UTC)))
    for prob in problems:
        print(prob.render(str(args.file)))
    if problems:
        return 1
    unmatched = [dataclasses.replace(p, warning=True) for p in positioned(policy, unmatched_globs(policy, pricer))]
    for w in [*policy.warnings, *unmatched]:
        print(w.render(str(args.file)))
    print(subscription_summary(policy))
    console.print(f"{args.file}: ok", style="green", highlight=False)
    return 0


SUBSCRIPTION_MODES = {
    "count": "charged at its notional (list-price) value to the same budgets as API spend",
    "ignore": "recorded and reported, never charged to or blocked by any budget",
    "separate": "charged at its notional (list-price) value to subscription_budgets only, never to API budgets",
}


def subscription_summary(policy) -> str:
    """How the policy treats subscription usage, said even when it relies on the default."""
    mode = policy.subscription_usage
    how = "" if policy.subscription_usage_explicit else " (the default; set subscription_usage to choose)"
    line = (f"subscription_usage: {mode}{how}: sign-in traffic covered by a seat (Claude plan OAuth, ChatGPT "
            f"login, Copilot, Gemini CLI Google login) is {SUBSCRIPTION_MODES[mode]}")
    if mode == "separate":
        sb = policy.subscription_budgets
        parts = [f"{name} {dict((w, float(v)) for w, v in b.items())}" for name, b in
                 (("organization", sb.organization), ("user", sb.user)) if b]
        parts += [f"plan {p} {dict((w, float(v)) for w, v in b.items())}" for p, b in sb.plans.items()]
        line += "; limits (notional USD): " + ("; ".join(parts) or "none")
    return line


def cmd_fingerprint(args: argparse.Namespace) -> int:
    key = getpass.getpass("API key: ", stream=sys.stderr) if sys.stdin.isatty() else sys.stdin.readline()
    key = key.strip()
    if not key:
        print("spendgate: no key on stdin", file=sys.stderr)
        return 2
    print(fingerprint(key))
    return 0


def offline_status(db: Path, policy_path: Path) -> list[dict]:
    """Budget status computed from the ledger file and a policy, when no gateway holds the file."""
    book = BudgetBook(load(policy_path))
    if db.exists():
        con = connect(db, read_only=True)
        rebuild_counters(con, book, datetime.now(UTC))
        attach_grants(book, con)  # approved increases (spendgate approve) count in the limits
        con.close()
    return book.status()


def store_status(url: str, policy_path: Path) -> list[dict]:
    """Budget status from the counters and grants shared by gateway replicas (PostgreSQL)."""
    from spendgate.budgets.shared import open_counters
    from spendgate.store.postgres import StoreError
    from spendgate.workflow.approvals import GrantBook, Grant, _utc

    try:
        counters = open_counters(url, timeout=5)
        try:
            book = BudgetBook(load(policy_path), counters)
            grants = GrantBook()
            for g in counters.pg.active_grants():
                grants.add(Grant(g["id"], g["request_id"], g["scope"], g["window"], g["amount"], _utc(g["starts"]),
                                 _utc(g["until"]), g["granted_by"]), share=False)
            book.grants, book.granted_scopes = grants.total, grants.scopes
            return book.status()
        finally:
            counters.pg.close()
    except StoreError as e:
        raise SourceError(str(e)) from None


def cmd_budgets(args: argparse.Namespace) -> int:
    db = args.db or default_db()
    rows = None
    src = None
    if args.store:
        try:
            rows = store_status(args.store, args.policy or default_policy())
        except PolicyError as e:
            raise SourceError(f"invalid policy:\n{e}") from None
    else:
        try:
            src = source(args)
            rows = src.query("budgets") if src.where.startswith("gateway") else None
        except SourceError:
            rows = None
    if rows is None:
        try:
            rows = offline_status(db, args.policy or default_policy())
        except PolicyError as e:
            raise SourceError(f"invalid policy:\n{e}") from None
    if args.json:
        print_json(rows)
        return 0
    cols = ["scope", "window", "limit_usd", "granted_usd", "spent_usd", "reserved_usd", "remaining_usd", "resets_at",
            "until"]
    table("Budgets", rows, cols, money=["limit_usd", "granted_usd", "spent_usd", "reserved_usd", "remaining_usd"])
    state = None
    if src is not None and src.where.startswith("gateway"):  # it knows its live rate-limit buckets
        try:
            state = src.query("runway")
        except SourceError:
            state = None
    if state is None:
        try:
            state = {"step_downs": step_downs_in_force(load(args.policy or default_policy()), rows), "rate_limits": []}
        except PolicyError:
            state = {"step_downs": [], "rate_limits": []}
    if state["step_downs"]:
        table("Step-downs in force", state["step_downs"], ["scope", "window", "rule", "models", "used_percent", "until"])
    if state["rate_limits"]:
        table("Rate limits", state["rate_limits"], ["scope", "kind", "limit", "remaining"])
    return 0


def _default_overrides() -> Path | None:
    """The price overrides a gateway started without options uses (targets are checked against them)."""
    path = resources.pricing_dir() / "overrides.yaml"
    return path if path.exists() else None
