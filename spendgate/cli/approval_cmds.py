"""`spendgate request | approve | deny | requests | audit`: the way up from a budget cap, on paper.

While a gateway holds the ledger, every command goes through its authenticated admin API. The
person acting is established by their own spendgate token ($SPENDGATE_TOKEN, --token-file, or
~/.config/spendgate/token), never by the OS login name or $LOGNAME: deciding needs one. Without a
gateway, the same workflow code runs here against the file (the token is checked against the
token file next to it), with the policy given by --policy.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spendgate.budgets.windows import WINDOWS
from spendgate.cli.output import add_db_arg, add_json_arg, console, print_json, table
from spendgate.cli.source import SourceError, _gateway_call, default_db, default_policy
from spendgate.money import places_for, usd, usd_of
from spendgate.store.ledger import LedgerLocked, connect, migrate
from spendgate.store.sql import parse_time
from spendgate.workflow import audit

Call = Callable[[str, dict[str, Any], str], Any]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("request", help="ask for more budget: recorded, sent to approvers, audited")
    p.add_argument("--amount", required=True, help="USD to add to the budget")
    p.add_argument("--window", required=True, choices=WINDOWS)
    p.add_argument("--scope", help="budget to raise (default: user:<you>), e.g. user:alice@acme.com, workspace:core")
    p.add_argument("--reason", required=True, help="why (approvers and the audit trail see it)")
    _common(p)
    p.set_defaults(func=cmd_request)

    p = sub.add_parser("approve", help="approve a pending request: the grant applies at once")
    p.add_argument("id")
    p.add_argument("--amount", help="USD to grant (default: what was asked)")
    p.add_argument("--until", help="ISO 8601 expiry (default: the end of the current window)")
    p.add_argument("--note", help="a note for the audit trail")
    _common(p)
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser("deny", help="deny a pending request (the requester is told why)")
    p.add_argument("id")
    p.add_argument("--reason", required=True)
    _common(p)
    p.set_defaults(func=cmd_deny)

    p = sub.add_parser("requests", help="budget-increase requests and their decisions")
    p.add_argument("--status", choices=["pending", "approved", "auto_approved", "denied", "all"], default="all")
    _common(p)
    p.set_defaults(func=cmd_requests)

    p = sub.add_parser("audit", help="the append-only audit trail: requests, decisions, grants, alerts, policy loads")
    p.add_argument("--since", help="only entries at or after this ISO 8601 time")
    _common(p)
    p.set_defaults(func=cmd_audit)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", type=Path, help="policy for offline decisions, when no gateway runs (default: the example)")
    p.add_argument("--token-file", type=Path, help="file holding your spendgate token (default: $SPENDGATE_TOKEN, "
                                                   "else ~/.config/spendgate/token)")
    add_db_arg(p)
    add_json_arg(p)


DEFAULT_TOKEN_FILE = Path("~/.config/spendgate/token")


def personal_token(args: argparse.Namespace) -> str | None:
    """The caller's own spendgate token: --token-file, $SPENDGATE_TOKEN, ~/.config/spendgate/token."""
    path = getattr(args, "token_file", None)
    if path is None and os.environ.get("SPENDGATE_TOKEN", "").strip():
        return os.environ["SPENDGATE_TOKEN"].strip()
    path = (path or DEFAULT_TOKEN_FILE).expanduser()
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        if getattr(args, "token_file", None) is not None:
            raise SourceError(f"--token-file {path}: no such file") from None
        return None
    except OSError as e:
        raise SourceError(f"cannot read {path}: {e.strerror or e}") from None


# -- where the work happens: the running gateway, or the file here --
def _gateway(db: Path, token: str | None = None) -> Call:
    gw = _gateway_call(db, token)
    if gw is None:
        raise SourceError(f"{db} is locked by another process and no gateway discovery file was found")
    return gw[0]


@contextmanager
def _offline_workflow(db: Path, policy_path: Path) -> Iterator[Any]:
    """A Workflow over the file (no gateway): same rules, notices delivered before we exit."""
    from spendgate.budgets.book import BudgetBook
    from spendgate.budgets.recovery import rebuild_counters
    from spendgate.policy.model import PolicyError, load
    from spendgate.workflow.service import Workflow

    try:
        policy = load(policy_path)
    except PolicyError as e:
        raise SourceError(f"invalid policy:\n{e}") from None
    con = connect(db)
    try:
        migrate(con)
        book = BudgetBook(policy)
        rebuild_counters(con, book, datetime.now(UTC))
        wf = Workflow(policy, book, con.cursor, housekeeping_interval=0)
        try:
            yield wf
        finally:
            if not wf.dispatcher.flush(30):
                console.print("spendgate: some notifications are still failing; recorded as failed", style="yellow")
            wf.close(grace=0)
    finally:
        con.close()


def _write(args: argparse.Namespace, action: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run request/approve/deny as the person the token names, on the gateway if one holds the file."""
    from spendgate.workflow.approvals import ApprovalError

    db = args.db or default_db()
    token = personal_token(args)
    if action in ("approve", "deny") and not token:
        raise ApprovalError("deciding needs your own spendgate token (the OS login name proves nothing): ask an "
                            "admin to run `spendgate tokens issue YOU`, then set SPENDGATE_TOKEN or pass --token-file")
    if not db.exists():
        raise SourceError(f"no ledger at {db} (start the gateway with scripts/run, or pass --db)")
    try:
        con = connect(db)
    except LedgerLocked:
        return _gateway(db, token)(action, params, "POST")
    con.close()
    from spendgate.identity import (
        os_account,  # here: identity and tokens import the policy model (~100 ms)
    )
    from spendgate.tokens import TokenStore, tokens_path

    actor = os_account()  # offline, without a token: whoever may write the ledger file asks as their account
    if token:
        actor = TokenStore(tokens_path(db)).verify(token) or ""
        if not actor:
            raise ApprovalError(f"your spendgate token is not valid here (revoked, expired, or not issued for {db})")
    with _offline_workflow(db, args.policy or default_policy()) as wf:
        a = wf.approvals
        if action == "request":
            return a.request(actor, params["scope"] or f"user:{actor}", params["window"], params["amount"],
                             params["reason"])
        if action == "approve":
            return a.approve(params["id"], actor, params.get("amount"), params.get("until"), params.get("note"))
        return a.deny(params["id"], actor, params["reason"])


def _read(args: argparse.Namespace, name: str, params: dict[str, Any], local: Callable[[Any], Any]) -> Any:
    if getattr(args, "store", None):  # the tables every replica shares, read in PostgreSQL itself
        return _read_store(args.store, local)
    db = args.db or default_db()
    if not db.exists():
        raise SourceError(f"no ledger at {db} (start the gateway with scripts/run, or pass --db)")
    try:
        con = connect(db, read_only=True)
    except LedgerLocked:
        token = personal_token(args) if name == "requests" else None  # approvers: what they may decide
        return _gateway(db, token)(name, {k: v for k, v in params.items() if v is not None}, "GET")
    try:
        return local(con)
    except Exception as e:  # a ledger older than the audit tables
        if "does not exist" in str(e):
            return []
        raise
    finally:
        con.close()


def _read_store(url: str, local: Callable[[Any], Any]) -> Any:
    from spendgate.cli.source import open_checked_store
    from spendgate.store.pg_read import ReadCursor
    from spendgate.store.postgres import StoreError

    store = open_checked_store(url)
    try:
        return local(ReadCursor(store))
    except StoreError as e:
        raise SourceError(str(e)) from None
    finally:
        store.close()


def _refusal(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Refusals (not an approver, already decided, bad amount) exit 1 with the reason on stderr."""

    def run(args: argparse.Namespace) -> int:
        from spendgate.workflow.approvals import (
            ApprovalError,  # imported here: `audit` need not load budgets
        )

        try:
            return fn(args)
        except ApprovalError as e:
            print(f"spendgate: {e}", file=sys.stderr)
            return 1
        except SourceError as e:
            if str(e).startswith("gateway answered 4"):
                print(f"spendgate: {str(e).split(': ', 1)[-1]}", file=sys.stderr)
                return 1
            raise

    return run


def _say(args: argparse.Namespace, req: dict[str, Any], lead: str) -> None:
    if args.json:
        print_json(req)
        return
    console.print(lead, highlight=False)


# -- commands --
@_refusal
def cmd_request(args: argparse.Namespace) -> int:
    req = _write(args, "request", {"scope": args.scope, "window": args.window, "amount": args.amount,
                                   "reason": args.reason})
    rid, amount = req["id"], req["amount_usd"]
    if req["status"] == "pending":
        p = places_for(req["limit_usd"])
        lead = (f"request {rid}: +{usd(amount, p)} on the {req['window']} budget of {req['scope']} is pending "
                f"(spent so far {usd_of(req['spent_usd'] or 0, req['limit_usd'])}). ")
        approvers = req.get("approvers")
        if approvers == []:  # said plainly: it would wait for ever
            lead += ("Nobody can decide it: the policy names no approvers or owners for this scope (`approvals:`, "
                     "`owners:`); ask whoever edits the policy to add them.")
        else:
            lead += (f"Notified: {', '.join(approvers)}; " if approvers else "Approvers have been notified; ") + (
                f"one of them runs: spendgate approve {rid}")
    else:
        lead = (f"request {rid}: {req['status'].replace('_', ' ')} by {req['decided_by']}: +{usd(req['granted_usd'])} "
                f"until {req['until']}; it applies now")
    _say(args, req, lead)
    return 0


@_refusal
def cmd_approve(args: argparse.Namespace) -> int:
    req = _write(args, "approve", {"id": args.id, "amount": args.amount, "until": args.until, "note": args.note})
    _say(args, req, f"request {req['id']} approved: +{usd(req['granted_usd'])} on the {req['window']} budget of "
                    f"{req['scope']} until {req['until']}; it applies now")
    return 0


@_refusal
def cmd_deny(args: argparse.Namespace) -> int:
    req = _write(args, "deny", {"id": args.id, "reason": args.reason})
    _say(args, req, f"request {req['id']} denied; {req['requester']} is told why")
    return 0


def cmd_requests(args: argparse.Namespace) -> int:
    status = None if args.status == "all" else args.status
    from spendgate.workflow.approvals import list_requests

    rows = _read(args, "requests", {"status": status}, lambda con: list_requests(con, status))
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        r["ts"] = (r["ts"] or "")[:16].replace("T", " ")
    cols = ["id", "ts", "requester", "scope", "window", "amount_usd", "status", "decided_by", "granted_usd", "until",
            "reason"]
    if any("can_decide" in r for r in rows):  # through the gateway: what the caller's token may decide
        cols.insert(7, "can_decide")
    table(f"Budget-increase requests ({args.status})", rows, cols, money=["amount_usd", "granted_usd"])
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    since = parse_time(args.since) if args.since else None
    rows = _read(args, "audit", {"since": args.since}, lambda con: audit.rows(con, since))
    if args.json:
        print_json(rows)
        return 0
    view = [{"seq": r["seq"], "ts": r["ts"][:19].replace("T", " "), "event": r["event"], "actor": r["actor"],
             "scope": r["scope"], "ref": r["ref"], "what": audit.summary(r)} for r in rows]
    table("Audit trail", view, ["seq", "ts", "event", "actor", "scope", "ref", "what"])
    return 0
