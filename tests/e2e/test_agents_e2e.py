"""The real coding-agent CLIs, non-interactively, through a real mitmdump in front of the fake provider.

Pinned CLIs come from npm via scripts/ensure-agents (.cache/agents): Claude Code 2.1.197,
Codex 0.171.0 (its WebSocket transport, and HTTPS when the socket is refused), Gemini CLI 0.61.0.
Each gets its answer and every model call is metered with tokens, charge, client and (where the
client sends one) session id. At the cap each exits non-zero soon after our refusal, with our
message on screen, and the provider sees none of the refused calls.

Every CLI runs with HOME in a temp dir, all traffic through HTTPS_PROXY to the loopback gateway
(whose upstream is the fake provider: nothing leaves the machine), telemetry and updates off.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support import ANTHROPIC_KEY, GEMINI_KEY, OPENAI_KEY, wait_until

REPO = Path(__file__).resolve().parents[2]
AGENTS = Path(os.environ.get("SPENDGATE_AGENTS_DIR", REPO / ".cache" / "agents")) / "node_modules" / ".bin"
ANSWER = "I'm a fake provider answering deterministically."
CAP_MESSAGE = "spendgate: spend limit reached (daily budget of user tester"
AFTER_REFUSAL_S = 10  # the bar: exit within 10 s of the refusal
RUN_TIMEOUT_S = 120  # a CLI that retries or hangs fails here instead

pytestmark = pytest.mark.skipif(
    not (AGENTS / "codex").exists() and not os.environ.get("CI"),
    reason="agent CLIs not installed (run scripts/ensure-agents)",
)  # on CI scripts/test installs them, so a missing one fails


def cap_policy(tmp_path):
    # sign-in traffic (Gemini CLI with Google) is subscription usage: counted here so the cap applies
    p = tmp_path / "cap.yaml"
    p.write_text("version: 1\ntimezone: UTC\ndefaults: {user: {day: 0.0001}}\nsubscription_usage: count\n")
    return p


def agent_env(gw, home: Path) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TERM": "dumb", "NO_COLOR": "1",
        "TMPDIR": str(home / "tmp"),  # Gemini CLI writes error reports there
        **gw.env(),
        "NODE_EXTRA_CA_CERTS": gw.ca_file, "CODEX_CA_CERTIFICATE": gw.ca_file,
        # no telemetry, no update checks, no side traffic
        "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_ERROR_REPORTING": "1", "GEMINI_TELEMETRY_ENABLED": "false", "GEMINI_CLI_TRUST_WORKSPACE": "true",
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY, "CODEX_API_KEY": OPENAI_KEY, "GEMINI_API_KEY": GEMINI_KEY,
    }
    return env


COMMANDS = {
    "claude-code": ["claude", "-p", "say hi"],
    "codex": ["codex", "exec", "--skip-git-repo-check", "say hi"],
    "gemini-cli": ["gemini", "-p", "say hi"],
    "gemini-cli-google": ["gemini", "-p", "say hi"],
}
GOOGLE_LOGIN = {  # Gemini CLI signed in with a Google account: Code Assist on cloudcode-pa
    "GOOGLE_GENAI_USE_GCA": "true", "GOOGLE_CLOUD_ACCESS_TOKEN": "ya29.test-SECRET-oauth",
    "GOOGLE_CLOUD_PROJECT": "fake-project-123",
}


def run_agent(client: str, gw, tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run one CLI to its end; (the process, the wall-clock time it ended)."""
    home = tmp_path / f"home-{client}"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    exe, *args = COMMANDS[client]
    args = [*args[:-2], *extra, *args[-2:]]  # options before the last flag and the prompt
    env = agent_env(gw, home)
    if client == "gemini-cli-google":
        del env["GEMINI_API_KEY"]
        env.update(GOOGLE_LOGIN)
    cp = subprocess.run([str(AGENTS / exe), *args], env=env, cwd=str(home), capture_output=True,
                        text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)
    return cp, time.time()


def _utc(ts: str) -> datetime:
    dt = datetime.fromisoformat(ts)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def assert_no_secret_kept(gw) -> None:
    """No credential a CLI sent reaches the gateway's log or its ledger file (fingerprints only)."""
    gw.stop()
    kept = gw.log_text().encode() + gw.db.read_bytes()
    for secret in (ANTHROPIC_KEY, OPENAI_KEY, GEMINI_KEY, GOOGLE_LOGIN["GOOGLE_CLOUD_ACCESS_TOKEN"]):
        assert secret.encode() not in kept, secret


def model_rows(rows):
    return [r for r in rows if r["outcome"] != "unmetered"]


def wait_model_rows(gw, n: int = 1) -> list:
    """The model-call rows once at least `n` are visible: the CLIs' unmetered calls (metadata,
    telemetry) may reach the ledger a commit (0.5 s) before them."""
    def enough():
        rows = model_rows(gw.ledger())
        return rows if len(rows) >= n else None
    return wait_until(enough, timeout=15)


def model_calls(fake):
    """What reached the provider as a model call: POSTs to model endpoints, and WebSocket requests."""
    return [r for r in fake.requests if r.method in ("POST", "WS") and (
        r.host != "cloudcode-pa.googleapis.com" or r.route in CODE_ASSIST_MODEL_CALLS) and (
        r.host != "chatgpt.com" or r.route == "/backend-api/codex/responses") and (  # not its MCP, analytics
        not r.host.endswith("githubcopilot.com") or r.route in COPILOT_MODEL_ROUTES)]  # nor Copilot's MCP


COPILOT_MODEL_ROUTES = ("/responses", "/chat/completions", "/v1/messages")
CODE_ASSIST_MODEL_CALLS = ("/v1internal:generateContent", "/v1internal:streamGenerateContent")  # not loadCodeAssist &c


def assert_stopped_at_cap(cp, ended_at, gw, fake, client, message=CAP_MESSAGE):
    out = cp.stdout + cp.stderr
    assert cp.returncode != 0, out
    assert message in out, out
    if message == CAP_MESSAGE:
        assert "spendgate request --amount" in out, out
    assert model_calls(fake) == [], [(r.method, r.path) for r in model_calls(fake)]
    # the refusals' rows: the ledger may show the CLI's unmetered calls (commits every 0.5 s) first
    rows = wait_model_rows(gw)
    assert {r["outcome"] for r in rows} == {"blocked"}, rows
    assert {r["client"] for r in rows} == {client.removesuffix("-google")}
    first_refusal = min(_utc(r["ts"]).timestamp() for r in rows)
    print(f"{client}: exit {cp.returncode} {ended_at - first_refusal:.1f} s after the first refusal, "
          f"{len(rows)} refused calls")  # the figures docs/clients.md quotes (pytest -s)
    assert ended_at - first_refusal < AFTER_REFUSAL_S, (ended_at - first_refusal, len(rows), out[-2000:])
    return rows, out


# --- Claude Code -----------------------------------------------------------------------------


def test_claude_code_answers_and_every_call_is_metered(gateway, fake_provider, tmp_path):
    cp, _ = run_agent("claude-code", gateway, tmp_path)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert ANSWER in cp.stdout
    calls = model_calls(fake_provider)
    rows = wait_model_rows(gateway, len(calls))
    assert len(rows) == len(calls) >= 1
    for r in rows:
        assert (r["endpoint"], r["outcome"], r["client"]) == ("messages", "ok", "claude-code")
        assert (r["input_tokens"], r["cache_read_tokens"], r["output_tokens"]) == (1800, 300, 450)
        assert float(r["charged_usd"]) > 0 and r["session_id"]
    sent = {c.headers.get("x-claude-code-session-id") for c in calls}
    assert {r["session_id"] for r in rows} == sent
    assert_no_secret_kept(gateway)


def test_claude_code_stops_at_the_cap_with_our_message(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=cap_policy(tmp_path)).start()
    cp, ended = run_agent("claude-code", gw, tmp_path)
    rows, out = assert_stopped_at_cap(cp, ended, gw, fake_provider, "claude-code")
    assert "429" in out and len(rows) == 1  # no retry


# --- Codex: WebSocket first, HTTPS when the socket is refused ---------------------------------


def test_codex_over_websocket_answers_and_every_turn_is_metered(gateway, fake_provider, tmp_path):
    cp, _ = run_agent("codex", gateway, tmp_path)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert ANSWER in cp.stdout
    turns = [r for r in fake_provider.requests if r.method == "WS" and r.json.get("type") == "response.create"]
    assert turns and not [r for r in fake_provider.requests if r.method == "POST"]
    rows = wait_model_rows(gateway, len(turns))
    assert len(rows) == len(turns)  # one row per turn; the handshakes make none
    session = re.search(r"session id: (\S+)", cp.stdout + cp.stderr).group(1)
    for r in rows:
        assert (r["endpoint"], r["client"], r["session_id"]) == ("responses.websocket", "codex", session)
        assert r["model"] == turns[0].json["model"] and r["status"] == 200
        assert (r["input_tokens"], r["cache_read_tokens"], r["output_tokens"]) == (2000, 500, 700)
        assert r["outcome"] in ("ok", "unpriced") and float(r["charged_usd"]) > 0
    # the model Codex ships with may be newer than the pinned catalogue: `prices check` says so
    unpriced = [r for r in rows if r["outcome"] == "unpriced"]
    if unpriced:
        report = json.loads(gateway.cli("prices", "check", "--json", check=True).stdout)
        (m,) = [m for m in report["unpriced_models"] if m["model"] == unpriced[0]["model"]]
        assert m["requests"] == len(unpriced)
        assert abs(float(m["fallback_charged_usd"]) - sum(float(r["charged_usd"]) for r in unpriced)) < 1e-9
    assert_no_secret_kept(gateway)


def test_codex_over_websocket_stops_at_the_cap_with_our_message(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=cap_policy(tmp_path)).start()
    cp, ended = run_agent("codex", gw, tmp_path)
    rows, out = assert_stopped_at_cap(cp, ended, gw, fake_provider, "codex")
    assert {r["endpoint"] for r in rows} == {"responses.websocket"}  # refused inside the socket
    assert "You've hit your usage limit" in out.replace("\u2019", "'")
    assert [r for r in fake_provider.requests if r.method == "GET" and r.route == "/v1/responses"]  # sockets opened


def test_codex_over_https_answers_and_stops_at_the_cap(tmp_path, gateway_factory, fake_provider):
    fake_provider.refuse_websocket = True
    try:
        gw = gateway_factory("open").start()
        cp, _ = run_agent("codex", gw, tmp_path)
        assert cp.returncode == 0 and ANSWER in cp.stdout, cp.stdout + cp.stderr
        (row,) = wait_model_rows(gw)
        assert (row["endpoint"], row["client"], row["output_tokens"]) == ("responses", "codex", 700)
        assert row["session_id"] and float(row["charged_usd"]) > 0
        gw.stop()
        fake_provider.reset()
        capped = gateway_factory("capped", policy=cap_policy(tmp_path)).start()
        cp, ended = run_agent("codex", capped, tmp_path)
        rows, _ = assert_stopped_at_cap(cp, ended, capped, fake_provider, "codex")
        assert {r["endpoint"] for r in rows} == {"responses"} and len(rows) == 1  # no retry
    finally:
        fake_provider.refuse_websocket = False


# --- Codex signed in with ChatGPT (chatgpt.com/backend-api/codex, a subscription seat) --------

CHATGPT_ACCESS = "chatgpt-access"  # the JWT's marker; the whole token is built per run


def _jwt(claims: dict) -> str:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(claims)}.{'c2lnbmF0dXJl'}"


def chatgpt_login(home: Path) -> str:
    """A ChatGPT sign-in as `codex login` leaves it ($CODEX_HOME/auth.json, codex-rs/login): an
    id_token whose claims name the plan and account, an access token valid for 30 days, refreshed
    just now (so Codex does not ask auth.openai.com for a new one). Returns the access token."""
    exp = int(time.time()) + 30 * 86400
    auth = {"chatgpt_plan_type": "plus", "chatgpt_user_id": "user-fake", "chatgpt_account_id": "acct-fake-0001"}
    access = _jwt({"exp": exp, "marker": CHATGPT_ACCESS, "https://api.openai.com/auth": auth})
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "auth.json").write_text(json.dumps({
        "auth_mode": "chatgpt", "OPENAI_API_KEY": None,
        "tokens": {"id_token": _jwt({"email": "tester@example.com", "exp": exp, "https://api.openai.com/auth": auth}),
                   "access_token": access, "refresh_token": "rt-fake-SECRET", "account_id": "acct-fake-0001"},
        "last_refresh": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}))
    (codex_home / "config.toml").write_text('cli_auth_credentials_store = "file"\n')
    return access


def run_codex_chatgpt(gw, tmp_path) -> tuple[subprocess.CompletedProcess, float, str]:
    home = tmp_path / "home-codex-chatgpt"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    access = chatgpt_login(home)
    env = agent_env(gw, home)
    del env["CODEX_API_KEY"]
    cp = subprocess.run([str(AGENTS / "codex"), "exec", "--skip-git-repo-check", "say hi"], env=env, cwd=str(home),
                        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)
    return cp, time.time(), access


def test_codex_with_a_chatgpt_login_is_metered_as_a_subscription(gateway, fake_provider, tmp_path):
    cp, _, access = run_codex_chatgpt(gateway, tmp_path)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert ANSWER in cp.stdout
    turns = [r for r in fake_provider.requests if r.method == "WS" and r.json.get("type") == "response.create"]
    assert turns and {t.host for t in turns} == {"chatgpt.com"}
    assert not [r for r in fake_provider.requests if r.host == "api.openai.com"]
    rows = wait_model_rows(gateway, len(turns))
    assert len(rows) == len(turns)
    for r in rows:
        assert (r["provider"], r["endpoint"], r["client"]) == ("openai", "responses.websocket", "codex")
        assert (r["billing_basis"], r["credential"]) == ("subscription", "chatgpt_login")
        assert float(r["cost_usd"]) == 0  # covered by the ChatGPT seat; the list price is the notional
        assert (r["input_tokens"], r["output_tokens"]) == (2000, 700)
        assert r["outcome"] == "unpriced" or float(r["notional_usd"]) > 0
    gateway.stop()
    kept = gateway.log_text().encode() + gateway.db.read_bytes()
    assert access.encode() not in kept and b"rt-fake-SECRET" not in kept


def test_codex_with_a_chatgpt_login_stops_at_the_cap(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=cap_policy(tmp_path)).start()  # subscription_usage: count
    cp, ended, _ = run_codex_chatgpt(gw, tmp_path)
    rows, out = assert_stopped_at_cap(cp, ended, gw, fake_provider, "codex")
    assert "You've hit your usage limit" in out.replace("\u2019", "'")
    assert {r["billing_basis"] for r in rows} == {"subscription"}
    assert [r for r in fake_provider.requests if r.host == "chatgpt.com" and r.route == "/backend-api/codex/responses"]


def test_codex_with_a_chatgpt_login_over_https_answers_and_stops_at_the_cap(tmp_path, gateway_factory,
                                                                             fake_provider):
    fake_provider.refuse_websocket = True  # Codex falls back to POST /backend-api/codex/responses
    try:
        gw = gateway_factory("open").start()
        cp, _, _ = run_codex_chatgpt(gw, tmp_path / "open")
        assert cp.returncode == 0 and ANSWER in cp.stdout, cp.stdout + cp.stderr
        (row,) = wait_model_rows(gw)
        assert (row["endpoint"], row["client"], row["billing_basis"], row["output_tokens"]) == \
            ("responses", "codex", "subscription", 700)
        assert row["session_id"] and float(row["cost_usd"]) == 0
        (post,) = [r for r in fake_provider.requests if r.method == "POST" and r.route == "/backend-api/codex/responses"]
        assert post.headers.get("content-encoding") == "zstd"  # read decoded, forwarded as sent
        assert row["model"] == post.json["model"] and row["stream"]
        gw.stop()
        fake_provider.reset()
        capped = gateway_factory("capped", policy=cap_policy(tmp_path)).start()
        cp, ended, _ = run_codex_chatgpt(capped, tmp_path / "capped")
        rows, out = assert_stopped_at_cap(cp, ended, capped, fake_provider, "codex")
        assert {r["endpoint"] for r in rows} == {"responses"} and len(rows) == 1  # no retry
        assert "You've hit your usage limit" in out.replace("\u2019", "'")
    finally:
        fake_provider.refuse_websocket = False


# --- GitHub Copilot CLI (a Copilot seat; the GitHub token goes straight to the Copilot API) ----
# It asks api.github.com/copilot_internal/user for the seat (its endpoints.api names the Copilot
# host), then GET /models and POST /responses there. api.github.com is not a provider host: the
# gateway tunnels it untouched to the fake, so the CLI trusts the fake's CA too (both in a bundle).

COPILOT_TOKEN = "gho_fakeCopilotSECRET0001"
needs_copilot = pytest.mark.skipif(not (AGENTS / "copilot").exists() and not os.environ.get("CI"),
                                   reason="Copilot CLI not installed (run scripts/ensure-agents)")


def run_copilot(gw, fake, tmp_path) -> tuple[subprocess.CompletedProcess, float]:
    home = tmp_path / "home-copilot"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_text(Path(gw.ca_file).read_text() + Path(fake.ca_file).read_text())
    env = agent_env(gw, home)
    env.update({"COPILOT_GITHUB_TOKEN": COPILOT_TOKEN, "COPILOT_AUTO_UPDATE": "false", "SSL_CERT_FILE": str(bundle),
                "NODE_EXTRA_CA_CERTS": str(bundle)})
    cp = subprocess.run([str(AGENTS / "copilot"), "-p", "say hi", "--allow-all-tools", "--disable-client-telemetry"],
                        env=env, cwd=str(home), capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                        stdin=subprocess.DEVNULL)
    return cp, time.time()


def copilot_model_calls(fake):
    return [r for r in fake.requests if r.method == "POST" and r.host.endswith("githubcopilot.com")
            and r.route in COPILOT_MODEL_ROUTES]


@needs_copilot
def test_copilot_cli_answers_and_every_call_is_metered(gateway, fake_provider, tmp_path):
    cp, _ = run_copilot(gateway, fake_provider, tmp_path)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert ANSWER in cp.stdout
    calls = copilot_model_calls(fake_provider)
    assert calls and {c.host for c in calls} == {"api.individual.githubcopilot.com"}
    rows = [r for r in wait_model_rows(gateway, len(calls)) if r["provider"] == "copilot"]
    assert len(rows) == len(calls)
    sessions = {c.headers["x-client-session-id"] for c in calls}
    for r in rows:
        assert (r["endpoint"], r["client"], r["outcome"]) == ("responses", "copilot", "ok")
        assert r["model"] == calls[0].json["model"] and r["session_id"] in sessions
        assert (r["input_tokens"], r["cache_read_tokens"], r["output_tokens"]) == (2000, 500, 700)
        assert (r["billing_basis"], r["credential"], float(r["cost_usd"])) == ("subscription", "copilot_seat", 0)
        assert float(r["notional_usd"]) > 0
    gateway.stop()
    assert COPILOT_TOKEN.encode() not in gateway.log_text().encode() + gateway.db.read_bytes()


@needs_copilot
def test_copilot_cli_stops_at_the_cap_with_our_message(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=cap_policy(tmp_path)).start()  # subscription_usage: count
    cp, ended = run_copilot(gw, fake_provider, tmp_path)
    rows, out = assert_stopped_at_cap(cp, ended, gw, fake_provider, "copilot")
    assert "hit your rate limit" not in out and len(rows) == 1  # its own 429 message and wait: not used
    assert {r["status"] for r in rows} == {402}
    assert copilot_model_calls(fake_provider) == []


# --- Gemini CLI ------------------------------------------------------------------------------


def test_gemini_cli_answers_and_every_call_is_metered(gateway, fake_provider, tmp_path):
    cp, _ = run_agent("gemini-cli", gateway, tmp_path)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert ANSWER in cp.stdout
    calls = model_calls(fake_provider)
    rows = wait_model_rows(gateway, len(calls))
    assert len(rows) == len(calls) >= 2  # the router's JSON call, then the streamed answer
    assert {r["endpoint"] for r in rows} == {"generateContent", "streamGenerateContent"}
    for r in rows:
        assert (r["outcome"], r["client"]) == ("ok", "gemini-cli")
        assert (r["input_tokens"], r["cache_read_tokens"], r["output_tokens"]) == (3000, 1000, 800)
        assert float(r["charged_usd"]) > 0
    assert_no_secret_kept(gateway)


def test_gemini_cli_stops_at_the_cap_with_our_message_and_no_retry(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=cap_policy(tmp_path)).start()
    cp, ended = run_agent("gemini-cli", gw, tmp_path)
    rows, out = assert_stopped_at_cap(cp, ended, gw, fake_provider, "gemini-cli")
    assert "TerminalQuotaError" in out and "Retrying with backoff" not in out
    assert len(rows) <= 2  # the router's call and the main call, each refused once


# --- Gemini CLI signed in with Google (Code Assist, cloudcode-pa.googleapis.com) ---------------


def test_gemini_cli_google_login_answers_and_every_call_is_metered(gateway, fake_provider, tmp_path):
    cp, _ = run_agent("gemini-cli-google", gateway, tmp_path)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert ANSWER in cp.stdout
    calls = model_calls(fake_provider)
    assert {c.host for c in calls} == {"cloudcode-pa.googleapis.com"}
    rows = wait_model_rows(gateway, len(calls))
    assert len(rows) == len(calls) >= 2  # router call and streamed answer; loadCodeAssist & co. unmetered
    sessions = {c.json["request"]["session_id"] for c in calls}
    for r in rows:
        assert (r["provider"], r["client"]) == ("code-assist", "gemini-cli")  # Gemini through Code Assist
        assert r["endpoint"] in ("generateContent", "streamGenerateContent")
        assert (r["input_tokens"], r["cache_read_tokens"], r["output_tokens"]) == (3000, 1000, 800)
        # a Google sign-in is subscription usage: nothing invoiced per token, the list price kept as notional
        assert (r["billing_basis"], r["cost_usd"]) == ("subscription", 0)  # nothing invoiced per token
        # its list price is the notional; gemini-3-flash has none in the pinned catalogue: unpriced, never $0
        assert (r["outcome"], r["notional_usd"]) == ("unpriced", None) or float(r["notional_usd"]) > 0
        assert r["session_id"] in sessions
        assert r["model"] in {c.json["model"] for c in calls}
        assert r["key_fingerprint"].startswith("sha256:")  # the OAuth token, fingerprinted
    assert_no_secret_kept(gateway)


def test_gemini_cli_google_login_stops_at_the_cap(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=cap_policy(tmp_path)).start()
    cp, ended = run_agent("gemini-cli-google", gw, tmp_path)
    rows, out = assert_stopped_at_cap(cp, ended, gw, fake_provider, "gemini-cli-google")
    assert "TerminalQuotaError" in out and len(rows) <= 2


# --- the other refusal: a model without a price when the policy blocks unpriced models (503) ---
# Codex retries a 503 (over the socket, then over HTTPS) and Gemini CLI retries it with backoff;
# each gets the shape it treats as final instead (spendgate.budgets.refusal.for_client/unavailable).

UNKNOWN = "spendgate: model '{}' has no known price and the policy blocks unpriced models"


def block_unpriced(tmp_path):
    p = tmp_path / "block.yaml"
    p.write_text("version: 1\ntimezone: UTC\nunpriced: block\n")
    return p


def test_codex_stops_at_once_on_a_blocked_unpriced_model(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=block_unpriced(tmp_path)).start()
    cp, ended = run_agent("codex", gw, tmp_path, "-m", "spendgate-unknown-model-1")
    rows, out = assert_stopped_at_cap(cp, ended, gw, fake_provider, "codex",
                                      UNKNOWN.format("spendgate-unknown-model-1"))
    assert len(rows) <= 2 and {r["endpoint"] for r in rows} == {"responses.websocket"}  # no retry, no fallback


def test_gemini_cli_stops_at_once_on_a_blocked_unpriced_model(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=block_unpriced(tmp_path)).start()
    cp, ended = run_agent("gemini-cli", gw, tmp_path, "-m", "gemini-unknown-model-1")
    rows, out = assert_stopped_at_cap(cp, ended, gw, fake_provider, "gemini-cli",
                                      UNKNOWN.format("gemini-unknown-model-1"))
    assert "TerminalQuotaError" in out and "Retrying with backoff" not in out
    assert [r["status"] for r in rows if r["model"] == "gemini-unknown-model-1"] == [503]
