"""Alerts and approvals end to end: a real mitmdump with our addon, the Anthropic SDK, a fake
provider upstream, a real webhook receiver on loopback, a dead webhook, and the `spendgate` CLI
run as different OS users (USER/LOGNAME, which is how the CLI names the person acting).

Each Anthropic call costs $0.01179 (the fake provider's fixed usage, see test_metering_e2e); the
user's daily budget is $0.02, so one call crosses 50%, the second crosses 80, 95 and 100%, the
third is refused until an approver grants more.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time

import anthropic
import pytest

from tests.support import ANTHROPIC_KEY
from tests.support.gateway import _clean_env
from tests.support.webhook import Hook

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

MODEL = "claude-sonnet-4-5"


def dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_policy(tmp_path, hook: Hook) -> str:
    p = tmp_path / "policy.yaml"
    p.write_text(f"""\
version: 1
timezone: UTC
organization: {{name: acme, owners: [cfo], budgets: {{month: 1000}}}}
defaults:
  user: {{day: 0.02}}
alerts: {{thresholds: [50, 80, 95, 100], projected_overrun: false}}
approvals:
  organization: {{approvers: [lead]}}
sinks:
  hook: {{type: webhook, url: "{hook.url}", backoff_seconds: 0.05}}
  dead: {{type: webhook, url: "http://127.0.0.1:{dead_port()}/hook", retries: 1, backoff_seconds: 0.05}}
""")
    return str(p)


def ask(client):
    return client.messages.with_raw_response.create(
        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hello"}])


def cli_as(gw, user: str, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    """The CLI run with USER/LOGNAME set to `user` and, to act as them, their spendgate token."""
    env = _clean_env({"USER": user, "LOGNAME": user, **({"SPENDGATE_TOKEN": token} if token else {})})
    return subprocess.run(gw.cli_command(*args), capture_output=True, text=True, timeout=60, env=env,
                          cwd=str(gw.tmp), stdin=subprocess.DEVNULL)


def issue_token(gw, user: str) -> str:
    """`spendgate tokens issue USER`: deciding needs the approver's own token, not a login name."""
    cp = gw.cli("tokens", "issue", user, "--json", check=True)
    return json.loads(cp.stdout)["token"]


def wait_json(gw, *args: str, until, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        cp = cli_as(gw, "tester", *args, "--json")
        data = json.loads(cp.stdout) if cp.returncode == 0 else None
        if data is not None and until(data):
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"{args}: {cp.returncode} {cp.stdout[-2000:]} {cp.stderr[-2000:]}\n{gw.log_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def test_alerts_warning_then_429_then_request_approve_and_continue(tmp_path, gateway_factory, hook):
    gw = gateway_factory(policy=write_policy(tmp_path, hook)).start()
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=0)

    first = ask(client)  # 59% of the day: the 50% alert fires after settlement
    assert first.status_code == 200 and "x-spendgate-warning" not in first.headers
    gw.ledger(wait_for=1)
    gw.restart()  # the fired 50% must stay fired
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=0)

    second = ask(client)  # past 50% already: in-band warning naming the command
    warning = second.headers["x-spendgate-warning"]
    # a $0.02 budget: digits enough to tell spent from the limit, and an increase in proportion to it
    assert warning.startswith("59% of the daily budget of user:tester used ($0.0118 of $0.0200)")
    assert "spendgate request --amount 0.01 --window day" in warning
    assert "To ask for more: spendgate request --amount" in warning and "--scope user:tester" in warning
    gw.ledger(wait_for=2)

    with pytest.raises(anthropic.RateLimitError) as blocked:
        ask(client)
    assert "spendgate request --amount" in blocked.value.response.json()["error"]["message"]

    # the blocked engineer asks; approvers are notified
    cp = cli_as(gw, "tester", "request", "--amount", "1", "--window", "day", "--scope", "user:tester",
                "--reason", "release crunch", "--json")
    assert cp.returncode == 0, cp.stderr
    req = json.loads(cp.stdout)
    assert (req["status"], req["requester"], req["amount_usd"]) == ("pending", "tester", 1.0)
    assert req["spent_usd"] == pytest.approx(0.02358)
    rid = req["id"]

    # a non-approver cannot approve, and it changes nothing
    tokens = {u: issue_token(gw, u) for u in ("mallory", "lead")}
    cp = cli_as(gw, "mallory", "approve", rid, token=tokens["mallory"])
    assert cp.returncode == 1 and "mallory is not an approver for user:tester; approvers: lead" in cp.stderr
    with pytest.raises(anthropic.RateLimitError):
        ask(client)

    cp = cli_as(gw, "lead", "approve", rid, token=tokens["lead"])
    assert cp.returncode == 0, cp.stderr
    assert f"request {rid} approved: +$1.00" in cp.stdout
    assert ask(client).status_code == 200  # at once: no restart, no policy edit

    budgets = wait_json(gw, "budgets", until=lambda rows: rows)
    row, = [r for r in budgets if r["scope"] == "user:tester" and r["window"] == "day"]
    assert row["granted_usd"] == 1.0 and row["limit_usd"] == pytest.approx(1.02)

    # the webhook got each threshold once (across the restart), the request and the decision
    bodies = hook.wait_for(lambda bs: any(b["event"] == "decision" for b in bs))
    alerts = [b for b in bodies if b["event"] == "alert" and b["scope"] == "user:tester"]
    assert sorted(a["threshold"] for a in alerts) == [50, 80, 95, 100]
    a50 = next(a for a in alerts if a["threshold"] == 50)
    assert a50["window"] == "day" and a50["limit_usd"] == 0.02 and a50["spent_usd"] == pytest.approx(0.01179)
    assert a50["recipients"] == ["tester"] and a50["resets_at"].endswith("T00:00:00Z")
    assert a50["top_models"][0]["model"] == MODEL and a50["top_clients"][0]["client"] == "anthropic-sdk"
    assert "spendgate request --amount" in a50["text"]
    request_notice, = [b for b in bodies if b["event"] == "request"]
    assert request_notice["recipients"] == ["lead"] and f"spendgate approve {rid}" in request_notice["text"]
    decision, = [b for b in bodies if b["event"] == "decision"]
    assert decision["recipients"] == ["tester"] and decision["decision"] == "approved"

    # the dead sink failed without holding anything up, and that is on record
    trail = wait_json(gw, "audit", until=lambda rows: any(
        r["event"] == "delivery" and r["detail"]["sink"] == "dead" and r["detail"]["kind"] == "decision"
        for r in rows))
    dead = [r["detail"] for r in trail if r["event"] == "delivery" and r["detail"]["sink"] == "dead"]
    assert dead and all(d["outcome"] == "failed" and d["attempts"] == 2 for d in dead)
    ok = [r["detail"] for r in trail if r["event"] == "delivery" and r["detail"]["sink"] == "hook"]
    assert ok and all(d["outcome"] == "delivered" for d in ok)

    # every step, in order
    steps = [(r["event"], r["actor"]) for r in trail if r["event"] not in ("delivery",)]
    assert [e for e, _ in steps if e == "policy_load"] == ["policy_load", "policy_load"]  # start + restart
    flow = [(e, a) for e, a in steps if e in ("request", "approve", "grant")]
    assert flow == [("request", "tester"), ("approve", "lead"), ("grant", "lead")]
    alert_seq = [r["seq"] for r in trail if r["event"] == "alert"]
    request_seq = next(r["seq"] for r in trail if r["event"] == "request")
    assert len(alert_seq) == 4 and max(alert_seq) < request_seq
    assert [r["seq"] for r in trail] == sorted(r["seq"] for r in trail)

    # offline, once the gateway is gone, the file tells the same story
    gw.stop()
    done = json.loads(cli_as(gw, "tester", "requests", "--status", "approved", "--json").stdout)
    assert [(r["id"], r["decided_by"], r["granted_usd"]) for r in done] == [(rid, "lead", 1.0)]
    text = cli_as(gw, "tester", "audit").stdout
    assert "approved +$1" in text and "release crunch" in text


def test_a_rejected_policy_edit_and_an_offline_denial_are_audited(tmp_path, gateway_factory, hook):
    path = write_policy(tmp_path, hook)
    gw = gateway_factory(policy=path).start()
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=0)
    assert ask(client).status_code == 200
    with open(path, "a") as f:
        f.write("alerts_typo: {}\n")  # rejected: the gateway keeps the last good policy
    wait_json(gw, "audit", until=lambda rows: any(r["event"] == "policy_rejected" for r in rows))
    gw.stop()
    cp = cli_as(gw, "tester", "request", "--amount", "5", "--window", "day", "--reason", "more tests",
                "--policy", path, "--json")
    # the policy file is invalid now: the offline CLI refuses to decide with it
    assert cp.returncode == 2 and "unknown key 'alerts_typo'" in cp.stderr
    good = tmp_path / "good.yaml"
    good.write_text(open(path).read().replace("alerts_typo: {}\n", ""))
    cp = cli_as(gw, "tester", "request", "--amount", "5", "--window", "day", "--reason", "more tests",
                "--policy", str(good), "--json")
    assert cp.returncode == 0, cp.stderr
    rid = json.loads(cp.stdout)["id"]
    cp = cli_as(gw, "lead", "deny", rid, "--reason", "not now", "--policy", str(good), token=issue_token(gw, "lead"))
    assert cp.returncode == 0, cp.stderr
    trail = json.loads(cli_as(gw, "tester", "audit", "--json").stdout)
    events = [r["event"] for r in trail if r["event"] not in ("delivery", "alert")]
    assert events == ["policy_load", "pricing_load", "policy_rejected", "request", "deny"]
    rejected = next(r for r in trail if r["event"] == "policy_rejected")
    assert rejected["detail"]["trigger"] == "file change" and len(rejected["detail"]["sha256"]) == 64
    assert "alerts_typo" in rejected["detail"]["problems"]
