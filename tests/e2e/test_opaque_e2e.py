"""Opaque clients through a real mitmdump: counted per user, never decrypted.

The client opens CONNECT tunnels to Cursor's host and to a host the policy lists under
`opaque_hosts`, does TLS itself (over memory BIOs, so it knows every byte it sent and received)
and checks the certificate it saw was the origin's (issuer: the fake provider's test CA, not
mitmproxy's). The gateway must record one row per connection with exactly those byte counts,
attributed to the proxy-auth user, and nothing for hosts that are not opaque.
"""

from __future__ import annotations

import base64
import calendar
import json
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.support.certs import CA_COMMON_NAME
from tests.support.fake_provider import ORIGIN_BODY

POLICY = """\
version: 1
identity: [proxy_auth, local_user]
# proxyauth=any accepts every password, so its user names are asserted: believed from trusted proxies only
trusted_proxies: [127.0.0.1/32]
defaults:
  user: {day: 50}
workspaces:
  platform: {members: [alice]}
opaque_hosts: ["*.example-ai.test"]
plans:
  cursor-business: {vendor: cursor, price_usd: 40, holders: [alice]}
"""


@dataclass
class Tunnel:
    sock: socket.socket
    tls: ssl.SSLObject
    inc: ssl.MemoryBIO
    out: ssl.MemoryBIO
    sent: int = 0
    received: int = 0

    def _flush(self) -> None:
        data = self.out.read()
        if data:
            self.sock.sendall(data)
            self.sent += len(data)

    def _feed(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            self.inc.write_eof()
            return False
        self.received += len(data)
        self.inc.write(data)
        return True

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                if not self._feed():
                    raise ConnectionError("closed during the TLS handshake")

    def request(self, raw: bytes) -> bytes:
        self.tls.write(raw)
        self._flush()
        body = b""
        while True:
            try:
                chunk = self.tls.read(65536)
                if not chunk:
                    break
                body += chunk
            except ssl.SSLWantReadError:
                if not self._feed():
                    break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
        self._flush()  # anything the TLS layer wants to answer (close_notify)
        return body

    def issuer(self) -> str:
        cert = x509.load_der_x509_certificate(self.tls.getpeercert(binary_form=True))
        return cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def open_tunnel(gateway, fake_provider, host: str, user: str) -> Tunnel:
    ctx = ssl.create_default_context(cafile=fake_provider.ca_file)
    ctx.load_verify_locations(gateway.ca_file)  # trust both, so we can tell who signed what we see
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=15)
    auth = base64.b64encode(f"{user}:pw".encode()).decode()
    sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
                 .encode())  # fmt: skip
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: nothing after the head may be consumed here
        assert chunk, head
        head += chunk
    assert head.split(b" ")[1] == b"200", head
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    t = Tunnel(sock, ctx.wrap_bio(inc, out, server_hostname=host), inc, out)
    t.handshake()
    return t


def get_root(t: Tunnel, host: str) -> bytes:
    return t.request(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())


def poll_json(gw, *args: str, want: int, timeout: float = 15.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        cp = gw.cli(*args, "--json")
        rows = json.loads(cp.stdout) if cp.returncode == 0 and cp.stdout.strip() else None
        if rows is not None and sum(r["connections"] for r in rows) >= want:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"{args}: {cp.returncode} {cp.stdout} {cp.stderr}\n{gw.log_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture
def opaque_gateway(gateway_factory, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return gateway_factory("opaque", policy=policy, extra_args=["--set", "proxyauth=any"]).start()


def test_opaque_hosts_counted_per_user_without_decrypting(opaque_gateway, fake_provider):
    gw = opaque_gateway
    seen = {}
    for host in ("api2.cursor.sh", "models.example-ai.test", "example.test"):
        t = open_tunnel(gw, fake_provider, host, "alice")
        assert t.issuer() == CA_COMMON_NAME, f"{host}: the client saw {t.issuer()!r}: the proxy decrypted it"
        body = get_root(t, host)
        assert body.startswith(b"HTTP/1.1 200") and body.endswith(ORIGIN_BODY), body
        t.sock.close()
        seen[host] = (t.sent, t.received)
    assert fake_provider.requests_to("api2.cursor.sh", "/")  # reached the origin, through the tunnel

    # while the gateway holds the file, the CLI asks its admin API
    rows = poll_json(gw, "reconcile", "opaque", "--by", "host", want=2)
    by_host = {r["group"]: r for r in rows}
    assert set(by_host) == {"api2.cursor.sh", "models.example-ai.test"}, rows  # example.test is not opaque
    for host in ("api2.cursor.sh", "models.example-ai.test"):
        r = by_host[host]
        assert r["connections"] == 1
        assert (r["bytes_up"], r["bytes_down"]) == seen[host], (host, r, seen[host])
    assert by_host["api2.cursor.sh"]["clients"] == "cursor"

    # a tunnel still open at shutdown is recorded too (SIGTERM: the addon drains before the file closes)
    t = open_tunnel(gw, fake_provider, "api2.cursor.sh", "bob")
    sent_before_stop = t.sent
    time.sleep(0.3)  # not a timing assertion: lets the relay see the handshake before we stop
    assert gw.stop() == 0, gw.log_text()[-3000:]
    t.sock.close()

    # the file again, read directly now that nobody holds it
    users = {r["group"]: r for r in json.loads(gw.cli("reconcile", "opaque", "--json", check=True).stdout)}
    assert users["alice"]["connections"] == 2 and users["bob"]["connections"] == 1, users
    assert users["bob"]["bytes_up"] == sent_before_stop

    # `spendgate spend` shows plans (prorated this month) and opaque counts beside metered spend
    today = datetime.now(UTC).date()
    plan = round(40 * today.day / calendar.monthrange(today.year, today.month)[1], 4)
    spend = gw.cli("spend", "--by", "user", "--policy", str(gw.policy), check=True).stdout
    cells = {}
    for line in spend.splitlines():
        parts = [p.strip() for p in line.split("│")[1:-1]]
        if len(parts) == 8 and parts[0] in ("alice", "bob"):  # api, seats, api+seats, subscription, opaque...
            cells[parts[0]] = parts
    assert cells["alice"][2] == f"${plan:,.4f}" and cells["alice"][5] == "2", spend
    assert cells["bob"][2] == "$0.0000" and cells["bob"][5] == "1", spend
