"""The shared store for several gateway replicas: budget counters, reservations and the ledger in PostgreSQL.

One DuckDB file belongs to one process, so N replicas behind a load balancer would each enforce
the whole cap. With `--set spendgate_store=postgresql://...` the counters live here instead and
every replica admits against the same rows:

* admission is one round trip to `spendgate_admit()`, a server-side function that creates missing
  window rows, locks every covering counter in one global order (scope, window, window_start --
  so two admissions never deadlock) and reserves on all of them or on none;
* settlement is one transaction in `spendgate_settle()`, keyed by the request id: the ledger row
  is inserted and the reservation swapped for the actual charge together; a replayed settle is a
  no-op, and a settle after the reaper charged the request `interrupted` corrects that charge;
* every reservation carries a lease its replica renews; `spendgate_reap_one()` (safe on every
  replica: SKIP LOCKED) charges an expired one as an `interrupted` ledger row.

The store knows nothing of policies: callers pass (scope, window, window_start, limit) tuples and
an amount in USD, plus the policy's sha256 for the record. Nothing here runs on the proxy's event
loop; callers use worker threads. Errors reaching the server raise `StoreUnavailable`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from spendgate.store import pg_rollups, rollups
from spendgate.store.ledger import COLUMNS, LedgerRow

log = logging.getLogger(__name__)

Key = tuple[str, str, datetime]  # (scope, window, window start)

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "counters, reservations, the ledger; admission, settlement and reaping functions",
        """
        CREATE TABLE counters (
            scope TEXT NOT NULL,
            "window" TEXT NOT NULL,
            window_start TIMESTAMPTZ NOT NULL,
            spent NUMERIC(20, 10) NOT NULL DEFAULT 0,
            reserved NUMERIC(20, 10) NOT NULL DEFAULT 0,
            PRIMARY KEY (scope, "window", window_start)
        ) WITH (fillfactor = 50);  -- room on each page for HOT updates: counters are rewritten on every request
        -- one row per admitted request; the same amount is reserved on every listed counter
        CREATE TABLE reservations (
            request_id TEXT PRIMARY KEY,
            scopes TEXT[] NOT NULL,
            windows TEXT[] NOT NULL,
            starts TIMESTAMPTZ[] NOT NULL,
            amount NUMERIC(20, 10) NOT NULL,
            owner TEXT NOT NULL,              -- the replica that admitted it and renews its lease
            lease_expires TIMESTAMPTZ NOT NULL,
            policy_sha256 TEXT,
            state TEXT NOT NULL DEFAULT 'open',  -- open | settled | reaped
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            record JSONB NOT NULL DEFAULT '{}'  -- what an `interrupted` row needs (provider, model, user...)
        );
        CREATE INDEX reservations_expiring ON reservations (lease_expires) WHERE state = 'open';
        CREATE INDEX reservations_owner ON reservations (owner) WHERE state = 'open';
        CREATE INDEX reservations_closed ON reservations (created_at) WHERE state <> 'open';
        CREATE TABLE requests (
            ts TIMESTAMPTZ NOT NULL,
            request_id TEXT PRIMARY KEY,
            provider TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            model TEXT,
            "user" TEXT NOT NULL,
            key_fingerprint TEXT,
            client TEXT NOT NULL,
            session_id TEXT,
            stream BOOLEAN NOT NULL,
            status INTEGER,
            outcome TEXT NOT NULL,
            estimated BOOLEAN NOT NULL,
            input_tokens BIGINT NOT NULL,
            cache_read_tokens BIGINT NOT NULL,
            cache_write_tokens BIGINT NOT NULL,
            cache_write_1h_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            reasoning_tokens BIGINT NOT NULL,
            web_search_requests BIGINT NOT NULL,
            cost_usd NUMERIC(20, 10),
            price_source TEXT NOT NULL,
            latency_ms DOUBLE PRECISION,
            ttft_ms DOUBLE PRECISION,
            identity_source TEXT NOT NULL,
            workspace TEXT,
            price_detail TEXT,
            note TEXT,
            bytes_in BIGINT NOT NULL,
            bytes_out BIGINT NOT NULL,
            charged_usd NUMERIC(20, 10),
            replica TEXT,                       -- which gateway replica recorded it
            degraded BOOLEAN                    -- admitted on a replica's local allowance while the store was away
        );
        CREATE INDEX requests_ts ON requests (ts);
        -- grants made on any replica; every replica pulls the active ones into its GrantBook
        CREATE TABLE grants (
            id TEXT PRIMARY KEY,
            request_id TEXT,
            ts TIMESTAMPTZ NOT NULL,
            scope TEXT NOT NULL,
            "window" TEXT NOT NULL,
            amount_usd NUMERIC(20, 10) NOT NULL,
            starts TIMESTAMPTZ NOT NULL,
            until TIMESTAMPTZ NOT NULL,
            granted_by TEXT NOT NULL,
            replica TEXT
        );
        CREATE INDEX grants_until ON grants (until);
        -- an alert fires once for all replicas: the first to insert its key announces it
        CREATE TABLE alerts_fired (
            scope TEXT NOT NULL,
            "window" TEXT NOT NULL,
            window_start TIMESTAMPTZ NOT NULL,
            kind TEXT NOT NULL,
            threshold NUMERIC(10, 4) NOT NULL,
            ts TIMESTAMPTZ NOT NULL,
            spent_usd NUMERIC(20, 10),
            limit_usd NUMERIC(20, 10),
            replica TEXT,
            PRIMARY KEY (scope, "window", window_start, kind, threshold)
        );

        -- Reserve p_amount on every (scope, window, start) or on none. One row per budget, in
        -- the caller's order: its counter after the call, and `refused` on the first budget
        -- without room (then nothing was reserved). p_create: some window may be new (the
        -- caller has not seen all these counters yet); without it a missing row raises P0002
        -- and the caller retries with it. Three statements on the hot path: lock-and-read,
        -- update, insert the reservation (a replayed request id fails on its primary key).
        CREATE FUNCTION spendgate_admit(
            p_request_id TEXT, p_scopes TEXT[], p_windows TEXT[], p_starts TIMESTAMPTZ[], p_limits NUMERIC[],
            p_amount NUMERIC, p_owner TEXT, p_lease_seconds DOUBLE PRECISION, p_policy TEXT, p_record JSONB,
            p_create BOOLEAN DEFAULT true
        ) RETURNS TABLE (ord INT, spent NUMERIC, reserved NUMERIC, refused BOOLEAN)
        LANGUAGE plpgsql AS $$
        DECLARE
            v_refused BIGINT;
            v_n INT := 0;
            v_spent NUMERIC[] := '{}';
            v_reserved NUMERIC[] := '{}';
            rec RECORD;
            i INT;
        BEGIN
            IF p_create THEN  -- new windows first (sorted), so the locks below always find their rows
                INSERT INTO counters AS c (scope, "window", window_start)
                SELECT DISTINCT k.s, k.w, k.t FROM unnest(p_scopes, p_windows, p_starts) AS k(s, w, t)
                ORDER BY 1, 2, 3
                ON CONFLICT DO NOTHING;
            END IF;
            -- one global lock order (scope, window, window_start): no two admissions can deadlock
            FOR rec IN
                SELECT k.o, k.l, c.spent AS s, c.reserved AS r FROM counters c
                JOIN unnest(p_scopes, p_windows, p_starts, p_limits) WITH ORDINALITY AS k(s, w, t, l, o)
                  ON c.scope = k.s AND c."window" = k.w AND c.window_start = k.t
                ORDER BY c.scope, c."window", c.window_start
                FOR UPDATE OF c
            LOOP
                v_n := v_n + 1;
                v_spent[rec.o] := rec.s;
                v_reserved[rec.o] := rec.r;
                IF (rec.l <= 0 OR rec.s + rec.r + p_amount > rec.l) AND (v_refused IS NULL OR rec.o < v_refused) THEN
                    v_refused := rec.o;
                END IF;
            END LOOP;
            IF v_n < cardinality(p_scopes) THEN
                RAISE EXCEPTION 'spendgate: counter rows missing' USING ERRCODE = 'P0002';
            END IF;
            IF v_refused IS NOT NULL AND EXISTS (SELECT 1 FROM reservations r WHERE r.request_id = p_request_id) THEN
                v_refused := NULL;  -- a replay of an admitted request (its reservation fills the room)
                p_amount := 0;
            ELSIF v_refused IS NULL THEN
                UPDATE counters c SET reserved = c.reserved + p_amount
                FROM (SELECT DISTINCT s, w, t FROM unnest(p_scopes, p_windows, p_starts) AS u(s, w, t)) k
                WHERE c.scope = k.s AND c."window" = k.w AND c.window_start = k.t;
                INSERT INTO reservations (request_id, scopes, windows, starts, amount, owner, lease_expires,
                                          policy_sha256, record)
                VALUES (p_request_id, p_scopes, p_windows, p_starts, p_amount, p_owner,
                        now() + make_interval(secs => p_lease_seconds), p_policy, p_record);
            END IF;
            FOR i IN 1 .. cardinality(p_scopes) LOOP
                ord := i;
                spent := v_spent[i];
                reserved := v_reserved[i] + CASE WHEN v_refused IS NULL THEN p_amount ELSE 0 END;
                refused := (i = v_refused);
                RETURN NEXT;
            END LOOP;
        END;
        $$;

        -- The ledger row and the counter settlement in one transaction, keyed by request id.
        -- Returns 'settled', 'corrected' (the reaper had charged it interrupted), 'duplicate'
        -- (replayed: nothing changed), 'recorded' (no reservation: the row only) or 'charged'
        -- (no reservation, but counters given: a request admitted while the store was away).
        CREATE FUNCTION spendgate_settle(p_request_id TEXT, p_actual NUMERIC, p_row JSONB,
                                         p_scopes TEXT[] DEFAULT NULL, p_windows TEXT[] DEFAULT NULL,
                                         p_starts TIMESTAMPTZ[] DEFAULT NULL)
        RETURNS TEXT LANGUAGE plpgsql AS $$
        DECLARE
            r reservations%ROWTYPE;
            v_result TEXT := 'recorded';
        BEGIN
            SELECT * INTO r FROM reservations WHERE request_id = p_request_id FOR UPDATE;
            IF FOUND THEN
                IF r.state = 'settled' THEN
                    RETURN 'duplicate';
                END IF;
                PERFORM 1 FROM counters c
                JOIN unnest(r.scopes, r.windows, r.starts) AS k(s, w, t)
                  ON c.scope = k.s AND c."window" = k.w AND c.window_start = k.t
                ORDER BY c.scope, c."window", c.window_start
                FOR UPDATE OF c;
                IF r.state = 'open' THEN
                    UPDATE counters c SET reserved = greatest(0, c.reserved - r.amount), spent = c.spent + p_actual
                    FROM (SELECT DISTINCT s, w, t FROM unnest(r.scopes, r.windows, r.starts) AS u(s, w, t)) k
                    WHERE c.scope = k.s AND c."window" = k.w AND c.window_start = k.t;
                    v_result := 'settled';
                ELSE  -- reaped: it was charged its reservation; charge what it really cost instead
                    UPDATE counters c SET spent = c.spent - r.amount + p_actual
                    FROM (SELECT DISTINCT s, w, t FROM unnest(r.scopes, r.windows, r.starts) AS u(s, w, t)) k
                    WHERE c.scope = k.s AND c."window" = k.w AND c.window_start = k.t;
                    DELETE FROM requests WHERE request_id = p_request_id AND outcome = 'interrupted';
                    v_result := 'corrected';
                END IF;
                UPDATE reservations SET state = 'settled' WHERE request_id = p_request_id;
            ELSIF EXISTS (SELECT 1 FROM requests WHERE request_id = p_request_id) THEN
                RETURN 'duplicate';
            ELSIF p_scopes IS NOT NULL AND cardinality(p_scopes) > 0 THEN
                INSERT INTO counters AS c (scope, "window", window_start)
                SELECT DISTINCT k.s, k.w, k.t FROM unnest(p_scopes, p_windows, p_starts) AS k(s, w, t)
                ORDER BY 1, 2, 3
                ON CONFLICT DO NOTHING;
                PERFORM 1 FROM counters c
                JOIN unnest(p_scopes, p_windows, p_starts) AS k(s, w, t)
                  ON c.scope = k.s AND c."window" = k.w AND c.window_start = k.t
                ORDER BY c.scope, c."window", c.window_start
                FOR UPDATE OF c;
                UPDATE counters c SET spent = c.spent + p_actual
                FROM (SELECT DISTINCT s, w, t FROM unnest(p_scopes, p_windows, p_starts) AS u(s, w, t)) k
                WHERE c.scope = k.s AND c."window" = k.w AND c.window_start = k.t;
                v_result := 'charged';
            END IF;
            IF p_row IS NOT NULL THEN
                INSERT INTO requests SELECT * FROM jsonb_populate_record(NULL::requests, p_row)
                ON CONFLICT (request_id) DO NOTHING;
            END IF;
            RETURN v_result;
        END;
        $$;

        -- Charge one expired reservation (its replica stopped renewing) as an `interrupted` row.
        -- Safe on every replica at once: SKIP LOCKED hands each expired reservation to one.
        CREATE FUNCTION spendgate_reap_one(p_replica TEXT) RETURNS TEXT
        LANGUAGE plpgsql AS $$
        DECLARE
            r reservations%ROWTYPE;
        BEGIN
            SELECT * INTO r FROM reservations
            WHERE state = 'open' AND lease_expires < now()
            ORDER BY lease_expires LIMIT 1
            FOR UPDATE SKIP LOCKED;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            PERFORM 1 FROM counters c
            JOIN unnest(r.scopes, r.windows, r.starts) AS k(s, w, t)
              ON c.scope = k.s AND c."window" = k.w AND c.window_start = k.t
            ORDER BY c.scope, c."window", c.window_start
            FOR UPDATE OF c;
            UPDATE counters c SET reserved = greatest(0, c.reserved - r.amount), spent = c.spent + r.amount
            FROM (SELECT DISTINCT s, w, t FROM unnest(r.scopes, r.windows, r.starts) AS u(s, w, t)) k
            WHERE c.scope = k.s AND c."window" = k.w AND c.window_start = k.t;
            UPDATE reservations SET state = 'reaped' WHERE request_id = r.request_id;
            INSERT INTO requests (ts, request_id, provider, endpoint, model, "user", key_fingerprint, client,
                session_id, stream, status, outcome, estimated, input_tokens, cache_read_tokens,
                cache_write_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens, web_search_requests,
                cost_usd, price_source, identity_source, workspace, note, bytes_in, bytes_out, charged_usd, replica,
                degraded)
            VALUES (coalesce((r.record->>'ts')::timestamptz, r.created_at), r.request_id,
                coalesce(r.record->>'provider', 'unknown'), coalesce(r.record->>'endpoint', 'unknown'),
                r.record->>'model', coalesce(r.record->>'user', 'unattributed'), r.record->>'key_fingerprint',
                coalesce(r.record->>'client', 'other'), r.record->>'session_id',
                coalesce((r.record->>'stream')::boolean, false), NULL, 'interrupted', true, 0, 0, 0, 0, 0, 0, 0,
                NULL, 'reservation', coalesce(r.record->>'identity_source', 'unknown'), r.record->>'workspace',
                'replica ' || r.owner || ' stopped renewing its lease before the response ended; '
                    || 'charged its reservation (reaped by ' || p_replica || ')',
                coalesce((r.record->>'bytes_in')::bigint, 0), 0, r.amount, p_replica, false)
            ON CONFLICT (request_id) DO NOTHING;
            RETURN r.request_id;
        END;
        $$;
        """,
    ),
    (
        2,
        "ledger columns added since: step-downs, traces, billing basis, modality tokens, modifiers",
        """
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS requested_model TEXT;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS trace_id TEXT;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS span_id TEXT;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS billing_basis TEXT DEFAULT 'api';
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS credential TEXT;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS notional_usd NUMERIC(20, 10);
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS plan TEXT;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS input_audio_tokens BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS input_image_tokens BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS input_video_tokens BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS cache_read_audio_tokens BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS output_audio_tokens BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS output_image_tokens BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS output_video_tokens BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS modifiers TEXT;
        """,
    ),
    (
        3,
        "laptops reporting to a centre (origin, offline); increase requests, decisions and the audit trail shared",
        """
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS origin TEXT;      -- the laptop gateway that metered it
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS offline BOOLEAN DEFAULT false;  -- admitted while the centre was away
        CREATE INDEX IF NOT EXISTS requests_origin ON requests (origin) WHERE origin IS NOT NULL;
        -- the workflow tables every replica shares (spendgate.workflow.sharing): same columns as DuckDB's
        CREATE TABLE IF NOT EXISTS increase_requests (
            id TEXT PRIMARY KEY,
            ts TIMESTAMPTZ NOT NULL,
            requester TEXT NOT NULL,
            scope TEXT NOT NULL,
            "window" TEXT NOT NULL,
            amount_usd NUMERIC(20, 10) NOT NULL,
            reason TEXT NOT NULL,
            spent_usd NUMERIC(20, 10),
            limit_usd NUMERIC(20, 10),
            window_end TIMESTAMPTZ NOT NULL,
            replica TEXT DEFAULT substr(current_setting('application_name'), 11)
        );
        CREATE TABLE IF NOT EXISTS request_decisions (
            request_id TEXT PRIMARY KEY,      -- one decision per request, whichever replica makes it first
            ts TIMESTAMPTZ NOT NULL,
            decision TEXT NOT NULL,
            actor TEXT NOT NULL,
            amount_usd NUMERIC(20, 10),
            until TIMESTAMPTZ,
            note TEXT,
            replica TEXT DEFAULT substr(current_setting('application_name'), 11)
        );
        CREATE TABLE IF NOT EXISTS audit (
            seq BIGSERIAL PRIMARY KEY,
            ts TIMESTAMPTZ NOT NULL,
            event TEXT NOT NULL,
            actor TEXT NOT NULL,
            scope TEXT,
            ref TEXT,
            detail TEXT,
            replica TEXT DEFAULT substr(current_setting('application_name'), 11)
        );
        CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
        ALTER TABLE grants ALTER COLUMN replica SET DEFAULT substr(current_setting('application_name'), 11);
        """,
    ),
    (
        4,
        "slim rows: each row keeps its rate card's id, each card is stored once (spendgate.pricing.cards)",
        """
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS price_card TEXT;
        CREATE TABLE IF NOT EXISTS price_cards (
            card_id TEXT PRIMARY KEY,
            card TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        5,
        "quantities priced per unit of time or text: audio seconds, input characters",
        """
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS audio_seconds BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS input_characters BIGINT DEFAULT 0;
        """,
    ),
    (
        6,
        "the ledger partitioned by month; day and month rollups kept by a trigger (spendgate/store/pg_rollups.py)",
        pg_rollups.migration_sql(),
    ),
    (
        7,
        "rollups per model and per user as well, for reports read from the store (spendgate/store/pg_read.py)",
        pg_rollups.families_migration_sql(),
    ),
    (
        8,
        "billing lines (`reconcile import|fetch --store`) and the price audit (`prices reprice --store`), as in DuckDB",
        """
        CREATE TABLE IF NOT EXISTS billing_lines (
            line_id TEXT PRIMARY KEY,         -- the line's natural key: an import is an upsert
            provider TEXT NOT NULL,
            source TEXT NOT NULL,
            kind TEXT NOT NULL,
            day DATE NOT NULL,
            bucket_start TIMESTAMPTZ NOT NULL,
            amount_usd NUMERIC(20, 10),
            model TEXT,
            workspace TEXT,
            api_key TEXT,
            description TEXT,
            input_tokens BIGINT NOT NULL,
            cache_read_tokens BIGINT NOT NULL,
            cache_write_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            requests BIGINT,
            imported_at TIMESTAMPTZ NOT NULL
        );
        CREATE INDEX IF NOT EXISTS billing_lines_day ON billing_lines (day);
        -- `spendgate prices reprice --store`: each changed row's previous money, kept before the update
        CREATE TABLE IF NOT EXISTS price_audit (
            repriced_at TIMESTAMPTZ NOT NULL,
            run_id TEXT NOT NULL,
            request_id TEXT NOT NULL,
            ts TIMESTAMPTZ NOT NULL,
            "user" TEXT NOT NULL,
            model TEXT,
            old_cost_usd NUMERIC(20, 10),
            new_cost_usd NUMERIC(20, 10),
            old_charged_usd NUMERIC(20, 10),
            new_charged_usd NUMERIC(20, 10),
            old_outcome TEXT,
            new_outcome TEXT,
            old_price_source TEXT,
            new_price_source TEXT,
            old_price_detail TEXT,
            price_version TEXT NOT NULL,
            old_notional_usd NUMERIC(20, 10),
            new_notional_usd NUMERIC(20, 10),
            old_price_card TEXT,
            new_price_card TEXT,
            replica TEXT DEFAULT substr(current_setting('application_name'), 11)
        );
        CREATE INDEX IF NOT EXISTS price_audit_request ON price_audit (request_id);
        """,
    ),
    (
        9,
        "laptops at a centre of replicas: where pushed rows were charged (one offline allowance), the roster",
        """
        -- a pushed row's bounded charge (spendgate/central/charging.py), as DuckDB's central_ingested keeps it:
        -- the time whose windows it was charged in when not its own ts, and false when charged to its user only
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS charged_at TIMESTAMPTZ;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS shared BOOLEAN;
        -- the offline allowance spent per user and window, summed by every replica (spendgate/store/pg_central.py)
        CREATE INDEX IF NOT EXISTS requests_offline ON requests ("user", ts) WHERE offline;
        -- the laptops that called in on any replica (spendgate/central/roster.py); updated_at: server time of the
        -- last write, so each replica reads only what changed since its last look
        CREATE TABLE IF NOT EXISTS central_laptops (
            "user" TEXT NOT NULL,
            origin TEXT NOT NULL,
            first_seen TIMESTAMPTZ NOT NULL,
            last_seen TIMESTAMPTZ NOT NULL,
            last_push TIMESTAMPTZ,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY ("user", origin)
        );
        CREATE INDEX IF NOT EXISTS central_laptops_updated ON central_laptops (updated_at);
        """,
    ),
    (
        10,
        "covering indexes for the year-long unpriced report (spendgate/store/pg_rollups.py)",
        pg_rollups.report_indexes_sql(),
    ),
    (
        11,
        "generated media priced per image or per second of video: images, video seconds",
        """
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS output_images BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS output_video_seconds BIGINT DEFAULT 0;
        ALTER TABLE requests ADD COLUMN IF NOT EXISTS output_video_high_res_seconds BIGINT DEFAULT 0;
        """,
    ),
    (
        12,
        "the store's settings: the time zone its budget windows are keyed in (spendgate.budgets.shared.rezone)",
        """
        CREATE TABLE IF NOT EXISTS store_settings (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        """,
    ),
]


def _in_flight_bound(v1: str) -> str:
    """Store migration 13: the in-flight bound (budgets.book.in_flight_refusal) in the store's own
    functions. Counters and reservations gain `exposure` (USD a reservation may cost past its amount
    at worst); `spendgate_admit` takes `p_exposure`, refuses while the requests in flight could take
    a budget past its cap, and says so (`waiting`); settlement and the reaper release the exposure.
    The functions are edited from what the store has (admission: migration 1's text; settlement and
    the reaper: their definitions in the store, which migration 10 edited too), so none drifts apart."""

    def function(name: str) -> str:
        start = v1.index(f"CREATE FUNCTION {name}(")
        return v1[start:v1.index("$$;", v1.index("AS $$", start) + 5) + 3]

    def edited(text: str, *changes: tuple[str, str]) -> str:
        for old, new in changes:
            if old not in text:  # migration 1 was edited: this edit must follow it
                raise RuntimeError(f"store migration 13: {old!r} is not in {text[:40]!r}")
            text = text.replace(old, new)
        return text

    admit = edited(
        function("spendgate_admit"),
        ("p_create BOOLEAN DEFAULT true\n        ) RETURNS TABLE (ord INT, spent NUMERIC, reserved NUMERIC, refused BOOLEAN)",
         "p_create BOOLEAN DEFAULT true, p_exposure NUMERIC DEFAULT 0\n        ) RETURNS TABLE (ord INT, spent NUMERIC, "
         "reserved NUMERIC, refused BOOLEAN, waiting BOOLEAN)"),
        ("v_refused BIGINT;", "v_refused BIGINT;\n            v_waiting BOOLEAN := false;"),
        ("c.spent AS s, c.reserved AS r FROM", "c.spent AS s, c.reserved AS r, c.exposure AS x FROM"),
        ("IF (rec.l <= 0 OR rec.s + rec.r + p_amount > rec.l) AND (v_refused IS NULL OR rec.o < v_refused) THEN\n"
         "                    v_refused := rec.o;",
         "IF (rec.l <= 0 OR rec.s + rec.r + p_amount > rec.l\n"
         "                    OR (rec.r > 0 AND rec.s + rec.r + rec.x + p_amount + p_exposure > rec.l))\n"
         "                   AND (v_refused IS NULL OR rec.o < v_refused) THEN\n"
         "                    v_refused := rec.o;\n"
         "                    v_waiting := NOT (rec.l <= 0 OR rec.s + rec.r + p_amount > rec.l);"),
        ("SET reserved = c.reserved + p_amount", "SET reserved = c.reserved + p_amount, exposure = c.exposure + p_exposure"),
        ("(request_id, scopes, windows, starts, amount, owner,", "(request_id, scopes, windows, starts, amount, exposure, owner,"),
        ("VALUES (p_request_id, p_scopes, p_windows, p_starts, p_amount, p_owner,",
         "VALUES (p_request_id, p_scopes, p_windows, p_starts, p_amount, p_exposure, p_owner,"),
        ("refused := (i = v_refused);", "refused := (i = v_refused);\n                waiting := (i = v_refused) AND v_waiting;"),
    )
    # settlement and the reaper as the store has them now (migration 10 edited them too): edited in place
    release = """
        DO $do$
        DECLARE f TEXT;
        BEGIN
            FOR f IN SELECT pg_get_functiondef(p.oid) FROM pg_proc p
                     WHERE p.proname IN ('spendgate_settle', 'spendgate_reap_one') LOOP
                IF position('SET reserved = greatest(0, c.reserved - r.amount),' IN f) = 0 THEN
                    RAISE EXCEPTION 'spendgate: migration 13 cannot find where a reservation is released';
                END IF;
                EXECUTE replace(f, 'SET reserved = greatest(0, c.reserved - r.amount),',
                    'SET reserved = greatest(0, c.reserved - r.amount), exposure = greatest(0, c.exposure - r.exposure),');
            END LOOP;
        END;
        $do$;"""
    return "\n".join((
        "ALTER TABLE counters ADD COLUMN exposure NUMERIC(20, 10) NOT NULL DEFAULT 0;",
        "ALTER TABLE reservations ADD COLUMN exposure NUMERIC(20, 10) NOT NULL DEFAULT 0;",
        "DROP FUNCTION spendgate_admit(TEXT, TEXT[], TEXT[], TIMESTAMPTZ[], NUMERIC[], NUMERIC, TEXT, DOUBLE PRECISION, "
        "TEXT, JSONB, BOOLEAN);",
        admit, release))


MIGRATIONS.append((13, "the in-flight bound: what reservations may cost past their amount (exposure)",
                   _in_flight_bound(MIGRATIONS[0][2])))


def _held_exposure() -> str:
    """Store migration 14: a queued background response holds its exposure until its result is
    fetched (budgets.book.BudgetBook.hold), as a reservation of nothing whose `record` says `hold`.
    `spendgate_admit` counts exposure held with nothing reserved as in flight, and the reaper
    releases an expired hold without an `interrupted` row (it charged nothing, and its response's
    row is in the ledger already). Both edited in place, as migration 13 edited them."""
    return """
        DO $do$
        DECLARE f TEXT;
        BEGIN
            SELECT pg_get_functiondef(p.oid) INTO f FROM pg_proc p WHERE p.proname = 'spendgate_admit';
            IF position('OR (rec.r > 0 AND rec.s' IN f) = 0 THEN
                RAISE EXCEPTION 'spendgate: migration 14 cannot find the in-flight rule in spendgate_admit';
            END IF;
            EXECUTE replace(f, 'OR (rec.r > 0 AND rec.s', 'OR ((rec.r > 0 OR rec.x > 0) AND rec.s');
            SELECT pg_get_functiondef(p.oid) INTO f FROM pg_proc p WHERE p.proname = 'spendgate_reap_one';
            IF position('INSERT INTO requests (ts, request_id,' IN f) = 0 THEN
                RAISE EXCEPTION 'spendgate: migration 14 cannot find the interrupted row in spendgate_reap_one';
            END IF;
            EXECUTE replace(f, 'INSERT INTO requests (ts, request_id,',
                'IF r.record ? ''hold'' THEN  -- a hold (migration 14): its exposure released, nothing charged
                RETURN r.request_id;
            END IF;
            INSERT INTO requests (ts, request_id,');
        END;
        $do$;"""


MIGRATIONS.append((14, "background responses hold their exposure until fetched", _held_exposure()))
SCHEMA_VERSION = max(v for v, _, _ in MIGRATIONS)
MIGRATION_LOCK = 0x5E4D6A7E  # pg_advisory_xact_lock key: two `store migrate` runs take turns
REQUESTS_LOCK = 0x5E4D6A7F  # pg_advisory_lock key: one replica at a time files an increase request
CATCH_UP_LOCK = 0x5E4D6A80  # pg_advisory_lock key: one replica at a time charges counters from the ledger
# (a new time zone's windows, a policy's new budgets: spendgate.budgets.shared.catch_up)


HOLD_LIMIT = Decimal("1000000000")  # USD: the limit a hold is admitted under (its work runs already)
# the longest a background response holds its worst case (budgets.admission.HeldEstimates; here its
# replica stops renewing it after this long, and the reaper releases it)
HOLD_SECONDS = 3600.0


class StoreError(RuntimeError):
    """The store cannot be used as configured (bad URL, schema not migrated); the message says what to do."""


class StoreUnavailable(StoreError):
    """The server did not answer in time (down, unreachable, overloaded)."""


def redact(url: str) -> str:
    """The URL without its password, for messages and logs: the user info's password (up to the
    LAST `@` of the authority, so a password holding `@` or `/` is hidden whole) and a libpq
    `password=` query parameter (fourth attacker review)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    main, q, query = rest.partition("?")
    if "@" in main:
        userinfo, _, host = main.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        main = f"{user}{colon and ':***'}@{host}"
    query = re.sub(r"(^|&)(password=)[^&]*", r"\1\2***", query, flags=re.IGNORECASE)
    return f"{scheme}://{main}{q}{query}"


def replica_name() -> str:
    """This process's id in `reservations.owner`: host, pid and a random suffix (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _json_value(v: Any) -> Any:
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    return v


def row_json(row: LedgerRow, replica: str | None = None, degraded: bool = False) -> dict[str, Any]:
    out = {c: _json_value(getattr(row, c)) for c in COLUMNS}
    if row.card_json:  # not a column (jsonb_populate_record ignores it): the outbox keeps it for the card
        out["card_json"] = row.card_json
    out["replica"] = replica
    out["degraded"] = degraded
    return out


def row_from_json(d: dict[str, Any]) -> LedgerRow:
    """The inverse of `row_json` (the local outbox keeps rows as JSON lines)."""
    out: dict[str, Any] = {}
    for c in COLUMNS:
        if c not in d:  # written before the column existed: the field's default
            continue
        v = d.get(c)
        if c == "ts":
            v = datetime.fromisoformat(v)
        elif c in ("cost_usd", "charged_usd", "notional_usd") and v is not None:
            v = Decimal(v)
        out[c] = v
    return LedgerRow(**out, card_json=d.get("card_json"))


@dataclass(frozen=True, slots=True)
class CounterState:
    spent: Decimal
    reserved: Decimal
    refused: bool = False
    waiting: bool = False  # refused only for the requests in flight (budgets.book.in_flight_refusal)


class PostgresStore:
    """A connection pool and the store's operations; every method may raise StoreUnavailable.

    `timeout` (seconds) bounds how long a caller waits for a connection, and is the connect
    timeout; `statement_timeout` (seconds) bounds any one statement, lock waits included. Both
    short on purpose: an unreachable store must turn into a quick 503, not a hung request.
    """

    def __init__(
        self,
        url: str,
        *,
        replica: str | None = None,
        lease_seconds: float = 30.0,
        timeout: float = 2.0,
        statement_timeout: float = 5.0,
        pool_size: int = 8,
    ) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError:  # pragma: no cover - an install without the extra
            raise StoreError("the PostgreSQL store needs psycopg: pip install 'spendgate[postgresql]'") from None
        self._psycopg = psycopg
        self.url = url
        self.replica = replica or replica_name()
        self.lease_seconds = lease_seconds
        self.hold_seconds = HOLD_SECONDS
        self.timeout = timeout
        self._known: set[Key] = set()  # counter rows known to exist (rows are never deleted)
        self._cards: set[str] = set()  # rate card ids known to be in price_cards
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=timeout,
            open=False,
            name="spendgate-store",
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, round(timeout)),
                "options": f"-c statement_timeout={int(statement_timeout * 1000)}",
                # names the replica: the shared workflow tables' `replica` column defaults to it
                "application_name": f"spendgate {self.replica}"[:63],
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 2,
            },
            # give a lost server up after a few seconds: the next request then connects at once,
            # rather than after an exponential back-off as long as the outage was
            reconnect_timeout=5.0,
        )

    # -- life cycle --
    def open(self, wait: bool = True) -> "PostgresStore":
        try:
            self.pool.open(wait=wait, timeout=self.timeout + 1)
        except Exception as e:
            self.pool.close()
            raise StoreUnavailable(f"cannot reach the store {redact(self.url)}: {_why(e)}") from None
        return self

    def close(self) -> None:
        self.pool.close(timeout=2)

    def _run(self, sql: str, params: Sequence[Any] = (), *, fetch: str = "all") -> Any:
        with self._connection() as con:
            cur = con.execute(sql, params)
            if fetch == "all":
                return cur.fetchall()
            if fetch == "one":
                return cur.fetchone()
            return cur.rowcount

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled (autocommit) connection; the pool's wait and the server's failures as StoreUnavailable."""
        from psycopg_pool import PoolTimeout

        try:
            with self.pool.connection() as con:
                yield con
        except PoolTimeout as e:
            raise StoreUnavailable(f"the store {redact(self.url)} did not answer within {self.timeout:g} s: "
                                   f"{_why(e)}") from None
        except self._psycopg.OperationalError as e:
            raise StoreUnavailable(f"the store {redact(self.url)} failed: {_why(e)}") from None

    # -- schema --
    def schema_version(self) -> int:
        row = self._run("SELECT to_regclass('spendgate_schema_migrations') IS NOT NULL", fetch="one")
        if not row[0]:
            return 0
        return self._run("SELECT coalesce(max(version), 0) FROM spendgate_schema_migrations", fetch="one")[0]

    def check_schema(self) -> int:
        """Raises StoreError unless the schema is exactly the one this code was written for."""
        have = self.schema_version()
        if have < SCHEMA_VERSION:
            raise StoreError(
                f"the store {redact(self.url)} has schema version {have}, this gateway needs {SCHEMA_VERSION}; "
                f"run `spendgate store migrate --store URL` first (migrations are not applied at start-up, so "
                f"replicas of different versions never race to change the schema)")
        if have > SCHEMA_VERSION:
            raise StoreError(
                f"the store {redact(self.url)} has schema version {have}, newer than this gateway knows "
                f"({SCHEMA_VERSION}); upgrade spendgate on this replica")
        return have

    def migrate(self) -> tuple[int, int]:
        """Apply the migrations not yet applied, each in its own transaction; (before, after)."""
        try:
            with self.pool.connection() as con:
                with con.transaction():
                    con.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
                    con.execute("CREATE TABLE IF NOT EXISTS spendgate_schema_migrations ("
                                "version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
                                "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
                before = con.execute("SELECT coalesce(max(version), 0) FROM spendgate_schema_migrations").fetchone()[0]
                if before > SCHEMA_VERSION:
                    raise StoreError(f"the store has schema version {before}, newer than this spendgate "
                                     f"({SCHEMA_VERSION}); upgrade spendgate")
                current = before
                for version, description, sql in MIGRATIONS:
                    with con.transaction():
                        con.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
                        done = con.execute("SELECT 1 FROM spendgate_schema_migrations WHERE version = %s",
                                           [version]).fetchone()
                        if done:
                            continue
                        con.execute(sql)
                        con.execute("INSERT INTO spendgate_schema_migrations (version, description) VALUES (%s, %s)",
                                    [version, description])
                        current = version
                return before, current
        except self._psycopg.OperationalError as e:
            raise StoreUnavailable(f"the store {redact(self.url)} failed: {_why(e)}") from None

    # -- admission and settlement --
    def admit(
        self,
        request_id: str,
        budgets: Sequence[tuple[str, str, datetime, Decimal]],
        amount: Decimal,
        *,
        policy_sha256: str | None = None,
        record: dict[str, Any] | None = None,
        exposure: Decimal = Decimal(0),
    ) -> list[CounterState]:
        """Reserve `amount` (USD) on every budget or none: one CounterState per budget, in order.
        `exposure`: what the request may cost past `amount` at worst (the in-flight bound)."""
        from psycopg import errors
        from psycopg.types.json import Jsonb

        keys = [(b[0], b[1], b[2]) for b in budgets]
        create = not self._known.issuperset(keys)  # a window this replica has not seen: create its rows
        params = [request_id, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
                  [b[3] for b in budgets], amount, self.replica, float(self.lease_seconds), policy_sha256,
                  Jsonb(record or {}, dumps=_dumps)]
        sql = ("SELECT ord, spent, reserved, refused, waiting "
               "FROM spendgate_admit(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
        try:
            rows = self._run(sql, [*params, create, exposure])
        except errors.NoDataFound:  # rows removed behind our back: create them
            rows = self._run(sql, [*params, True, exposure])
        except errors.UniqueViolation:  # a replayed request id: already reserved, nothing changed
            got = self.counters(keys)
            return [CounterState(*got.get(k, (Decimal(0), Decimal(0)))) for k in keys]
        if len(self._known) > 100_000:  # old windows: forget, the next admission re-creates cheaply
            self._known.clear()
        self._known.update(keys)
        return [CounterState(spent, reserved, refused, waiting) for _ord, spent, reserved, refused, waiting in rows]

    def settle(self, request_id: str, actual: Decimal, row: LedgerRow | None,
               unreserved_keys: Sequence[Key] | None = None, degraded: bool | None = None,
               extra: dict[str, Any] | None = None) -> str:
        """Swap the reservation for `actual` USD and insert the ledger row, in one transaction.

        `unreserved_keys`: a request admitted without the store (fail_open_bounded, or a laptop's
        row ingested by the centre); when its row is new, `actual` is charged to these counters,
        once. `degraded` marks the row (default: whether `unreserved_keys` were given); `extra`
        sets the store's own columns of the row (migration 9: `charged_at`, `shared`).
        """
        from psycopg.types.json import Jsonb

        if degraded is None:
            degraded = unreserved_keys is not None
        payload = row_json(row, self.replica, degraded) if row is not None else None
        if payload is not None and extra:  # store-only columns (a pushed row's charged_at, shared)
            payload.update({k: _json_value(v) for k, v in extra.items()})
        if row is not None and row.price_card and row.card_json and row.price_card not in self._cards:
            # the card first (idempotent): a row never points at a missing card
            self._run("INSERT INTO price_cards (card_id, card) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                      [row.price_card, row.card_json], fetch="count")
            if len(self._cards) > 100_000:
                self._cards.clear()
            self._cards.add(row.price_card)
        keys = list(unreserved_keys or [])
        return self._run(
            "SELECT spendgate_settle(%s, %s, %s, %s::text[], %s::text[], %s::timestamptz[])",
            [request_id, actual, Jsonb(payload, dumps=_dumps) if payload else None,
             [k[0] for k in keys] if unreserved_keys is not None else None, [k[1] for k in keys],
             [k[2] for k in keys]], fetch="one")[0]

    def renew(self) -> int:
        """Extend the lease of every open reservation this replica owns (a hold only for its first
        `hold_seconds`: then the reaper releases it); how many."""
        return self._run(
            "UPDATE reservations SET lease_expires = now() + make_interval(secs => %s) "
            "WHERE owner = %s AND state = 'open' AND NOT (record ? 'hold' AND "
            "created_at < now() - make_interval(secs => %s))",
            [float(self.lease_seconds), self.replica, float(self.hold_seconds)], fetch="count")

    def release_hold(self, request_id: str) -> None:
        """Release a hold by id, from any replica; when there is none yet (its replica has not
        recorded the queued answer), leave it closed, so the hold made later is refused as a
        replay and never waits the hour (review 58 L2). Closed rows go after a day (forget_settled)."""
        self._run("INSERT INTO reservations (request_id, scopes, windows, starts, amount, owner, lease_expires, "
                  "state, record) VALUES (%s, '{}', '{}', '{}', 0, %s, now(), 'settled', '{\"hold\": true}') "
                  "ON CONFLICT (request_id) DO NOTHING", [request_id, self.replica], fetch="count")
        self.settle(request_id, Decimal(0), None)

    def hold(self, request_id: str, keys: Sequence[Key], exposure: Decimal) -> None:
        """Put `exposure` USD on the counters `keys` as a reservation of nothing named `request_id`,
        whatever their room (budgets.book.BudgetBook.hold); `settle(request_id, 0, None)` on any
        replica releases it, or the reaper `hold_seconds` after it was made."""
        self.admit(request_id, [(*k, HOLD_LIMIT) for k in keys], Decimal(0), record={"hold": True},
                   exposure=exposure)

    def reap(self, limit: int = 100) -> list[str]:
        """Charge up to `limit` expired reservations as `interrupted` (one transaction each)."""
        out = []
        for _ in range(limit):
            rid = self._run("SELECT spendgate_reap_one(%s)", [self.replica], fetch="one")[0]
            if rid is None:
                break
            out.append(rid)
        return out

    def ensure_partitions(self, ahead: int = 2) -> int:
        """Create the ledger's monthly partitions from last month (late rows) to `ahead` months on;
        how many were new."""
        return self._run("SELECT spendgate_ensure_partitions(%s, now() - interval '1 month')", [ahead + 1],
                         fetch="one")[0]

    def forget_settled(self, older_than_seconds: float = 86400.0) -> int:
        """Drop closed reservations after a day (the ledger row keeps the facts)."""
        return self._run("DELETE FROM reservations WHERE state <> 'open' AND created_at < now() - "
                         "make_interval(secs => %s)", [older_than_seconds], fetch="count")

    # -- grants and alerts --
    def publish_grant(self, g: dict[str, Any]) -> None:
        """Record a grant for every replica (idempotent by id)."""
        self._run('INSERT INTO grants (id, request_id, ts, scope, "window", amount_usd, starts, until, granted_by, '
                  "replica) VALUES (%(id)s, %(request_id)s, %(ts)s, %(scope)s, %(window)s, %(amount)s, %(starts)s, "
                  "%(until)s, %(granted_by)s, %(replica)s) ON CONFLICT (id) DO NOTHING",
                  {**g, "replica": self.replica}, fetch="count")

    def active_grants(self) -> list[dict[str, Any]]:
        """Grants not yet over, oldest first."""
        rows = self._run('SELECT id, request_id, scope, "window", amount_usd, starts, until, granted_by FROM grants '
                         "WHERE until > now() ORDER BY ts, id")
        names = ("id", "request_id", "scope", "window", "amount", "starts", "until", "granted_by")
        return [dict(zip(names, r)) for r in rows]

    @contextlib.contextmanager
    def exclusive(self, key: int) -> Iterator[None]:
        """Run a read-then-write section one replica at a time: a session advisory lock on a pooled
        connection of its own, held for the section and released on exit (or by the server when
        the connection drops). Waiting counts against the statement timeout. Raises
        StoreUnavailable when the store does not answer or the wait times out."""
        with self._connection() as con:
            con.execute("SELECT pg_advisory_lock(%s)", [key])
            try:
                yield
            finally:
                con.execute("SELECT pg_advisory_unlock(%s)", [key])

    def setting(self, name: str) -> str | None:
        row = self._run("SELECT value FROM store_settings WHERE name = %s", [name], fetch="one")
        return row[0] if row else None

    def set_setting(self, name: str, value: str) -> None:
        self._run("INSERT INTO store_settings (name, value) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE "
                  "SET value = excluded.value, updated_at = now()", [name, value], fetch="count")

    def charged_in_windows(self, starts: dict[str, datetime], *, statement_timeout: float = 60.0
                           ) -> tuple[list[tuple], dict[Key, Decimal]]:
        """What the ledger charged in each window (name -> its start: rows at or after it, `charged_at`
        where the centre charged a pushed row, else the row's own time), grouped as budgets name their
        scopes: (window, user, key, workspace, basis, plan, shared, USD); and the spent USD of every
        counter of those windows.

        Both read in one REPEATABLE READ snapshot, so a settlement (its row and its counters, one
        transaction: `settle`) is in both or in neither. A long read on purpose (a month of rows):
        `statement_timeout` seconds, for this transaction only. Raises StoreUnavailable."""
        names, at = list(starts), [starts[w] for w in starts]
        with self._connection() as con, con.transaction():
            con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            con.execute("SELECT set_config('statement_timeout', %s, true)", [f"{int(statement_timeout * 1000)}"])
            charged = con.execute(
                'SELECT w.name, r."user", r.key_fingerprint, r.workspace, r.billing_basis, r.plan, '
                "coalesce(r.shared, true), sum(r.charged_usd) FROM requests r "
                "JOIN unnest(%s::text[], %s::timestamptz[]) AS w(name, start) "
                "ON coalesce(r.charged_at, r.ts) >= w.start "
                "WHERE coalesce(r.charged_at, r.ts) >= %s AND r.charged_usd > 0 GROUP BY 1, 2, 3, 4, 5, 6, 7",
                [names, at, min(at)]).fetchall()
            counters = con.execute('SELECT c.scope, c."window", c.window_start, c.spent FROM counters c '
                                   "JOIN unnest(%s::text[], %s::timestamptz[]) AS w(name, start) "
                                   'ON c."window" = w.name AND c.window_start = w.start', [names, at]).fetchall()
        return charged, {(s, w, t): spent for s, w, t, spent in counters}

    def claim_alert(self, key: tuple[str, str, datetime, str, Decimal], spent: Decimal, limit: Decimal) -> bool:
        """True for the one replica that records this alert first; the others stay quiet."""
        row = self._run('INSERT INTO alerts_fired (scope, "window", window_start, kind, threshold, ts, spent_usd, '
                        "limit_usd, replica) VALUES (%s, %s, %s, %s, %s, now(), %s, %s, %s) "
                        "ON CONFLICT DO NOTHING RETURNING 1", [*key, spent, limit, self.replica], fetch="one")
        return row is not None

    # -- counters --
    def add(self, key: Key, amount: Decimal) -> None:
        self.add_each({key: amount})

    def add_each(self, amounts: dict[Key, Decimal]) -> None:
        """Add USD to each counter (made when missing), in one statement; rows locked in the order
        admissions lock them (scope, window, start), so the two never deadlock."""
        if not amounts:
            return
        keys = list(amounts)
        self._run('INSERT INTO counters AS c (scope, "window", window_start, spent) '
                  "SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::numeric[]) ORDER BY 1, 2, 3 "
                  "ON CONFLICT (scope, \"window\", window_start) DO UPDATE SET spent = c.spent + excluded.spent",
                  [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [amounts[k] for k in keys]],
                  fetch="count")

    def counters(self, keys: Sequence[Key]) -> dict[Key, tuple[Decimal, Decimal]]:
        if not keys:
            return {}
        rows = self._run(
            'SELECT c.scope, c."window", c.window_start, c.spent, c.reserved FROM counters c '
            "JOIN unnest(%s::text[], %s::text[], %s::timestamptz[]) AS k(s, w, t) "
            'ON c.scope = k.s AND c."window" = k.w AND c.window_start = k.t',
            [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]])
        return {(s, w, t): (spent, reserved) for s, w, t, spent, reserved in rows}

    def open_under_other_policy(self, policy_sha256: str) -> bool:
        """Whether any replica holds an open reservation admitted under another policy (its charge
        lands on that policy's budgets only: budgets.shared.catch_up_budgets)."""
        row = self._run("SELECT EXISTS (SELECT 1 FROM reservations WHERE state = 'open' AND "
                        "policy_sha256 IS DISTINCT FROM %s AND NOT record ? 'hold')",  # a hold charges nothing
                        [policy_sha256], fetch="one")
        return bool(row[0])

    def counters_since(self, since: datetime) -> list[tuple[Key, Decimal, Decimal]]:
        rows = self._run('SELECT scope, "window", window_start, spent, reserved FROM counters '
                         "WHERE window_start >= %s", [since])
        return [((s, w, t), spent, reserved) for s, w, t, spent, reserved in rows]

    def ledger_rows(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The newest ledger rows as dicts (tests, `spendgate ledger --store`)."""
        from psycopg.rows import dict_row

        try:
            with self.pool.connection() as con:
                with con.cursor(row_factory=dict_row) as cur:
                    return cur.execute("SELECT * FROM requests ORDER BY ts DESC LIMIT %s", [limit]).fetchall()
        except self._psycopg.OperationalError as e:
            raise StoreUnavailable(f"the store {redact(self.url)} failed: {_why(e)}") from None


    def copy_ledger(self, con: Any, since: datetime | None = None, *, until: datetime | None = None,
                    user: str | None = None) -> int:
        """Load the shared ledger into a DuckDB connection's `requests` table (read-side commands).

        Streams `COPY ... TO STDOUT (FORMAT csv)` into a private temporary file (0600, removed
        after) that DuckDB reads in one `read_csv`: fast for millions of rows, with the DuckDB
        queries unchanged. Returns the row count.
        """
        import tempfile

        cols = ", ".join(f'"{c}"' for c in COLUMNS)
        conds = [(c, v) for c, v in (("ts >= %s", since), ("ts < %s", until), ('"user" = %s', user)) if v]
        where = ("WHERE " + " AND ".join(c for c, _ in conds)) if conds else ""
        try:
            with tempfile.NamedTemporaryFile(prefix="spendgate-ledger-", suffix=".csv") as f:
                with self.pool.connection() as pc:
                    pc.execute("SET TimeZone = 'UTC'")
                    with pc.cursor() as cur:
                        with cur.copy(f"COPY (SELECT {cols} FROM requests {where}) TO STDOUT "
                                      "WITH (FORMAT csv, HEADER true)", [v for _, v in conds] or None) as copy:
                            for chunk in copy:
                                f.write(chunk)
                f.flush()
                con.execute(f"INSERT INTO requests ({cols}) SELECT {cols} FROM read_csv(?, header = true, "
                            "all_varchar = true)", [f.name])
            with self.pool.connection() as pc:  # the rate cards the rows point at (few: one per distinct card)
                cards = pc.execute("SELECT card_id, card FROM price_cards").fetchall()
            if cards:
                con.executemany("INSERT INTO price_cards (card_id, card) VALUES (?, ?) ON CONFLICT DO NOTHING", cards)
            rollups.rebuild(con)  # the copied rows summed, so the reports read them as from a file
        except self._psycopg.OperationalError as e:
            raise StoreUnavailable(f"the store {redact(self.url)} failed: {_why(e)}") from None
        return con.execute("SELECT count(*) FROM requests").fetchone()[0]


class StoreConflict(StoreError, ValueError):
    """An insert hit a row another replica wrote first (a request decided twice): nothing changed."""


class _Result:
    """What DuckDB's `execute` returns, as far as the workflow code reads it."""

    def __init__(self, description: Any, rows: list[tuple]) -> None:
        self.description = description or []
        self._rows = rows

    def fetchall(self) -> list[tuple]:
        return self._rows

    def fetchone(self) -> tuple | None:
        return self._rows[0] if self._rows else None

    def fetchmany(self, size: int) -> list[tuple]:
        """The next `size` rows (store.sql reads results in steps)."""
        out, self._rows = self._rows[:size], self._rows[size:]
        return out


class SharedCursor:
    """A DuckDB-cursor look-alike over the store, for the workflow tables every replica shares
    (increase_requests, request_decisions, grants, audit): the same SQL with `?` placeholders,
    one autocommit statement per call, results fetched at once. A duplicate key raises
    StoreConflict; an unreachable store StoreUnavailable."""

    def __init__(self, store: "PostgresStore") -> None:
        self.store = store

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Result:
        from psycopg import errors

        query = sql.replace("%", "%%").replace("?", "%s")
        try:
            with self.store.pool.connection() as con:
                cur = con.execute(query, list(params))
                rows = cur.fetchall() if cur.description else []
                return _Result(cur.description, rows)
        except errors.UniqueViolation as e:
            raise StoreConflict(f"already recorded by another replica: {_why(e)}") from None
        except self.store._psycopg.OperationalError as e:
            raise StoreUnavailable(f"the store {redact(self.store.url)} failed: {_why(e)}") from None

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        for r in rows:
            self.execute(sql, r)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_value, separators=(",", ":"))


def _why(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__
