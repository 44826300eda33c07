"""Read-side queries over the ledger, shared by the CLI and the admin API.

Every function takes a DuckDB connection or cursor and returns JSON-able dicts, so the same
answer comes out whether the CLI opened the file itself or asked a running gateway.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from spendgate.store import rollups, sql
from spendgate.store.engine import duckdb
from spendgate.store.laptops import roster_rows
from spendgate.store.sql import parse_time
from spendgate.telemetry import links

GROUPS = {
    "user": '"user"',
    "key": "coalesce(key_fingerprint, '(no key)')",
    "model": "coalesce(model, '(unknown)')",
    "provider": "provider",
    "client": "client",
    "workspace": "coalesce(workspace, '(none)')",
    "outcome": "outcome",
    "basis": "billing_basis",
    "plan": "coalesce(plan, CASE WHEN billing_basis = 'subscription' THEN '(no plan)' ELSE '(api)' END)",
    # the gateway that metered the row: a laptop's id for rows it pushed to this centre (spendgate.central)
    "origin": "coalesce(origin, '(this gateway)')",
}
# the ledger columns each grouping reads (spendgate.store.rollups picks the narrowest rollup holding them)
GROUP_DIMS = {"user": ('"user"',), "key": ("key_fingerprint",), "model": ("model",), "provider": ("provider",),
              "client": ("client",), "workspace": ("workspace",), "outcome": ("outcome",), "basis": ("billing_basis",),
              "plan": ("plan", "billing_basis"), "origin": ("origin",)}
WINDOWS = ("hour", "day", "week", "month")

LEDGER_FIELDS = (
    "ts", "request_id", "provider", "endpoint", "model", "user", "key_fingerprint", "client",
    "session_id", "stream", "status", "outcome", "estimated", "input_tokens", "cache_read_tokens",
    "cache_write_tokens", "cache_write_1h_tokens", "output_tokens", "reasoning_tokens",
    "web_search_requests", "cost_usd", "charged_usd", "price_source", "latency_ms", "ttft_ms",
    "identity_source", "workspace", "note", "requested_model", "trace_id", "span_id",
    "billing_basis", "credential", "notional_usd", "plan",
    "input_audio_tokens", "input_image_tokens", "input_video_tokens",
    "cache_read_audio_tokens", "output_audio_tokens", "output_image_tokens", "output_video_tokens", "modifiers",
    "origin", "offline",
    "audio_seconds", "input_characters",
    "output_images", "output_video_seconds", "output_video_high_res_seconds",
)  # fmt: skip
_LEDGER_COLS = ", ".join(f'"{c}"' for c in LEDGER_FIELDS)


def window_start(window: str, now: datetime | None = None) -> datetime:
    """Start of the current calendar window in UTC (weeks start on Monday)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    match window:
        case "hour":
            return now.replace(minute=0, second=0, microsecond=0)
        case "day":
            return day
        case "week":
            return day - timedelta(days=day.weekday())
        case "month":
            return day.replace(day=1)
    raise ValueError(f"unknown window {window!r} (one of {', '.join(WINDOWS)})")


def ledger(
    cur: duckdb.DuckDBPyConnection, limit: int = 50, user: str | None = None, trace_url: str | None = None
) -> list[dict[str, Any]]:
    """The latest rows, newest first; with a trace URL template each traced row gets `trace_url`."""
    mine = ('"user" = ?', user)
    try:  # a statement fewer than asking for the columns first (the overview runs this every poll)
        rows = latest(cur, _LEDGER_COLS, limit, mine)
    except duckdb.BinderException:  # a file older than some columns (read-only, never migrated): those it has
        present = {d[0] for d in cur.execute("SELECT * FROM requests LIMIT 0").description}
        rows = latest(cur, ", ".join(f'"{c}"' for c in LEDGER_FIELDS if c in present), limit, mine)
    links.add_links(rows, trace_url)
    return rows


LATEST_REACH = (timedelta(days=1), timedelta(days=8), timedelta(days=40), None)  # tried in turn by `latest`


def latest(cur: duckdb.DuckDBPyConnection, cols: str, limit: int, *conditions: sql.Condition,
           since: datetime | None = None, now: datetime | None = None) -> list[dict[str, Any]]:
    """The newest `limit` rows matching `conditions` (newest first), without sorting the whole ledger.

    Tries `ts >= now - 1 day`, then a week, a month, then everything: when a try finds `limit`
    rows they are exactly the newest (every row left out is older than all of them, rows dated
    in the future included), and the `ts` range lets DuckDB skip the older row groups.
    """
    now = now or datetime.now(UTC)
    for reach in LATEST_REACH:
        start = max(filter(None, (since, now - reach if reach else None)), default=None)
        where, params = sql.where(*conditions, *sql.ts_range(start))
        rows = sql.rows(cur, f"SELECT {cols} FROM requests {where} ORDER BY ts DESC, request_id LIMIT ?",
                        [*params, limit])
        if len(rows) >= limit or reach is None or (since is not None and start == since):
            return rows
    return rows  # pragma: no cover - the last reach is unbounded


_TOKEN_SUMS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens")
# what `spend` sums per group: (column, aggregate over a rollups.source), in the order rows carry them
_SPEND_AGGS = (
    ("requests", "sum(requests)"),
    *((t, f"sum({t})") for t in _TOKEN_SUMS),
    ("cost_usd", "coalesce(sum(cost_usd), 0)"),
    ("subscription_requests", "coalesce(sum(requests) FILTER (WHERE billing_basis = 'subscription'), 0)"),
    ("notional_usd", "coalesce(sum(notional_usd) FILTER (WHERE billing_basis = 'subscription'), 0)"),
    ("unpriced", "coalesce(sum(requests) FILTER (WHERE outcome = 'unpriced'), 0)"),
    ("blocked", "coalesce(sum(requests) FILTER (WHERE outcome = 'blocked'), 0)"),
)
_SPEND_SUMS = ", ".join(f"{agg} AS {col}" for col, agg in _SPEND_AGGS)
_SPEND_MEASURES = ("requests", *_TOKEN_SUMS, "cost_usd", "notional_usd")  # what _SPEND_AGGS sums
_SUBSCRIPTION_MEASURES = ("requests", "input_tokens", "output_tokens", "notional_usd", "charged_usd", "max_ts")


def spend(
    cur: duckdb.DuckDBPyConnection,
    by: str = "user",
    window: str | None = None,
    since: datetime | None = None,
    user: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Spend per group since `since` (or the current `window`), biggest first; `limit`: the first N only."""
    if by not in GROUPS:
        raise ValueError(f"unknown grouping {by!r} (one of {', '.join(GROUPS)})")
    start = since or (window_start(window) if window else None)
    dims = (*GROUP_DIMS[by], "billing_basis", "outcome", *(['"user"'] if user else []))
    src, params = rollups.source(cur, start, dims=dims, measures=_SPEND_MEASURES)
    where, more = sql.where(('"user" = ?', user))
    query = f"""
        SELECT {GROUPS[by]} AS "group", {_SPEND_SUMS}
        FROM {src} r {where} GROUP BY 1 ORDER BY cost_usd DESC, notional_usd DESC, "group"
        {"LIMIT ?" if limit else ""}
    """
    params += [*more, *([limit] if limit else [])]
    rows = (sql.rows if limit else sql.many_rows)(cur, query, params)  # a whole list: thousands of users
    for r in rows:
        for k in _TOKEN_SUMS:
            r[k] = int(r[k] or 0)
    return rows


def spend_sets(
    cur: duckdb.DuckDBPyConnection,
    limits: dict[str, int | None],
    since: datetime | None = None,
    user: str | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """`spend(cur, by, since=since, user=user, limit=limits[by])` for every grouping in `limits`, as
    one statement over one source (GROUPING SETS; each list ranked and cut by a window function):
    the same rows in the same order. Groupings whose dimensions live in one rollup family (user,
    workspace, client, key...) cost one DuckDB planning instead of one each (~3-4 ms apiece: the
    dashboard's overview is a dozen statements)."""
    bys = list(limits)
    if any(by not in GROUPS for by in bys):
        raise ValueError(f"unknown grouping in {bys!r} (one of {', '.join(GROUPS)})")
    dims = {d for by in bys for d in GROUP_DIMS[by]} | {"billing_basis", "outcome", *(['"user"'] if user else [])}
    src, params = rollups.source(cur, since, dims=dims, measures=_SPEND_MEASURES)
    where, more = sql.where(('"user" = ?', user))
    exprs = [GROUPS[by] for by in bys]
    which = " ".join(f"WHEN grouping({e}) = 0 THEN '{by}'" for by, e in zip(bys, exprs))  # by: a GROUPS key
    value = " ".join(f"WHEN grouping({e}) = 0 THEN {e}" for e in exprs)
    cut = " OR ".join(f"(by_ = '{by}' AND rank_ <= {int(n)})" if n else f"by_ = '{by}'" for by, n in limits.items())
    query = f"""
        SELECT by_, "group", {", ".join(col for col, _ in _SPEND_AGGS)} FROM (
            SELECT *, row_number() OVER (PARTITION BY by_ ORDER BY cost_usd DESC, notional_usd DESC, "group") AS rank_
            FROM (SELECT CASE {which} END AS by_, CASE {value} END AS "group", {_SPEND_SUMS}
                  FROM {src} r {where} GROUP BY GROUPING SETS ({", ".join(f"({e})" for e in exprs)})) g
        ) ranked WHERE {cut} ORDER BY by_, rank_
    """
    out: dict[str, list[dict[str, Any]]] = {by: [] for by in bys}
    for r in sql.rows(cur, query, [*params, *more]):  # short lists (many_rows plans twice: DESCRIBE first)
        for k in _TOKEN_SUMS:
            r[k] = int(r[k] or 0)
        out[r.pop("by_")].append(r)
    return out


def subscriptions(
    cur: duckdb.DuckDBPyConnection,
    since: datetime | None = None,
    until: datetime | None = None,
    user: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Subscription usage per plan and user: requests, tokens and notional USD (list-price equivalent).

    Not money the company is invoiced (the seat is): for comparing with plan limits and seat prices.
    """
    src, params = rollups.source(cur, since, until,
                                 dims=("plan", '"user"', "provider", "credential", "billing_basis", "outcome"),
                                 measures=_SUBSCRIPTION_MEASURES)
    where, more = sql.where("billing_basis = 'subscription'", ('"user" = ?', user))
    query = f"""
        SELECT coalesce(plan, '(no plan)') AS plan, "user", provider, credential, sum(requests) AS requests,
               sum(input_tokens)::BIGINT AS input_tokens, sum(output_tokens)::BIGINT AS output_tokens,
               coalesce(sum(notional_usd), 0) AS notional_usd, coalesce(sum(charged_usd), 0) AS charged_usd,
               coalesce(sum(requests) FILTER (WHERE outcome = 'unpriced'), 0) AS unpriced, max(max_ts) AS last_seen
        FROM {src} r {where} GROUP BY 1, 2, 3, 4 ORDER BY notional_usd DESC, plan, "user", provider, credential
        {"LIMIT ?" if limit else ""}
    """
    params += [*more, *([limit] if limit else [])]
    return (sql.rows if limit else sql.many_rows)(cur, query, params)  # a year: ~6,000 rows at 10M


SUBSCRIPTIONS_TOP = 50  # rows per page of /api/subscriptions; the page's table draws the overview's 25
SUBSCRIPTIONS_MAX = 10_000  # the longest page a caller may ask for (?limit=)
# the most rows `ledger` / `blocks` return (?limit=): checked before the SQL, so a negative or huge
# number is a 400, not PostgreSQL's "LIMIT must not be negative" / "bigint out of range" as a 500
# (fourth attacker review); a bulk read is `spendgate export`
LEDGER_MAX = 1_000_000


def page_param(raw: Any, name: str, default: int, lo: int, hi: int) -> int:
    """A paging count from a URL (`?limit=`, `?top=`, `?offset=`). Raises ValueError (a 400) when it is
    not a whole number in lo..hi."""
    if raw in (None, ""):
        return default
    try:
        n = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, not {raw!r}") from None
    if not lo <= n <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}")
    return n


def subscriptions_page(
    cur: duckdb.DuckDBPyConnection,
    since: datetime | None = None,
    until: datetime | None = None,
    user: str | None = None,
    limit: int = SUBSCRIPTIONS_TOP,
    offset: int = 0,
) -> dict[str, Any]:
    """One page of subscription usage per (plan, user, provider, credential), by notional USD
    (as `subscriptions` orders it), with the totals over every row: what a page draws, not a year
    of thousands of rows. One query over the rollups: the grouped rows, their totals and count
    (so a page past the end still has the totals). `more`: rows after this page."""
    src, params = rollups.source(cur, since, until,
                                 dims=("plan", '"user"', "provider", "credential", "billing_basis", "outcome"),
                                 measures=_SUBSCRIPTION_MEASURES)
    where, more = sql.where("billing_basis = 'subscription'", ('"user" = ?', user))
    query = f"""
        WITH g AS (
            SELECT coalesce(plan, '(no plan)') AS plan, "user", provider, credential, sum(requests) AS requests,
                   sum(input_tokens)::BIGINT AS input_tokens, sum(output_tokens)::BIGINT AS output_tokens,
                   coalesce(sum(notional_usd), 0) AS notional_usd, coalesce(sum(charged_usd), 0) AS charged_usd,
                   coalesce(sum(requests) FILTER (WHERE outcome = 'unpriced'), 0) AS unpriced,
                   max(max_ts) AS last_seen
            FROM {src} r {where} GROUP BY 1, 2, 3, 4),
        t AS (
            SELECT count(*) AS rows, coalesce(sum(requests), 0)::BIGINT AS requests,
                   coalesce(sum(input_tokens), 0)::BIGINT AS input_tokens,
                   coalesce(sum(output_tokens), 0)::BIGINT AS output_tokens,
                   coalesce(sum(notional_usd), 0) AS notional_usd, coalesce(sum(charged_usd), 0) AS charged_usd,
                   coalesce(sum(unpriced), 0)::BIGINT AS unpriced, count(DISTINCT "user") AS users,
                   count(DISTINCT plan) AS plans, max(last_seen) AS last_seen
            FROM g),
        p AS (SELECT * FROM g ORDER BY notional_usd DESC, plan, "user", provider, credential LIMIT ? OFFSET ?)
        SELECT p.*, t.rows AS t_rows, t.requests AS t_requests, t.input_tokens AS t_input_tokens,
               t.output_tokens AS t_output_tokens, t.notional_usd AS t_notional_usd,
               t.charged_usd AS t_charged_usd, t.unpriced AS t_unpriced, t.users AS t_users,
               t.plans AS t_plans, t.last_seen AS t_last_seen
        FROM t LEFT JOIN p ON true
        ORDER BY p.notional_usd DESC, p.plan, p."user", p.provider, p.credential
    """
    got = sql.rows(cur, query, [*params, *more, limit, offset])
    first = got[0]  # t has one row, so the join has at least one
    totals = {k[2:]: first[k] for k in list(first) if k.startswith("t_")}
    rows = [{k: v for k, v in r.items() if not k.startswith("t_")} for r in got if r["plan"] is not None]
    count = int(totals.pop("rows"))
    return {"rows": rows, "totals": totals, "count": count, "limit": limit, "offset": offset,
            "more": max(count - offset - len(rows), 0)}


def _opt_time(v: Any) -> datetime | None:
    return parse_time(v) if isinstance(v, str) and v else v or None


def outbox(cur: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """A laptop reporting to a centre (spendgate.central): rows not yet acknowledged, rows the centre
    rejected (with its reason), rows landed. The outbox is the ledger minus `central_pushed`."""
    pending, usd, oldest = cur.execute(
        "SELECT count(*), coalesce(sum(r.charged_usd), 0), min(r.ts) FROM requests r "
        "ANTI JOIN central_pushed p ON p.request_id = r.request_id").fetchone()
    counts = dict(cur.execute("SELECT status, count(*) FROM central_pushed GROUP BY status").fetchall())
    rejected = sql.rows(cur, "SELECT request_id, pushed_at, error FROM central_pushed WHERE status = 'rejected' "
                             "ORDER BY pushed_at DESC LIMIT 20", [])
    offline = cur.execute("SELECT count(*) FROM requests WHERE offline").fetchone()[0]
    return {"pending_rows": pending, "pending_usd": float(usd), "oldest_pending": sql.jsonable(oldest),
            "landed_rows": counts.get("landed", 0), "rejected_rows": counts.get("rejected", 0),
            "offline_rows": offline, "rejected": rejected}


DEFAULT_SILENT_HOURS = 72.0  # spendgate.central.roster.SILENT_AFTER


def laptops(cur: duckdb.DuckDBPyConnection, silent_hours: float = DEFAULT_SILENT_HOURS, only_silent: bool = False,
            now: datetime | None = None) -> list[dict[str, Any]]:
    """A centre's laptops (spendgate.central.roster): first and last contact, last push, hours silent
    (how long since the last lease or push; the table may lag the running centre by 5 minutes)."""
    if not 0 < silent_hours <= 24 * 400:
        raise ValueError("silent_hours must be hours > 0")
    now = now or datetime.now(UTC)
    out = []
    for user, origin, first, last, push in roster_rows(cur):
        quiet = (now - last).total_seconds() / 3600
        if only_silent and quiet < silent_hours:
            continue
        out.append({"user": user, "origin": origin, "first_seen": sql.jsonable(first), "last_seen": sql.jsonable(last),
                    "last_push": sql.jsonable(push), "silent_hours": round(max(quiet, 0.0), 2),
                    "silent": quiet >= silent_hours})
    return out
