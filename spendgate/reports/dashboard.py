"""Read-side queries behind the dashboard, `spendgate top` and `spendgate export`.

Built on reports' helpers so a number is the same wherever it is shown. Every function takes a
DuckDB cursor and an optional `user`: the admin API forces `user` to the caller for engineers,
which is how an engineer sees only their own rows. Time buckets are computed from epoch seconds
(UTC), so nothing depends on the DuckDB session's time zone, and empty buckets are filled in
Python so charts show quiet minutes as zero rather than skipping them.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from spendgate.reports import queries as reports
from spendgate.store import rollups, sql
from spendgate.store.engine import duckdb
from spendgate.store.ledger import COLUMNS

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Bucketing:
    """A chart's resolution: bucket width and how far back it reaches."""

    step: timedelta
    span: timedelta


SERIES = {
    "minute": Bucketing(timedelta(minutes=1), timedelta(hours=1)),
    "hour": Bucketing(timedelta(hours=1), timedelta(hours=48)),
    "day": Bucketing(timedelta(days=1), timedelta(days=30)),
}
BREAKDOWNS = ("workspace", "user", "model", "client")
# rows per long list in an overview (what the page and `top` draw: 10 bars, a table); models and
# clients stay whole (the donut sums the rest as "other"). /api/spend lists all; /api/subscriptions pages (top 50).
OVERVIEW_TOP = 25
LONG_LISTS = ("workspace", "user")
SHARED_BREAKDOWNS = ("workspace", "user", "client")  # in the per-user rollups: one statement (spend_sets)
EXPORT_FORMATS = ("parquet", "csv")
# what a finance export carries: every ledger column (fingerprints, never raw keys; no prompt text exists)
EXPORT_COLUMNS = COLUMNS


USER = '"user" = ?'
USER_COL = '"user"'


def floor_time(t: datetime, step: timedelta) -> datetime:
    """Start of the bucket holding `t` (buckets aligned on the UTC epoch)."""
    secs = int(step.total_seconds())
    epoch = int(t.astimezone(UTC).timestamp())
    return datetime.fromtimestamp(epoch - epoch % secs, UTC)


def totals(cur: duckdb.DuckDBPyConnection, now: datetime | None = None, user: str | None = None) -> dict[str, Any]:
    """Spend, charge and request counts for the current hour, day, week and month (UTC).

    `cost_usd` is API spend (invoiced per token); `notional_usd` is subscription usage at list
    price, covered by seats and not invoiced: the two are never added together.
    """
    now = now or datetime.now(UTC)
    starts = {w: reports.window_start(w, now) for w in reports.WINDOWS}
    parts, params = [], []
    for w in reports.WINDOWS:  # each window from its own exact source (rollups, raw at the edges)
        src, p = rollups.source(cur, starts[w], dims=("outcome", "billing_basis", *([USER_COL] if user else [])),
                                measures=("requests", "cost_usd", "charged_usd", "notional_usd"))
        parts.append(f"SELECT '{w}' AS w, * FROM {src} s")  # w is one of WINDOWS
        params += p
    where, more = sql.where((USER, user))
    query = f"""
        SELECT w, coalesce(sum(cost_usd), 0) AS cost, coalesce(sum(charged_usd), 0) AS charged,
               coalesce(sum(requests), 0) AS requests,
               coalesce(sum(requests) FILTER (WHERE outcome = 'blocked'), 0) AS blocked,
               coalesce(sum(notional_usd) FILTER (WHERE billing_basis = 'subscription'), 0) AS notional,
               coalesce(sum(requests) FILTER (WHERE billing_basis = 'subscription'), 0) AS sub
        FROM ({' UNION ALL '.join(parts)}) r {where} GROUP BY w
    """
    found = {r["w"]: r for r in sql.rows(cur, query, [*params, *more])}
    none = {"cost": 0.0, "charged": 0.0, "requests": 0, "blocked": 0, "notional": 0.0, "sub": 0}
    return {
        w: {
            "since": sql.jsonable(starts[w]),
            "cost_usd": found.get(w, none)["cost"],
            "charged_usd": found.get(w, none)["charged"],
            "requests": found.get(w, none)["requests"],
            "blocked": found.get(w, none)["blocked"],
            "notional_usd": found.get(w, none)["notional"],
            "subscription_requests": found.get(w, none)["sub"],
        }
        for w in reports.WINDOWS
    }


def series(
    cur: duckdb.DuckDBPyConnection, resolution: str = "minute", now: datetime | None = None, user: str | None = None
) -> list[dict[str, Any]]:
    """Spend per bucket, oldest first, every bucket present (zero when quiet)."""
    if resolution not in SERIES:
        raise ValueError(f"unknown resolution {resolution!r} (one of {', '.join(SERIES)})")
    b = SERIES[resolution]
    now = now or datetime.now(UTC)
    last = floor_time(now, b.step)
    first = last - b.span + b.step
    secs = int(b.step.total_seconds())
    # buckets of a day or more from the rollups (whole UTC days); finer ones from the raw rows
    dims = ("outcome", *([USER_COL] if user else []))
    ms = ("cost_usd", "requests")
    src, params = (rollups.source(cur, first, by_day=True, dims=dims, measures=ms) if secs >= 86400
                   else rollups.raw_source(first, dims=dims, measures=ms))
    where, more = sql.where((USER, user))
    params += more
    query = f"""
        SELECT {sql.bucket_epoch(cur, "b")} AS bucket, cost_usd, requests, blocked FROM (
            SELECT {sql.time_bucket(cur, "t0", secs)} AS b, coalesce(sum(cost_usd), 0) AS cost_usd,
                   sum(requests) AS requests,
                   coalesce(sum(requests) FILTER (WHERE outcome = 'blocked'), 0) AS blocked
            FROM {src} r {where} GROUP BY 1) g
    """
    found = {r["bucket"]: r for r in sql.rows(cur, query, params)}
    out = []
    t = first
    while t <= last:
        r = found.get(int(t.timestamp()), {})
        out.append({"t": sql.jsonable(t), "cost_usd": r.get("cost_usd", 0.0),
                    "requests": r.get("requests", 0), "blocked": r.get("blocked", 0)})  # fmt: skip
        t += b.step
    return out


def blocks(
    cur: duckdb.DuckDBPyConnection, since: datetime | None = None, user: str | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """The latest refused requests, with the reason the caller was given."""
    return reports.latest(cur, 'ts, "user", client, provider, model, status, workspace, note AS reason', limit,
                          "outcome = 'blocked'", (USER, user), since=since)


def unpriced(
    cur: duckdb.DuckDBPyConnection, since: datetime | None = None, user: str | None = None
) -> list[dict[str, Any]]:
    """Models the gateway could not price: what they cost at the fallback rate and who used them."""
    # sums from the per-model rollups (a few rows a month); only the distinct users need the full ones
    mine = [USER_COL] if user else []
    sums, p1 = rollups.source(cur, since, dims=("provider", "model", "outcome", *mine),
                              measures=("requests", "input_tokens", "output_tokens", "charged_usd", "max_ts"))
    users, p2 = rollups.source(cur, since, dims=("provider", "model", "outcome", USER_COL), measures=())
    where, more = sql.where("outcome = 'unpriced'", (USER, user))
    query = f"""
        WITH s AS (SELECT provider, coalesce(model, '(unknown)') AS model, sum(requests) AS requests,
                          sum(input_tokens)::BIGINT AS input_tokens, sum(output_tokens)::BIGINT AS output_tokens,
                          coalesce(sum(charged_usd), 0) AS charged_usd, max(max_ts) AS last_seen
                   FROM {sums} r {where} GROUP BY 1, 2),
             u AS (SELECT provider, coalesce(model, '(unknown)') AS model, count(DISTINCT "user") AS users
                   FROM {users} r {where} GROUP BY 1, 2)
        SELECT s.provider, s.model, s.requests, u.users, s.input_tokens, s.output_tokens, s.charged_usd,
               s.last_seen
        FROM s JOIN u ON s.provider = u.provider AND s.model = u.model
        ORDER BY requests DESC, model, provider"""
    return sql.rows(cur, query, [*p1, *more, *p2, *more])


def overview(
    cur: duckdb.DuckDBPyConnection, window: str = "month", now: datetime | None = None, user: str | None = None,
    trace_url: str | None = None,
) -> dict[str, Any]:
    """Everything one dashboard refresh (or one `spendgate top` frame) shows, in one call."""
    now = now or datetime.now(UTC)
    start = reports.window_start(window, now)
    with rollups.checked(cur):  # one catalogue look-up for the dozen queries below (DuckDB)
        return _overview(cur, window, now, start, user, trace_url)


def _overview(cur: duckdb.DuckDBPyConnection, window: str, now: datetime, start: datetime, user: str | None,
              trace_url: str | None) -> dict[str, Any]:
    parts: dict[tuple[str, ...], Callable[[], Any]] = {
        ("totals",): lambda: totals(cur, now, user),
        **{("series", name): (lambda name=name: series(cur, name, now, user)) for name in SERIES},
        **{("breakdowns", by): (lambda by=by: reports.spend(cur, by, since=start, user=user,
                                                          limit=OVERVIEW_TOP if by in LONG_LISTS else None))
           for by in BREAKDOWNS},
        ("latest",): lambda: reports.ledger(cur, 15, user=user, trace_url=trace_url),
        ("blocks",): lambda: blocks(cur, start, user),
        ("unpriced",): lambda: unpriced(cur, start, user),
        ("subscriptions",): lambda: reports.subscriptions(cur, start, user=user, limit=OVERVIEW_TOP),
    }
    if sql.dialect(cur) == "postgresql":  # each query on its own pooled connection: side by side
        with ThreadPoolExecutor(OVERVIEW_THREADS, thread_name_prefix="spendgate-overview") as ex:
            futures = {k: ex.submit(fn) for k, fn in parts.items()}
            got = {k: f.result() for k, f in futures.items()}
    else:  # one DuckDB cursor: in turn (DuckDB parallelises each query itself); the breakdowns that
        # read the per-user rollups as one statement (spend_sets): 3 statements cost ~16 ms, 1 ~12
        sets = {by: OVERVIEW_TOP if by in LONG_LISTS else None for by in SHARED_BREAKDOWNS}
        merged = ("breakdowns", *SHARED_BREAKDOWNS)
        parts = {k: fn for k, fn in parts.items() if k[0] != "breakdowns" or k[1] not in sets}
        parts[merged] = lambda: reports.spend_sets(cur, sets, since=start, user=user)
        got = {k: fn() for k, fn in parts.items()}
        got.update({("breakdowns", by): rows for by, rows in got.pop(merged).items()})
    out: dict[str, Any] = {"generated_at": sql.jsonable(now), "user": user, "window": window,
                           "since": sql.jsonable(start), "series": {}, "breakdowns": {}}
    for key, value in got.items():
        if len(key) == 1:
            out[key[0]] = value
        else:
            out[key[0]][key[1]] = value
    return out


OVERVIEW_THREADS = 4  # queries of one overview in flight at once on a PostgreSQL store (its reader pool's size)


# -- export -------------------------------------------------------------------------------------


def export_sql(since: datetime | None, until: datetime | None, user: str | None) -> tuple[str, list[Any]]:
    """The SELECT an export copies, oldest first, with its parameters."""
    where, params = sql.where(*sql.ts_range(since, until), (USER, user))
    cols = ", ".join(f'"{c}"' for c in EXPORT_COLUMNS)
    return f"SELECT {cols} FROM requests {where} ORDER BY ts, request_id", params


EXPORT_SLICE_ROWS = 10_000  # rows per COPY when a CSV export is built slice by slice


def export(
    cur: duckdb.DuckDBPyConnection,
    path: Path,
    fmt: str,
    since: datetime | None = None,
    until: datetime | None = None,
    user: str | None = None,
) -> int:
    """COPY the ledger rows in [since, until) to `path` as Parquet or CSV; returns the row count.

    Both are written in time slices of about EXPORT_SLICE_ROWS rows, each its own COPY (sorted
    within the slice, slices in time order): one sorted COPY of a month at 10M rows holds ~800 MB
    (the sort, and the writer's buffers), a slice a few MB. CSV slices are appended to `path`;
    Parquet (one footer for the whole file) writes each slice to its own part file, then one COPY
    reads the parts in order (no sort) into `path`, a row group at a time.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (one of {', '.join(EXPORT_FORMATS)})")
    with _buffer_pool_capped(cur):
        if fmt == "csv":
            return _export_csv(cur, path, since, until, user)
        return _export_parquet(cur, path, since, until, user)


def export_slices(cur: duckdb.DuckDBPyConnection, since: datetime | None, until: datetime | None,
                  user: str | None, rows: int | None = None) -> list[tuple[datetime, datetime]]:
    """Half-open [start, end) time ranges covering the export, each of about `rows` rows (default
    EXPORT_SLICE_ROWS; whole hours, so an hour with more rows is one slice)."""
    rows = rows or EXPORT_SLICE_ROWS
    where, params = sql.where(*sql.ts_range(since, until), (USER, user))
    hours = cur.execute(f"SELECT time_bucket(INTERVAL 1 HOUR, ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS h, "
                        f"count(*) FROM requests {where} GROUP BY h ORDER BY h", params).fetchall()
    out: list[tuple[datetime, datetime]] = []
    start, n = None, 0
    for h, count in hours:
        if start is None:
            start = h
        n += count
        if n >= rows:
            out.append((start, h + timedelta(hours=1)))
            start, n = None, 0
    if start is not None:
        out.append((start, hours[-1][0] + timedelta(hours=1)))
    # the caller's bounds still apply inside each slice (export_sql): slices only split the range
    return out


def _export_csv(cur: duckdb.DuckDBPyConnection, path: Path, since: datetime | None, until: datetime | None,
                user: str | None) -> int:
    slices = export_slices(cur, since, until, user)
    total = 0
    part = path.with_name(path.name + ".part")
    target = str(part).replace("'", "''")
    with open(path, "wb") as out:
        for i, (a, b) in enumerate(slices or [(None, None)]):
            lo = max(a, since) if a and since else a or since
            hi = min(b, until) if b and until else b or until
            sql_, params = export_sql(lo, hi, user)
            header = "true" if i == 0 else "false"
            row = cur.execute(f"COPY ({sql_}) TO '{target}' (FORMAT csv, HEADER {header})", params).fetchone()
            total += int(row[0]) if row else 0
            with open(part, "rb") as f:
                while chunk := f.read(EXPORT_CHUNK):
                    out.write(chunk)
    part.unlink(missing_ok=True)
    return total


PARQUET_ROW_GROUP = 20_000  # rows per Parquet row group (what the final COPY buffers; DuckDB's default is 122,880)


def _export_parquet(cur: duckdb.DuckDBPyConnection, path: Path, since: datetime | None, until: datetime | None,
                    user: str | None) -> int:
    slices = export_slices(cur, since, until, user)
    if len(slices) <= 1:  # small: one sorted COPY is already cheap
        sql_, params = export_sql(since, until, user)
        return _copy_parquet(cur, sql_, params, path)
    parts_dir = Path(tempfile.mkdtemp(prefix=".parts-", dir=path.parent))  # beside the export: same private dir
    try:
        parts, total = [], 0
        for i, (a, b) in enumerate(slices):
            lo = max(a, since) if since else a
            hi = min(b, until) if until else b
            sql_, params = export_sql(lo, hi, user)
            part = parts_dir / f"{i:06d}.parquet"
            total += _copy_parquet(cur, sql_, params, part, compression="uncompressed")
            parts.append(part)
        files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in parts)
        # read_parquet keeps the list's order (insertion order is preserved): slices are in time order
        # and sorted inside, so the file has the rows of one sorted COPY, in the same order
        with _one_thread(cur):
            _copy_parquet(cur, f"SELECT * FROM read_parquet([{files}])", [], path)
        return total
    finally:
        for f in parts_dir.glob("*"):
            f.unlink(missing_ok=True)
        parts_dir.rmdir()


@contextmanager
def _one_thread(cur: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """DuckDB on one thread for a block, then as before. The merge of Parquet parts keeps insertion
    order, which makes each extra thread buffer row groups that wait for their turn: measured at
    10M rows, a month's merge grew the process by ~290 MB on 2 threads, ~120 MB on one, at the
    same speed. (`threads` is the database's setting: queries running meanwhile get one too.)"""
    before = cur.execute("SELECT current_setting('threads')").fetchone()[0]
    cur.execute("SET threads = 1")
    try:
        yield
    finally:
        cur.execute(f"SET threads = {int(before)}")


def _copy_parquet(cur: duckdb.DuckDBPyConnection, query: str, params: list[Any], path: Path,
                  compression: str = "zstd") -> int:
    target = str(path).replace("'", "''")  # COPY takes no parameter for its target; quote it
    row = cur.execute(f"COPY ({query}) TO '{target}' (FORMAT parquet, COMPRESSION {compression}, "
                      f"ROW_GROUP_SIZE {PARQUET_ROW_GROUP})", params).fetchone()
    return int(row[0]) if row else 0


EXPORT_CHUNK = 1 << 20  # bytes per read when an export is streamed
# DuckDB's memory_limit while an export runs: the buffer pool otherwise keeps every block the export
# scanned (its default limit is 80% of RAM), so a month's CSV at 30M rows grew the gateway by
# ~123 MB and a CLI export by 172 MB; at 64MB the CLI's growth was 76 MB, for ~25% more CPU.
EXPORT_MEMORY_LIMIT = "64MB"


@dataclass
class _Cap:
    """One database file's export cap: exports running under it, and its limit before the first."""

    running: int = 0
    before: str | None = None


_caps: dict[str, _Cap] = {}  # database file -> its cap
_caps_lock = threading.Lock()


@contextmanager
def _buffer_pool_capped(cur: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """EXPORT_MEMORY_LIMIT on a file-backed database for the export's duration, then its limit as it
    was before (the string DuckDB showed, kept from the first export: re-reading it each time would
    round it down a little at every export). Lowering the limit evicts cached blocks at once. It is
    the database's setting: queries running meanwhile (dashboard polls, the ledger writer's small
    commits) get it too, and spill to the database's own temp directory (beside the file) past it;
    overlapping exports of the same file share one cap, lifted by the last. An in-memory database
    (a PostgreSQL replica's Parquet export) is never capped: its rows would spill to DuckDB's
    default temp directory, the process's working directory. If DuckDB cannot evict enough (memory
    pinned by another query) the export runs uncapped rather than fail."""
    path = cur.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
    key = path[0] if path else None
    if not key:
        yield
        return
    with _caps_lock:
        state = _caps.setdefault(key, _Cap())
        try:
            if state.running == 0:
                if state.before is None:
                    state.before = cur.execute("SELECT current_setting('memory_limit')").fetchone()[0]
                cur.execute(f"SET memory_limit = '{EXPORT_MEMORY_LIMIT}'")
            state.running += 1
            capped = True
        except duckdb.Error as e:
            log.info("export runs without the memory cap: %s", e)
            capped = False
    try:
        yield
    finally:
        if capped:
            with _caps_lock:
                state.running -= 1
                if state.running == 0:
                    cur.execute(f"SET memory_limit = '{state.before}'")  # DuckDB's own text of it: no quote


class ExportFile:
    """An export DuckDB's COPY wrote to a private temp dir (0700), read back in chunks and then removed.

    Memory stays flat whatever the export's size: DuckDB streams the COPY to disk and the admin
    server sends the file `EXPORT_CHUNK` bytes at a time. `close` (also at the end of `chunks`, or
    on garbage collection) deletes the file.
    """

    def __init__(self, cur: duckdb.DuckDBPyConnection, params: dict[str, Any]) -> None:
        self.format = params.get("format") or "parquet"
        self._tmp = tempfile.TemporaryDirectory(prefix="spendgate-export-")
        self.path = Path(self._tmp.name) / f"export.{self.format}"
        try:
            if sql.dialect(cur) == "postgresql":  # a replica's export of the shared store: its stream, spooled
                with self.path.open("wb") as f:
                    for chunk in _store_export_chunks(cur, params):
                        f.write(chunk)
                self.rows = None  # rows: not counted on this path
            else:
                self.rows = export(cur, self.path, self.format, opt_time(params.get("since")),
                                   opt_time(params.get("until")), params.get("user"))  # fmt: skip
            self.size = self.path.stat().st_size  # bytes
        except BaseException:
            self.close()
            raise

    def chunks(self, size: int = EXPORT_CHUNK) -> Iterator[bytes]:
        try:
            with self.path.open("rb") as f:
                while chunk := f.read(size):
                    yield chunk
        finally:
            self.close()

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> ExportFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def export_bytes(cur: duckdb.DuckDBPyConnection, params: dict[str, Any]) -> bytes:
    """An export as bytes (small exports and callers that need them whole; the admin server streams
    an `ExportFile` instead)."""
    with ExportFile(cur, params) as f:
        return f.path.read_bytes()


def download(cur: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any]) -> bytes:
    """Files a Source can fetch by name (only `export` so far)."""
    return b"".join(download_chunks(cur, name, params))


def download_chunks(cur: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any]) -> Iterator[bytes]:
    """The same, as EXPORT_CHUNK-byte chunks read from a private temp file (removed at the end)."""
    if name != "export":
        raise KeyError(f"unknown download {name!r}")
    if sql.dialect(cur) == "postgresql":
        return _store_export_chunks(cur, params)
    return ExportFile(cur, params).chunks()


def _store_export_chunks(cur: Any, params: dict[str, Any]) -> Iterator[bytes]:
    """An export from the PostgreSQL store (spendgate.store.pg_read): CSV is the server's own
    `COPY ... TO STDOUT`, streamed through; Parquet (whose footer needs the whole file) copies the
    rows of the range -- only those -- into a private in-memory DuckDB and writes the file there."""
    fmt = params.get("format") or "parquet"
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (one of {', '.join(EXPORT_FORMATS)})")
    since, until, user = opt_time(params.get("since")), opt_time(params.get("until")), params.get("user")
    if fmt == "csv":
        from spendgate.store.pg_read import csv_select

        where, args = sql.where(*sql.ts_range(since, until), (USER, user))
        return cur.copy_out(f"COPY ({csv_select(EXPORT_COLUMNS, where)}) TO STDOUT WITH (FORMAT csv, HEADER true)",
                            args)
    from spendgate.store.ledger import migrate

    local = duckdb.connect(":memory:")
    migrate(local)
    cur.store.copy_ledger(local, since, until=until, user=user)
    return ExportFile(local, {**params, "format": fmt}).chunks()


def opt_time(v: Any) -> datetime | None:
    return sql.parse_time(v) if isinstance(v, str) and v else (v or None)


# -- who sees which budgets ----------------------------------------------------------------------


def visible_budgets(rows: list[dict[str, Any]], scopes: set[str] | None) -> list[dict[str, Any]]:
    """Budget rows a caller may see: all for the organization view, else only their own scopes."""
    return list(rows) if scopes is None else [r for r in rows if r["scope"] in scopes]


def own_scopes(policy: Any, user: str) -> set[str]:
    """Budget scopes an engineer sees: their own, their workspaces', their keys'."""
    out = {f"user:{user}"} | {f"workspace:{w}" for w in policy.workspaces_of(user)}
    out |= {f"subscription:user:{user}"}  # subscription_usage: separate budgets of their own
    out |= {f"subscription:plan:{p}:{user}" for p in policy.subscription_budgets.plans}
    return out | {f"key:{fp}" for fp, rule in policy.keys.items() if rule.user == user}


BUDGETS_TTL = 2.0  # seconds a budgets answer is shared across dashboard tabs (each polls every few seconds)
MAX_TOP = 1000


class TTLCache:
    """Answers kept `ttl` seconds by key, so N open tabs cost one computation per `ttl`, not N.

    Thread-safe (the admin server answers each request on its own thread); a miss computes outside
    the lock, so a slow computation never blocks readers of other keys.
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._items: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        now = self.clock()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and now - hit[0] < self.ttl:
                return hit[1]
        value = compute()
        with self._lock:
            if len(self._items) > 256:  # one per (caller's scopes, N): bounded
                self._items.clear()
            self._items[key] = (now, value)
        return value


def top_param(raw: Any) -> int:
    """`?top=N` as a count in 1..MAX_TOP. Raises ValueError (a 400) otherwise."""
    try:
        n = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"top must be a whole number, not {raw!r}") from None
    if not 1 <= n <= MAX_TOP:
        raise ValueError(f"top must be between 1 and {MAX_TOP}")
    return n


def budget_view(book: Any, n: int, scopes: set[str] | None, cache: TTLCache | None = None) -> list[dict[str, Any]]:
    """What the dashboard's budget bars draw: the organization view gets the `n` budgets closest to
    their cap; an engineer gets every budget of their own scopes (a handful), fullest first.

    Built by `BudgetBook.closest` from the live counters (not `status`, which walks every budget of
    every user), and shared for `cache.ttl` seconds between callers with the same view.
    """
    key = (id(book.policy), n, frozenset(scopes) if scopes is not None else None)

    def compute() -> list[dict[str, Any]]:
        return book.closest(n, None) if scopes is None else book.closest(None, scopes)

    return cache.get(key, compute) if cache else compute()


def closest_to_cap(rows: list[dict[str, Any]], n: int = 10) -> list[dict[str, Any]]:
    """Budgets by share used (spent + reserved over limit), fullest first."""
    def used(r: dict[str, Any]) -> float:
        limit = r["limit_usd"]
        taken = r["spent_usd"] + r.get("reserved_usd", 0.0)
        return taken / limit if limit > 0 else 1.0  # a zero limit blocks everything: it is full

    ranked = sorted(rows, key=lambda r: (-used(r), r["scope"], r["window"]))
    return [{**r, "used": round(used(r), 4)} for r in ranked[:n]]


# name -> handler(cur, params); see spendgate.reports.registry
QUERIES: dict[str, Any] = {
    "overview": lambda cur, p: overview(cur, p.get("window") or "month", user=p.get("user"),
                                        trace_url=p.get("trace_url")),
    "series": lambda cur, p: series(cur, p.get("resolution") or "minute", user=p.get("user")),
    "blocks": lambda cur, p: blocks(cur, opt_time(p.get("since")), p.get("user"),
                                    reports.page_param(p.get("limit"), "limit", 20, 0, reports.LEDGER_MAX)),
    "unpriced": lambda cur, p: unpriced(cur, opt_time(p.get("since")), p.get("user")),
}


def default_export_name(fmt: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"spendgate-export-{now:%Y%m%dT%H%M%SZ}.{fmt}"

