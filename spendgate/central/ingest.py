"""The centre's side of laptop reporting: validate pushed rows, land each once, grant leases.

A laptop gateway POSTs batches of its ledger rows to `/api/ingest` with its user's spendgate
token. Everything in a row is client input, so every field is checked (type, range, length) and
the row is rebuilt from checked values only; a row that fails is rejected with the reason and the
rest of the batch still lands. Attribution is the token's, never the row's: a row naming
somebody else is re-attributed to the token's user (its note says so) and its workspaces are the
centre policy's for that user. The request id is the idempotency key: a replayed row is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from spendgate import bounds
from spendgate.budgets.book import BudgetBook
from spendgate.budgets.windows import WINDOWS
from spendgate.budgets.windows import bounds as window_bounds
from spendgate.central.charging import Charge, ChargePlanner
from spendgate.central.roster import SILENT_AFTER, Contact, Roster
from spendgate.identity import Identity
from spendgate.pricing import cards
from spendgate.pricing.rates import HELD_SOURCE_PREFIX, Pricer
from spendgate.store.ledger import COLUMNS, LedgerRow, write_cards, write_rows
from spendgate.workflow.sinks import Notice

log = logging.getLogger(__name__)

MAX_ROWS = 500  # rows per batch; a laptop sends at most this many per POST
MAX_BODY_BYTES = 4 * 1024 * 1024  # bytes of one ingest body (about 1.5 KB per row, with headroom)
MAX_USD = Decimal("100000")  # per row: more is not one LLM call, it is garbage
MAX_COUNT = 10**12  # tokens, bytes, searches per row
MAX_AGE = timedelta(days=400)  # older rows belong to a closed year's books, not a replay
MAX_SKEW = timedelta(minutes=10)  # a laptop clock this far ahead is refused (rows "from the future")
MAX_CARD_CHARS = 16_000  # a rate card: every rate with its tiers and source
BEYOND_ALERT_EVERY = timedelta(hours=1)  # beyond-lease alerts per user, at most
MAX_LEASE_USD = Decimal("50")  # the most room one lease hands out, whatever a laptop asks for
ORIGIN = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")  # a laptop's gateway id
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
WORD = re.compile(r"^[A-Za-z0-9_.:/+-]{1,64}$")  # provider, outcome, price_source, ... labels

_TEXT_LIMITS = {"endpoint": 256, "model": bounds.MODEL, "key_fingerprint": 128, "client": bounds.CLIENT,
                "session_id": bounds.SESSION_ID, "price_detail": 8000, "note": bounds.NOTE,
                "requested_model": bounds.MODEL, "trace_id": 32, "span_id": 16, "credential": 64, "plan": 128,
                "modifiers": 1000}
_WORDS_REQUIRED = ("provider", "outcome", "billing_basis")
_COUNTS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "output_tokens",
           "reasoning_tokens", "web_search_requests", "bytes_in", "bytes_out", "input_audio_tokens",
           "input_image_tokens", "input_video_tokens", "cache_read_audio_tokens", "output_audio_tokens",
           "output_image_tokens", "output_video_tokens", "audio_seconds", "input_characters",
           "output_images", "output_video_seconds", "output_video_high_res_seconds")
_MONEY = ("cost_usd", "charged_usd", "notional_usd")
_MILLIS = ("latency_ms", "ttft_ms")
_BOOLS = ("stream", "estimated", "offline")


class IngestError(ValueError):
    """The batch as a whole is refused (400: not a batch; 413: too large); nothing landed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class IngestResult:
    accepted: list[str] = field(default_factory=list)  # request ids landed now
    duplicates: list[str] = field(default_factory=list)  # request ids already landed: no-ops
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {index, request_id, error}
    reattributed: int = 0  # rows that named another user, charged to the token's
    late: int = 0  # rows counted at their receipt: older than charging.GRACE, not within offline_allowance
    beyond: int = 0  # rows charged to the user only: past the room the centre leases (charging.py)
    beyond_usd: Decimal = Decimal(0)

    def as_json(self) -> dict[str, Any]:
        return {"accepted": len(self.accepted), "duplicates": len(self.duplicates), "rejected": self.rejected,
                "reattributed": self.reattributed, "late": self.late, "beyond_lease": self.beyond,
                # the laptop marks these pushed: landed now or before; rejected ones it keeps and logs
                "acknowledged": self.accepted + self.duplicates}


def check_origin(value: Any) -> str:
    if not isinstance(value, str) or not ORIGIN.match(value):
        raise IngestError(400, "gateway_id must be 1-128 characters of letters, digits and ._:@-")
    return value


def _text(d: dict, name: str, limit: int, required: bool = False) -> str | None:
    v = d.get(name)
    if v is None:
        if required:
            raise ValueError(f"{name} is required")
        return None
    if not isinstance(v, str):
        raise ValueError(f"{name} must be a string")
    if required and not v:
        raise ValueError(f"{name} must not be empty")
    return bounds.clip(v, limit)


def _count(d: dict, name: str) -> int:
    v = d.get(name, 0)
    if v is None:
        v = 0
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_COUNT:
        raise ValueError(f"{name} must be a whole number from 0 to {MAX_COUNT}")
    return v


def _money(d: dict, name: str) -> Decimal | None:
    v = d.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise ValueError(f"{name} must be a decimal number of USD (a string or a number)")
    try:
        amount = Decimal(str(v))
    except InvalidOperation:
        raise ValueError(f"{name} is not a number: {str(v)[:40]!r}") from None
    if not amount.is_finite() or not Decimal(0) <= amount <= MAX_USD:
        raise ValueError(f"{name} must be from 0 to {MAX_USD} USD")
    return amount.quantize(Decimal("1e-10"))


def _millis(d: dict, name: str) -> float | None:
    v = d.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 86_400_000:
        raise ValueError(f"{name} must be milliseconds from 0 to one day")
    return float(v)


MAX_PUSHED_ROW_USD = Decimal("50")  # USD one pushed row may charge: more than any single agent call costs
_PRICED_AT_CENTRE = ("ok", "estimated", "unpriced")  # outcomes whose usage is billed (reprice.REPRICEABLE)


def centre_priced(row: LedgerRow, pricer: Pricer | None) -> LedgerRow:
    """A pushed API row priced by the centre from its usage, model and time; never the laptop's word
    for the amount when the centre knows the model (the laptop's figure is kept in the note when it
    differs). A row the centre cannot price keeps the laptop's amount. Either way one row charges at
    most MAX_PUSHED_ROW_USD. Subscription and $0-by-design rows (blocked, errors) are left as sent.
    """
    if pricer is not None and row.billing_basis == "api" and row.outcome in _PRICED_AT_CENTRE and row.model:
        try:
            modifiers = json.loads(row.modifiers) if row.modifiers else {}
        except ValueError:
            modifiers = {}
        usage = cards.usage_of({f: getattr(row, f) for f in COLUMNS})
        price = pricer.price(row.provider, row.model, usage, row.ts, None, modifiers if isinstance(modifiers, dict) else {})
        if price.cost is not None:
            said = row.charged_usd
            held = (row.price_source or "").startswith(HELD_SOURCE_PREFIX) and said is not None and said > price.cost
            row.cost_usd = row.charged_usd = price.cost
            if held:  # a background response running: the laptop's held charge stays (capped below)
                row.charged_usd = said
            row.outcome = "estimated" if row.estimated else "ok"
            row.price_source = f"{price.source} (priced at the centre)"
            row.price_card, row.card_json = cards.of_result(price)
            if said is not None and said != price.cost and not held:
                row.note = _noted(row.note, f"the laptop said ${said}")
    if row.charged_usd is not None and row.charged_usd > MAX_PUSHED_ROW_USD:
        row.note = _noted(row.note, f"charge capped at ${MAX_PUSHED_ROW_USD} (the row said ${row.charged_usd})")
        row.charged_usd = MAX_PUSHED_ROW_USD
    return row


def _noted(note: str | None, more: str) -> str:
    return bounds.clip((note + "; " if note else "") + more, bounds.NOTE)


def pushed_id(user: str, rid: str) -> str:
    """The centre's id for a row `user`'s laptop pushed as `rid`: the laptop's id in the pushing
    user's own namespace (``rid~<user fingerprint>``). A push can then never name a request metered
    anywhere else or pushed by someone else: it cannot settle (and so make free) another request's
    open reservation, nor land first so that the real row is turned away as a duplicate."""
    return f"{rid}~{hashlib.sha256(user.encode()).hexdigest()[:12]}"


def validate_row(d: Any, user: str, origin: str, workspaces: Sequence[str], now: datetime) -> tuple[LedgerRow, bool]:
    """A LedgerRow built from checked values only, charged to `user`; (row, re-attributed?).

    Raises ValueError naming the first bad field. Unknown keys are ignored (a newer laptop).
    """
    if not isinstance(d, dict):
        raise ValueError("a row must be a JSON object")
    rid = d.get("request_id")
    if not isinstance(rid, str) or not REQUEST_ID.match(rid):
        raise ValueError("request_id must be 8-128 characters of letters, digits and ._:-")
    raw_ts = d.get("ts")
    if not isinstance(raw_ts, str):
        raise ValueError("ts must be an ISO 8601 time string")
    try:
        ts = datetime.fromisoformat(raw_ts.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"ts is not an ISO 8601 time: {raw_ts[:40]!r}") from None
    if ts.tzinfo is None:
        raise ValueError("ts must carry a UTC offset")
    if not now - MAX_AGE <= ts <= now + MAX_SKEW:
        raise ValueError(f"ts {raw_ts[:40]} is more than {MAX_AGE.days} days old or in the future")
    values: dict[str, Any] = {"ts": ts.astimezone(UTC), "request_id": pushed_id(user, rid)}
    for name in _WORDS_REQUIRED:
        v = d.get(name, "api" if name == "billing_basis" else None)
        if not isinstance(v, str) or not WORD.match(v):
            raise ValueError(f"{name} must be a short label (letters, digits, _.:/+-)")
        values[name] = v
    values["endpoint"] = _text(d, "endpoint", _TEXT_LIMITS["endpoint"], required=True)
    values["client"] = _text(d, "client", _TEXT_LIMITS["client"], required=True)
    values["price_source"] = _text(d, "price_source", 200, required=True)
    for name, limit in _TEXT_LIMITS.items():
        if name not in values:
            values[name] = _text(d, name, limit)
    for name in _BOOLS:
        v = d.get(name, False)
        if not isinstance(v, bool):
            raise ValueError(f"{name} must be true or false")
        values[name] = v
    status = d.get("status")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599):
        raise ValueError("status must be an HTTP status code (100-599) or null")
    values["status"] = status
    for name in _COUNTS:
        values[name] = _count(d, name)
    for name in _MONEY:
        values[name] = _money(d, name)
    for name in _MILLIS:
        values[name] = _millis(d, name)
    claimed = d.get("user")
    if claimed is not None and not isinstance(claimed, str):
        raise ValueError("user must be a string")
    moved = claimed is not None and claimed != user
    note = values["note"]
    if moved:  # the token decides who pays; what the laptop said is kept for the record
        said = bounds.clip(claimed, bounds.USER)
        note = (note + "; " if note else "") + f"re-attributed to the token's user (the laptop said {said!r})"
    values.update(user=user, note=note, identity_source="token", workspace=",".join(workspaces) or None,
                  origin=origin)
    if values["charged_usd"] is None:
        values["charged_usd"] = values["cost_usd"] or Decimal(0)
    values["price_card"], values["card_json"] = _card(d)
    assert set(values) == set(COLUMNS) | {"card_json"}, set(COLUMNS) ^ set(values)
    return LedgerRow(**values), moved


def _card(d: dict) -> tuple[str, str] | tuple[None, None]:
    """The row's rate card (its price detail without the counts), re-encoded and re-hashed here:
    the id is ours to compute, never the laptop's word. (None, None) when there is none."""
    raw = d.get("card_json")
    if raw is None:
        return None, None
    if not isinstance(raw, str) or len(raw) > MAX_CARD_CHARS:
        raise ValueError(f"card_json must be a JSON string of at most {MAX_CARD_CHARS} characters")
    try:
        card = json.loads(raw)
    except ValueError:
        raise ValueError("card_json is not JSON") from None
    if not isinstance(card, dict):
        raise ValueError("card_json must be a JSON object")
    return cards.encode(card)


class Ingest:
    """Lands validated rows in this gateway's ledger and budget counters, once per request id.

    `cursor` gives a DuckDB cursor of the gateway's ledger; `book` its budget book (in memory or
    shared: with a shared store each row is settled there, charged to the counters once, in one
    transaction with the store's ledger row); `after_charge` fires alerts. One batch at a time.
    """

    def __init__(self, cursor: Callable[[], Any], book: BudgetBook,
                 after_charge: Callable[[Identity, LedgerRow], None] = lambda i, r: None,
                 pricer: Callable[[], Pricer | None] = lambda: None,
                 notify: Callable[[Notice], None] | None = None) -> None:
        self.cursor = cursor
        self.book = book
        self.after_charge = after_charge
        self.pricer = pricer  # the centre's own prices (reloaded with its pricing files)
        self.notify = notify  # the workflow's sinks: alerts about pushes past the lease, silent laptops
        self._lock = threading.Lock()
        # which laptops called in when (a silent one is noticed); shared by the replicas of a PostgreSQL store
        self.roster = Roster(cursor, getattr(book.store, "pg", None))
        self._checked_at: datetime | None = None
        self._beyond_told: dict[str, datetime] = {}  # user -> last beyond-lease alert

    def ingest(self, user: str, origin: Any, rows: Any, now: datetime | None = None) -> IngestResult:
        """Validate and land a batch pushed by `user`'s laptop `origin`. Raises IngestError for a bad batch."""
        origin = check_origin(origin)
        if not isinstance(rows, list):
            raise IngestError(400, "rows must be a JSON array of ledger rows")
        if len(rows) > MAX_ROWS:
            raise IngestError(413, f"at most {MAX_ROWS} rows per batch, got {len(rows)}")
        now = now or datetime.now(UTC)
        self.roster.touch(user, origin, now, pushed=True)
        policy = self.book.policy
        workspaces = policy.workspaces_of(user)
        out = IngestResult()
        good: dict[str, LedgerRow] = {}  # the laptop's id -> the row (under the centre's id, pushed_id)
        for i, d in enumerate(rows):
            try:
                row, moved = validate_row(d, user, origin, workspaces, now)
            except ValueError as e:
                rid = d.get("request_id") if isinstance(d, dict) else None
                out.rejected.append({"index": i, "request_id": rid if isinstance(rid, str) else None,
                                     "error": str(e)})
                continue
            if d["request_id"] in good:
                out.duplicates.append(d["request_id"])
                continue
            good[d["request_id"]] = centre_priced(row, self.pricer())
            out.reattributed += moved
        if not good:
            return out
        with self._lock:
            fresh = self._land(list(good.values()), now, user, workspaces)
        for rid, row in good.items():  # answered with the laptop's own ids: what its outbox knows
            (out.accepted if row.request_id in fresh else out.duplicates).append(rid)
            charge = fresh.get(row.request_id)
            if charge is not None:
                out.late += charge.late
                if not charge.shared:
                    out.beyond += 1
                    out.beyond_usd += row.charged_usd or Decimal(0)
        if out.beyond:
            self._alert_beyond(user, origin, out, now)
        ident = Identity(user=user, source="token", workspaces=workspaces)
        for row in good.values():
            if row.request_id in fresh and row.charged_usd:
                self.after_charge(ident, row)
        if out.rejected:
            log.warning("spendgate: ingest from %s (%s): %d rows rejected, first: %s", origin, user,
                        len(out.rejected), out.rejected[0]["error"])
        return out

    def _alert_beyond(self, user: str, origin: str, out: IngestResult, now: datetime) -> None:
        """Pushed spend past the lease: charged to the user only; the organization's owners are told,
        at most once an hour per user (a laptop pushing one such row per batch must not flood them, nor a
        token pushing under made-up laptop ids: the laptop id is the laptop's word; third review A6)."""
        text = (f"{user}'s laptop {origin} pushed {out.beyond} rows (${out.beyond_usd}) past the room the centre "
                f"leases; charged to {user} only, not to shared budgets. Review: spendgate ledger --user {user}")
        log.warning("spendgate: %s", text)
        last = self._beyond_told.get(user)
        if self.notify is None or (last is not None and now - last < BEYOND_ALERT_EVERY):
            return
        if len(self._beyond_told) >= 10_000:
            self._beyond_told.clear()
        self._beyond_told[user] = now
        from spendgate.workflow.alerts import recipients

        pol = self.book.policy
        try:
            self.notify(Notice(kind="alert", title=f"user:{user}: laptop spend beyond the centre's lease", text=text,
                               recipients=recipients(pol, f"organization:{pol.org_name}"),
                               payload={"alert": "beyond_lease", "scope": f"user:{user}", "origin": origin,
                                        "rows": out.beyond, "usd": float(out.beyond_usd)},
                               scope=f"user:{user}", ref=f"beyond_lease:{origin}"))
        except Exception:
            log.exception("spendgate: the beyond-lease alert failed")

    def check_silent(self, now: datetime | None = None, every: timedelta = timedelta(minutes=1)) -> list[Contact]:
        """Housekeeping: alert the organization's owners once about each laptop silent for
        roster.SILENT_AFTER (at most every `every`); the laptops alerted now."""
        now = now or datetime.now(UTC)
        if self._checked_at is not None and now - self._checked_at < every:
            return []
        self._checked_at = now
        try:
            self.roster.flush(now)  # last contacts not yet written: the table (and other replicas) see them
            if self.roster.pg is not None:  # what the other replicas saw since the last look
                self.roster.refresh()
            gone = self.roster.newly_silent(now)
        except Exception:  # the store is away: try again at the next check (nothing was marked)
            log.exception("spendgate: could not check the laptop roster")
            return []
        if not gone:
            return []
        hours = int(SILENT_AFTER.total_seconds() // 3600)
        names = ", ".join(f"{c.origin} ({c.user})" for c in gone[:20]) + (" ..." if len(gone) > 20 else "")
        text = (f"{len(gone)} laptops have not called the centre in {hours} hours or more: {names}. Their spend "
                "is not reported while they are silent. List them: spendgate laptops --silent")
        log.warning("spendgate: %s", text)
        if self.notify is not None:
            from spendgate.workflow.alerts import recipients

            pol = self.book.policy
            try:
                self.notify(Notice(kind="alert", title=f"{len(gone)} laptops silent for {hours} hours", text=text,
                                   recipients=recipients(pol, f"organization:{pol.org_name}"),
                                   payload={"alert": "laptops_silent", "scope": f"organization:{pol.org_name}",
                                            "laptops": [{"user": c.user, "origin": c.origin,
                                                         "last_seen": c.last_seen.isoformat()} for c in gone[:100]]},
                                   scope=f"organization:{pol.org_name}", ref=f"laptops_silent:{now.date()}"))
            except Exception:
                log.exception("spendgate: the silent-laptops alert failed")
        return gone

    def _land(self, rows: list[LedgerRow], now: datetime, user: str,
              workspaces: Sequence[str]) -> dict[str, Charge]:
        """Insert the rows not landed before (ledger + idempotency keys in one transaction) and charge
        them where `charging.ChargePlanner` says; the charges of the rows landed now, by request id."""
        cur = self.cursor()
        ids = [r.request_id for r in rows]
        seen = {r[0] for r in cur.execute("SELECT request_id FROM central_ingested "
                                          "WHERE request_id IN (SELECT unnest(?::VARCHAR[]))", [ids]).fetchall()}
        new = [r for r in rows if r.request_id not in seen]
        if not new:
            return {}
        shared = getattr(self.book.store, "pg", None)
        if shared is not None and self.book.policy.offline_allowance and any(r.offline for r in new):
            from spendgate.store import pg_central

            # the allowance is the store's (every replica's rows), and one batch of a user at a time
            # across replicas: N replicas give one allowance, not N
            with pg_central.user_lock(shared, user):
                return self._plan_and_land(cur, new, now, user, workspaces, shared,
                                           lambda s, e: pg_central.offline_spent(shared, user, s, e))
        return self._plan_and_land(cur, new, now, user, workspaces, shared, None)

    def _plan_and_land(self, cur: Any, new: list[LedgerRow], now: datetime, user: str, workspaces: Sequence[str],
                       shared: Any, offline_spent: Callable[[datetime, datetime], Decimal] | None
                       ) -> dict[str, Charge]:
        planner = ChargePlanner(self.book, cur, user, tuple(workspaces), now, offline_spent)
        charges = {r.request_id: planner.plan(r) for r in sorted(new, key=lambda r: r.ts)}
        if shared is not None:  # the store decides: a row it already has is a duplicate there too
            new = [r for r in new if self._settle_shared(r, charges[r.request_id]) != "duplicate"]
        if not new:
            return {}
        cur.execute("BEGIN")
        try:
            # one statement over lists: DuckDB's executemany costs milliseconds per row on a keyed table
            cur.execute('INSERT INTO central_ingested (request_id, ingested_at, origin, "user", charged_at, shared) '
                        "SELECT unnest(?::VARCHAR[]), ?, ?, ?, unnest(?::TIMESTAMPTZ[]), unnest(?::BOOLEAN[])",
                        [[r.request_id for r in new], now, new[0].origin, new[0].user,  # one batch: one origin, one user
                         [charges[r.request_id].at if charges[r.request_id].at != r.ts else None for r in new],
                         [charges[r.request_id].shared for r in new]])
            write_cards(cur, new, set())  # the cards first: a row never points at a missing card
            write_rows(cur, new, in_transaction=True)
            cur.execute("COMMIT")
        except Exception:
            cur.execute("ROLLBACK")
            raise
        if shared is None:  # in-memory counters: count them now (a restart rebuilds them: charging.correct_rebuilt)
            for r in new:
                if r.charged_usd:
                    c = charges[r.request_id]
                    self.book.charge(c.scopes, c.at, r.charged_usd)
        return {r.request_id: charges[r.request_id] for r in new}

    def _settle_shared(self, row: LedgerRow, charge: Charge) -> str:
        """A shared store: the row and its charge to every window's counters, once by request id."""
        pol = self.book.policy
        keys = [(scope, w, window_bounds(w, charge.at, pol.timezone)[0]) for scope in charge.scopes for w in WINDOWS]
        # where it was charged goes with the row (store migration 9): the offline allowance is summed from it
        return self.book.store.pg.settle(row.request_id, row.charged_usd or Decimal(0), row, keys, degraded=False,
                                         extra={"charged_at": charge.at if charge.at != row.ts else None,
                                                "shared": charge.shared})


def lease(book: BudgetBook, user: str, want: Any, now: datetime | None = None) -> dict[str, Any]:
    """Room a laptop of `user` may admit locally until its next lease: min(want, tightest room).

    Nothing is reserved on the centre (see docs/scale-out.md for the bound this gives). The
    tightest budget is named so the laptop's 429 names it too.
    """
    try:
        asked = Decimal(str(want))
    except InvalidOperation:
        raise IngestError(400, "want_usd must be a number of USD") from None
    if not asked.is_finite() or asked < 0:
        raise IngestError(400, "want_usd must be a number of USD >= 0")
    now = now or datetime.now(UTC)
    ident = Identity(user=user, source="token", workspaces=book.policy.workspaces_of(user))
    budgets = book.covering(ident, now)
    tight = book.tightest(budgets) if budgets else None
    grant = min(asked, MAX_LEASE_USD)
    out: dict[str, Any] = {"user": user, "granted_usd": None, "room_usd": None, "budget": None}
    if tight is not None:
        b, room = tight
        grant = max(Decimal(0), min(grant, room))
        out["room_usd"] = str(max(Decimal(0), room))  # uncapped: a request larger than the lease may still fit
        out["budget"] = {"scope": b.scope, "window": b.window, "limit_usd": str(b.limit),
                         "spent_usd": str(b.limit - room), "start": b.start.isoformat(), "end": b.end.isoformat()}
    out["granted_usd"] = str(grant)
    return out
