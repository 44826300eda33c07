"""Approvals and alerts across gateway replicas, through the shared PostgreSQL store.

Each replica keeps its own increase requests, decisions and audit trail in its DuckDB file; what
must be the same everywhere goes through the store:

* grants: a grant made on any replica is published (`grants` table) and every replica pulls the
  active ones into its `GrantBook` on each LeaseKeeper tick, and at once before refusing a
  request, so an approval on replica A admits the next request on replica B;
* fired alerts: the replica whose insert into `alerts_fired` wins announces the alert; the others
  stay quiet, so a threshold alert fires once, not once per replica;
* increase requests, their decisions and the audit trail: written to and read from the store's
  tables (the same SQL, through `SharedCursor`), so a request filed on replica A is listed and
  decided on replica B, a second decision on another replica fails on the decision's primary
  key, and `spendgate audit` shows every replica's rows in one sequence.
"""

from __future__ import annotations

import logging
import threading

from spendgate.store.postgres import REQUESTS_LOCK, PostgresStore, SharedCursor, StoreUnavailable
from spendgate.workflow.approvals import Grant, _utc
from spendgate.workflow.service import Workflow

log = logging.getLogger(__name__)


class GrantSync:
    def __init__(self, workflow: Workflow, pg: PostgresStore) -> None:
        self.workflow = workflow
        self.pg = pg
        self._lock = threading.Lock()  # one pull at a time (keeper thread and admission workers)

    def publish(self, g: Grant) -> None:
        self.pg.publish_grant({"id": g.id, "request_id": g.request_id, "ts": g.starts, "scope": g.scope,
                               "window": g.window, "amount": g.amount, "starts": g.starts, "until": g.until,
                               "granted_by": g.granted_by})

    def pull(self) -> bool:
        """Add active grants made elsewhere; True if any was new. Never raises (the store may be away)."""
        with self._lock:
            try:
                rows = self.pg.active_grants()
            except StoreUnavailable as e:
                log.error("spendgate: cannot read shared grants: %s", e)
                return False
            new = False
            for r in rows:
                g = Grant(r["id"], r["request_id"], r["scope"], r["window"], r["amount"], _utc(r["starts"]),
                          _utc(r["until"]), r["granted_by"])
                if self.workflow.grants.add(g, share=False):
                    log.info("spendgate: grant %s (+$%s on %s %s) from another replica", g.id, g.amount, g.scope,
                             g.window)
                    new = True
            return new


def share(workflow: Workflow, pg: PostgresStore) -> GrantSync:
    """Wire a replica's workflow to the shared store: grants both ways, alerts claimed once."""
    sync = GrantSync(workflow, pg)
    shared = SharedCursor(pg)
    workflow.approvals.cursor = lambda: shared  # requests, decisions and grants: one set for all replicas
    workflow.approvals.exclusive = lambda: pg.exclusive(REQUESTS_LOCK)  # a request's bounds, across replicas
    workflow.audit.use(lambda: shared)  # one audit trail for all replicas
    grants = workflow.grants
    grants.on_add = sync.publish
    for g in grants.all():  # grants this replica made before (from its DuckDB file): idempotent
        try:
            sync.publish(g)
        except StoreUnavailable as e:
            log.error("spendgate: cannot publish grant %s: %s", g.id, e)
            break
    sync.pull()
    workflow.book.refresh_grants = sync.pull
    workflow.alerts.claim = pg.claim_alert
    return sync
