"""Every admin API route of a running gateway, built in one place: where the domain meets HTTP.

Domain packages raise their own errors (`ValueError`, `workflow.approvals.NotAllowed`,
`pricing.rates.PricingError`, `KeyError` for unknown names); the web layer turns them into
status codes here and in `web.server`. A route is `handler(params, caller) -> JSON-able`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from spendgate import reconcile
from spendgate.budgets import runway
from spendgate.budgets.admission import Admission
from spendgate.budgets.book import BudgetBook
from spendgate.central import charging
from spendgate.central import ingest as central_ingest
from spendgate.policy.model import Policy
from spendgate.pricing import reprice
from spendgate.pricing.rates import Pricer, PricingError
from spendgate.reports import dashboard, registry
from spendgate.store.postgres import StoreUnavailable
from spendgate.store.sql import parse_time
from spendgate.web.caller import ApiError, Caller
from spendgate.workflow.approvals import DECIDING_SOURCES, ApprovalError, NotAllowed
from spendgate.workflow.service import Workflow

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Caller], Any]


class GatewayView(Protocol):
    """What the routes need of a running `spendgate.gateway.Gateway` (no import of it: one-way)."""

    policy: Policy
    book: BudgetBook
    admission: Admission
    workflow: Workflow
    ingest: central_ingest.Ingest  # rows pushed by laptops (spendgate.central)
    trace_url: str | None  # the trace link template ledger rows get (telemetry), or None

    def cursor(self) -> Any: ...  # a DuckDB cursor of the ledger the gateway holds

    def report_cursor(self, name: str) -> Any: ...  # where named query `name` runs (file, or shared store)

    def shared_store(self) -> Any: ...  # the PostgreSQL store replicas share, or None (a file of its own)

    def pricing_path(self) -> Any: ...  # the price overrides file in use (Path or None)

    def use_pricer(self, pricer: Pricer) -> None: ...  # new requests are priced with this one


def _admin_only(caller: Caller, what: str) -> None:
    if not caller.admin:
        raise ApiError(403, what)


def _own_credentials(caller: Caller, what: str) -> None:
    """Laptop reporting names a person: their spendgate token (or verified proxy credentials), never the
    admin token, which names nobody (rows would be charged to no one)."""
    if caller.source not in DECIDING_SOURCES:
        raise ApiError(403, f"{what} needs the user's own spendgate token (spendgate tokens issue USER); "
                            "the admin token names nobody")


def get_routes(gw: GatewayView) -> dict[str, Handler]:
    """GET /api/<query> for every named read-side query, budgets, requests, audit, grants, reconcile."""

    def query(name: str) -> Handler:
        def handler(params: dict[str, Any], caller: Caller) -> Any:
            if gw.trace_url:  # ledger rows link to their trace, with the gateway's template
                params = {**params, "trace_url": gw.trace_url}
            try:
                return registry.run_query(gw.report_cursor(name), name, params)
            except StoreUnavailable as e:  # the shared store is away: this replica's own rows meanwhile
                log.warning("spendgate: %s read from this replica's own ledger: %s", name, e)
                return registry.run_query(gw.cursor(), name, params)

        return handler

    def reconcile_query(name: str) -> Handler:
        def handler(params: dict[str, Any], caller: Caller) -> Any:
            _admin_only(caller, "reconciliation is organization-wide: admin token required")
            try:  # on a shared store: its bills and every replica's rows
                return reconcile.run(gw.report_cursor(name), name, params, gw.policy)
            except StoreUnavailable as e:
                raise ApiError(503, f"the shared store is unreachable, try again later ({e})") from None

        return handler

    def audit(params: dict[str, Any], caller: Caller) -> Any:
        _admin_only(caller, "the audit trail is for admins")
        return gw.workflow.audit_rows(parse_time(params["since"]) if params.get("since") else None)

    routes: dict[str, Handler] = {f"/api/{name}": query(name) for name in registry.QUERIES}
    budget_cache = dashboard.TTLCache(dashboard.BUDGETS_TTL)

    def budgets(params: dict[str, Any], caller: Caller) -> Any:
        """Every budget (`spendgate budgets`), or with ?top=N what the page draws: see dashboard.budget_view."""
        mine = None if caller.admin else dashboard.own_scopes(gw.policy, caller.name)
        if params.get("top") in (None, ""):
            return dashboard.visible_budgets(gw.book.status(), mine)
        return dashboard.budget_view(gw.book, dashboard.top_param(params["top"]), mine, budget_cache)

    routes["/api/budgets"] = budgets

    def runway_state(params: dict[str, Any], caller: Caller) -> Any:
        """Step-downs in force and rate-limit buckets; an engineer sees their own scopes only."""
        mine = None if caller.admin else dashboard.own_scopes(gw.policy, caller.name)
        rows = []
        if gw.policy.runway.step_down:  # every budget (~2,000 users x 4 windows) only when a rule may apply
            every = budget_cache.get(("status", id(gw.book.policy)), gw.book.status)  # shared across tabs
            rows = [r for r in every if mine is None or r["scope"] in mine]
        limits = [b for b in gw.admission.limiter.state() if mine is None or b["scope"] in mine]
        return {"step_downs": runway.step_downs_in_force(gw.policy, rows), "rate_limits": limits}

    routes["/api/runway"] = runway_state
    routes["/api/requests"] = lambda params, caller: gw.workflow.requests_for(
        params.get("status") or None, params.get("id") or None, caller.name, caller.admin,
        decider=caller.source in DECIDING_SOURCES,
    )
    routes["/api/audit"] = audit
    routes["/api/grants"] = lambda params, caller: gw.workflow.grant_rows()

    def central_status(params: dict[str, Any], caller: Caller) -> Any:
        """A laptop reporting to a centre: outbox backlog, lease, last error (spendgate.central.uplink)."""
        _admin_only(caller, "the reporting status is for admins")
        uplink = getattr(gw, "uplink", None)
        return uplink.status() if uplink is not None else {"centre": None}

    routes["/api/central"] = central_status
    routes.update({f"/api/{name}": reconcile_query(name) for name in reconcile.QUERIES})
    return routes


def post_routes(gw: GatewayView) -> dict[str, Handler]:
    """POST /api/request|approve|deny (increase requests), /api/reprice, /api/reconcile/import."""

    def decision(fn: Callable[[dict[str, Any], str], Any], deciding: bool = True) -> Handler:
        """The person acting is the caller, never a parameter (`actor` in the body is ignored).
        Deciding needs a name from DECIDING_SOURCES (own token or verified proxy credentials);
        the admin token names nobody, so it files requests as the laptop gateway's local user
        (Workflow.local_person) and decides nothing. See docs/security.md."""

        def handler(params: dict[str, Any], caller: Caller) -> Any:
            params.pop("actor", None)
            if deciding and caller.source not in DECIDING_SOURCES:
                raise ApiError(403, "deciding a request needs your own credentials: your spendgate token "
                                    "(spendgate tokens issue YOU; the CLI reads $SPENDGATE_TOKEN) or your proxy "
                                    "credentials on spendgate.local. The admin token names nobody")
            if caller.admin and caller.source not in DECIDING_SOURCES:
                actor = gw.workflow.local_person()
                if not actor:
                    raise ApiError(403, "the admin token names nobody: file the request with your own "
                                        "spendgate token ($SPENDGATE_TOKEN)")
            else:
                actor = caller.name
            try:
                return fn(params, actor)
            except NotAllowed as e:
                raise ApiError(403, str(e)) from None
            except ApprovalError as e:
                raise ApiError(400, str(e)) from None

        return handler

    approvals = gw.workflow.approvals
    lock = threading.Lock()  # one re-pricing at a time

    def reprice_route(params: dict[str, Any], caller: Caller) -> Any:
        """{since, until?, dry_run?}: re-read the pricing files; unless dry_run, switch new requests to
        them too, update rows, and move the live budget counters by each row's charge delta."""
        _admin_only(caller, "re-pricing is for administrators")
        if not params.get("since"):
            raise ValueError("since is required (an ISO 8601 date or time)")
        since = parse_time(str(params["since"]))
        until = parse_time(str(params["until"])) if params.get("until") else None
        dry_run = str(params.get("dry_run", True)).lower() in ("1", "true", "yes")
        try:
            pricer = Pricer(gw.pricing_path())
        except PricingError as e:
            raise ApiError(422, f"the gateway's pricing files are invalid, nothing changed:\n{e}") from None

        def move_counters(changes: list[reprice.RowChange]) -> int:
            # rows pushed by laptops move what the centre charged them (spendgate.central.charging)
            return gw.book.move(charging.repriced_moves(gw.cursor(), gw.policy, changes), datetime.now(UTC))

        with lock:
            if not dry_run:
                gw.use_pricer(pricer)
            shared = gw.shared_store()
            if shared is None:
                return reprice.run(gw.cursor(), pricer, since, until, dry_run=dry_run, on_applied=move_counters)
            from spendgate.budgets import reprice_store  # the store's rows and its shared counters

            try:
                return reprice_store.run(shared, pricer, since, until, dry_run=dry_run, policy=gw.policy)
            except StoreUnavailable as e:
                raise ApiError(503, f"the shared store is unreachable, nothing changed ({e})") from None

    def reconcile_import(params: dict[str, Any], caller: Caller) -> Any:
        _admin_only(caller, "reconciliation is organization-wide: admin token required")
        shared = gw.shared_store()
        if shared is None:
            return reconcile.import_lines(gw.cursor(), params)
        try:  # into the store's billing_lines, where every replica's reports read them
            return reconcile.import_lines_store(shared, params)
        except StoreUnavailable as e:
            raise ApiError(503, f"the shared store is unreachable, nothing imported ({e})") from None

    def own_scope_only(handler: Handler) -> Handler:
        """An engineer asks for more on their own budgets only (user, their workspaces and keys)."""

        def checked(params: dict[str, Any], caller: Caller) -> Any:
            scope = str(params.get("scope") or f"user:{caller.name}")
            if not caller.admin and scope not in dashboard.own_scopes(gw.policy, caller.name):
                raise ApiError(403, f"{caller.name} may ask for more only on their own budgets (user, workspaces, "
                                    f"keys), not {scope}")
            return handler(params, caller)

        return checked

    def ingest(params: dict[str, Any], caller: Caller) -> Any:
        """{gateway_id, rows: [...]}: a laptop's ledger rows, landed once each, charged to the caller."""
        _own_credentials(caller, "pushing rows")
        try:
            return gw.ingest.ingest(caller.name, params.get("gateway_id"), params.get("rows")).as_json()
        except central_ingest.IngestError as e:
            raise ApiError(e.status, str(e)) from None
        except StoreUnavailable as e:
            raise ApiError(503, f"the budget store is unreachable, nothing landed; retry later ({e})") from None

    def lease(params: dict[str, Any], caller: Caller) -> Any:
        """{gateway_id, want_usd}: the room a laptop of the caller may admit locally until it asks again."""
        _own_credentials(caller, "a lease")
        gw.ingest.roster.touch(caller.name, central_ingest.check_origin(params.get("gateway_id")), datetime.now(UTC))
        try:
            return central_ingest.lease(gw.book, caller.name, params.get("want_usd", "0"))
        except central_ingest.IngestError as e:
            raise ApiError(e.status, str(e)) from None
        except StoreUnavailable as e:
            raise ApiError(503, f"the budget store is unreachable ({e})") from None

    return {
        "/api/ingest": ingest,
        "/api/lease": lease,
        "/api/request": own_scope_only(decision(lambda p, a: approvals.request(
            a, p.get("scope") or f"user:{a}", p.get("window") or "", p.get("amount"), p.get("reason") or ""),
            deciding=False)),
        "/api/approve": decision(lambda p, a: approvals.approve(
            p.get("id") or "", a, p.get("amount"), p.get("until"), p.get("note")), deciding=True),
        "/api/deny": decision(lambda p, a: approvals.deny(p.get("id") or "", a, p.get("reason") or ""),
                              deciding=True),
        "/api/reprice": reprice_route,
        "/api/reconcile/import": reconcile_import,
    }  # fmt: skip
