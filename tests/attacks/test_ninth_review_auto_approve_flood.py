"""Ninth review: auto-approved requests are not "open", so the eighth review's bound never sees them.

The eighth review (E2) bounded increase requests by counting *open* ones (undecided, window not
over: `Approvals._check_open`, one per budget, `MAX_OPEN_REQUESTS` per person) and gave *request*
notices a quarter of the sink queue (`Dispatcher.submit`). A request within `auto_approve_up_to`
is decided on the spot, so it is never open and is never counted; and what it sends is a
*decision* notice, which the request share does not cover.

`auto_approve_up_to` caps the USD auto-approved per budget and window, but nothing bounds the
amount from below: `parse_amount` takes any positive Decimal, and the tables keep DECIMAL(20, 10),
so an amount of 0.00000000001 is approved (the Python Decimal is > 0) and recorded as 0, and
`_auto_granted` (a sum over the stored rows) never grows. An engineer in a workspace with
`auto_approve_up_to` may therefore file requests without end, each one auto-approved: a request
row, a decision, a grant kept in memory, three audit rows and a "decision" notice. While a sink
is slow, those notices fill the one delivery queue (`sinks.MAX_PENDING`) and the organization's
budget alerts are dropped, exactly what E2 was fixed to prevent.

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

PORT = 19210

POLICY = f"""\
version: 1
timezone: UTC
organization: {{name: acme, owners: [cfo@acme.com], budgets: {{month: 100}}}}
defaults:
  user: {{day: 1000}}
workspaces:
  core: {{members: ["*@core.acme.com"], owners: [lead@core.acme.com], budgets: {{day: 1000}}}}
approvals:
  organization: {{approvers: [cfo@acme.com]}}
  workspaces:
    core: {{approvers: [lead@core.acme.com], auto_approve_up_to: 5}}
sinks:
  ops: {{type: webhook, url: "http://127.0.0.1:{PORT}/hook", timeout_seconds: 10, retries: 0}}
"""

BOB = Identity(user="bob@core.acme.com", source="proxy_auth", workspaces=("core",))


@pytest.fixture
def hung_sink():
    with hung_listener(PORT):
        yield


def test_auto_approved_micro_requests_do_not_drop_the_organizations_alerts(tmp_path, hung_sink):
    with workflow(tmp_path, POLICY) as (wf, book, con):
        auto = refused = 0
        for i in range(MAX_PENDING + 50):  # bob, on his own budget (allowed), far below the cap each time
            try:
                r = wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day",
                                         "0.00000000001", f"tiny {i}")
                auto += r["status"] == "auto_approved"
            except ApprovalError:
                refused += 1  # a fix may refuse sub-cent amounts, or bound requests per person and window
        # bob now spends 60% of the organization's monthly budget: the owners must hear of it
        d = book.admit(BOB, Decimal("60"))
        assert d.admitted
        book.settle(d.reservation, Decimal("60"))
        crossed = wf.alerts.evaluate(BOB, datetime.now(UTC))
        assert any(c.budget.scope == "organization:acme" for c in crossed)
        rows = audit.rows(con.cursor())
        dropped = [r for r in rows if r["event"] == "delivery" and r["detail"].get("outcome") == "dropped"]
        dropped_alerts = [r for r in dropped if r["detail"].get("kind") == "alert"]
        assert not dropped_alerts, (f"{auto} requests auto-approved ({refused} refused) for one engineer, "
                                    f"{len(wf.grants.all())} grants held in memory; {len(dropped)} notices "
                                    f"dropped, among them the alerts: {dropped_alerts[:1]}")
