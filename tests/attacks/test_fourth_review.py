"""Fourth attacker review (branch attack2): the PostgreSQL store's read/write side, on a real
PostgreSQL (tests/support/postgres.py): `--store` read commands and a replica's admin routes that
read or write the shared store (docs/security.md, "Fourth attacker review")."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from spendgate.reconcile import import_lines_store
from spendgate.reports import registry
from spendgate.store import pg_read
from spendgate.store.postgres import PostgresStore
from tests.unit.test_pg_reprice import setup  # noqa: F401  (fixture)
from tests.unit.test_pg_store import row, store  # noqa: F401  (fixture)

D = Decimal


def _line(**over):
    base = {"line_id": "a" * 32, "provider": "anthropic", "source": "cost_report", "kind": "cost",
            "day": "2026-03-02", "bucket_start": "2026-03-02T00:00:00+00:00", "amount_usd": "1.25",
            "model": "claude-sonnet-4-5", "workspace": None, "api_key": None, "description": "ok",
            "input_tokens": 1, "cache_read_tokens": 0, "cache_write_tokens": 0, "output_tokens": 1,
            "requests": 1}
    return {**base, **over}


def _count(store: PostgresStore) -> int:  # noqa: F811
    return store._run("SELECT count(*) FROM billing_lines", fetch="one")[0]


@pytest.mark.parametrize("bad", [
    {"description": "nul \x00 byte"},          # PostgreSQL text holds no NUL (DuckDB's does)
    {"input_tokens": 10**30},                   # beyond BIGINT
    {"amount_usd": "1e999999"},                 # beyond NUMERIC's range
])
def test_f1_a_malformed_billing_line_is_a_clear_400_and_nothing_of_the_import_lands(store, bad):  # noqa: F811
    """A replica's /api/reconcile/import (and `reconcile import --store`): one line PostgreSQL refuses
    must be a ValueError (the admin API's 400), not a psycopg DataError (a 500 with a traceback),
    and the good lines of the same import must not land either."""
    good = _line(line_id="b" * 32)
    with pytest.raises(ValueError):
        import_lines_store(store, {"lines": [good, _line(**bad)]})
    assert _count(store) == 0


@pytest.mark.parametrize("name,params", [
    ("ledger", {"limit": "-1"}), ("blocks", {"limit": "-5"}), ("ledger", {"limit": "1e3"}),
    ("ledger", {"limit": str(10**20)}),
])
def test_f2_a_bad_limit_is_a_clear_400_on_the_store(store, name, params):  # noqa: F811
    """`?limit=` reaches PostgreSQL's LIMIT: a negative or out-of-range number must be a ValueError
    (400) before it is sent, not a psycopg error (500)."""
    cur = pg_read.ReadCursor(store)
    with pytest.raises(ValueError):
        registry.run_query(cur, name, params)


@pytest.mark.parametrize("prefix", ["%", "_", "'", "a%", "\\", "' OR '1'='1"])
def test_request_id_prefixes_with_like_metacharacters_match_nothing_on_the_store(store, prefix):  # noqa: F811
    """`spendgate explain` on the store: an id prefix is matched literally (starts_with), never as
    a LIKE pattern or as SQL."""
    store.settle("req-00000001", D("0.1"), row("req-00000001"))
    assert registry.run_query(pg_read.ReadCursor(store), "price_request", {"request_id": prefix}) is None


@pytest.mark.parametrize("by", ["user; DROP TABLE requests", '"user"', "1"])
def test_spend_by_is_a_closed_list_on_the_store(store, by):  # noqa: F811
    with pytest.raises(ValueError):
        registry.run_query(pg_read.ReadCursor(store), "spend", {"by": by})


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("argv", [["ledger"], ["spend", "--by", "user"], ["export", "--format", "csv", "--out", "{tmp}/x.csv"],
                                  ["reconcile", "report", "--since", "2026-03-01"], ["laptops"]])
def test_f3_a_store_that_is_away_answers_at_once_and_never_shows_its_password(argv, tmp_path):
    url = f"postgresql://spend:hunter2secret@127.0.0.1:{_dead_port()}/spendgate"
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "spendgate", *args, "--store", url], capture_output=True, text=True, check=False,
                       timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
                                                            "HOME": str(tmp_path)})
    took = time.monotonic() - t0
    out = p.stdout + p.stderr
    print(args, p.returncode, round(took, 1), out[-600:])
    assert p.returncode != 0
    assert "hunter2secret" not in out
    assert "Traceback" not in out


@pytest.mark.parametrize("url", [
    "postgresql://spend:hunter2secret@db.internal/spendgate",
    "postgresql://spend:hun@ter2secret@db.internal/spendgate",          # an @ in the password
    "postgresql://spend:hun/ter2secret@db.internal/spendgate",          # a / in the password
    "postgresql://db.internal/spendgate?sslmode=require&password=hunter2secret",  # libpq's query parameter
    "postgresql:///spendgate?host=/run/pg&PASSWORD=hunter2secret",
])
def test_f4_redact_hides_every_spelling_of_the_password(url):
    from spendgate.store.postgres import redact

    shown = redact(url)
    assert "ter2secret" not in shown and "hunter2" not in shown, shown
    assert "db.internal" in shown or "/run/pg" in shown  # still says which store


def test_f4_a_store_url_with_a_query_password_never_reaches_the_cli_output(tmp_path):

    url = f"postgresql://127.0.0.1:{_dead_port()}/spendgate?password=hunter2secret"
    p = subprocess.run([sys.executable, "-m", "spendgate", "ledger", "--store", url], capture_output=True, text=True, check=False,
                       timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
                                        "HOME": str(tmp_path)})
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "cannot reach the store" in out, out
    assert "hunter2secret" not in out, out


def test_f1_the_cli_import_of_a_bill_the_store_cannot_hold_says_why_and_lands_nothing(store, tmp_path, capsys):  # noqa: F811
    """`spendgate reconcile import bill.json --store URL`: a description with a NUL (valid JSON,
    valid in DuckDB) is refused by PostgreSQL; the CLI says so (exit 2, no traceback) and the
    bill's other lines do not land."""
    import json

    from spendgate.cli import main

    src = json.loads((__import__("pathlib").Path(__file__).parents[1] / "fixtures/billing/anthropic_cost_report.json")
                     .read_text())
    src["data"][0]["results"][0]["description"] = "Input Tokens\x00"
    bill = tmp_path / "bill.json"
    bill.write_text(json.dumps(src))
    rc = main(["reconcile", "import", str(bill), "--provider", "anthropic", "--store", store.url])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot hold" in err, err
    assert _count(store) == 0


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_f5_a_replica_whose_store_is_away_refuses_an_export_instead_of_a_partial_file(tmp_path, fmt):
    """/api/export on a replica exports the shared store (every replica's and laptop's rows). While
    the store is away it answered 200 with the file of this replica's own rows only: a partial
    export, indistinguishable from the company's. It must answer 503 (as reconciliation does)."""
    from types import SimpleNamespace

    from spendgate.store.ledger import connect, migrate, write_rows
    from spendgate.store.postgres import StoreUnavailable
    from spendgate.web.app import WebRequest, for_gateway

    con = connect(tmp_path / "replica.duckdb")
    migrate(con)
    write_rows(con, [row("own-00000001")])

    def away(name):
        raise StoreUnavailable("the store postgresql://u:***@db/x failed: connection refused")

    gw = SimpleNamespace(admin=SimpleNamespace(routes={}, post_routes={}, token="tok"),
                         policy=SimpleNamespace(raw={}, path=str(tmp_path / "p.yaml")), trace_url=None,
                         cursor=con.cursor, report_cursor=away, tokens=SimpleNamespace(verify=lambda t: None),
                         telemetry=None)
    resp = for_gateway(gw).handle(WebRequest("GET", f"/api/export?format={fmt}", {"authorization": "Bearer tok"}))
    assert resp.status == 503, resp.status
    assert b"unreachable" in resp.body


def test_f6_a_reprice_and_a_settlement_of_the_same_group_do_not_deadlock(setup):  # noqa: F811
    """Re-pricing the store updates rows (the rollup trigger locks their day/month groups) and THEN
    the shared counters; a settlement locks the counters and THEN inserts its row (the trigger locks
    the same groups). Same user, model and day: each waits for the other and PostgreSQL kills one
    (a settlement lost to a `deadlock detected` is reaped as `interrupted`). Driven deterministically:
    the settlement starts while the re-pricing holds its rows, and the re-pricing goes on only once
    the settlement waits on a lock."""
    import threading

    from spendgate.budgets import reprice_store
    from spendgate.policy.model import parse as parse_policy
    from spendgate.pricing.rates import Pricer
    from spendgate.usage import Usage
    from tests.unit.test_pg_reprice import POLICY
    from tests.unit.test_pricing import _row

    now, _con, st, url, folder, _ = setup
    pricer = Pricer(folder / "overrides.yaml")
    policy = parse_policy(POLICY)
    _, changes = reprice_store.plan(st, pricer, now - timedelta(days=10))
    r1 = next(c for c in changes if c.request_id == "r1")
    keys = sorted(reprice_store.counter_deltas([r1], policy, datetime.now(UTC)))
    assert keys  # r1's charge moves its user's current windows
    long = Usage(input_tokens=210_000, output_tokens=1_000)
    r7 = _row("r7", r1.ts, "claude-sonnet-4-20250514", long, D("0.645"))  # r1's rollup group, settling now
    watcher = PostgresStore(url).open()
    got: dict[str, object] = {}

    def settle() -> None:
        try:
            got["settle"] = st.settle("r7", D("0.645"), r7, unreserved_keys=keys)
        except Exception as e:  # noqa: BLE001  (the outcome is the assertion)
            got["settle"] = e

    real = reprice_store.counter_deltas
    t = threading.Thread(target=settle)

    def between(done, pol, at, charged=None):  # called inside apply's transaction: rows updated, counters not yet
        if not t.is_alive() and "settle" not in got:
            t.start()
            for _ in range(600):  # until the settlement waits on a lock (or finished: no conflict)
                waiting = watcher._run("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                       "AND position('spendgate_settle' in query) > 0", fetch="one")[0]
                if waiting or not t.is_alive():
                    got["waited"] = bool(waiting)
                    break
                time.sleep(0.05)
        return real(done, pol, at, charged)

    import unittest.mock

    try:
        with unittest.mock.patch.object(reprice_store, "counter_deltas", between):
            try:
                _, done, _ = reprice_store.apply(st, changes, pricer.version, policy, datetime.now(UTC))
                got["reprice"] = done
            except Exception as e:  # noqa: BLE001
                got["reprice"] = e
        t.join(60)
    finally:
        watcher.close()
    assert got["waited"], got  # the two really met: the settlement waited on the re-pricing's locks
    assert got["settle"] == "charged", got
    assert not isinstance(got["reprice"], Exception), got
    from tests.unit.test_pg_rollups import rollups_match_rows

    rollups_match_rows(st)  # the rollups hold r7 and the re-priced r1 exactly
    # r7's charge and r1's re-pricing delta both landed on the user's day counter, once each
    day = next(k for k in keys if k[1] == "day" and k[0].startswith("user:"))
    assert st.counters([day])[day][0] == D("0.645") + (r1.new_charged - r1.old_charged)


def test_an_engineer_on_a_replica_exports_and_reads_only_their_own_rows_of_the_store(store, tmp_path):  # noqa: F811
    """A replica whose reports read the shared store: an engineer's token gets their own rows in
    an export and a ledger (whatever `user=` they send), and a 403 on the organization's routes."""
    import json
    from types import SimpleNamespace

    from spendgate.policy.model import parse
    from spendgate.store.ledger import connect, migrate
    from spendgate.web.app import WebRequest, for_gateway
    from tests.unit.test_pg_store import POLICY

    for i, who in enumerate(["alice@acme.com", "bob@acme.com", "bob@acme.com"]):
        store.settle(f"req-{i:08d}", D("0.1"), row(f"req-{i:08d}", user=who))
    con = connect(tmp_path / "replica.duckdb")
    migrate(con)
    reader = pg_read.ReadCursor(store)
    gw = SimpleNamespace(admin=SimpleNamespace(routes={"/api/ledger": lambda p, c: registry.run_query(reader, "ledger", p),
                                                       "/api/laptops": lambda p, c: [], "/api/price_request": lambda p, c: {}},
                                               post_routes={"/api/reprice": lambda p, c: {}, "/api/reconcile/import": lambda p, c: {}},
                                               token="tok"),
                         policy=parse(POLICY, str(tmp_path / "p.yaml")), trace_url=None,
                         cursor=con.cursor, report_cursor=lambda name: reader,
                         tokens=SimpleNamespace(verify=lambda t: "alice@acme.com" if t == "eng" else None), telemetry=None)
    app = for_gateway(gw)
    eng = {"authorization": "Bearer eng"}
    resp = app.handle(WebRequest("GET", "/api/export?format=csv&user=bob@acme.com", eng))
    assert resp.status == 200
    lines = b"".join(resp.body).decode().splitlines()
    assert len(lines) == 2 and "alice@acme.com" in lines[1] and "bob@" not in "".join(lines)
    resp = app.handle(WebRequest("GET", "/api/ledger?user=bob@acme.com&limit=10", eng))
    assert resp.status == 200 and {r["user"] for r in json.loads(resp.body)} == {"alice@acme.com"}
    for path in ("/api/laptops", "/api/price_request?request_id=req"):
        assert app.handle(WebRequest("GET", path, eng)).status == 403
    for path in ("/api/reprice", "/api/reconcile/import"):
        assert app.handle(WebRequest("POST", path, eng, b'{"since": "2026-01-01"}')).status == 403


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "-Infinity", "sNaN"])
def test_f7_a_non_finite_amount_never_lands_in_the_stores_bills(store, amount):  # noqa: F811
    """PostgreSQL's NUMERIC holds NaN and +-Infinity (DuckDB's DECIMAL does not): a line posted to a
    replica's /api/reconcile/import with such an amount would land and turn every bill total of
    its provider into NaN. It must be refused (400), nothing of the import landed."""
    with pytest.raises(ValueError):
        import_lines_store(store, {"lines": [_line(line_id="c" * 32), _line(amount_usd=amount)]})
    assert _count(store) == 0


def test_reports_on_a_store_whose_server_zone_is_not_utc_match_the_file(postgres, tmp_path):
    """A DBA's `timezone` in postgresql.conf (here the database's, Pacific/Chatham: +13:45) must not
    move a report: every one reads the same on the store as on the file."""
    import random

    import duckdb

    from spendgate.reports import dashboard, queries
    from spendgate.store.ledger import migrate, write_rows
    from tests.unit.test_pg_reports import NOWS, _row, _since_values, _stamps

    rnd = random.Random(7)
    rows = [_row(i, ts, rnd) for i, ts in enumerate(_stamps(rnd))]
    con = duckdb.connect(str(tmp_path / "ledger.duckdb"))
    migrate(con)
    write_rows(con.cursor(), rows)
    url = postgres.create_database()
    dbname = url.rsplit("/", 1)[1]
    admin = PostgresStore(url).open()
    admin.migrate()
    admin._run(f"ALTER DATABASE \"{dbname}\" SET TimeZone = 'Pacific/Chatham'", fetch="count")
    admin.close()
    st = PostgresStore(url).open()  # new sessions: the database's zone
    for r in rows:
        st.settle(r.request_id, r.charged_usd or D(0), r)
    reader = pg_read.open_store(url)
    cur = pg_read.ReadCursor(reader)
    try:
        assert cur.execute("SHOW TimeZone").fetchone()[0] == "Pacific/Chatham"
        for now in NOWS:
            for window in ("month", "day"):
                assert dashboard.overview(cur, window, now) == dashboard.overview(con.cursor(), window, now), (now, window)
        for since in _since_values():
            for by in ("user", "model"):
                assert queries.spend(cur, by, since=since) == queries.spend(con.cursor(), by, since=since), (by, since)
        assert queries.ledger(cur, 100) == queries.ledger(con.cursor(), 100)
    finally:
        reader.close()
        st.close()
        con.close()


def test_f8_repricing_a_pushed_row_moves_the_counters_it_was_charged_to(store):  # noqa: F811
    """A laptop's row the centre charged at receipt (`charged_at`: a row stamped 3 days back counts
    today) and to its user only (`shared = false`: beyond the room of the shared budgets,
    spendgate/central/charging.py). Re-pricing it must move what it charged: the user's current
    day by the delta, and not the organization's, which it never charged."""
    from spendgate.budgets import reprice_store
    from spendgate.budgets.windows import bounds
    from spendgate.policy.model import parse as parse_policy
    from spendgate.pricing.rates import Pricer
    from spendgate.usage import Usage
    from tests.unit.test_pg_reprice import POLICY
    from tests.unit.test_pricing import REPO, _row

    policy = parse_policy(POLICY)
    now = datetime.now(UTC).replace(microsecond=0)
    r = _row("p1", now - timedelta(days=3), "claude-sonnet-4-20250514", Usage(input_tokens=210_000, output_tokens=1_000),
             D("0.645"))
    user_day = ("user:alice", "day", bounds("day", now, policy.timezone)[0])
    org_day = ("organization:acme", "day", bounds("day", now, policy.timezone)[0])
    # charged today, to alice only (the centre's ChargePlanner's answer for a late row beyond the room)
    assert store.settle("p1", D("0.645"), r, unreserved_keys=[user_day],
                        extra={"charged_at": now, "shared": False}) == "charged"
    # and one of today, charged to alice only (beyond the room)
    r2 = _row("p2", now - timedelta(minutes=1), "claude-sonnet-4-20250514",
              Usage(input_tokens=210_000, output_tokens=1_000), D("0.645"))
    assert store.settle("p2", D("0.645"), r2, unreserved_keys=[user_day], extra={"shared": False}) == "charged"
    before = store.counters([user_day, org_day])
    out = reprice_store.run(store, Pricer(REPO / "pricing" / "overrides.yaml"), now - timedelta(days=10),
                            dry_run=False, policy=policy, now=now)
    assert out["counters_moved"] >= 1, out
    delta = store._run("SELECT sum(charged_usd) FROM requests", fetch="one")[0] - 2 * D("0.645")
    assert delta != 0
    after = store.counters([user_day, org_day])
    assert after[user_day][0] == before[user_day][0] + delta  # today's charge follows the new price
    assert after.get(org_day, (D(0), D(0)))[0] == before.get(org_day, (D(0), D(0)))[0]  # never charged there
