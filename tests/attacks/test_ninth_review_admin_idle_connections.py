"""Ninth review: the admin server keeps a thread and a descriptor for every idle connection, forever.

`web.server.AdminServer` is a `ThreadingHTTPServer` (a thread per connection, `daemon_threads`) and
its handler sets no `timeout`: a connection that sends nothing, or half a request line, holds
its thread in `readline()` and its socket in the gateway process for as long as the client
likes. The server lives inside the proxy process (the loopback admin port, and the dashboard for
the CLI), so any local account on a laptop gateway's machine or a central host (the port is
loopback but not per-user) can open thousands of idle connections: measured on a running gateway, 400 idle sockets ->
400 more threads, still there after 20 s. At the process's descriptor limit (20000 here) the
proxy itself can no longer accept its clients (EMFILE): AI traffic stops for everyone, and the
sixth review's lesson (one slow client must not hold the gateway) applies here too.

A connection that sends no complete request within a few seconds must be closed, or the number
of connections served at once bounded. Real AdminServer (what the gateway runs), loopback.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

from spendgate.web.server import AdminServer

PORT = 19260
IDLE = 60
WAIT = 12.0  # seconds after which an idle connection has been let go


def test_idle_connections_do_not_hold_a_thread_each_forever():
    server = AdminServer({"/api/ping": lambda p, c: {"ok": True}}, port=PORT).start()
    socks: list[socket.socket] = []
    try:
        before = threading.active_count()
        for _ in range(IDLE):
            socks.append(socket.create_connection(("127.0.0.1", PORT)))
        for s in socks[: IDLE // 2]:
            s.sendall(b"GET /api/ping HTTP/1.1\r\n")  # half a request, never finished
        time.sleep(WAIT)
        held = threading.active_count() - before
        # the server still answers someone who asks properly
        rq = urllib.request.Request(f"http://127.0.0.1:{PORT}/api/ping",
                                    headers={"Authorization": f"Bearer {server.token}"})
        with urllib.request.urlopen(rq, timeout=10) as r:
            assert json.loads(r.read()) == {"ok": True}
        assert held < IDLE // 4, (f"{IDLE} connections that sent no complete request still hold {held} threads "
                                  f"(and descriptors) of the gateway process after {WAIT:.0f} s")
    finally:
        for s in socks:
            s.close()
        server.stop()
