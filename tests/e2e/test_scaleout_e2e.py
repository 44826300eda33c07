"""One budget across several gateway replicas: real mitmdump processes on one real PostgreSQL store.

Each replica has its own DuckDB file (its local copy of the ledger) and admits against the
counters in PostgreSQL, so the cap holds across all of them together. The store's own ledger
(the `requests` table) is read directly with psycopg: it is what the replicas share.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from decimal import Decimal

import anthropic
import httpx2
import psycopg
import pytest
from psycopg.rows import dict_row

from spendgate.store.postgres import SCHEMA_VERSION
from tests.support import ANTHROPIC_KEY, wait_until
from tests.support.gateway import GatewayError, _clean_env, free_port
from tests.support.webhook import Hook

MODEL = "claude-sonnet-4-5"
PROMPT = "x" * 7200  # ~1800 tokens by the gateway's estimate: the reservation covers the actual cost
ONE_REQUEST_USD = Decimal("0.01179")  # what the fake provider's default Anthropic usage costs
LEASE = 2  # seconds (the kill -9 test): short so a dead replica's reservation is reaped within the test


def policy(tmp_path, body: str):
    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\ntimezone: Europe/Paris\n" + body)
    return p


def ask(client, **kw):
    return client.messages.create(model=MODEL, max_tokens=450, messages=[{"role": "user", "content": PROMPT}], **kw)


def rows(url: str) -> list[dict]:
    with psycopg.connect(url, row_factory=dict_row) as con:
        return con.execute("SELECT * FROM requests ORDER BY ts").fetchall()


def counter(url: str, scope: str, window: str = "day") -> tuple[Decimal, Decimal]:
    with psycopg.connect(url) as con:
        got = con.execute('SELECT sum(spent), sum(reserved) FROM counters WHERE scope = %s AND "window" = %s',
                          [scope, window]).fetchone()
    return got[0] or Decimal(0), got[1] or Decimal(0)


def spendgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spendgate.cli", *args], capture_output=True, text=True,
                          timeout=60, env=_clean_env(), stdin=subprocess.DEVNULL)


@pytest.fixture
def store_url(pg_url):
    """A migrated store, through the real CLI (`spendgate store migrate`)."""
    cp = spendgate("store", "migrate", "--store", pg_url)
    assert cp.returncode == 0, cp.stderr
    assert f"schema version 0 -> {SCHEMA_VERSION}" in cp.stdout
    again = spendgate("store", "migrate", "--store", pg_url)
    assert again.returncode == 0 and "up to date" in again.stdout
    status = spendgate("store", "status", "--store", pg_url, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["schema_version"] == SCHEMA_VERSION and json.loads(status.stdout)["ledger_rows"] == 0
    return pg_url


def replicas(gateway_factory, n: int, policy_path, url: str, lease: int = 30, **kw):
    args = ["--set", f"spendgate_store={url}", "--set", f"spendgate_store_lease={lease}"]
    return [gateway_factory(f"replica{i}", policy=policy_path, extra_args=args, **kw).start() for i in range(n)]


def test_three_replicas_share_one_cap_under_60_concurrent_requests(tmp_path, gateway_factory, fake_provider,
                                                                  store_url):
    cap = Decimal("0.50")
    gws = replicas(gateway_factory, 3, policy(tmp_path, f"defaults: {{user: {{day: {cap}}}}}\n"), store_url)
    clients = [anthropic.Anthropic(api_key=ANTHROPIC_KEY, max_retries=0,
                                   http_client=gw.http_client(limits=httpx2.Limits(max_connections=30)))
               for gw in gws]
    start = threading.Barrier(60)

    def one(i: int) -> int:
        start.wait()
        try:
            ask(clients[i % 3])
            return 200
        except anthropic.RateLimitError:
            return 429

    with concurrent.futures.ThreadPoolExecutor(60) as pool:
        statuses = list(pool.map(one, range(60)))
    ok = statuses.count(200)
    assert statuses.count(429) == 60 - ok
    shared = wait_until(lambda: (r := rows(store_url)) and len(r) == 60 and r)
    charged = sum(r["charged_usd"] or 0 for r in shared)
    assert charged <= cap + ONE_REQUEST_USD  # one cap for all three, not three caps
    assert charged >= cap / 2  # and it is used, not refused wholesale
    assert len([r for r in shared if r["outcome"] == "ok"]) == ok == len(fake_provider.requests)
    assert len([r for r in shared if r["outcome"] == "blocked"]) == 60 - ok
    assert {r["replica"] for r in shared} and len({r["replica"] for r in shared}) == 3  # every replica served
    assert counter(store_url, "user:tester") == (charged, 0)  # nothing left reserved
    for gw in gws:  # each replica's local DuckDB copy holds what it served
        assert gw.ledger(wait_for=1)
    for c in clients:
        c.close()

    # the read side on the shared store: every replica's rows, and the shared counters
    cp = spendgate("ledger", "--store", store_url, "--json", "--limit", "1000")
    assert cp.returncode == 0, cp.stderr
    assert sorted(r["request_id"] for r in json.loads(cp.stdout)) == sorted(r["request_id"] for r in shared)
    cp = spendgate("spend", "--store", store_url, "--by", "user", "--json")
    assert cp.returncode == 0, cp.stderr
    (tester,) = json.loads(cp.stdout)
    assert tester["group"] == "tester" and tester["requests"] == 60
    assert Decimal(str(tester["cost_usd"])) == pytest.approx(sum(r["cost_usd"] or 0 for r in shared))
    cp = spendgate("budgets", "--store", store_url, "--policy", str(gws[0].policy), "--json")
    assert cp.returncode == 0, cp.stderr
    day = next(b for b in json.loads(cp.stdout) if b["scope"] == "user:tester" and b["window"] == "day")
    assert Decimal(str(day["spent_usd"])) == pytest.approx(charged) and day["limit_usd"] == 0.5
    # each replica's dashboard and CLI (its admin API) report from the shared store: all 60 rows,
    # not only the ~20 it served itself
    for gw in gws:
        cp = gw.cli("spend", "--by", "user", "--json")
        assert cp.returncode == 0, cp.stderr
        (mine,) = json.loads(cp.stdout)
        assert mine["requests"] == 60 and mine["cost_usd"] == tester["cost_usd"]
        cp = gw.cli("top", "--once")
        assert cp.returncode == 0, cp.stderr
    assert len(gws[0].ledger()) == 60  # its dashboard's latest rows too (the store's ledger)
    # and its admin API's export, reconciliation and re-pricing work on the store, not its own file
    out = tmp_path / "all.csv"
    cp = gws[1].cli("export", "--format", "csv", "--since", "2000-01-01", "--out", str(out))
    assert cp.returncode == 0, cp.stderr
    exported = [line.split(",") for line in out.read_text().splitlines()[1:]]
    ids = {r["request_id"] for r in shared}
    assert len(exported) == 60 and {f for line in exported for f in line} & ids == ids
    from tests.unit.test_reconcile import FIX

    cp = gws[0].cli("reconcile", "import", str(FIX / "anthropic_cost_report.json"), "--provider", "anthropic",
                    "--json")
    assert cp.returncode == 0, cp.stderr
    imported = json.loads(cp.stdout)
    with psycopg.connect(store_url) as con:  # into the store's billing_lines, where every replica reads them
        assert con.execute("SELECT count(*) FROM billing_lines").fetchone()[0] == imported["lines"] > 0
        billed = con.execute("SELECT sum(amount_usd) FROM billing_lines").fetchone()[0]
    cp = gws[2].cli("reconcile", "report", "--since", "2000-01-01", "--json")  # another replica
    assert cp.returncode == 0, cp.stderr
    report = json.loads(cp.stdout)
    assert sum(Decimal(str(r["billed_usd"] or 0)) for r in report["rows"]) == pytest.approx(billed)
    assert sum(r["metered_requests"] or 0 for r in report["rows"]) == len(shared)  # all replicas' rows
    cp = gws[1].cli("prices", "reprice", "--since", "2000-01-01", "--dry-run", "--json")
    assert cp.returncode == 0, cp.stderr
    # every replica's priced rows (refusals hold no usage to re-price), not only the ones this one served
    assert json.loads(cp.stdout)["examined"] == len([r for r in shared if r["outcome"] != "blocked"])


def test_kill9_replica_mid_stream_its_reservation_is_reaped_as_interrupted(tmp_path, gateway_factory,
                                                                           fake_provider, store_url):
    a, b = replicas(gateway_factory, 2, policy(tmp_path, "defaults: {user: {day: 5}}\n"), store_url, lease=LEASE)
    client_a = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=a.http_client(), max_retries=0)
    got_first = threading.Event()

    def stream():
        try:
            with client_a.messages.stream(model=MODEL, max_tokens=450, messages=[{"role": "user", "content": PROMPT}],
                                          extra_headers={"x-fake-scenario": "slow,big_output"}) as s:
                for _ in s:
                    got_first.set()
        except Exception:
            pass

    t = threading.Thread(target=stream)
    t.start()
    assert got_first.wait(30)
    assert counter(store_url, "user:tester")[1] > 0  # reserved in the store while it streams
    a.kill9()
    t.join(30)
    client_a.close()
    with anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=b.http_client(), max_retries=0) as client_b:
        ask(client_b)  # the others keep serving
    shared = wait_until(lambda: (r := rows(store_url)) and any(x["outcome"] == "interrupted" for x in r) and r)
    (dead,) = [r for r in shared if r["outcome"] == "interrupted"]
    (ok,) = [r for r in shared if r["outcome"] == "ok"]
    assert dead["estimated"] is True and dead["cost_usd"] is None
    assert dead["charged_usd"] > ONE_REQUEST_USD / 2 and dead["client"] and dead["model"] == MODEL
    owner = dead["note"].split()[1]  # "replica OWNER stopped renewing its lease ... (reaped by REAPER)"
    assert owner != ok["replica"] and dead["note"].endswith(f"(reaped by {ok['replica']})")  # B reaped A's
    assert counter(store_url, "user:tester") == (dead["charged_usd"] + ok["charged_usd"], 0)


def test_store_stopped_fail_closed_answers_503_then_recovers(tmp_path, gateway_factory, fake_provider,
                                                            store_url, postgres):
    (gw,) = replicas(gateway_factory, 1, policy(tmp_path, "defaults: {user: {day: 5}}\n"), store_url)
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, max_retries=0, http_client=gw.http_client(timeout=60))
    ask(client)
    postgres.stop()
    try:
        for _ in range(2):  # the first finds its pooled connection dead, the second cannot connect
            with pytest.raises(anthropic.APIStatusError) as err:
                ask(client)
            assert err.value.status_code == 503
            body = err.value.response.json()
            assert body["type"] == "error" and "budget store is unreachable" in body["error"]["message"]
            assert err.value.response.headers["x-should-retry"] == "false"
    finally:
        postgres.start()
    assert len(fake_provider.requests) == 1  # nothing was forwarded unmetered
    wait_until(lambda: _admitted(client), timeout=30)  # back once the store is
    client.close()


def _admitted(client) -> bool:
    try:
        ask(client)
        return True
    except anthropic.APIStatusError as e:
        assert e.status_code == 503
        return False


def test_replica_refuses_to_start_on_an_unmigrated_store(tmp_path, gateway_factory, fake_provider, pg_url):
    gw = gateway_factory("unmigrated", extra_args=["--set", f"spendgate_store={pg_url}"])
    try:
        gw.start()  # the proxy may listen for a moment before the addon's start-up check stops it
    except GatewayError:
        pass
    assert gw.proc.wait(30) == 1
    log = gw.log_text()
    assert f"schema version 0, this gateway needs {SCHEMA_VERSION}" in log and "spendgate store migrate" in log


def test_store_stopped_fail_open_bounded_admits_up_to_the_allowance_and_replays(tmp_path, gateway_factory,
                                                                               fake_provider, store_url, postgres):
    body = "on_store_error: fail_open_bounded\ndegraded_allowance_usd: 0.03\ndefaults: {user: {day: 5}}\n"
    (gw,) = replicas(gateway_factory, 1, policy(tmp_path, body), store_url)
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, max_retries=0, http_client=gw.http_client(timeout=60))
    ask(client)  # the replica is up and connected
    before = wait_until(lambda: counter(store_url, "user:tester")[0])
    postgres.stop()
    try:
        ask(client)  # ~$0.0125 reserved, $0.0118 charged on the local allowance
        ask(client)
        with pytest.raises(anthropic.APIStatusError) as err:  # a third would pass $0.03
            ask(client)
        assert err.value.status_code == 503
        assert "allowance while it is away ($0.03 per scope) is used up" in err.value.response.json()["error"]["message"]
    finally:
        postgres.start()
    assert len(fake_provider.requests) == 3
    shared = wait_until(lambda: (r := rows(store_url)) and len(r) == 4 and r)  # replayed once the store is back
    degraded = [r for r in shared if r["degraded"]]
    assert len(degraded) == 2 and all(r["outcome"] == "ok" for r in degraded)
    charged = sum(r["charged_usd"] for r in degraded)
    assert charged <= Decimal("0.03")  # the overshoot bound: replicas x allowance
    assert counter(store_url, "user:tester") == (before + charged, 0)  # charged to the shared counters once
    client.close()


def cli_as(gw, user: str, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI as a given person (USER/LOGNAME), talking to replica `gw` through its admin API."""
    env = _clean_env({"USER": user, "LOGNAME": user, **(env_extra or {})})
    return subprocess.run(gw.cli_command(*args), capture_output=True, text=True, timeout=60, env=env,
                          cwd=str(gw.tmp), stdin=subprocess.DEVNULL)


def test_approval_on_replica_a_admits_on_replica_b_and_alerts_fire_once(tmp_path, gateway_factory, fake_provider,
                                                                        store_url):
    hook = Hook()
    body = f"""\
organization: {{name: acme, budgets: {{month: 1000}}}}
defaults: {{user: {{day: 0.02}}}}
alerts: {{thresholds: [50, 100], projected_overrun: false}}
approvals:
  organization: {{approvers: [lead]}}
sinks:
  hook: {{type: webhook, url: "{hook.url}", backoff_seconds: 0.05}}
"""
    a, b = replicas(gateway_factory, 2, policy(tmp_path, body), store_url)
    ca = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=a.http_client(), max_retries=0)
    cb = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=b.http_client(), max_retries=0)

    def small(client):
        return client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])

    small(cb)  # $0.01179: 59% of the day, the 50% alert fires (on B)
    wait_until(lambda: counter(store_url, "user:tester")[0] > 0)
    small(ca)  # 118%: the 100% alert fires (on A); A must not announce 50% again
    wait_until(lambda: len(rows(store_url)) == 2)
    with pytest.raises(anthropic.RateLimitError):
        small(cb)

    cp = cli_as(a, "tester", "request", "--amount", "1", "--window", "day", "--scope", "user:tester",
                "--reason", "release crunch", "--json")
    assert cp.returncode == 0, cp.stderr
    rid = json.loads(cp.stdout)["id"]
    lead = json.loads(a.cli("tokens", "issue", "lead", "--json", check=True).stdout)["token"]
    cp = cli_as(a, "lead", "approve", rid, env_extra={"SPENDGATE_TOKEN": lead})  # deciding needs lead's own token
    assert cp.returncode == 0, cp.stderr
    assert small(cb).content  # the next request on B is admitted: the grant made on A counts there at once

    # A's decision notice goes out after anything A announced on its settlement (one queue per sink)
    bodies = hook.wait_for(lambda bs: any(x["event"] == "decision" for x in bs)
                           and len([x for x in bs if x["event"] == "alert"]) >= 2)
    alerts = [x for x in bodies if x["event"] == "alert" and x["scope"] == "user:tester"]
    assert sorted(x["threshold"] for x in alerts) == [50, 100], bodies
    ca.close()
    cb.close()
    hook.close()


def _haproxy() -> str:
    exe = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("haproxy is required in CI (scripts/ensure-haproxy installs it)")
        pytest.skip("haproxy not installed (scripts/ensure-haproxy)")
    return exe


def test_the_kits_load_balancer_spreads_two_replicas_and_one_cap_holds(tmp_path, gateway_factory, fake_provider,
                                                                      store_url):
    """The MDM kit's central deployment as rendered: HAProxy (central/haproxy.cfg, TCP mode) in
    front of two replicas sharing the company CA and one PostgreSQL store. Connections spread over
    both; a stopped replica is routed around; the $0.06 cap (5 requests of $0.01179) holds for all."""
    exe = _haproxy()
    cap = Decimal("0.06")
    pol = policy(tmp_path, f"defaults: {{user: {{day: {cap}}}}}\n")
    args = ["--set", f"spendgate_store={store_url}"]
    first = gateway_factory("replica0", policy=pol, extra_args=args).start()
    second = gateway_factory("replica1", policy=pol, extra_args=args)
    second.confdir.mkdir(parents=True, exist_ok=True)
    for f in first.confdir.glob("mitmproxy-ca*"):  # every replica presents the company CA
        shutil.copy(f, second.confdir / f.name)
    second.start()
    lb_port = free_port()
    site = tmp_path / "site.yaml"
    site.write_text(
        "version: 1\norganization: {name: Test Corp, identifier: com.example.test}\nmode: central\n"
        f"gateway: {{host: 127.0.0.1, port: {lb_port}, store: '{store_url}',\n"
        f"          replicas: ['127.0.0.1:{first.port}', '127.0.0.1:{second.port}']}}\n"
        f"ca: {{cert: {first.ca_file}}}\nidentity: {{method: proxy_auth}}\n")
    kit = tmp_path / "kit"
    cp = spendgate("mdm", "render", "--config", str(site), "--out", str(kit))
    assert cp.returncode == 0, cp.stderr
    cfg = kit / "central" / "haproxy.cfg"
    check = subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    lb = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _accepts(lb_port), timeout=15)

        def ask_through_the_balancer() -> int:  # a new connection each time, as new agent processes make
            with httpx2.Client(proxy=f"http://127.0.0.1:{lb_port}", verify=first.client_ssl_context(),
                               trust_env=False, timeout=30) as http:
                client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, max_retries=0, http_client=http)
                try:
                    ask(client)
                    return 200
                except anthropic.RateLimitError:
                    return 429

        # two agents with a tunnel each, both open at once: leastconn gives them different replicas
        pair = [httpx2.Client(proxy=f"http://127.0.0.1:{lb_port}", verify=first.client_ssl_context(),
                              trust_env=False, timeout=30) for _ in range(2)]
        agents = [anthropic.Anthropic(api_key=ANTHROPIC_KEY, max_retries=0, http_client=h) for h in pair]
        statuses = []
        for i in range(4):
            ask(agents[i % 2])
            statuses.append(200)
        for h in pair:
            h.close()
        # both replicas took connections (rows reach the store when each settles, just after the answer)
        wait_until(lambda: len({r["replica"] for r in rows(store_url)}) == 2, timeout=15)
        first.stop()  # one replica goes away: the balancer sends everything to the other
        statuses += [ask_through_the_balancer() for _ in range(4)]
    finally:
        lb.terminate()
        lb.wait(timeout=10)
    assert statuses == [200] * 5 + [429] * 3  # one cap across both replicas, not one each
    shared = wait_until(lambda: (r := rows(store_url)) and len(r) == 8 and r)
    charged = sum(r["charged_usd"] or 0 for r in shared)
    assert charged == 5 * ONE_REQUEST_USD <= cap
    assert len(fake_provider.requests) == 5


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_laptops_pushing_to_two_replicas_get_one_offline_allowance_and_one_roster(tmp_path, gateway_factory,
                                                                                   fake_provider, store_url):
    """Two real replicas on one store, a laptop's rows and leases spread across them (as a balancer
    would): the offline allowance of a past day is one for both, and a laptop that called replica A
    is listed by replica B (its admin API) and by `spendgate laptops --store`."""
    from datetime import UTC, datetime, timedelta

    from tests.e2e.test_laptops_e2e import post
    from tests.unit.test_central import _row, wire

    pol = policy(tmp_path, "defaults: {user: {day: 5}}\noffline_allowance: {day: 0.05}\n")
    ports = [free_port(), free_port()]
    a, b = [gateway_factory(f"replica{i}", policy=pol, extra_args=[
        "--set", f"spendgate_store={store_url}", "--set", f"spendgate_admin_port={ports[i]}"]).start() for i in (0, 1)]
    for gw in (a, b):  # with a store, start() returns before the addon opened its ledger and admin API
        wait_until(lambda gw=gw: os.path.exists(str(gw.db) + ".gateway.json"))
    tokens = [json.loads(gw.cli("tokens", "issue", "alice", "--json", check=True).stdout)["token"] for gw in (a, b)]
    api = [f"http://127.0.0.1:{p}" for p in ports]
    past = (datetime.now(UTC) - timedelta(days=2)).replace(hour=10, minute=0, second=0, microsecond=0)

    def batch(prefix: str, n: int) -> dict:
        return {"gateway_id": "alice@mac", "rows": [wire(_row(f"{prefix}{i:05d}", user="alice", charged="0.02", model="corp-model-x",
                                                                ts=past + timedelta(minutes=i), offline=True))
                                                    for i in range(n)]}

    got = post(api[0] + "/api/ingest", tokens[0], batch("e2e-a", 3))  # $0.04 of $0.05 fits, one row counts now
    assert got.status_code == 200 and (got.json()["accepted"], got.json()["late"]) == (3, 1), got.text
    got = post(api[1] + "/api/ingest", tokens[1], batch("e2e-b", 2))  # B knows A's $0.04: nothing fits
    assert got.status_code == 200 and (got.json()["accepted"], got.json()["late"]) == (2, 2), got.text
    day = past.astimezone(a_tz()).replace(hour=0)
    with psycopg.connect(store_url) as con:
        past_day = con.execute('SELECT spent FROM counters WHERE scope = %s AND "window" = %s AND window_start = %s',
                               ["user:alice", "day", day]).fetchone()
    assert past_day[0] == Decimal("0.04")

    got = post(api[0] + "/api/lease", tokens[0], {"gateway_id": "alice@linux", "want_usd": "1"})  # only A hears it
    assert got.status_code == 200, got.text
    listed = {r["origin"]: r for r in json.loads(b.cli("laptops", "--json", check=True).stdout)}  # B's admin API
    assert set(listed) == {"alice@mac", "alice@linux"} and not any(r["silent"] for r in listed.values())
    cp = spendgate("laptops", "--store", store_url, "--silent", "--json")
    assert cp.returncode == 0 and json.loads(cp.stdout) == [], cp.stdout + cp.stderr


def a_tz():
    from zoneinfo import ZoneInfo

    return ZoneInfo("Europe/Paris")  # policy()'s timezone
