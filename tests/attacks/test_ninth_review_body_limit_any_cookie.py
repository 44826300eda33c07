"""Ninth review: any `Cookie` header lifts the anonymous body bound from 64 KiB to 64 MiB.

`web.server.body_limit` (the admin port, and since the eighth review spendgate.local too) gives
a request "carrying no credentials at all" 64 KiB and everything else the route's limit, 64 MiB
for most. "Credentials" is the mere presence of a `Cookie` or `Authorization` header, never
checked: `Cookie: x=1` (or `Authorization: junk`) and an anonymous caller may send 64 MiB, which
the server reads into memory before it knows who is asking. On `/login` the body is then parsed
before any token is compared (`WebApp._login`: `parse_qsl` / `json.loads` of the whole text):
measured, an 8 MiB `a=&a=&...` form costs ~150 MB and seconds of CPU under the GIL, so 64 MiB is
about 1.2 GB per request, on the admin server's thread per connection, or on spendgate.local's
four `spendgate-web` threads in the proxy process, whose event loop waits for the GIL meanwhile.

A bound meant for "before it knows who is asking" must not be lifted by a header nobody checked:
a session cookie that names no live session, or a bearer token that is none of ours, is
anonymous. Real mitmdump with the addon (laptop mode, loopback): its admin port, raw sockets.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.support.gateway import providerless

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

PROXY_PORT, ADMIN_PORT = 19230, 19231
PROMPT = 5.0


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    yield from providerless(tmp_path_factory.mktemp("gw"), PROXY_PORT, ADMIN_PORT)


def first_answer(port: int, head: bytes) -> bytes | None:
    """The head of a request, no body: the answer's first bytes within PROMPT seconds, b"" if the
    server hung up, None while it waits for the body it agreed to read."""
    with socket.create_connection(("127.0.0.1", port), timeout=PROMPT) as s:
        s.sendall(head)
        deadline, got = time.monotonic() + PROMPT, b""
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


LOGIN = ("POST /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
         "Content-Length: 16777216\r\n{extra}\r\n")  # 16 MiB announced, none sent


def test_the_admin_port_bounds_an_anonymous_body_without_a_cookie(gw):
    answer = first_answer(ADMIN_PORT, LOGIN.format(port=ADMIN_PORT, extra="").encode())
    assert answer is not None and answer.startswith(b"HTTP/1.1 413")  # what the bound is for


@pytest.mark.parametrize("junk", ["Cookie: x=1\r\n", "Cookie: spendgate_session=forged\r\n",
                                  "Authorization: whatever\r\n"])
def test_a_junk_cookie_or_authorization_header_does_not_lift_the_anonymous_bound(gw, junk):
    answer = first_answer(ADMIN_PORT, LOGIN.format(port=ADMIN_PORT, extra=junk).encode())
    assert answer is not None and (answer == b"" or answer.startswith(b"HTTP/1.1 413")), (
        f"with {junk.strip()!r} and no credentials, the admin port waits to read a 16 MiB body "
        f"(and /login would parse it before comparing any token): {answer!r}")
