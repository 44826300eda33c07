"""Increase requests, decisions and the audit trail shared by replicas on one PostgreSQL store.

Two real mitmdump replicas: a request filed on replica A is listed and decided on replica B, a
second decision on A is refused (one decision per request, whichever replica makes it), and the
audit trail read through either replica holds both replicas' rows.
"""

from __future__ import annotations

import json

import anthropic
import psycopg
import pytest

from tests.e2e.test_scaleout_e2e import MODEL, cli_as, policy, replicas, wait_until
from tests.support import ANTHROPIC_KEY


@pytest.fixture
def store_url(pg_url):
    from tests.e2e.test_scaleout_e2e import spendgate

    cp = spendgate("store", "migrate", "--store", pg_url)
    assert cp.returncode == 0, cp.stderr
    return pg_url


def test_a_request_filed_on_replica_a_is_decided_on_replica_b(tmp_path, gateway_factory, fake_provider, store_url):
    body = """\
organization: {name: acme, budgets: {month: 1000}}
defaults: {user: {day: 0.01}}
approvals:
  organization: {approvers: [lead, boss]}
"""
    a, b = replicas(gateway_factory, 2, policy(tmp_path, body), store_url)
    lead = json.loads(b.cli("tokens", "issue", "lead", "--json", check=True).stdout)["token"]
    boss = json.loads(a.cli("tokens", "issue", "boss", "--json", check=True).stdout)["token"]
    cp = cli_as(a, "tester", "request", "--amount", "1", "--window", "day", "--scope", "user:tester",
                "--reason", "release crunch", "--json")
    assert cp.returncode == 0, cp.stderr
    rid = json.loads(cp.stdout)["id"]

    listed = cli_as(b, "lead", "requests", "--json", env_extra={"SPENDGATE_TOKEN": lead})
    assert listed.returncode == 0, listed.stderr
    (req,) = [r for r in json.loads(listed.stdout) if r["id"] == rid]  # filed on A, seen on B
    assert req["status"] == "pending" and req["requester"] == "tester" and req["can_decide"] is True
    cp = cli_as(b, "lead", "approve", rid, env_extra={"SPENDGATE_TOKEN": lead})
    assert cp.returncode == 0, cp.stderr
    again = cli_as(a, "boss", "approve", rid, env_extra={"SPENDGATE_TOKEN": boss})  # decided already, on B
    assert again.returncode != 0 and "already approved" in (again.stderr + again.stdout)

    with anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=a.http_client(), max_retries=0) as ca:
        ca.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])  # the grant holds on A

    audit = a.cli("audit", "--json")
    assert audit.returncode == 0, audit.stderr
    events = json.loads(audit.stdout)
    steps = [e for e in events if e["event"] in ("request", "approve", "grant")
             and (e.get("ref") == rid or e["detail"].get("request_id") == rid)]
    assert [e["event"] for e in steps] == ["request", "approve", "grant"]  # one trail, in order, across replicas
    mine = steps
    assert {e["actor"] for e in mine} >= {"tester", "lead"}
    with psycopg.connect(store_url) as con:  # one table, rows from both replicas, each naming its replica
        replicas_seen = {r[0] for r in con.execute(
            "SELECT DISTINCT replica FROM audit WHERE event = 'policy_load'").fetchall()}
        by_event = dict(con.execute("SELECT event, replica FROM audit WHERE ref = %s AND event IN ('request', "
                                    "'approve')", [rid]).fetchall())
    assert len(replicas_seen) == 2 and None not in replicas_seen
    assert by_event["request"] != by_event["approve"]  # filed on A, approved on B


def test_websocket_turns_with_a_shared_store_are_admitted_off_the_loop_in_order(tmp_path, gateway_factory,
                                                                                fake_provider, store_url):
    """A turn's admission waits on PostgreSQL in a worker thread; the socket's next frame still goes after it."""
    from tests.e2e.test_websocket_e2e import create, events_until_end, open_socket, ws_messages

    (gw,) = replicas(gateway_factory, 1, policy(tmp_path, "defaults: {user: {day: 0.015}}\n"), store_url)
    with open_socket(gw) as ws:
        ws.send(create(max_output_tokens=1000))  # admitted through the store (~$0.0126 reserved)
        ws.send(json.dumps({"type": "note", "n": 1}))  # sent at once: must reach the provider after the turn
        assert events_until_end(ws)[-1]["type"] == "response.completed"
        ws.send(create(max_output_tokens=1000))  # past the shared cap: refused inside the socket
        (err,) = events_until_end(ws)
        assert err["type"] == "error" and err["status"] == 429
        ws.send(json.dumps({"type": "note", "n": 2}))
        ws.ping().wait(5)
    sent = wait_until(lambda: len(m := ws_messages(fake_provider)) == 3 and m)
    assert [m.json["type"] for m in sent] == ["response.create", "note", "note"]  # in order; the refused turn never sent
    assert [m.json.get("n") for m in sent[1:]] == [1, 2]

    def outcomes():
        with psycopg.connect(store_url) as con:
            return sorted(r[0] for r in con.execute("SELECT outcome FROM requests").fetchall())

    wait_until(lambda: outcomes() == ["blocked", "ok"])
