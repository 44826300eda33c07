"""Eighth review: an engineer's flood of increase requests silences the budget alerts.

Any engineer may file increase requests on their own budget (`spendgate request`, POST
/api/request), as many and as fast as they like: nothing bounds requests per person, pending
or per minute. Each one is a notice to every approver (Slack, e-mail, webhook), and every
notice takes a slot of the one bounded delivery queue (`sinks.MAX_PENDING`, 1000) until its
sink has answered or given up (timeouts and retries with backoff). When the queue is full,
`Dispatcher.submit` drops whatever comes next, alerts included ("too many undelivered
notices").

So an engineer who wants to spend without the owners hearing of it files ~1000 requests (they
land in a few seconds) while a sink is slow or failing (a Slack outage, an SMTP relay
timing out: each job holds its slot for timeout x retries plus backoff), and then the
organization's 50/80/95/100% alerts are dropped. The approvers get 1000 pings meanwhile.

Real components: a Workflow over a real DuckDB file with its real Dispatcher and webhook sink,
pointed at a loopback listener that accepts connections and never answers (a hung sink).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from spendgate.identity import Identity
from spendgate.workflow import audit
from spendgate.workflow.approvals import ApprovalError
from spendgate.workflow.sinks import MAX_PENDING
from tests.support.sinks import hung_listener, workflow

PORT = 19161

POLICY = f"""\
version: 1
timezone: UTC
organization: {{name: acme, owners: [cfo@acme.com], budgets: {{month: 100}}}}
defaults:
  user: {{day: 1000}}
approvals:
  organization: {{approvers: [cfo@acme.com]}}
sinks:
  ops: {{type: webhook, url: "http://127.0.0.1:{PORT}/hook", timeout_seconds: 3, retries: 0}}
"""

BOB = Identity(user="bob@acme.com", source="proxy_auth")


@pytest.fixture
def hung_sink():
    with hung_listener(PORT):
        yield


def test_an_engineers_request_flood_does_not_drop_the_organizations_alerts(tmp_path, hung_sink):
    with workflow(tmp_path, POLICY) as (wf, book, con):
        filed = refused = 0
        for i in range(MAX_PENDING + 5):  # bob, on his own budget: allowed to ask
            try:
                wf.approvals.request("bob@acme.com", "user:bob@acme.com", "day", "1", f"please {i}")
                filed += 1
            except ApprovalError:
                refused += 1  # a fix may bound requests per person
        # bob now spends 60% of the organization's monthly budget: the owners must hear of it
        d = book.admit(BOB, Decimal("60"))
        assert d.admitted
        book.settle(d.reservation, Decimal("60"))
        crossed = wf.alerts.evaluate(BOB, datetime.now(UTC))
        assert any(c.budget.scope == "organization:acme" for c in crossed)
        rows = audit.rows(con.cursor())
        dropped = [r for r in rows if r["event"] == "delivery" and r["detail"].get("outcome") == "dropped"]
        dropped_alerts = [r for r in dropped if r["detail"].get("kind") == "alert"]
        assert not dropped_alerts, (f"{filed} requests filed ({refused} refused) by one engineer; "
                                    f"{len(dropped)} notices dropped, among them the alerts: {dropped_alerts[:2]}")
