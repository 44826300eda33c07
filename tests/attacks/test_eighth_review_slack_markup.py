"""Eighth review: an engineer's request reason is posted to the approvers' Slack as live markup.

`spendgate request --reason "..."` (POST /api/request, any engineer on their own budget) puts the
reason in the notice's text, and `sinks.slack_body` sends that text to the Slack incoming webhook
as `text` and as a `mrkdwn` section without escaping `&`, `<` and `>`, which Slack's message
formatting reserves ("Escaping text", api.slack.com/reference/surfaces/formatting). So an
engineer can, in a message that comes from spendgate's own bot:

* ping the whole channel (`<!channel>`, `<!here>`, `<!subteam^ID>`), as often as they file
  requests;
* show a disguised link (`<https://evil.example/approve|spendgate approve r-...>`) that reads
  like the approve command, next to spendgate's genuine instructions.

Real components: a Workflow over a real DuckDB file, its real Dispatcher and Slack sink, posting
to a real HTTP server on loopback.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.sinks import workflow

PORT = 19151

POLICY = f"""\
version: 1
timezone: UTC
organization: {{name: acme, owners: [cfo@acme.com], budgets: {{month: 1000}}}}
defaults:
  user: {{day: 10}}
approvals:
  organization: {{approvers: [cfo@acme.com]}}
sinks:
  approvers: {{type: slack, url: "http://127.0.0.1:{PORT}/slack", retries: 0}}
"""

REASON = ("<!channel> urgent, prod is down. Approve here: "
          "<https://evil.example/sso?next=approve|spendgate approve r-0000000000> &amp; thanks")


@pytest.fixture
def slack():
    posts: list[dict] = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    httpd = ThreadingHTTPServer(("127.0.0.1", PORT), H)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield posts
    httpd.shutdown()
    httpd.server_close()


def test_a_request_reason_cannot_ping_the_channel_or_plant_a_link_in_slack(tmp_path, slack):
    with workflow(tmp_path, POLICY) as (wf, book, con):
        req = wf.approvals.request("bob@acme.com", "user:bob@acme.com", "day", "20", REASON)
        assert req["status"] == "pending"
        assert wf.dispatcher.flush(10)
    deadline = time.monotonic() + 5
    while not slack and time.monotonic() < deadline:
        time.sleep(0.05)
    (body,) = slack
    texts = [body["text"], *(b["text"]["text"] for b in body.get("blocks", []))]
    for text in texts:
        assert "<!channel>" not in text, text  # a channel-wide ping chosen by the requester
        assert "<https://evil.example" not in text, text  # a link whose label reads like the approve command
        assert "&amp; thanks" not in text or "&amp;amp;" in text, text  # & must be escaped too
    # the reason still reaches the approvers, as text
    assert any("urgent, prod is down" in t for t in texts)
