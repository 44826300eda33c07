"""The ledger: every provider call, one row, in a DuckDB file.

Writes never happen on the proxy's event loop: `append()` only enqueues, and one writer thread
batches rows into DuckDB with an Appender, committing every `commit_interval` seconds (or
sooner, at COMMIT_ROWS rows waiting; later, up to MAX_HOLD seconds, while fewer than HOLD_ROWS
rows wait and the journal holds them).
`close()` drains the queue, so nothing is lost on a clean shutdown. The `Ledger` protocol is the
seam for other stores (PostgreSQL, OpenTelemetry) later.
"""

from __future__ import annotations

import logging
import operator
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from spendgate import bounds, fsutil
from spendgate.batcher import Batcher
from spendgate.store import rollups
from spendgate.store.engine import duckdb

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LedgerRow:
    ts: datetime
    request_id: str
    provider: str
    endpoint: str
    model: str | None
    user: str
    key_fingerprint: str | None
    client: str
    session_id: str | None
    stream: bool
    status: int | None
    outcome: str
    estimated: bool
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cache_write_1h_tokens: int
    output_tokens: int
    reasoning_tokens: int
    web_search_requests: int
    cost_usd: Decimal | None
    price_source: str
    latency_ms: float | None
    ttft_ms: float | None
    identity_source: str = "local_user"
    workspace: str | None = None  # comma-separated when the user is in several
    price_detail: str | None = None  # JSON: the calculation, for `spendgate explain`
    note: str | None = None  # why a row is estimated / errored, in a few words
    bytes_in: int = 0
    bytes_out: int = 0
    charged_usd: Decimal | None = None  # what budgets counted: cost, a fallback rate, or a reservation
    requested_model: str | None = None  # what the client asked for, when a step-down ran `model` instead
    trace_id: str | None = None  # W3C trace id (32 hex): the client's trace, or the one our span started
    span_id: str | None = None  # our span's id (16 hex) when spans are exported (spendgate.telemetry)
    # api: invoiced per token (cost_usd is the invoice); subscription: covered by a seat, so cost_usd
    # is 0 and notional_usd keeps the list-price equivalent (spendgate.metering.billing)
    billing_basis: str = "api"
    credential: str | None = None  # the credential's kind (api_key, claude_oauth, ...), never the token
    notional_usd: Decimal | None = None  # subscription rows: what the same tokens cost through the API
    plan: str | None = None  # subscription rows: the policy plan (plans:) the user's seat belongs to
    # migration 8: tokens with their own rate (parts of the totals above), how the provider served it
    input_audio_tokens: int = 0
    input_image_tokens: int = 0
    input_video_tokens: int = 0
    cache_read_audio_tokens: int = 0
    output_audio_tokens: int = 0
    output_image_tokens: int = 0
    output_video_tokens: int = 0
    modifiers: str | None = None  # JSON {"speed": "fast", "inference_geo": "us", "service_tier": ...}
    # laptops reporting to a centre (spendgate.central, docs/scale-out.md): the gateway that metered a
    # row another gateway ingested (None: metered here), and whether it was admitted while the centre was away
    origin: str | None = None
    offline: bool = False
    # migration 9 (slim rows): the rate card this row was priced with (spendgate.pricing.cards), its
    # id here and its JSON once in `price_cards`; `price_detail` stays NULL on rows written since
    price_card: str | None = None
    # the card's JSON, carried to the writer (and the journal) but not a `requests` column
    card_json: str | None = field(default=None, repr=False, compare=False, metadata={"column": False})
    # migration 9: quantities priced per unit, not per token (spendgate.usage)
    audio_seconds: int = 0
    input_characters: int = 0
    # migration 14: generated media priced per image or per second of video (spendgate.usage)
    output_images: int = 0
    output_video_seconds: int = 0
    output_video_high_res_seconds: int = 0


ROW_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(LedgerRow))  # everything a row carries
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(LedgerRow) if f.metadata.get("column", True))
_DECIMALS = ("cost_usd", "charged_usd", "notional_usd")


def row_to_dict(row: LedgerRow) -> dict:
    """A row as JSON-ready values (for the journal: rows held for a later commit, or a failing store's)."""
    out = {}
    for name in ROW_FIELDS:
        v = getattr(row, name)
        out[name] = v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, Decimal) else v
    return out


def row_from_dict(d: dict) -> LedgerRow:
    """The inverse of row_to_dict; unknown keys are ignored, so old journals stay readable."""
    values = {k: d[k] for k in ROW_FIELDS if k in d}
    values["ts"] = datetime.fromisoformat(values["ts"])
    for k in _DECIMALS:
        if values.get(k) is not None:
            values[k] = Decimal(values[k])
    return LedgerRow(**values)

APPEND_SLICE = 32  # rows per Appender call (see write_rows)
COMPACT_EVERY = 600.0  # seconds between foldings of the rollup rows the writer appended (~1.5 s at 10M rows)
_values = operator.attrgetter(*COLUMNS)  # a row's values in column order; not astuple, which deep-copies

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS requests (
            ts TIMESTAMPTZ NOT NULL,
            request_id VARCHAR NOT NULL,
            provider VARCHAR NOT NULL,
            endpoint VARCHAR NOT NULL,
            model VARCHAR,
            "user" VARCHAR NOT NULL,
            key_fingerprint VARCHAR,
            client VARCHAR NOT NULL,
            session_id VARCHAR,
            stream BOOLEAN NOT NULL,
            status INTEGER,
            outcome VARCHAR NOT NULL,
            estimated BOOLEAN NOT NULL,
            input_tokens BIGINT NOT NULL,
            cache_read_tokens BIGINT NOT NULL,
            cache_write_tokens BIGINT NOT NULL,
            cache_write_1h_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            reasoning_tokens BIGINT NOT NULL,
            web_search_requests BIGINT NOT NULL,
            cost_usd DECIMAL(20, 10),
            price_source VARCHAR NOT NULL,
            latency_ms DOUBLE,
            ttft_ms DOUBLE,
            identity_source VARCHAR NOT NULL,
            workspace VARCHAR,
            price_detail VARCHAR,
            note VARCHAR,
            bytes_in BIGINT NOT NULL,
            bytes_out BIGINT NOT NULL,
            charged_usd DECIMAL(20, 10)
        );
        """,
    ),
    (
        2,
        # alerts and approvals (spendgate/audit.py, approvals.py, alerts.py): insert-only tables
        """
        CREATE SEQUENCE IF NOT EXISTS audit_seq START 1;
        CREATE TABLE IF NOT EXISTS audit (
            seq BIGINT PRIMARY KEY DEFAULT nextval('audit_seq'),
            ts TIMESTAMPTZ NOT NULL,
            event VARCHAR NOT NULL,
            actor VARCHAR NOT NULL,
            scope VARCHAR,
            ref VARCHAR,
            detail VARCHAR
        );
        CREATE TABLE IF NOT EXISTS increase_requests (
            id VARCHAR PRIMARY KEY,
            ts TIMESTAMPTZ NOT NULL,
            requester VARCHAR NOT NULL,
            scope VARCHAR NOT NULL,
            "window" VARCHAR NOT NULL,
            amount_usd DECIMAL(20, 10) NOT NULL,
            reason VARCHAR NOT NULL,
            spent_usd DECIMAL(20, 10),
            limit_usd DECIMAL(20, 10),
            window_end TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE IF NOT EXISTS request_decisions (
            request_id VARCHAR PRIMARY KEY,
            ts TIMESTAMPTZ NOT NULL,
            decision VARCHAR NOT NULL,
            actor VARCHAR NOT NULL,
            amount_usd DECIMAL(20, 10),
            until TIMESTAMPTZ,
            note VARCHAR
        );
        CREATE TABLE IF NOT EXISTS grants (
            id VARCHAR PRIMARY KEY,
            request_id VARCHAR,
            ts TIMESTAMPTZ NOT NULL,
            scope VARCHAR NOT NULL,
            "window" VARCHAR NOT NULL,
            amount_usd DECIMAL(20, 10) NOT NULL,
            starts TIMESTAMPTZ NOT NULL,
            until TIMESTAMPTZ NOT NULL,
            granted_by VARCHAR NOT NULL
        );
        CREATE TABLE IF NOT EXISTS alerts_fired (
            scope VARCHAR NOT NULL,
            "window" VARCHAR NOT NULL,
            window_start TIMESTAMPTZ NOT NULL,
            kind VARCHAR NOT NULL,
            threshold DECIMAL(10, 4) NOT NULL,
            ts TIMESTAMPTZ NOT NULL,
            spent_usd DECIMAL(20, 10),
            limit_usd DECIMAL(20, 10),
            PRIMARY KEY (scope, "window", window_start, kind, threshold)
        );
        """,
    ),
    (
        3,
        # re-pricing (spendgate/reprice.py): append-only, one row per changed request per run
        """
        CREATE TABLE IF NOT EXISTS price_audit (
            repriced_at TIMESTAMPTZ NOT NULL,
            run_id VARCHAR NOT NULL,
            request_id VARCHAR NOT NULL,
            ts TIMESTAMPTZ NOT NULL,
            "user" VARCHAR NOT NULL,
            model VARCHAR,
            old_cost_usd DECIMAL(20, 10),
            new_cost_usd DECIMAL(20, 10),
            old_charged_usd DECIMAL(20, 10),
            new_charged_usd DECIMAL(20, 10),
            old_outcome VARCHAR,
            new_outcome VARCHAR,
            old_price_source VARCHAR,
            new_price_source VARCHAR,
            old_price_detail VARCHAR,
            price_version VARCHAR NOT NULL
        );
        """,
    ),
    (
        4,
        # reconciliation (spendgate/reconcile/): provider billing lines, upserted by natural key;
        # opaque clients (spendgate/opaque.py): one row per undecrypted connection to an AI host
        """
        CREATE TABLE IF NOT EXISTS billing_lines (
            line_id VARCHAR PRIMARY KEY,
            provider VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,
            day DATE NOT NULL,
            bucket_start TIMESTAMPTZ NOT NULL,
            amount_usd DECIMAL(20, 10),
            model VARCHAR,
            workspace VARCHAR,
            api_key VARCHAR,
            description VARCHAR,
            input_tokens BIGINT NOT NULL,
            cache_read_tokens BIGINT NOT NULL,
            cache_write_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            requests BIGINT,
            imported_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE IF NOT EXISTS opaque_connections (
            ts TIMESTAMPTZ NOT NULL,
            ended_at TIMESTAMPTZ NOT NULL,
            host VARCHAR NOT NULL,
            port INTEGER NOT NULL,
            "user" VARCHAR NOT NULL,
            identity_source VARCHAR NOT NULL,
            workspace VARCHAR,
            client VARCHAR NOT NULL,
            bytes_up BIGINT NOT NULL,
            bytes_down BIGINT NOT NULL,
            duration_ms DOUBLE NOT NULL,
            outcome VARCHAR NOT NULL
        );
        """,
    ),
    (
        5,
        # runway (spendgate/budgets/runway.py): the model the client asked for when a step-down ran another
        "ALTER TABLE requests ADD COLUMN IF NOT EXISTS requested_model VARCHAR;",
    ),
    (
        6,
        # telemetry (spendgate/telemetry/): the trace each request belongs to, for trace links
        """
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS trace_id VARCHAR;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS span_id VARCHAR;
        """,
    ),
    (
        7,
        # billing basis (spendgate/metering/billing.py): subscription sign-in traffic is not invoiced
        # per token; its list-price equivalent is kept apart. Older rows are API rows.
        """
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS billing_basis VARCHAR DEFAULT 'api';
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS credential VARCHAR;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS notional_usd DECIMAL(20, 10);
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS plan VARCHAR;
        ALTER TABLE price_audit ADD COLUMN IF NOT EXISTS old_notional_usd DECIMAL(20, 10);
        ALTER TABLE price_audit ADD COLUMN IF NOT EXISTS new_notional_usd DECIMAL(20, 10);
        """,
    ),
    (
        8,
        # price modifiers the provider reports (docs/pricing.md): modality token counts with their
        # own rates and the serving modifiers (speed, inference_geo, service_tier), so re-pricing
        # sees what the first pricing saw. Appended in LedgerRow's field order.
        """
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS input_audio_tokens BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS input_image_tokens BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS input_video_tokens BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS cache_read_audio_tokens BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS output_audio_tokens BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS output_image_tokens BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS output_video_tokens BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS modifiers VARCHAR;
        """,
    ),
    (
        9,
        # laptops reporting to a centre (spendgate/central/): which gateway metered an ingested row and
        # whether it was admitted offline; on a laptop, the request ids the centre has acknowledged
        # (its outbox is every row not listed here); on a centre, the idempotency keys of ingested rows
        """
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS origin VARCHAR;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS offline BOOLEAN DEFAULT false;
        CREATE TABLE IF NOT EXISTS central_pushed (
            request_id VARCHAR PRIMARY KEY,
            pushed_at TIMESTAMPTZ NOT NULL,
            status VARCHAR NOT NULL,  -- landed (now or before) | rejected (the centre said why: error)
            error VARCHAR
        );
        CREATE TABLE IF NOT EXISTS central_ingested (
            request_id VARCHAR PRIMARY KEY,
            ingested_at TIMESTAMPTZ NOT NULL,
            origin VARCHAR NOT NULL,
            "user" VARCHAR NOT NULL
        );
        """,
    ),
    (
        10,
        # slim rows (spendgate/pricing/cards.py): a row keeps the id of its rate card, each card is
        # stored once; the detail is recomputed from the card and the row's usage. Rows written
        # before keep their price_detail (`spendgate store slim` moves them to cards).
        """
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS price_card VARCHAR;
        CREATE TABLE IF NOT EXISTS price_cards (
            card_id VARCHAR PRIMARY KEY,
            card VARCHAR NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        ALTER TABLE price_audit ADD COLUMN IF NOT EXISTS old_price_card VARCHAR;
        ALTER TABLE price_audit ADD COLUMN IF NOT EXISTS new_price_card VARCHAR;
        """,
    ),
    (
        11,
        # quantities priced per unit of time or text (whisper per second of audio, tts-1 per
        # character), appended in LedgerRow's field order
        """
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS audio_seconds BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS input_characters BIGINT DEFAULT 0;
        """,
    ),
    (
        12,
        # rollups (spendgate/store/rollups.py): the ledger summed per UTC day and month, kept exact by
        # write_rows in the row insert's transaction; filled here from the rows already there
        rollups.migration_sql(),
    ),
    (
        13,
        # a centre's bound on what a pushed row charges (spendgate/central/charging.py): the time whose
        # windows its counters were charged in when that is not the row's own (back-dated or late rows:
        # the receipt), and whether it was charged to shared (organization, workspace, key) budgets
        """
        ALTER TABLE central_ingested ADD COLUMN IF NOT EXISTS charged_at TIMESTAMPTZ;
        ALTER TABLE central_ingested ADD COLUMN IF NOT EXISTS shared BOOLEAN DEFAULT true;
        -- the laptops that called in (spendgate/central/roster.py), so a silent one is noticed
        CREATE TABLE IF NOT EXISTS central_laptops (
            origin VARCHAR NOT NULL,
            "user" VARCHAR NOT NULL,
            first_seen TIMESTAMPTZ NOT NULL,
            last_seen TIMESTAMPTZ NOT NULL,
            last_push TIMESTAMPTZ,
            PRIMARY KEY (origin, "user")
        );
        """,
    ),
    (
        14,
        # generated media priced per image or per second of video (Imagen, dall-e; Sora, Veo),
        # appended in LedgerRow's field order
        """
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS output_images BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS output_video_seconds BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS output_video_high_res_seconds BIGINT DEFAULT 0;
        """,
    ),
]


def migrate(con: duckdb.DuckDBPyConnection, migrations: Sequence[tuple[int, str]] = MIGRATIONS) -> int:
    """Bring the schema to the newest version; each step runs once, in its own transaction, so a
    long upgrade keeps the steps done before one that fails. A new file takes every step in one
    transaction: it has nothing to keep, and a first start creates it ~40% sooner (0.11-0.12 ->
    0.06-0.09 s on the 2-core machine, issue 18)."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ DEFAULT now())"
    )
    current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
    pending = [(version, sql) for version, sql in migrations if version > current]
    batches = [pending] if current == 0 and pending else [[step] for step in pending]
    for steps in batches:
        con.execute("BEGIN")
        try:
            for version, sql in steps:
                con.execute(sql)
                con.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        current = steps[-1][0]
    return current


class Ledger(Protocol):
    def append(self, row: LedgerRow) -> None: ...
    def flush(self, timeout: float = 5.0, paced: bool = False) -> bool: ...
    def close(self) -> None: ...


def query_threads() -> int:
    """DuckDB threads for the gateway's own ledger queries: all cores but one (at least one)."""
    return max(1, (os.cpu_count() or 2) - 1)


class LedgerLocked(RuntimeError):
    """Another process (a running gateway) holds the DuckDB file."""


def connect(path: Path | str, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as e:
        if "lock" in str(e).lower():
            raise LedgerLocked(str(e)) from None
        raise


def connect_private(path: Path) -> duckdb.DuckDBPyConnection:
    """Open (or create) a ledger file read-write as owner-only state: 0600 (its WAL too, when
    created now), in a 0700 directory if we create it; a symlink at the file or WAL is refused."""
    path = Path(path)
    fsutil.prepare_private_file(path)
    wal = path.with_name(path.name + ".wal")
    fsutil.refuse_symlink(wal)
    fsutil.tighten(wal)
    with fsutil.private_umask():
        con = connect(path)
    fsutil.tighten(path)
    return con


@dataclass
class WriterStats:
    written: int = 0
    batches: int = 0
    failures: int = 0  # consecutive failed writes (0 once a write succeeds)
    total_failures: int = 0  # every failed write since start (store errors, for metrics)
    last_error: str | None = None
    pending: int = 0
    spilled: int = 0  # rows handed to on_spill while writes failed (the journal, in the gateway)
    lost: int = 0  # rows that could be neither written nor spilled


# A writer commit costs ~20-25 ms of CPU whatever its size (DuckDB's fixed cost per table a
# transaction touches, times seven: the rows and six rollups; appending is ~30 us a row), so commits
# are batched by time and size. At ~280 requests/s (docs/architecture.md, issue 18, sixteenth
# part) 0.5 s batches cost ~190 us of CPU per row, 2 s batches ~60. Readers do
# not wait for the interval: the admin API's reads first commit what is pending (`Gateway.cursor`,
# read-your-writes), so the interval only sets how many rows a crash can leave uncommitted; those
# are covered by the reservation journal (charged as `interrupted` at the next start).
COMMIT_INTERVAL = 2.0  # seconds between commits at most
COMMIT_ROWS = 2000  # rows that make the writer commit before the interval is over
# A read's flush (each admin API read: `Gateway.cursor`, a laptop's lease renewal) commits what is
# pending at once, but no sooner than this after the last commit (`paced`): otherwise every read
# while rows are pending is a commit of its own
# (~16-25 ms of CPU: a dashboard per viewer, `spendgate top` every second, a script in a loop).
# Readers in the gap share the next commit, so however many read, commits come no more often than
# on the old 0.5 s schedule; a read waits at most this much more (gateway.READ_WAIT covers it).
FLUSH_GAP = 0.5
# A commit costs ~9 ms of CPU however few rows it carries (1, 3 or 10 rows alike: DuckDB's fixed
# cost per table a transaction appends to, seven tables). At a laptop's pace, a request every few
# seconds, a commit every COMMIT_INTERVAL was a commit per request: 5.7 ms of the writer's CPU per
# request at one a second, more than mitmproxy's own 3.6 ms (docs/architecture.md, issue 18,
# twenty-fifth part). So while fewer than HOLD_ROWS rows wait, a timed commit is put off, for up
# to MAX_HOLD seconds, and the rows are held: each is first written to the reservation journal
# (`on_hold`, ~2.5 µs a row), so a crash still loses none of them and the next start writes
# them exactly (spendgate.budgets.recovery). A read's flush, close(), HOLD_ROWS rows or a journal
# that cannot take them commit at once. HOLD_ROWS is COMMIT_ROWS: a commit's fixed cost is that of
# journaling ~4,000 rows, so holding pays at every rate (200 until the twenty-seventh part, when a
# held row cost ~11 µs; at ~100 requests/s every 2 s commit of ~200 rows then cost ~65 µs a row).
HOLD_ROWS = COMMIT_ROWS
MAX_HOLD = 30.0  # seconds a held row waits at most (spendgate_ledger_lag_seconds reads up to this)


class DuckDBLedger:
    """The DuckDB-backed ledger with its single writer thread."""

    def __init__(
        self,
        path: Path | str,
        *,
        commit_interval: float = COMMIT_INTERVAL,
        on_written: Callable[[list[LedgerRow]], None] | None = None,
        on_spill: Callable[[list[LedgerRow]], None] | None = None,
        on_hold: Callable[[list[LedgerRow]], None] | None = None,
        max_pending: int = bounds.MAX_PENDING_ROWS,
        threads: int | None = None,
        hold_rows: int = HOLD_ROWS,
        max_hold: float = MAX_HOLD,
    ) -> None:
        self.path = Path(path)
        self.con = connect_private(self.path)
        # DuckDB runs a query on as many threads as there are cores. In the gateway's process that
        # lets one dashboard query over a month of rows take every core from the proxy; keep one
        # core for traffic (DuckDB releases the GIL while it works, so cores are what it competes for)
        self.con.execute(f"SET threads = {int(threads or query_threads())}")
        migrate(self.con)
        rollups.heal(self.con)  # rows written behind the writer's back: summed again before any report
        self.on_written = on_written
        self.on_spill = on_spill  # takes rows past max_pending while writes fail (to disk); may raise OSError
        self.on_hold = on_hold  # keeps rows whose commit is put off (to disk, HOLD_ROWS); None: never put off
        self.hold_rows = hold_rows
        self.max_hold = max_hold
        self._held_since: float | None = None  # monotonic time the oldest held row was first put off
        self.max_pending = max_pending
        self.stats = WriterStats()
        self._cur = self.con.cursor()  # the writer thread's own
        self._appenders = Appenders(self._cur)  # and its Appenders, reused from commit to commit
        self._cards: set[str] = set()  # card ids known to be in price_cards (the writer thread's)
        self._unwritten: list[LedgerRow] = []  # rows a failed write kept for the next try
        # rollup buckets written since the last compaction (spendgate.store.rollups.compact)
        self._touched: tuple[set[datetime], set[datetime]] = (set(), set())
        self._compacted_at = time.monotonic()
        self._writer: Batcher[LedgerRow] = Batcher(self._write, commit_interval, "spendgate-ledger", COMMIT_ROWS,
                                                    min(FLUSH_GAP, commit_interval))

    # -- producer side (any thread, the event loop included: never blocks) --
    def append(self, row: LedgerRow) -> None:
        bounds.clip_row(row)  # traffic-supplied strings never reach the file at full length
        self._writer.put(row)

    def flush(self, timeout: float = 5.0, paced: bool = False) -> bool:
        """Wait until everything appended so far is committed (shutdown, tests, a read: `paced`, then
        no sooner than FLUSH_GAP after the last commit)."""
        return self._writer.flush(timeout, paced)

    def close(self) -> None:
        self._writer.close()
        self._compact()
        self._appenders.close()
        if self._unwritten:
            log.error("ledger closed with %d rows it could not write: %s", len(self._unwritten), self.stats.last_error)
        try:
            self.con.close()
        except Exception:
            log.exception("closing ledger")

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for reads from another thread of this process."""
        return self.con.cursor()

    # -- the writer thread --
    def _write(self, batch: list[LedgerRow]) -> bool:
        """Commit a batch; on failure keep it (and say so) for the next round: returns False."""
        rows = self._unwritten + batch
        if not rows:
            return True
        if self._hold(rows, batch):
            return False  # the batcher comes back every interval until they are committed
        try:
            try:
                write_cards(self._cur, rows, self._cards)
                write_rows(self._cur, rows, appenders=self._appenders)
            except (duckdb.ConversionException, duckdb.InvalidInputException, UnicodeError, OverflowError):
                # a value no column can hold (a lone surrogate, an absurd number): one row must not
                # stop every later one; store the batch with such values made storable
                rows = [storable(r) for r in rows]
                write_rows(self._cur, rows, appenders=self._appenders)
        except Exception as e:  # disk full, file gone: keep the rows, say so loudly, retry
            if len(rows) > self.max_pending:  # memory stays bounded: the oldest go to disk elsewhere
                rows = self._spill(rows[: len(rows) - self.max_pending]) + rows[len(rows) - self.max_pending:]
            self._unwritten = rows
            self.stats.failures += 1
            self.stats.total_failures += 1
            self.stats.last_error = f"{type(e).__name__}: {e}"
            self.stats.pending = len(rows)
            log.error("ledger write failed (%d rows kept in memory, will retry): %s", len(rows), e)
            time.sleep(min(0.1 * self.stats.failures, 2.0))
            return False
        self._unwritten = []
        self._held_since = None
        for r in rows:
            self._touched[0].add(rollups.floor_day(r.ts))
            self._touched[1].add(rollups.floor_month(r.ts))
        if time.monotonic() - self._compacted_at > COMPACT_EVERY or len(self._touched[0]) > 64:
            self._compact()
        self.stats.written += len(rows)
        self.stats.batches += 1
        self.stats.pending = 0
        if self.stats.failures:
            log.warning("ledger writes recovered after %d failures", self.stats.failures)
            self.stats.failures = 0
        if self.on_written:
            try:
                self.on_written(rows)
            except Exception:
                log.exception("ledger listener failed")
        return True

    def _hold(self, rows: list[LedgerRow], batch: list[LedgerRow]) -> bool:
        """Put a timed commit of `rows` off (HOLD_ROWS); True when they are held, `batch` (the rows
        not held before) journaled by `on_hold` first. Never when a flush or close() waits, while
        writes fail, at HOLD_ROWS rows, after MAX_HOLD seconds, or when `on_hold` raises."""
        if (self.on_hold is None or self._writer.awaited or self.stats.failures or len(rows) >= self.hold_rows
                or (self._held_since is not None and time.monotonic() - self._held_since >= self.max_hold)):
            return False
        if batch:
            try:
                self.on_hold(batch)
            except Exception as e:  # noqa: BLE001 -- whatever stops the journal, the commit goes ahead
                log.warning("ledger: the journal cannot hold %d rows (%s); committing them now", len(batch), e)
                return False
        if self._held_since is None:
            self._held_since = time.monotonic()
        self._unwritten = rows  # not stats.pending: that counts what a failing store keeps
        return True

    def _compact(self) -> None:
        """Fold the rollup rows of the buckets written since last time (writer thread, or close).
        Only an optimisation: sums are exact either way, so a failure is logged and retried later."""
        days, months = self._touched
        if not days:
            return
        try:
            self._cur.execute("BEGIN")
            try:
                rollups.compact(self._cur, days, months)
                self._cur.execute("COMMIT")
            except BaseException:
                self._cur.execute("ROLLBACK")
                raise
        except Exception:
            log.exception("ledger: compacting the rollups failed (they stay exact; will retry)")
            return
        finally:
            self._compacted_at = time.monotonic()
        self._touched = (set(), set())

    def _spill(self, rows: list[LedgerRow]) -> list[LedgerRow]:
        """Hand rows to on_spill; returns what could not be spilled and must be dropped (counted)."""
        try:
            if self.on_spill is None:
                raise OSError("no spill target")
            self.on_spill(rows)
            self.stats.spilled += len(rows)
        except Exception as e:
            self.stats.lost += len(rows)
            log.error("ledger: %d rows could neither be written nor spilled (%s); they are lost", len(rows), e)
        return []

    @property
    def healthy(self) -> bool:
        return self.stats.failures == 0


_INT64 = 2**63 - 1
_DECIMAL_MAX = Decimal("9999999999")  # DECIMAL(20, 10)


def storable(row: LedgerRow) -> LedgerRow:
    """The row with values its columns can hold: text without lone surrogates, integers within
    BIGINT, amounts within DECIMAL(20, 10) (else None: unknown rather than wrong). Logged."""
    changed = {}
    for name in COLUMNS:
        v = getattr(row, name)
        if isinstance(v, str):
            fixed = bounds.clip(v, len(v))
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int):
            fixed = max(min(v, _INT64), -_INT64)
        elif isinstance(v, Decimal):
            fixed = v if v.is_finite() and abs(v) <= _DECIMAL_MAX else None
        else:
            continue
        if fixed != v:
            changed[name] = fixed
    if not changed:
        return row
    log.error("ledger row %s had values no column can hold (%s); stored them cleaned", row.request_id[:64],
              ", ".join(sorted(changed)))
    return replace(row, **changed)


def write_cards(cur: duckdb.DuckDBPyConnection, rows: Sequence[LedgerRow], known: set[str]) -> None:
    """Store the rate cards of `rows` not yet in `price_cards` (before the rows: a row never
    points at a missing card). `known` is the caller's cache of ids already stored."""
    new = {r.price_card: r.card_json for r in rows if r.price_card and r.card_json and r.price_card not in known}
    if not new:
        return
    cur.executemany("INSERT INTO price_cards (card_id, card) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    list(new.items()))
    if len(known) > 100_000:  # bounded: forgetting only costs a redundant INSERT ... DO NOTHING
        known.clear()
    known.update(new)


class Appenders:
    """DuckDB Appenders of one cursor, kept from one commit to the next (one thread only).

    Creating an Appender costs ~1 ms of CPU (the table's description is looked up and bound);
    the writer thread appends to seven tables (rows and six rollups) on every commit, so reusing
    them halves the CPU of a commit. An Appender flushed inside a transaction appends in that
    transaction, like a new one would. After any failure `reset()` drops them all (an Appender
    that failed mid-flush may hold rows of a rolled-back batch); `close()` at shutdown.
    """

    def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
        self.cur = cur
        self._apps: dict[str, Any] = {}

    def get(self, table: str, columns: Sequence[str]) -> Any:
        app = self._apps.get(table)
        if app is None:
            app = self._apps[table] = self.cur.appender(table, columns=list(columns))
        return app

    def reset(self) -> None:
        """Drop every Appender, discarding what it still holds (`clear`): the batch it held is
        rolled back and retried, and nothing of it may reach a later autocommit. (DuckDB 2's
        Python Appender has `flush` and `clear`, no `close`.)"""
        apps, self._apps = self._apps, {}
        for app in apps.values():
            try:
                app.clear()
            except Exception:  # noqa: BLE001 -- it failed already; what it held goes with the rolled-back batch
                log.debug("clearing a failed Appender", exc_info=True)

    close = reset


def write_rows(cur: duckdb.DuckDBPyConnection, rows: Iterable[LedgerRow], *, in_transaction: bool = False,
               appenders: Appenders | None = None) -> None:
    """Append rows and add their sums to the rollups, in one transaction (spendgate.store.rollups).

    Amounts are first made what the DECIMAL(20, 10) columns store (`rollups.exact`), so the sums
    the rollups get are the sums of the stored values. The Appender converts rows holding the GIL;
    in small slices the proxy's event loop (same process) gets the GIL back between them instead
    of stalling for a whole batch. `in_transaction`: the caller holds a transaction already (and
    commits it with its own statements, e.g. the centre's idempotency keys). `appenders`: the
    caller's Appenders of `cur` to reuse (the ledger's writer thread); reset here on failure.
    """
    rows = list(rows)
    for r in rows:
        for name in _AMOUNTS:
            v = getattr(r, name)
            if v is not None:
                setattr(r, name, rollups.exact(v))
    values = [_values(r) for r in rows]
    if not in_transaction:
        cur.execute("BEGIN")
    try:
        app = appenders.get("requests", COLUMNS) if appenders is not None else cur.appender("requests",
                                                                                            columns=list(COLUMNS))
        for i in range(0, len(values), APPEND_SLICE):
            app.append_rows(values[i : i + APPEND_SLICE])
        app.flush()
        rollups.apply_rows(cur, rows, appenders)
        if not in_transaction:
            cur.execute("COMMIT")
    except BaseException:
        if appenders is not None:
            appenders.reset()
        if not in_transaction:
            cur.execute("ROLLBACK")
        raise


_AMOUNTS = ("cost_usd", "charged_usd", "notional_usd")
