"""Ninth review: spendgate.local's 413/411 are decided before the body, but sent after all of it.

The eighth review (E3) made `DashboardHost.requestheaders` answer an over-long `Content-Length`
with 413 and a chunked body with 411 "before mitmproxy buffers the body". Setting
`flow.response` in `requestheaders` does not stop mitmproxy reading: with no request streaming,
its HTTP layer goes on to `state_consume_request_body`, appends every byte to its buffer, and
sends the answer only at the end of the message (mitmproxy/proxy/layers/http/__init__.py). And
to `Expect: 100-continue` it even answers `100 Continue` first, inviting the body the gateway has
already refused.

So an anonymous client of the proxy (anyone on an allowed network) still makes the gateway hold
whatever it sends: a chunked body has no bound at all in laptop mode and on a central gateway
that is not providers-only (no `body_size_limit`), and 4 x spendgate_max_request_bytes
(128 MiB) per connection on a providers-only one; memory then doubles when mitmproxy copies the
buffer into the flow (measured: 256 MiB chunked -> +525 MB RSS). The eighth review's own test
passed because its client sent the whole body before reading the answer.

A refusal decided from the headers must reach the client without the body being read: the 413
or 411 sent at once (and the connection closed), or the connection dropped. Real mitmdump with
the addon (laptop mode, loopback), raw sockets through its proxy port.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.support.gateway import providerless

# Known and not fixed (docs/security.md, ninth review N1): mitmproxy 12 reads a request's whole body
# before any answer set in `requestheaders` goes out, and `flow.kill()` there leaves the client's
# socket open (unread) while body bytes are pending, so neither can refuse a body unread. What is
# read is bounded by `body_size_limit` on a central gateway; only local clients reach a laptop's.
# strict: when mitmproxy (or a fix here) makes these pass, the xfail fails and must be removed.
pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.xfail(strict=True, reason="mitmproxy reads a refused request's body first (N1)")]

PROXY_PORT, ADMIN_PORT = 19220, 19221
PROMPT = 5.0  # seconds: an answer decided from the headers arrives well within this


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    yield from providerless(tmp_path_factory.mktemp("gw"), PROXY_PORT, ADMIN_PORT, log_tail=4000)


def first_answer(head: bytes) -> bytes | None:
    """Send a request's head only (no body byte) and return what comes back within PROMPT seconds:
    the answer's first bytes, b"" if the gateway hung up, None if it is still waiting for the body."""
    with socket.create_connection(("127.0.0.1", PROXY_PORT), timeout=PROMPT) as s:
        s.sendall(head)
        deadline = time.monotonic() + PROMPT
        got = b""
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                return got or None
            except ConnectionResetError:
                return got
            if not chunk:
                return got
            got += chunk
            if b"\r\n\r\n" in got:
                return got
        return got or None


def head(extra: str) -> bytes:
    return ("POST http://spendgate.local/login HTTP/1.1\r\nHost: spendgate.local\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n" + extra + "\r\n").encode()


def refused_without_reading(answer: bytes | None) -> bool:
    return answer is not None and (answer == b"" or answer.startswith((b"HTTP/1.1 413", b"HTTP/1.1 411")))


def test_an_over_long_body_is_refused_before_it_is_sent(gw):
    answer = first_answer(head("Content-Length: 67108864\r\n"))  # 64 MiB announced, none sent
    assert refused_without_reading(answer), (
        f"spendgate.local decided 413 from the headers but waits for the 64 MiB body first: {answer!r}")


def test_expect_100_continue_is_not_invited_to_send_a_refused_body(gw):
    answer = first_answer(head("Content-Length: 67108864\r\nExpect: 100-continue\r\n"))
    assert refused_without_reading(answer), (
        f"spendgate.local answered a refused 64 MiB body with an invitation to send it: {answer!r}")


def test_a_chunked_body_is_refused_before_it_is_sent(gw):
    answer = first_answer(head("Transfer-Encoding: chunked\r\n"))
    assert refused_without_reading(answer), (
        f"spendgate.local decided 411 from the headers but reads the chunked body (no bound) first: {answer!r}")
