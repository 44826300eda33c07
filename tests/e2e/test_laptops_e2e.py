"""Laptops report to a centre: two real mitmdump gateways on loopback, real DuckDB (and PostgreSQL).

The laptop is configured with the centre's API URL and its user's spendgate token (issued on the
centre). While the centre is down it admits against the policy's `offline_allowance` and keeps
its rows in its outbox; when the centre comes up, every row reaches it exactly once, also when the
laptop is made to replay everything. The centre attributes rows to the token's user only and
answers garbage with a clear 4xx, losing nothing else.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal

import anthropic
import httpx2
import psycopg
import pytest
from psycopg.rows import dict_row

from spendgate.central.ingest import pushed_id
from spendgate.store.ledger import connect
from tests.support import ANTHROPIC_KEY, wait_until
from tests.support.gateway import free_port

MODEL = "claude-sonnet-4-5"
PROMPT = "x" * 7200  # the reservation (~$0.0125) covers the actual cost ($0.01179)
POLICY = """version: 1
timezone: Europe/Paris
defaults: {user: {day: 5}}
offline_allowance: {day: 0.03}
"""
LAPTOP_ID = "tester-laptop"


def ask(client):
    return client.messages.create(model=MODEL, max_tokens=450, messages=[{"role": "user", "content": PROMPT}])


def token_for(centre, user: str, path) -> str:
    token = json.loads(centre.cli("tokens", "issue", user, "--json", check=True).stdout)["token"]
    path.write_text(token)
    os.chmod(path, 0o600)
    return token


def pair(tmp_path, gateway_factory, centre_args=(), policy_text=POLICY, interval="0.3"):
    """A centre (not started) on a fixed admin port and a laptop (not started) reporting to it.

    The laptop reaches the centre's admin API on loopback (plain http is allowed there only; a remote
    centre is https, through a proxy by a CONNECT tunnel: tests/attacks/test_review_central.py R7).
    """
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text)
    port = free_port()
    centre = gateway_factory("centre", policy=policy,
                             extra_args=["--set", f"spendgate_admin_port={port}", *centre_args])
    token_file = tmp_path / "tester.token"
    token = token_for(centre, "tester", token_file)
    where = ["--set", f"spendgate_central=http://127.0.0.1:{port}"]
    laptop = gateway_factory("laptop", policy=policy, extra_args=[
        *where, "--set", f"spendgate_central_token_file={token_file}",
        "--set", f"spendgate_central_id={LAPTOP_ID}", "--set", f"spendgate_central_interval={interval}"])
    return centre, laptop, f"http://127.0.0.1:{port}", token


def post(url: str, token: str | None, body) -> httpx2.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with httpx2.Client(trust_env=False, timeout=30) as c:
        return c.post(url, content=content, headers={**headers, "content-type": "application/json"})


def spent(gw, scope: str = "user:tester", window: str = "day") -> Decimal:
    rows = json.loads(gw.cli("budgets", "--json", check=True).stdout)
    return Decimal(str(next(b for b in rows if b["scope"] == scope and b["window"] == window)["spent_usd"]))


def test_offline_laptop_replays_every_row_exactly_once_when_the_centre_returns(tmp_path, gateway_factory,
                                                                              fake_provider):
    centre, laptop, api, token = pair(tmp_path, gateway_factory)
    laptop.start()  # the centre is down: offline from the start
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, max_retries=0, http_client=laptop.http_client())
    ask(client)
    ask(client)  # $0.02358 admitted offline; a third ($0.0125 reserved) would pass the $0.03 allowance
    with pytest.raises(anthropic.RateLimitError) as err:
        ask(client)
    assert "offline:user:tester" in err.value.response.json()["error"]["message"]
    assert err.value.response.headers["x-should-retry"] == "false"
    assert len(fake_provider.requests) == 2
    local = laptop.ledger(wait_for=3)
    assert sorted((r["outcome"], r["offline"]) for r in local) == [("blocked", False), ("ok", True), ("ok", True)]
    box = json.loads(laptop.cli("outbox", "--json", check=True).stdout)  # through the laptop's admin API
    assert (box["pending_rows"], box["landed_rows"], box["offline_rows"]) == (3, 0, 2)

    centre.start()
    landed = wait_until(lambda: len(r := centre.ledger()) == 3 and r)  # the outbox drains on its own
    assert {r["origin"] for r in landed} == {LAPTOP_ID} and {r["user"] for r in landed} == {"tester"}
    # the laptop's ids, each in the pushing user's namespace at the centre (ingest.pushed_id)
    assert sorted(r["request_id"] for r in landed) == sorted(pushed_id("tester", r["request_id"]) for r in local)
    assert sorted((r["outcome"], r["offline"]) for r in landed) == [("blocked", False), ("ok", True), ("ok", True)]
    offline_usd = sum(Decimal(str(r["charged_usd"])) for r in landed)
    assert offline_usd <= Decimal("0.03")  # the bound offline_allowance guarantees
    wait_until(lambda: spent(centre) == offline_usd)  # the centre's budgets count laptop spend
    box = json.loads(laptop.cli("outbox", "--json", check=True).stdout)
    assert (box["pending_rows"], box["landed_rows"], box["rejected_rows"]) == (0, 3, 0)

    # online again: admitted through the centre's lease, not marked offline, reported too
    wait_until(lambda: _admitted(client))
    rows = wait_until(lambda: len(r := centre.ledger()) == 4 and r)
    (online,) = [r for r in rows if r["outcome"] == "ok" and not r["offline"]]
    total = offline_usd + Decimal(str(online["charged_usd"]))
    wait_until(lambda: spent(centre) == total)
    cp = centre.cli("spend", "--by", "origin", "--json", check=True)
    assert [(g["group"], g["requests"]) for g in json.loads(cp.stdout)] == [(LAPTOP_ID, 4)]

    # force the laptop to replay everything: forget what the centre acknowledged, restart it
    laptop.stop()
    con = connect(laptop.db)
    assert con.execute("SELECT count(*) FROM central_pushed WHERE status = 'landed'").fetchone()[0] == 4
    con.execute("DELETE FROM central_pushed")
    con.close()
    laptop.start()
    wait_until(lambda: not _pending(laptop))
    laptop.stop()
    con = connect(laptop.db)  # the laptop pushed all four again and the centre acknowledged them
    assert con.execute("SELECT count(*) FROM central_pushed WHERE status = 'landed'").fetchone()[0] == 4
    con.close()
    assert len(centre.ledger()) == 4 and spent(centre) == total  # replayed: counted once
    # and the same batch posted twice by hand: acknowledged, nothing lands again
    batch = {"gateway_id": LAPTOP_ID, "rows": local}
    for _ in range(2):
        got = post(api + "/api/ingest", token, batch)
        assert got.status_code == 200, got.text
        assert got.json()["accepted"] == 0 and got.json()["duplicates"] == 3
    assert len(centre.ledger()) == 4 and spent(centre) == total
    client.close()


def _admitted(client) -> bool:
    try:
        ask(client)
        return True
    except anthropic.RateLimitError:
        return False


def _status(laptop) -> dict:
    """The laptop's reporting state, asked through its admin API (it holds the file)."""
    admin = json.loads((laptop.db.parent / (laptop.db.name + ".gateway.json")).read_text())
    with httpx2.Client(trust_env=False, timeout=10) as c:
        got = c.get(admin["url"] + "/api/central", headers={"authorization": f"Bearer {admin['token']}"})
    assert got.status_code == 200, got.text
    return got.json()


def _pending(laptop) -> bool:
    return _status(laptop)["pending_rows"] > 0


def _online(laptop) -> bool:
    return _status(laptop)["online"]


def test_a_laptop_token_cannot_push_rows_for_somebody_else_and_garbage_gets_a_4xx(tmp_path, gateway_factory,
                                                                                 fake_provider):
    centre, laptop, api, token = pair(tmp_path, gateway_factory)
    mallory = token_for(centre, "mallory", tmp_path / "mallory.token")
    centre.start()
    laptop.start()
    wait_until(lambda: _online(laptop))
    # the centre's roster knows the laptop from its leases (spendgate.central.roster), through its admin API
    laptops = json.loads(centre.cli("laptops", "--json", check=True).stdout)
    assert [(r["user"], r["origin"], r["silent"]) for r in laptops] == [("tester", LAPTOP_ID, False)]
    with anthropic.Anthropic(api_key=ANTHROPIC_KEY, max_retries=0, http_client=laptop.http_client()) as client:
        ask(client)
    (row,) = wait_until(lambda: centre.ledger())
    assert row["offline"] is False and row["origin"] == LAPTOP_ID and row["identity_source"] == "token"
    before = spent(centre)

    forged = dict(row, request_id="forged-0001", origin="someone-else", user="tester")
    got = post(api + "/api/ingest", mallory, {"gateway_id": "mallory-laptop", "rows": [forged]})
    assert got.status_code == 200 and got.json()["reattributed"] == 1
    landed = next(r for r in centre.ledger() if r["request_id"] == pushed_id("mallory", "forged-0001"))
    assert landed["user"] == "mallory" and landed["origin"] == "mallory-laptop"
    assert "the laptop said 'tester'" in landed["note"]
    assert spent(centre) == before  # tester's budget untouched: mallory pays
    assert spent(centre, "user:mallory") == Decimal(str(row["charged_usd"]))

    ingest = api + "/api/ingest"
    assert post(ingest, token, b"{not json").status_code == 400
    assert "JSON array" in post(ingest, token, {"gateway_id": "x", "rows": "all of them"}).json()["error"]
    assert post(ingest, token, {"gateway_id": "bad id!", "rows": []}).status_code == 400
    assert post(ingest, token, {"gateway_id": "x", "rows": [{}] * 501}).status_code == 413
    assert post(ingest, token, b"{" + b" " * (5 * 1024 * 1024) + b"}").status_code == 413
    assert post(ingest, None, {"gateway_id": "x", "rows": []}).status_code == 401
    assert post(ingest, "sgt_wrong", {"gateway_id": "x", "rows": []}).status_code == 401
    admin = json.loads((centre.db.parent / (centre.db.name + ".gateway.json")).read_text())["token"]
    got = post(ingest, admin, {"gateway_id": "x", "rows": [dict(row, request_id="admin-0001")]})
    assert got.status_code == 403 and "own spendgate token" in got.json()["error"]
    # one bad row is rejected with its reason; the good one beside it lands
    mixed = [dict(row, request_id="good-0001"), dict(row, request_id="bad-0001", input_tokens=-3)]
    got = post(ingest, token, {"gateway_id": LAPTOP_ID, "rows": mixed})
    assert got.status_code == 200
    assert got.json()["accepted"] == 1 and got.json()["rejected"][0]["request_id"] == "bad-0001"
    assert "input_tokens" in got.json()["rejected"][0]["error"]
    ids = {r["request_id"].split("~")[0] for r in centre.ledger()}
    assert "good-0001" in ids and "bad-0001" not in ids and "admin-0001" not in ids


def test_a_centre_on_postgresql_counts_laptop_rows_once(tmp_path, gateway_factory, fake_provider, pg_url):
    from tests.e2e.test_scaleout_e2e import spendgate

    assert spendgate("store", "migrate", "--store", pg_url).returncode == 0
    centre, laptop, api, token = pair(tmp_path, gateway_factory, centre_args=["--set", f"spendgate_store={pg_url}"])
    centre.start()
    laptop.start()
    wait_until(lambda: _online(laptop))
    with anthropic.Anthropic(api_key=ANTHROPIC_KEY, max_retries=0, http_client=laptop.http_client()) as client:
        ask(client)
        ask(client)

    def shared():
        with psycopg.connect(pg_url, row_factory=dict_row) as con:
            return con.execute("SELECT * FROM requests ORDER BY ts").fetchall()

    def counter():
        with psycopg.connect(pg_url) as con:
            return con.execute("SELECT sum(spent) FROM counters WHERE scope = 'user:tester' AND \"window\" = 'day'"
                               ).fetchone()[0]

    rows = wait_until(lambda: len(r := shared()) == 2 and r)
    assert {r["origin"] for r in rows} == {LAPTOP_ID} and not any(r["degraded"] for r in rows)
    total = sum(r["charged_usd"] for r in rows)
    assert counter() == total
    local = laptop.ledger()
    for _ in range(2):  # replay twice, count once (the store's settle is keyed by request id)
        got = post(api + "/api/ingest", token, {"gateway_id": LAPTOP_ID, "rows": local})
        assert got.status_code == 200 and got.json()["duplicates"] == 2, got.text
    assert len(shared()) == 2 and counter() == total
