"""The centre's roster of laptops: who called in when, and which went silent.

A laptop reporting to the centre leases every `spendgate_central_interval` seconds and pushes its
rows as they are written, so a laptop that stops calling in (uninstalled, its gateway stopped,
its token file removed, traffic routed around it) is invisible in the spend it no longer reports.
The centre knows every (user, laptop id) that leased or pushed: the roster keeps their first and
last contact and last push, in memory and in `central_laptops` (written at most every
`PERSIST_EVERY` per laptop, so thousands of laptops leasing every two seconds cost a few writes a
second, and the table may be that much behind). `spendgate laptops` lists them with how long each
has been silent; `/metrics` counts the silent ones; an alert goes to the organization's owners
once when a laptop has been silent for `SILENT_AFTER` (again only after it called in since), the
silence recorded in `alerts_fired` so a restart does not repeat it. With a PostgreSQL store the
table and the alert record are the store's: every replica knows every laptop, and one replica tells.

The laptop id is the laptop's own word (`gateway_id`): at most `MAX_PER_USER` ids are tracked per
user, so a token cannot flood the roster (or the alerts) with made-up laptops. A full user's new
laptop takes the slot of the one silent longest, once that one has been silent for `SILENT_AFTER`
(its silence is still alerted), so slots filled by reinstalls or made-up ids that stopped calling
in do not hide a real new laptop. A token keeping `MAX_PER_USER` ids calling in leaves a new one
untracked: that is logged (once a day per user), as the owners' cue to look at the token.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from spendgate.store.laptops import (
    SILENCE_KIND,
    SILENCE_WINDOW,
    roster_rows,
    silence_scope,
)

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
    stored: datetime | None = None  # last_seen as written to central_laptops (or read back from it)
    claimed: datetime | None = None  # the last contact whose silence was alerted (here or elsewhere)

    def silence(self, now: datetime) -> timedelta:
        return now - self.last_seen

    def row(self) -> tuple[str, str, datetime, datetime, datetime | None]:
        return (self.user, self.origin, self.first_seen, self.last_seen, self.last_push)


class Roster:
    """(user, laptop id) -> Contact; `touch` from the admin API's worker threads, `check` from housekeeping.

    `pg`: a PostgreSQL store shared by the centre's replicas: the roster is written to and read
    back from it (spendgate.store.pg_central), so every replica knows every laptop and a silence
    is alerted once for all of them; without it, the ledger file's `central_laptops` and
    `alerts_fired` play the same part for one gateway.
    """

    def __init__(self, cursor: Callable[[], Any], pg: Any = None) -> None:
        self.cursor = cursor
        self.pg = pg
        self._lock = threading.Lock()
        self._laptops: dict[tuple[str, str], Contact] = {}
        self._per_user: dict[str, dict[str, Contact]] = {}  # user -> laptop id -> its contact
        self._retired: list[Contact] = []  # silent contacts whose slot a new laptop took, not alerted yet
        self._full_warned: dict[str, datetime] = {}  # user -> when "every slot is calling in" was logged
        self._since: datetime | None = None  # server time of the last read of the shared roster
        try:
            self.refresh()
        except Exception:  # the roster is advisory: a ledger without the table still starts
            log.exception("spendgate: could not read the laptop roster")

    def refresh(self) -> int:
        """Merge what the table holds (with a shared store: what any replica wrote since the last
        look) into memory: the newest contact wins. How many rows were read."""
        if self.pg is not None:
            from spendgate.store import pg_central

            rows, self._since = pg_central.load_laptops(self.pg, self._since)
        else:
            rows = roster_rows(self.cursor())
        now = datetime.now(UTC)
        with self._lock:
            for user, origin, first, last, push in rows:
                c = self._laptops.get((user, origin))
                if c is None:
                    self._take_slot(Contact(user, origin, first, last, push, stored=last), now)
                    continue
                c.first_seen = min(c.first_seen, first)
                c.last_seen = max(c.last_seen, last)
                c.stored = max(c.stored or last, last)
                if push is not None:
                    c.last_push = max(c.last_push or push, push)
        return len(rows)

    def _take_slot(self, new: Contact, now: datetime) -> Contact | None:
        """Under the lock: track `new` if its user has a free slot, or one silent for SILENT_AFTER (the
        longest silent, kept in `_retired` for newly_silent to report); None when it stays untracked."""
        user = new.user
        gone = next((c for c in self._retired if (c.user, c.origin) == (user, new.origin)), None)
        if gone is not None:
            if new.last_seen <= gone.last_seen:  # the retired contact read back from the table
                return None
            self._retired.remove(gone)  # back before its silence was reported: it is not silent any more
        if len(self._laptops) >= MAX_LAPTOPS:
            return None
        mine = self._per_user.setdefault(user, {})
        if len(mine) >= MAX_PER_USER:
            oldest = min(mine.values(), key=lambda c: c.last_seen)
            if now - oldest.last_seen < SILENT_AFTER or new.last_seen <= oldest.last_seen:
                warned = self._full_warned.get(user)
                if warned is None or now - warned >= timedelta(days=1):
                    self._full_warned[user] = now
                    log.warning("spendgate: %s has %d laptop ids tracked, none silent for %s; laptop %r "
                                "is not tracked (its silence would not be noticed)",
                                user, MAX_PER_USER, SILENT_AFTER, new.origin)
                return None
            del self._laptops[(user, oldest.origin)], mine[oldest.origin]
            if oldest.claimed != oldest.last_seen:
                self._retired.append(oldest)
        self._laptops[(user, new.origin)] = mine[new.origin] = new
        return new

    def _save(self, rows: list[tuple[str, str, datetime, datetime, datetime | None]]) -> None:
        if self.pg is not None:
            from spendgate.store import pg_central

            pg_central.save_laptops(self.pg, rows)
            return
        cur = self.cursor()
        for user, origin, first, last, push in rows:
            cur.execute(
                'INSERT INTO central_laptops (origin, "user", first_seen, last_seen, last_push) VALUES (?, ?, ?, ?, ?) '
                "ON CONFLICT (origin, \"user\") DO UPDATE SET last_seen = greatest(excluded.last_seen, "
                "central_laptops.last_seen), last_push = coalesce(excluded.last_push, central_laptops.last_push)",
                [origin, user, first, last, push])

    def touch(self, user: str, origin: str, now: datetime, pushed: bool = False) -> None:
        """`user`'s laptop `origin` called in (a lease, or a push when `pushed`)."""
        key = (user, origin)
        with self._lock:
            c = self._laptops.get(key)
            if c is None:
                c = self._take_slot(Contact(user, origin, now, now), now)
                if c is None:
                    return
            c.last_seen = max(c.last_seen, now)
            if pushed:
                c.last_push = now
            due = c.stored is None or now - c.stored >= PERSIST_EVERY
            if due:
                c.stored = c.last_seen
                row = c.row()
        if due:
            try:
                self._save([row])
            except Exception:
                log.exception("spendgate: could not record laptop %s in the roster", origin)

    def flush(self, now: datetime) -> int:
        """Write the contacts newer than the table (touched again within PERSIST_EVERY of their last
        write), once that interval has passed: the table, and every replica, then know a laptop's
        real last contact a few minutes after it, long before it could count as silent."""
        with self._lock:
            dirty = [c for c in self._laptops.values()
                     if c.stored is not None and c.last_seen > c.stored and now - c.stored >= PERSIST_EVERY]
            dirty += [c for c in self._retired if c.stored != c.last_seen]  # its silence is keyed by the table's
            for c in dirty:
                c.stored = c.last_seen
            rows = [c.row() for c in dirty]
        if rows:
            self._save(rows)
        return len(rows)

    def counts(self, now: datetime, after: timedelta = SILENT_AFTER) -> tuple[int, int, float]:
        """(laptops calling in, laptops silent for `after` or longer, the longest silence in seconds)."""
        with self._lock:
            silences = [c.silence(now) for c in self._laptops.values()]
        silent = sum(1 for s in silences if s >= after)
        return len(silences) - silent, silent, max((s.total_seconds() for s in silences), default=0.0)

    def newly_silent(self, now: datetime, after: timedelta = SILENT_AFTER) -> list[Contact]:
        """Laptops silent for `after` whose silence nobody has alerted yet: claimed in `alerts_fired`
        (keyed by the laptop and its last contact as the table holds it), so each silence is
        reported once, by one replica, even across restarts. Marked reported."""
        with self._lock:
            due = [c for c in [*self._laptops.values(), *self._retired]
                   if c.silence(now) >= after and c.claimed != c.last_seen and c.stored == c.last_seen]
        if not due:
            return []
        won = self._claim([(c.user, c.origin, c.last_seen) for c in due], after)
        out = []
        with self._lock:
            for c in due:
                c.claimed = c.last_seen
                if (c.user, c.origin) in won:
                    out.append(c)
            self._retired = [c for c in self._retired if c.claimed != c.last_seen]
        return out

    def _claim(self, silences: list[tuple[str, str, datetime]], after: timedelta) -> set[tuple[str, str]]:
        from decimal import Decimal

        hours = Decimal(str(round(after.total_seconds() / 3600, 4)))
        if self.pg is not None:
            from spendgate.store import pg_central

            return pg_central.claim_silences(self.pg, silences, hours)
        from spendgate.store.engine import duckdb

        won = set()
        cur = self.cursor()
        for user, origin, last in silences:
            try:
                cur.execute("INSERT INTO alerts_fired VALUES (?, ?, ?, ?, ?, now(), NULL, NULL)",
                            [silence_scope(user, origin), SILENCE_WINDOW, last, SILENCE_KIND, hours])
            except duckdb.ConstraintException:
                continue
            won.add((user, origin))
        return won
