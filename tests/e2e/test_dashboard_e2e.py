"""The dashboard, admin API, `spendgate top` and `spendgate export` against a real gateway with real traffic.

Traffic: official SDKs -> real mitmdump + spendgate -> fake provider, from three people (bob by
his API key, carol by hers and blocked by a zero budget, tester as the gateway's local user,
including one model nobody prices). Then:

* the admin API: no token and a wrong token get 401, the token sees everyone;
* the proxy's virtual host http://spendgate.local/ identifies the caller like their traffic and
  shows tester only tester's rows and budgets, whatever they ask for;
* `spendgate export` through the gateway round-trips through DuckDB; `spendgate top --once` renders;
* Debian's Chromium, headless, renders both views from that data (DOM checked) and saves
  test-artifacts/dashboard.png;
* at 1280, 1400 and 1920 px wide, with pending increase requests, JavaScript measurements over the
  DevTools protocol find no panel overflowing and every Approve / Deny button inside its card
  (screenshots: test-artifacts/dashboard-WIDTH.png).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import duckdb
import pytest

from spendgate.identity import fingerprint
from tests.support import ANTHROPIC_KEY, OPENAI_KEY, RAW_KEYS
from tests.support.gateway import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

CAROL_KEY = "sk-ant-test-CAROL-SECRET"
TESTER_KEY = "sk-ant-test-TESTER-SECRET"
ARTIFACTS = REPO / "test-artifacts"

POLICY = f"""
version: 1
timezone: UTC
organization: {{name: acme, budgets: {{month: 10000}}}}
identity: [proxy_auth, api_key, local_user]
defaults:
  user: {{hour: 10, day: 50, month: 600}}
  workspace: {{month: 5000}}
workspaces:
  platform: {{members: [bob, tester]}}
  research: {{members: [carol]}}
users:
  carol: {{budgets: {{day: 0}}}}
keys:
  "{fingerprint(ANTHROPIC_KEY)}": {{user: bob}}
  "{fingerprint(CAROL_KEY)}": {{user: carol}}
unpriced: {{charge_per_mtok: {{input: 15, output: 75}}}}
approvals: {{organization: {{approvers: [dana]}}}}
"""


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("Chromium is not installed, so the dashboard cannot be checked in a real browser. scripts/test "
                "installs Debian's `chromium` when run as root (CI); elsewhere: sudo apt-get install chromium")


def chromium(url: str, tmp: Path, *extra: str, timeout: float = 90) -> str:
    """Headless Chromium as CI runs it (root, no sandbox, no network but loopback); returns stdout."""
    args = [
        chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={tmp}", "--virtual-time-budget=15000",
        *extra, url,
    ]  # fmt: skip
    cp = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert cp.returncode == 0, f"chromium exited {cp.returncode}\n{cp.stderr[-3000:]}"
    return cp.stdout


def http(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def money(v: float) -> str:
    return f"${v:,.2f}"


@pytest.fixture
def traffic(tmp_path, gateway_factory, fake_provider):
    """A gateway with real traffic from bob, carol (blocked) and tester (one unpriced model)."""
    import anthropic
    import openai

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    gw = gateway_factory("gw", policy=policy).start()

    def claude(key: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(api_key=key, http_client=gw.http_client(), max_retries=0)

    def ask(client, model="claude-sonnet-4-5", usage=None):
        hdrs = {"x-fake-usage": json.dumps(usage)} if usage else None
        return client.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": "hi"}],
                                      extra_headers=hdrs)  # fmt: skip

    bob, tester, carol = claude(ANTHROPIC_KEY), claude(TESTER_KEY), claude(CAROL_KEY)
    for out in (450, 2000, 900):
        ask(bob, usage={"output_tokens": out})
    ask(tester)
    ask(tester, model="claude-mystery-9")  # nobody prices it: charged at the policy's fallback rate
    oa = openai.OpenAI(api_key=OPENAI_KEY, http_client=gw.http_client(), max_retries=0)
    oa.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.RateLimitError):
        ask(carol)
    rows = gw.ledger(wait_for=7)
    assert {r["user"] for r in rows} == {"bob", "tester", "carol"}
    info = json.loads(Path(str(gw.db) + ".gateway.json").read_text())
    yield gw, info["url"], info["token"], rows
    for c in (bob, tester, carol, oa):
        c.close()


def test_admin_api_auth_and_org_view(traffic):
    gw, url, token, rows = traffic
    assert http(f"{url}/api/overview")[0] == 401
    assert http(f"{url}/api/overview", "not-the-token")[0] == 401
    assert http(f"{url}/api/ledger", "not-the-token")[0] == 401
    status, body = http(f"{url}/api/overview?window=day", token)
    assert status == 200
    o = json.loads(body)
    assert {r["group"] for r in o["breakdowns"]["user"]} == {"bob", "tester", "carol"}
    assert o["totals"]["day"]["requests"] == 7 and o["totals"]["day"]["blocked"] == 1
    assert o["totals"]["day"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] or 0 for r in rows))
    assert [b["user"] for b in o["blocks"]] == ["carol"]
    assert [u["model"] for u in o["unpriced"]] == ["claude-mystery-9"]
    assert sum(p["requests"] for p in o["series"]["minute"]) == 7
    scopes = {b["scope"] for b in json.loads(http(f"{url}/api/budgets", token)[1])}
    assert {"user:bob", "user:carol", "organization:acme"} <= scopes


def test_engineer_sees_only_their_own_data_through_the_proxy(traffic):
    gw, url, token, rows = traffic
    with gw.http_client() as c:
        me = c.get("http://spendgate.local/api/whoami").json()
        assert me["name"] == "tester" and me["admin"] is False
        o = c.get("http://spendgate.local/api/overview", params={"user": "bob", "window": "day"}).json()
        assert o["user"] == "tester"
        assert {r["group"] for r in o["breakdowns"]["user"]} == {"tester"}
        assert {r["user"] for r in o["latest"]} == {"tester"} and len(o["latest"]) == 3
        mine = sum(r["cost_usd"] or 0 for r in rows if r["user"] == "tester")
        assert o["totals"]["day"]["cost_usd"] == pytest.approx(mine)
        ledger = c.get("http://spendgate.local/api/ledger", params={"user": "bob"}).json()
        assert {r["user"] for r in ledger} == {"tester"}
        budgets = c.get("http://spendgate.local/api/budgets").json()
        assert budgets and {b["scope"] for b in budgets} <= {"user:tester", "workspace:platform"}
        assert c.get("http://spendgate.local/api/grants").status_code == 403  # admin-only route
        assert c.get("http://spendgate.local/api/overview", headers={"Authorization": "Bearer nope"}).status_code == 401
        r = c.post("http://spendgate.local/api/approve", json={"id": "x"}, headers={"X-Spendgate": "1"})
        assert r.status_code == 403  # read-only: tester approves nothing
        csv = c.get("http://spendgate.local/api/export", params={"format": "csv"})
        assert csv.status_code == 200 and "bob" not in csv.text and csv.text.count("\n") == 1 + 3
    # the provider requests themselves were metered, the dashboard's were not
    assert len(gw.ledger()) == 7


def test_export_through_the_gateway_round_trips(traffic, tmp_path):
    gw, url, token, rows = traffic
    out = tmp_path / "spend.parquet"
    cp = gw.cli("export", "--format", "parquet", "--out", str(out))
    assert cp.returncode == 0, cp.stderr
    assert "wrote 7 rows" in cp.stderr and "gateway" in cp.stderr
    con = duckdb.connect()
    back = con.execute('SELECT request_id, "user", cost_usd, charged_usd FROM read_parquet(?)', [str(out)]).fetchall()
    assert sorted(r[0] for r in back) == sorted(r["request_id"] for r in rows)
    assert float(sum(r[2] or 0 for r in back)) == pytest.approx(sum(r["cost_usd"] or 0 for r in rows))
    out_csv = tmp_path / "bob.csv"
    cp = gw.cli("export", "--format", "csv", "--user", "bob", "--since", "2000-01-01", "--out", str(out_csv))
    assert cp.returncode == 0, cp.stderr
    users = con.execute('SELECT DISTINCT "user" FROM read_csv(?)', [str(out_csv)]).fetchall()
    assert users == [("bob",)]
    data = out.read_bytes() + out_csv.read_bytes()
    assert not any(k.encode() in data for k in (*RAW_KEYS, CAROL_KEY, TESTER_KEY))


def test_top_once_through_the_gateway(traffic):
    gw, url, token, rows = traffic
    cp = gw.cli("top", "--once")
    assert cp.returncode == 0, cp.stderr
    out = cp.stdout
    assert "spendgate top" in out and "gateway http://127.0.0.1" in out
    assert "bob" in out and "claude-mystery-9" in out and "carol" in out  # breakdowns, unpriced, blocks
    assert "user:carol" in out  # carol's zero budget is the closest to its cap


def test_dashboard_renders_in_headless_chromium(traffic, tmp_path):
    gw, url, token, rows = traffic
    o = json.loads(http(f"{url}/api/overview", token)[1])

    # organization view on the loopback port, signed in with the token in the URL fragment
    dom = chromium(f"{url}/#token={token}&name=dana", tmp_path / "profile-admin", "--dump-dom")
    assert 'data-ready="1"' in dom, dom[-3000:]
    assert "· organization" in dom and "dana (admin)" in dom
    assert money(o["totals"]["month"]["cost_usd"]) in dom
    for text in ("bob", "tester", "carol", "claude-sonnet-4-5", "claude-mystery-9", "gpt-5", "user:carol"):
        assert text in dom, text
    assert dom.count("<rect") > 60  # the per-minute chart drew its buckets
    assert token not in dom

    # engineer view through the proxy's virtual host: no token, identified like their traffic
    proxied = ("--proxy-server=" + gw.proxy_url, "--proxy-bypass-list=<-loopback>")
    dom = chromium("http://spendgate.local/", tmp_path / "profile-eng", "--dump-dom", *proxied)
    assert 'data-ready="1"' in dom, dom[-3000:]
    assert "your spend (tester)" in dom
    assert "bob" not in dom and "carol" not in dom

    # and a screenshot of the organization view, kept as a test artifact
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    chromium(f"{url}/#token={token}&name=dana", tmp_path / "profile-shot", f"--screenshot={shot}",
             "--window-size=1440,1500")  # fmt: skip
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("SPENDGATE_UPDATE_DOCS_SCREENSHOT"):
        shutil.copy(shot, REPO / "docs" / "dashboard.png")


# --- layout in real Chromium, measured through the DevTools protocol -----------------------------

class DevTools:
    """Headless Chromium driven over the DevTools protocol (websockets), loopback only."""

    def __init__(self, profile: Path) -> None:
        import re

        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
             "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        port = None
        for line in self.proc.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
            if m := re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line):
                port = int(m.group(1))
                break
        assert port, "chromium did not open its DevTools port"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as resp:
            page = next(t for t in json.loads(resp.read()) if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=30)
        self._id = 0

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self._id:
                assert "error" not in msg, msg
                return msg["result"]

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in res, res
        return res["result"].get("value")

    def open(self, url: str, width: int, height: int = 1000) -> None:
        import time

        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        while self.evaluate("document.body && document.body.dataset.ready") != "1":
            assert time.monotonic() < deadline, self.evaluate("document.body ? document.body.innerText : ''")
            time.sleep(0.2)

    def screenshot(self, path: Path, width: int) -> None:
        import base64

        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=30)


# Every panel's box, what overflows it, and every control inside the pending-requests table.
MEASURE = """JSON.stringify((() => {
  const vw = document.documentElement.clientWidth;
  const box = (el) => { const r = el.getBoundingClientRect(); return {left: r.left, right: r.right, width: r.width}; };
  const panels = [...document.querySelectorAll("main .card, main .kpi")].filter((el) => !el.hidden).map((el) => {
    const inner = [...el.querySelectorAll("table, svg, .donut-box, .hbar, .budget")].map(box);
    return {name: (el.querySelector("h2, h3") || {}).textContent, ...box(el), scroll: el.scrollWidth,
            client: el.clientWidth, contentRight: Math.max(0, ...inner.map((b) => b.right))};
  });
  const card = document.getElementById("requests").closest(".card").getBoundingClientRect();
  const controls = [...document.querySelectorAll("#requests button, #requests input")].map((el) => ({
    text: el.textContent || el.placeholder, ...box(el), cardLeft: card.left, cardRight: card.right}));
  return {vw, docScroll: document.documentElement.scrollWidth, panels, controls};
})())"""


def test_every_panel_fits_at_1280_and_1920_px_in_chromium(traffic, tmp_path):
    gw, url, token, rows = traffic
    for scope, reason in (("user:bob", "release crunch: two more agents on the payments migration this week, "
                                       "reviewed with the team lead, see ticket PAY-1234 for the plan"),
                          ("workspace:platform", "quarter-end load tests on the platform workspace"),
                          ("user:carol", "research spike")):
        cp = gw.cli("request", "--amount", "25", "--window", "day" if scope.startswith("user") else "month",
                    "--scope", scope, "--reason", reason)
        assert cp.returncode == 0, cp.stderr
    ARTIFACTS.mkdir(exist_ok=True)
    # an approver signs in with her own spendgate token: only she may decide, so only she sees the buttons
    dana = json.loads(gw.cli("tokens", "issue", "dana", "--json", check=True).stdout)["token"]
    browser = DevTools(tmp_path / "profile-layout")
    try:
        for width in (1280, 1400, 1920):
            browser.open(f"{url}/#token={dana}", width)
            m = json.loads(browser.evaluate(MEASURE))
            browser.screenshot(ARTIFACTS / f"dashboard-{width}.png", width)
            assert m["vw"] == width
            assert m["docScroll"] <= m["vw"], f"{width}px: the page scrolls sideways ({m['docScroll']}px)"
            assert len(m["panels"]) == 4 + 1 + 6 + 1 + 2 + 2  # + subscription usage and seat plans (issue 20)
            for p in m["panels"]:
                where = f"{width}px, panel {p['name']!r}"
                assert p["left"] >= 0 and p["right"] <= m["vw"], f"{where} is outside the viewport: {p}"
                assert p["scroll"] <= p["client"] + 1, f"{where} overflows: {p}"
                assert p["contentRight"] <= p["right"], f"{where}: its content runs past its edge: {p}"
            approve = [c for c in m["controls"] if c["text"] == "Approve"]
            assert len(approve) == 3 and len([c for c in m["controls"] if c["text"] == "Deny"]) == 3, m["controls"]
            for c in m["controls"]:
                assert c["width"] > 0, f"{width}px: {c['text']!r} has no width"
                assert c["cardLeft"] <= c["left"] and c["right"] <= c["cardRight"], f"{width}px: {c} is clipped"
                assert c["right"] <= m["vw"]
            shot = ARTIFACTS / f"dashboard-{width}.png"
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    finally:
        browser.close()
