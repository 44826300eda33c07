"""The centre's roster of laptops: who called in when, and which went silent.

A laptop reporting to the centre leases every `spendgate_central_interval` seconds and pushes its
rows as they are written, so a laptop that stops calling in (uninstalled, its gateway stopped,
its token file removed, traffic routed around it) is invisible in the spend it no longer reports.
The centre knows every (user, laptop id) that leased or pushed: the roster keeps their first and
last contact and last push, in memory and in `central_laptops` (written at most every
`PERSIST_EVERY` per laptop, so thousands of laptops leasing every two seconds cost a few writes a
second, and the table may be that much behind). `spendgate laptops` lists them with how long each
has been silent; `/metrics` counts the silent ones; an alert goes to the organization's owners
once when a laptop has been silent for `SILENT_AFTER` (again only after it called in since).

The laptop id is the laptop's own word (`gateway_id`): at most `MAX_PER_USER` ids are tracked per
user, so a token cannot flood the roster (or the alerts) with made-up laptops.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from spendgate.store.laptops import roster_rows

log = logging.getLogger(__name__)

SILENT_AFTER = timedelta(hours=72)  # a laptop off over a long weekend is not news; three days is
PERSIST_EVERY = timedelta(minutes=5)
MAX_PER_USER = 50
MAX_LAPTOPS = 200_000  # about 200 bytes each


@dataclass
class Contact:
    user: str
    origin: str
    first_seen: datetime
    last_seen: datetime
    last_push: datetime | None = None
    stored: datetime | None = None  # last_seen as written to central_laptops
    alerted: bool = False  # told once per silence

    def silence(self, now: datetime) -> timedelta:
        return now - self.last_seen


class Roster:
    """(user, laptop id) -> Contact; `touch` from the admin API's worker threads, `check` from housekeeping."""

    def __init__(self, cursor: Callable[[], Any]) -> None:
        self.cursor = cursor
        self._lock = threading.Lock()
        self._laptops: dict[tuple[str, str], Contact] = {}
        self._per_user: dict[str, int] = {}
        try:
            self._load()
        except Exception:  # the roster is advisory: a ledger without the table still starts
            log.exception("spendgate: could not read the laptop roster")

    def _load(self) -> None:
        for user, origin, first, last, push in roster_rows(self.cursor()):
            c = Contact(user, origin, first, last, push, stored=last)
            self._laptops[(user, origin)] = c
            self._per_user[user] = self._per_user.get(user, 0) + 1

    def touch(self, user: str, origin: str, now: datetime, pushed: bool = False) -> None:
        """`user`'s laptop `origin` called in (a lease, or a push when `pushed`)."""
        key = (user, origin)
        with self._lock:
            c = self._laptops.get(key)
            if c is None:
                if self._per_user.get(user, 0) >= MAX_PER_USER or len(self._laptops) >= MAX_LAPTOPS:
                    return
                c = self._laptops[key] = Contact(user, origin, now, now)
                self._per_user[user] = self._per_user.get(user, 0) + 1
            c.last_seen = max(c.last_seen, now)
            c.alerted = False
            if pushed:
                c.last_push = now
            due = c.stored is None or now - c.stored >= PERSIST_EVERY
            if due:
                c.stored = now
                row = (c.origin, c.user, c.first_seen, c.last_seen, c.last_push)
        if due:
            try:
                self.cursor().execute(
                    'INSERT INTO central_laptops (origin, "user", first_seen, last_seen, last_push) VALUES (?, ?, ?, ?, ?) '
                    "ON CONFLICT (origin, \"user\") DO UPDATE SET last_seen = excluded.last_seen, "
                    "last_push = coalesce(excluded.last_push, central_laptops.last_push)", list(row))
            except Exception:
                log.exception("spendgate: could not record laptop %s in the roster", origin)

    def counts(self, now: datetime, after: timedelta = SILENT_AFTER) -> tuple[int, int, float]:
        """(laptops calling in, laptops silent for `after` or longer, the longest silence in seconds)."""
        with self._lock:
            silences = [c.silence(now) for c in self._laptops.values()]
        silent = sum(1 for s in silences if s >= after)
        return len(silences) - silent, silent, max((s.total_seconds() for s in silences), default=0.0)

    def newly_silent(self, now: datetime, after: timedelta = SILENT_AFTER) -> list[Contact]:
        """Laptops silent for `after` not yet reported since they last called in; marked reported."""
        out = []
        with self._lock:
            for c in self._laptops.values():
                if not c.alerted and c.silence(now) >= after:
                    c.alerted = True
                    out.append(c)
        return out

