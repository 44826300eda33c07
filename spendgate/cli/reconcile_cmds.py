"""`spendgate reconcile import|fetch|report|plans|opaque`: spend that never passed the gateway.

Reads and writes go to the ledger file when no gateway holds it; otherwise to the gateway's admin
API: reports are answered there with the gateway's policy, and imports are parsed here (the CLI
reads the file) and POSTed as billing lines for the gateway's process to write. Nothing is ever
refused for lack of the file: whoever holds it does the writing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spendgate import reconcile, resources
from spendgate.cli.output import (
    add_db_arg,
    add_json_arg,
    console,
    print_json,
    say,
    table,
)
from spendgate.cli.source import (
    Source,
    SourceError,
    default_db,
    default_policy,
    open_source,
    read_connection,
)
from spendgate.money import usd
from spendgate.reconcile import formats, store
from spendgate.reconcile.report import BY
from spendgate.store.engine import duckdb
from spendgate.store.ledger import LedgerLocked, connect, migrate

if TYPE_CHECKING:  # the policy model loads only for the groupings and commands that read it
    from spendgate.policy.model import Policy

REPORT_COLS = ["metered_usd", "billed_usd", "delta_usd", "delta_pct", "metered_requests", "status"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconcile", help="compare metered spend with provider billing; seat plans; opaque clients")
    rsub = p.add_subparsers(dest="reconcile_command", required=True)

    c = rsub.add_parser("import", help="import a provider billing report (Admin API JSON or console CSV)")
    c.add_argument("file", type=Path)
    c.add_argument("--provider", required=True, choices=formats.PROVIDERS)
    c.add_argument("--pricing", type=Path, help="price overrides for usage reports (default pricing/overrides.yaml)")
    add_db_arg(c)
    add_json_arg(c)
    c.set_defaults(func=cmd_import)

    c = rsub.add_parser("fetch", help="fetch cost and usage reports with an admin key from the environment")
    c.add_argument("--provider", required=True, choices=formats.PROVIDERS)
    c.add_argument("--since", required=True, help="first UTC day (YYYY-MM-DD)")
    c.add_argument("--until", help="stop before this UTC day (default: now)")
    c.add_argument("--base-url", help="admin API base URL (default: the provider's; env SPENDGATE_<P>_ADMIN_URL)")
    c.add_argument("--pricing", type=Path, help="price overrides for usage reports")
    add_db_arg(c)
    add_json_arg(c)
    c.set_defaults(func=cmd_fetch)

    c = rsub.add_parser("report", help="metered vs billed per day/model/key/workspace, with deltas and flags")
    c.add_argument("--since", help="first UTC day")
    c.add_argument("--until", help="last UTC day (inclusive)")
    c.add_argument("--by", choices=BY, default="day")
    c.add_argument("--tolerance", type=float, default=2.0, help="percent of billed treated as a match (default 2)")
    c.add_argument("--policy", type=Path, help="policy mapping provider key/workspace ids (when no gateway runs)")
    c.add_argument("--strict", action="store_true", help="exit 1 when any row is flagged")
    c.add_argument("--all", action="store_true",
                   help="in a terminal, print every subscription row (default: the top 50 by notional USD)")
    add_db_arg(c)
    add_json_arg(c)
    c.set_defaults(func=cmd_report)

    c = rsub.add_parser("plans", help="seat plans prorated per day, per user, workspace or plan")
    c.add_argument("--since", help="first day (default: the first of this month)")
    c.add_argument("--until", help="last day (default: today)")
    c.add_argument("--by", choices=("user", "workspace", "plan"), default="user")
    c.add_argument("--policy", type=Path, help="policy with the plans (when no gateway runs)")
    add_db_arg(c)
    add_json_arg(c)
    c.set_defaults(func=cmd_plans)

    c = rsub.add_parser("opaque", help="undecrypted connections to opaque AI hosts: count, bytes, time")
    c.add_argument("--since", help="first UTC day")
    c.add_argument("--by", choices=("user", "host", "client", "workspace"), default="user")
    c.add_argument("--user", help="only this user")
    add_db_arg(c)
    add_json_arg(c)
    c.set_defaults(func=cmd_opaque)


# --- where answers come from --------------------------------------------------------------------


class Ledger:
    """The ledger file opened here, or the gateway holding it (then `gateway` is set)."""

    def __init__(self, db: Path | None, *, create: bool = False, read_only: bool = False,
                 store_url: str | None = None) -> None:
        self.db = db
        self.con: duckdb.DuckDBPyConnection | None = None
        self.gateway: Source | None = None
        self.store: Any = None  # the shared PostgreSQL store (--store): lines and reports live there
        if store_url:
            self._open_store(store_url)
            return
        assert db is not None
        if not db.exists() and not create:
            from spendgate.fsutil import discovery_path

            if not discovery_path(db).exists():
                raise SourceError(f"no ledger at {db} (start the gateway with scripts/run, or pass --db)")
        try:
            self.con = read_connection(db) if read_only else connect(db)
            if not read_only:
                migrate(self.con)  # brings an older file's schema up to date
        except LedgerLocked:
            self.gateway = open_source(db)
            if not self.gateway.where.startswith("gateway"):
                raise SourceError(f"{db} is locked by another process") from None

    def _open_store(self, url: str) -> None:
        import atexit

        from spendgate.cli.source import open_checked_store

        store = open_checked_store(url)
        atexit.register(store.close)
        self.store = store

    def query(self, name: str, params: dict[str, Any], policy: Callable[[], Policy | None]) -> Any:
        if self.gateway:
            return self.gateway.query(name, **params)
        if self.store is not None:
            from spendgate.store.pg_read import ReadCursor
            from spendgate.store.postgres import StoreError

            if name == "reconcile/opaque":
                raise SourceError("opaque connections are recorded in each replica's own file, not in the "
                                  "shared store: run `spendgate reconcile opaque --db` on a replica")  # fmt: skip
            try:
                return reconcile.run(ReadCursor(self.store), name, params, policy())
            except StoreError as e:
                raise SourceError(str(e)) from None
        try:
            return reconcile.run(self.con, name, params, policy())
        except duckdb.CatalogException:
            raise SourceError(f"{self.db} predates reconciliation: start the gateway once, or run any "
                              "`spendgate reconcile import`, to upgrade it") from None  # fmt: skip

    def import_lines(self, lines: list[formats.BillingLine]) -> dict[str, int]:
        if self.gateway:
            return self.gateway.post("reconcile/import", lines=[store.line_to_json(l) for l in lines])
        if self.store is not None:
            from spendgate.store.postgres import StoreError

            try:
                return store.upsert_store(self.store, lines)
            except StoreError as e:
                raise SourceError(str(e)) from None
        return store.upsert(self.con, lines)

    @property
    def where(self) -> str:
        if self.store is not None:
            from spendgate.store.postgres import redact

            return f"store {redact(self.store.url)}"
        return self.gateway.where if self.gateway else f"file {self.db}"


def _ledger(args: argparse.Namespace, **kw: Any) -> Ledger:
    """The ledger a reconcile command works on: the shared store (--store URL), else the file."""
    url = getattr(args, "store", None)
    return Ledger(None if url else (args.db or default_db()), store_url=url, **kw)


def _policy_loader(args: argparse.Namespace, only_with: str | None = None) -> Callable[[], Policy | None]:
    """The policy, loaded on first call. `only_with`: a top-level key the caller reads; a file whose
    text never contains that word, nor a backslash (a double-quoted YAML key may spell it with
    escapes: "pl\\x61ns"), cannot declare it, so the loader answers None without importing YAML or
    the policy model (~60 ms of `spendgate spend`'s start when there are no seat plans); such a
    file is then not validated either (`spendgate policy check` and the gateway do that). An
    unreadable file still goes to `load`, which says what is wrong with it."""

    def load_it() -> Policy | None:
        path = getattr(args, "policy", None) or default_policy()
        if only_with is not None:
            try:
                text = Path(path).read_text(errors="replace")
                if only_with not in text and "\\" not in text:
                    return None
            except OSError:
                pass
        from spendgate.policy.model import PolicyError, load

        try:
            return load(path)
        except PolicyError as e:
            raise SourceError(f"invalid policy:\n{e}") from None

    return load_it


def _pricer(args: argparse.Namespace) -> Callable:
    from spendgate.pricing.rates import (  # the catalogue: only imports need it
        Pricer,
        PricingError,
    )

    path = args.pricing or (resources.pricing_dir() / "overrides.yaml")
    try:
        pricer = Pricer(path if path.exists() else None)
    except (PricingError, OSError) as e:
        raise SourceError(f"pricing overrides: {e}") from None

    def price(provider: str, model: str, usage: Any, at: datetime) -> Any:
        return pricer.price(provider, model, usage, at).cost

    return price


def _print_result(args: argparse.Namespace, what: str, result: dict[str, int], where: str) -> None:
    if args.json:
        print_json({**result, "report": what, "into": where})
        return
    console.print(f"{what}: {result['lines']} lines: {result['new']} new, {result['updated']} updated, "
                  f"{result['unchanged']} unchanged ({where})", highlight=False)  # fmt: skip


# --- commands -------------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    try:
        text = args.file.read_text(encoding="utf-8-sig")
    except OSError as e:
        print(f"spendgate: cannot read {args.file}: {e.strerror or e}", file=sys.stderr)
        return 2
    try:
        fmt, lines = formats.parse(text, args.provider, _pricer(args))
    except (formats.BillingFormatError, ValueError, KeyError) as e:
        print(f"spendgate: {args.file}: {e}", file=sys.stderr)
        return 2
    led = _ledger(args, create=True)
    try:
        result = led.import_lines(lines)
    except ValueError as e:  # lines the store cannot hold (a NUL, a count beyond BIGINT): nothing landed
        print(f"spendgate: {args.file}: {e}", file=sys.stderr)
        return 2
    _print_result(args, fmt, result, led.where)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from spendgate.reconcile import fetch as fetching

    try:
        since = date.fromisoformat(args.since)
        until = date.fromisoformat(args.until) if args.until else None
        reports = fetching.fetch(args.provider, since, until=until, url=args.base_url, price=_pricer(args))
    except ValueError as e:
        print(f"spendgate: {e}", file=sys.stderr)
        return 2
    except fetching.FetchError as e:
        print(f"spendgate: {e}", file=sys.stderr)
        return 2
    led = _ledger(args, create=True)
    try:
        results = {name: led.import_lines(lines) for name, lines in reports.items()}
    except ValueError as e:  # a report's lines the store cannot hold: that report landed nothing
        print(f"spendgate: {args.provider}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print_json({"provider": args.provider, "since": args.since, "into": led.where, "reports": results})
        return 0
    for name, res in results.items():
        _print_result(args, name, res, led.where)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    led = _ledger(args, read_only=True)
    params = {"since": args.since, "until": args.until, "by": args.by, "tolerance": args.tolerance}
    # the policy maps provider key and workspace ids (IdMap): only those groupings read it, so the
    # others neither import nor validate it (~100 ms of the report's start)
    policy = _policy_loader(args) if args.by in ("key", "workspace") else lambda: None
    result = led.query("reconcile/report", {k: v for k, v in params.items() if v is not None}, policy)
    flagged = [r for r in result["rows"] if r["status"] in ("bypass", "pricing")]
    if args.json:
        print_json(result)
        return 1 if args.strict and flagged else 0
    lead = (["day"] if args.by in ("day", "model") else []) + ["provider"] + ([] if args.by == "day" else ["group"])
    scope = f"since {args.since}" if args.since else "all imported days"
    table(f"Metered vs billed by {args.by}, {scope}", result["rows"], lead + REPORT_COLS,
          money=["metered_usd", "billed_usd", "delta_usd"])  # fmt: skip
    table("Totals per provider (days with billing data)", result["totals"],
          ["provider", "metered_usd", "billed_usd", "delta_usd", "delta_pct", "status"],
          money=["metered_usd", "billed_usd", "delta_usd"])  # fmt: skip
    for st in ("bypass", "pricing"):
        n = sum(1 for r in result["rows"] if r["status"] == st)
        if n:
            note = next(r["note"] for r in result["rows"] if r["status"] == st)
            console.print(f"[yellow]{n} x {st}[/]: {note}", highlight=False)
    subs = result.get("subscriptions") or []
    if subs:
        table("Subscription usage per plan and user (covered by seats: on no per-token bill, so not compared "
              "above; notional = list-price equivalent)", subs,
              ["plan", "user", "provider", "requests", "input_tokens", "output_tokens", "notional_usd"],
              money=["notional_usd"], top=not getattr(args, "all", False))  # fmt: skip
    if not result["rows"]:
        say("no billing data imported yet: `spendgate reconcile import FILE --provider P` or "
            "`spendgate reconcile fetch --provider P --since DATE`")  # fmt: skip
    return 1 if args.strict and flagged else 0


def cmd_plans(args: argparse.Namespace) -> int:
    params = {k: v for k, v in {"since": args.since, "until": args.until, "by": args.by}.items() if v}
    try:
        led = _ledger(args, read_only=True)  # a running gateway answers with its policy
        result = led.query("reconcile/plans", params, _policy_loader(args))
    except SourceError:  # no ledger yet: plans need only the policy
        result = reconcile.plans_query(None, params, _policy_loader(args)())
    if args.json:
        print_json(result)
        return 0
    table(f"Seat plans by {args.by}, {result['first']} to {result['last']} (prorated per day)", result["rows"],
          ["group", "plan", "vendor", "seat_days", "cost_usd", "usage_requests", "usage_notional_usd",
           "counts_against_budgets"], money=["cost_usd", "usage_notional_usd"])
    if any("usage_requests" in r for r in result["rows"]):
        console.print("usage_*: subscription (sign-in) traffic metered under each plan, at list price: what the "
                      "seat covered, not an extra cost", highlight=False)  # fmt: skip
    return 0


def cmd_opaque(args: argparse.Namespace) -> int:
    led = _ledger(args, read_only=True)
    params = {k: v for k, v in {"since": args.since, "by": args.by, "user": args.user}.items() if v}
    rows = led.query("reconcile/opaque", params, lambda: None)
    if args.json:
        print_json(rows)
        return 0
    table(f"Opaque clients by {args.by} (not decrypted: connections, bytes, time)", rows,
          ["group", "clients", "connections", "bytes_up", "bytes_down", "seconds"])  # fmt: skip
    return 0


# --- `spendgate spend` ------------------------------------------------------------------------------


def print_spend_extras(args: argparse.Namespace, metered: list[dict[str, Any]]) -> None:
    """Beside metered spend: seat plans, opaque clients and billed-vs-metered, when there are any."""
    since = args.since or (datetime.now(UTC).date().replace(day=1).isoformat() if not args.window else None)
    if args.window:
        from spendgate.reports.queries import window_start

        since = window_start(args.window).date().isoformat()
    try:
        led = _ledger(args, read_only=True)  # what `spend` itself opened
        # the policy is read for its seat plans only (reconcile.spend_extras: plans_query)
        extras = led.query("reconcile/spend_extras", {"since": since, "by": args.by},
                           _policy_loader(args, only_with="plans"))
    except (SourceError, duckdb.Error) as e:
        console.print(f"[dim](plans, opaque clients and billing not shown: {e})[/]", highlight=False)
        return
    plan_rows, opaque_rows = extras["plans"]["rows"], extras["opaque"]
    if plan_rows or opaque_rows:
        plan_by = {r["group"]: 0.0 for r in plan_rows}
        for r in plan_rows:
            plan_by[r["group"]] += r["cost_usd"]
        opq = {r["group"]: r for r in opaque_rows}
        groups = list(dict.fromkeys([r["group"] for r in metered] + list(plan_by) + list(opq)))
        met = {r["group"]: r["cost_usd"] for r in metered}
        subs = {r["group"]: r.get("notional_usd", 0.0) for r in metered}
        rows = [{
            "group": g, "api_usd": met.get(g, 0.0), "seat_plans_usd": plan_by.get(g, 0.0),
            "api_plus_seats_usd": met.get(g, 0.0) + plan_by.get(g, 0.0),
            "subscription_notional_usd": subs.get(g, 0.0),
            "opaque_connections": opq.get(g, {}).get("connections", 0),
            "opaque_mb": round((opq.get(g, {}).get("bytes_up", 0) + opq.get(g, {}).get("bytes_down", 0)) / 1e6, 3),
            "opaque_seconds": opq.get(g, {}).get("seconds", 0.0),
        } for g in groups]  # fmt: skip
        title = (f"Beside API spend (seat plans prorated {extras['plans']['first']} to {extras['plans']['last']}; "
                 "api_plus_seats_usd = money paid; subscription usage is notional, covered by the seats, not added)")
        table(title, rows, ["group", "api_usd", "seat_plans_usd", "api_plus_seats_usd", "subscription_notional_usd",
                            "opaque_connections", "opaque_mb", "opaque_seconds"],
              money=["api_usd", "seat_plans_usd", "api_plus_seats_usd", "subscription_notional_usd"])  # fmt: skip
    for t in extras["reconciliation"]:
        say(f"Billed by {t['provider']} (days with billing data): {usd(t['billed_usd'], 4)} vs metered "
            f"{usd(t['metered_usd'], 4)}: {t['status']} (`spendgate reconcile report`)")
