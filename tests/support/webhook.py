"""A real HTTP server on loopback standing in for a webhook receiver (Slack, a chat bot, a pager)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hook:
    """A real HTTP server on loopback that records JSON posts; answers `status` (a list, popped)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.posts: list[tuple[str, dict, dict]] = []
        self.statuses = statuses or []
        hook = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.posts.append((self.path, dict(self.headers), body))
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def wait_for(self, pred, timeout: float = 20.0) -> list[dict]:
        """Bodies received, once `pred(bodies)` holds (deliveries are asynchronous by design)."""
        deadline = time.monotonic() + timeout
        while True:
            bodies = [b for _, _, b in list(self.posts)]
            if pred(bodies) or time.monotonic() > deadline:
                return bodies
            time.sleep(0.05)
