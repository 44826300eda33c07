"""No unbudgeted path (issue 13, parts 3-5): decisions on the real destination, path variants,
unmetered endpoints at the cap, and failing closed when the addon is not in charge.

All through a real mitmdump with our addons; a fake provider upstream (or, for the open-relay
checks, mitmproxy in regular mode in front of a loopback "internal service").
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest

from tests.support import ANTHROPIC_KEY, OPENAI_KEY
from tests.support.gateway import GatewayError

pytestmark = pytest.mark.e2e

MODEL = "claude-sonnet-4-5"
AT_CAP = "defaults: {user: {day: 0.005}}\n"  # below one request's reservation: every call is over


def policy(tmp_path, body: str, name: str = "policy.yaml"):
    p = tmp_path / name
    p.write_text("version: 1\n" + body)
    return p


# --- raw HTTP through the proxy, so nothing normalises what we send -----------------------------


def _read_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return head


def connect_status(port: int, authority: str, host_header: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {host_header}\r\n\r\n".encode())
        head = _read_head(s)
    return int(head.split(b" ", 2)[1]) if head else 0


def tunnel(gw, authority: str, sni: str | None) -> ssl.SSLSocket:
    """CONNECT `authority` through the gateway, then TLS with SNI `sni`, trusting mitmproxy's CA."""
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = _read_head(s)
    assert head.startswith(b"HTTP/1.1 200"), head
    ctx = ssl.create_default_context(cafile=gw.ca_file)
    ctx.check_hostname = sni is not None
    return ctx.wrap_socket(s, server_hostname=sni)


def raw_request(sock, method: str, path: str, host: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    data = resp.read()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    sock.close()
    return out


ANTHROPIC_HEADERS = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
OPENAI_HEADERS = {"authorization": f"Bearer {OPENAI_KEY}", "content-type": "application/json"}


def messages_body(prompt: str = "x" * 7200) -> bytes:
    return json.dumps({"model": MODEL, "max_tokens": 450, "messages": [{"role": "user", "content": prompt}]}).encode()


# --- 3. the real destination ---------------------------------------------------------------------


class _Internal(BaseHTTPRequestHandler):
    hits: typing.ClassVar[list[str]] = []

    def do_GET(self):
        _Internal.hits.append(self.path)
        body = b"internal service secret\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def internal_service():
    _Internal.hits = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Internal)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_providers_only_is_not_an_open_relay_with_a_forged_host_header(gateway_factory, internal_service):
    gw = gateway_factory("relay", upstream=False, extra_args=[
        "--set", "spendgate_providers_only=true", "--set", "spendgate_allow_clients=127.0.0.1/32"]).start()
    port = internal_service
    # CONNECT to an internal address claiming a provider Host: refused, never tunnelled
    assert connect_status(gw.port, f"127.0.0.1:{port}", "api.anthropic.com") in (403, 421)
    assert connect_status(gw.port, f"127.0.0.1:{port}", f"127.0.0.1:{port}") == 403  # IP literal
    # absolute-form to the internal address with a provider Host: refused too
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as s:
        s.sendall(f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: api.anthropic.com\r\n"
                  "Connection: close\r\n\r\n".encode())
        resp = http.client.HTTPResponse(s)
        resp.begin()
        body = resp.read()
    assert resp.status in (403, 421), body
    assert b"internal service secret" not in body
    assert _Internal.hits == []


def test_ip_connect_with_provider_sni_is_routed_by_the_sni_and_budgeted(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, AT_CAP)).start()
    # connected by IP, TLS SNI api.anthropic.com: decrypted (allow_hosts matches the SNI), so it must
    # be metered and budgeted like any call to api.anthropic.com
    status, _, body = raw_request(tunnel(gw, "127.0.0.1:443", "api.anthropic.com"), "POST", "/v1/messages",
                                  "api.anthropic.com", messages_body(), ANTHROPIC_HEADERS)
    assert status == 429, body
    assert json.loads(body)["error"]["type"] == "billing_error"
    assert fake_provider.requests == []
    (row,) = gw.ledger(wait_for=1)
    assert (row["provider"], row["endpoint"], row["outcome"]) == ("anthropic", "messages", "blocked")


def test_ip_connect_with_provider_sni_is_metered_under_the_cap(gateway_factory, fake_provider):
    gw = gateway_factory().start()
    status, _, body = raw_request(tunnel(gw, "127.0.0.1:443", "api.anthropic.com"), "POST", "/v1/messages",
                                  "api.anthropic.com", messages_body("hi"), ANTHROPIC_HEADERS)
    assert status == 200, body
    (row,) = gw.ledger(wait_for=1)
    assert (row["provider"], row["endpoint"], row["outcome"]) == ("anthropic", "messages", "ok")
    assert row["cost_usd"] > 0


def test_provider_request_whose_host_disagrees_with_its_target_is_refused(gateway_factory, fake_provider):
    gw = gateway_factory().start()
    # tunnel and SNI say api.anthropic.com, the Host header says api.openai.com
    status, headers, body = raw_request(tunnel(gw, "api.anthropic.com:443", "api.anthropic.com"), "POST",
                                        "/v1/chat/completions", "api.openai.com",
                                        json.dumps({"model": "gpt-5", "messages": []}).encode(), OPENAI_HEADERS)
    assert status == 421, body
    doc = json.loads(body)
    # the OpenAI error shape: /v1/chat/completions on api.anthropic.com is its OpenAI-compatible endpoint
    assert doc["error"]["code"] == "misdirected_request" and "api.openai.com" in doc["error"]["message"]
    assert headers["x-spendgate-refused"] == "misdirected_request"
    # and the other way round: a tunnel to another name, plain HTTP inside with a provider Host
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    s.sendall(b"CONNECT example.com:80 HTTP/1.1\r\nHost: example.com:80\r\n\r\n")
    assert _read_head(s).startswith(b"HTTP/1.1 200")
    status, _, body = raw_request(s, "POST", "/v1/messages", "api.anthropic.com", messages_body("hi"),
                                  ANTHROPIC_HEADERS)
    assert status == 421, body
    assert fake_provider.requests == []


# --- 4. no unbudgeted path -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1//messages", "/v1/messages;x=1", "/v1/%6Dessages", "/V1/Messages",
                                  "/v1/./messages", "/v1/models/../messages?beta=true"])
def test_path_variants_of_messages_are_budgeted(tmp_path, gateway_factory, fake_provider, path):
    gw = gateway_factory(policy=policy(tmp_path, AT_CAP)).start()
    status, _, body = raw_request(tunnel(gw, "api.anthropic.com:443", "api.anthropic.com"), "POST", path,
                                  "api.anthropic.com", messages_body(), ANTHROPIC_HEADERS)
    assert status == 429, body
    assert fake_provider.requests == []
    (row,) = gw.ledger(wait_for=1)
    assert (row["endpoint"], row["outcome"]) == ("messages", "blocked")


def test_central_gateway_blocks_unmetered_endpoints_at_the_cap(tmp_path, gateway_factory, fake_provider):
    # providers_only makes this a central gateway: `unmetered` defaults to block
    gw = gateway_factory(policy=policy(tmp_path, AT_CAP), extra_args=[
        "--set", "spendgate_providers_only=true", "--set", "spendgate_allow_clients=127.0.0.1/32"]).start()
    with gw.http_client() as http:
        r = http.post("https://api.openai.com/v1/vector_stores", headers=OPENAI_HEADERS, json={"name": "docs"})
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "unmetered_endpoint_blocked"
        assert r.headers["x-should-retry"] == "false"
        r = http.post("https://api.anthropic.com/v1/skills", headers=ANTHROPIC_HEADERS, json={"name": "a"})
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error", r.text
        r = http.post("https://api.openai.com/v1//fine_tuning/jobs", headers=OPENAI_HEADERS,
                      json={"model": "gpt-4o-mini", "training_file": "file-1"})
        assert r.status_code == 403, r.text
        assert fake_provider.requests == []
        # free metadata calls still pass at the cap
        assert http.get("https://api.openai.com/v1/models", headers=OPENAI_HEADERS).status_code == 200
        r = http.post("https://api.anthropic.com/v1/messages/count_tokens", headers=ANTHROPIC_HEADERS,
                      json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
    rows = gw.ledger(wait_for=5)
    blocked = [r for r in rows if r["outcome"] == "blocked"]
    assert len(blocked) == 3 and {r["status"] for r in blocked} == {403}
    assert all(r["charged_usd"] == 0 for r in blocked)


def test_unmetered_charge_counts_against_budgets(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {day: 0.005}}\nunmetered: {charge: 0.004}\n"),
                         extra_args=["--set", "spendgate_mode=central"]).start()
    with gw.http_client() as http:
        body = {"name": "docs"}  # vector stores: not metered, so `unmetered` decides
        r = http.post("https://api.openai.com/v1/vector_stores", headers=OPENAI_HEADERS, json=body)
        assert r.status_code == 200, r.text
        r = http.post("https://api.openai.com/v1/vector_stores", headers=OPENAI_HEADERS, json=body)
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "budget_exceeded"
    rows = gw.ledger(wait_for=2)
    assert sorted((r["outcome"], r["charged_usd"]) for r in rows) == [("blocked", 0.0), ("unmetered", 0.004)]
    assert len(fake_provider.requests_to(route="/v1/vector_stores")) == 1


def test_laptop_mode_forwards_unmetered_endpoints_and_records_them(gateway_factory, fake_provider):
    gw = gateway_factory().start()  # loopback only, no proxyauth: laptop mode, `unmetered` defaults to allow
    with gw.http_client() as http:
        r = http.post("https://api.openai.com/v1/vector_stores", headers=OPENAI_HEADERS, json={"name": "docs"})
        assert r.status_code == 200
    (row,) = gw.ledger(wait_for=1)
    assert (row["outcome"], row["endpoint"]) == ("unmetered", "unmetered")


# --- 5. fail closed when not in charge ------------------------------------------------------------


def test_addon_that_cannot_take_its_options_fails_closed(tmp_path, gateway_factory, fake_provider):
    # the same option twice: mitmproxy used to drop the whole script silently and proxy unmetered
    gw = gateway_factory("dup", extra_args=["--set", f"spendgate_db={tmp_path / 'other.duckdb'}"])
    try:
        gw.start()
        # while it is still up (mitmdump exits once start-up is over), nothing passes unmetered
        with gw.http_client() as http:
            r = http.post("https://api.anthropic.com/v1/messages", headers=ANTHROPIC_HEADERS,
                          content=messages_body("hi"))
        assert r.status_code == 503 and r.json()["type"] == "error", r.text
    except (GatewayError, httpx2.TransportError):
        pass  # already gone
    assert gw.proc.wait(timeout=60) != 0  # exits non-zero, saying why
    assert "spendgate_db given 2 times" in gw.log_text()
    assert fake_provider.requests == []


# --- 6. bounds ------------------------------------------------------------------------------------


def rss_mb(pid: int, key: str = "VmRSS") -> int:
    """Resident (VmRSS) or peak resident (VmHWM) memory of a process, in MiB, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    raise AssertionError(f"no {key} for {pid}")


def send_big_body(gw, size: int) -> tuple[int, dict[str, str], bytes]:
    """POST `size` bytes to /v1/messages with a Content-Length, 1 MiB at a time (flat client memory)."""
    s = tunnel(gw, "api.anthropic.com:443", "api.anthropic.com")
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\nContent-Type: application/json\r\n"
            f"x-api-key: {ANTHROPIC_KEY}\r\nanthropic-version: 2023-06-01\r\n"
            f"Content-Length: {size}\r\nConnection: close\r\n\r\n")
    s.sendall(head.encode())
    piece = b"x" * (1 << 20)
    sent = 0
    try:
        while sent < size:
            s.sendall(piece[: size - sent])
            sent += min(len(piece), size - sent)
    except OSError:  # the gateway answered and closed before reading it all: fine
        pass
    resp = http.client.HTTPResponse(s)
    resp.begin()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    s.close()
    return out


def settle_rss(pid: int, ceiling: int, timeout: float = 60.0) -> int:
    """Wait (bounded) for RSS to come down to `ceiling` MiB; return the last reading."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        now = rss_mb(pid)
        if now <= ceiling or time.monotonic() > deadline:
            return now
        time.sleep(0.5)


def test_200mb_request_body_gets_a_413_and_memory_comes_back(gateway_factory, fake_provider):
    gw = gateway_factory().start()
    send_big_body(gw, 1000)  # warm up: a normal small request through every hook
    before = rss_mb(gw.proc.pid)
    status, headers, body = send_big_body(gw, 200 * 1024 * 1024)
    assert status == 413, body[:300]
    doc = json.loads(body)
    assert doc["error"]["type"] == "request_too_large" and "spendgate_max_request_bytes" in doc["error"]["message"]
    assert headers["x-should-retry"] == "false"
    after = settle_rss(gw.proc.pid, before + 48)
    print(f"gateway RSS before {before} MiB, after {after} MiB, peak {rss_mb(gw.proc.pid, 'VmHWM')} MiB")
    assert after <= before + 48, (before, after)
    assert not [r for r in fake_provider.requests if len(r.body) > 1000]  # never forwarded


def test_providers_only_gateway_never_reads_a_body_past_the_ceiling(gateway_factory, fake_provider):
    gw = gateway_factory(extra_args=["--set", "spendgate_providers_only=true",
                                     "--set", "spendgate_max_request_bytes=8000000"]).start()
    send_big_body(gw, 1000)
    peak_before = rss_mb(gw.proc.pid, "VmHWM")
    status, _, body = send_big_body(gw, 200 * 1024 * 1024)  # past 4 x the limit: mitmproxy stops reading
    assert status == 413
    status, _, body = send_big_body(gw, 10_000_000)  # between limit and ceiling: the provider's shape
    assert status == 413 and json.loads(body)["error"]["type"] == "request_too_large"
    peak_after = rss_mb(gw.proc.pid, "VmHWM")
    print(f"gateway peak RSS before {peak_before} MiB, after {peak_after} MiB")
    assert peak_after - peak_before < 100


@pytest.mark.parametrize("stream", [False, True], ids=["whole-body", "stream"])
def test_compression_bomb_response_is_not_decoded_past_the_cap(gateway_factory, fake_provider, stream):
    gw = gateway_factory().start()
    send_big_body(gw, 1000)
    peak_before = rss_mb(gw.proc.pid, "VmHWM")
    req = {"model": MODEL, "max_tokens": 10, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    s = tunnel(gw, "api.anthropic.com:443", "api.anthropic.com")
    status, _, body = raw_request(s, "POST", "/v1/messages", "api.anthropic.com", json.dumps(req).encode(),
                                  {**ANTHROPIC_HEADERS, "x-fake-scenario": "bomb"})
    assert status == 200
    from tests.support.fake_provider import compression_bomb

    assert body == compression_bomb(stream)[1]  # the client gets the body as it came, untouched
    (row,) = gw.ledger(wait_for=2)[:1]
    assert row["endpoint"] == "messages" and row["outcome"] == "estimated"  # recorded, usage unknown
    peak_after = rss_mb(gw.proc.pid, "VmHWM")
    print(f"gateway peak RSS before {peak_before} MiB, after {peak_after} MiB (bomb decodes to 256 MiB)")
    assert peak_after - peak_before < 150


def test_traffic_supplied_strings_are_cut_before_they_are_stored(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, AT_CAP)).start()
    long_model = "m" * 100_000
    body = json.dumps({"model": long_model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    status, _, _ = raw_request(tunnel(gw, "api.anthropic.com:443", "api.anthropic.com"), "POST", "/v1/messages",
                               "api.anthropic.com", body.encode(),
                               {**ANTHROPIC_HEADERS, "x-claude-code-session-id": "s" * 50_000})
    assert status in (429, 503)  # refused (over budget or unpriced), and recorded
    (row,) = gw.ledger(wait_for=1)
    assert row["model"] == "m" * 200
    assert row["session_id"] is None or len(row["session_id"]) <= 128


# --- 7. files ---------------------------------------------------------------------------------------


def _mode(path) -> int:
    import os
    import stat

    return stat.S_IMODE(os.lstat(path).st_mode)


def test_state_files_are_private_and_symlinks_are_not_followed(gateway_factory, fake_provider, anthropic_client):
    import os

    gw = gateway_factory("files")
    gw.db = gw.tmp / "state" / "ledger.duckdb"  # in a directory the gateway creates
    victim = gw.tmp / "victim.txt"
    victim.write_text("do not overwrite\n")
    gw.start()
    gw.stop()
    os.unlink(f"{gw.db}.gateway.json") if os.path.exists(f"{gw.db}.gateway.json") else None
    os.symlink(victim, f"{gw.db}.gateway.json")  # planted where the discovery file goes
    gw.start()
    with gw.http_client() as http:
        r = http.post("https://api.anthropic.com/v1/messages", headers=ANTHROPIC_HEADERS, content=messages_body("hi"))
        assert r.status_code == 200
    gw.ledger(wait_for=1)
    state = gw.db.parent
    assert _mode(state) == 0o700  # created by the gateway
    for f in [gw.db, f"{gw.db}.reservations", f"{gw.db}.gateway.json", f"{gw.db}.wal"]:
        if os.path.exists(f):
            assert _mode(f) == 0o600, (f, oct(_mode(f)))
    assert _mode(gw.db) == 0o600 and _mode(f"{gw.db}.gateway.json") == 0o600
    out = gw.tmp / "export.csv"
    r = gw.cli("export", "--format", "csv", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert _mode(out) == 0o600
    gw.stop()
    assert victim.read_text() == "do not overwrite\n"

    # a symlink where the ledger should be: refused, never followed
    gw2 = gateway_factory("link")
    os.symlink(victim, gw2.db)
    try:
        gw2.start()
    except GatewayError:
        pass
    assert gw2.proc.wait(timeout=60) != 0  # start-up fails (mitmdump exits 1), saying why
    assert "is a symbolic link" in gw2.log_text()
    assert victim.read_text() == "do not overwrite\n"
