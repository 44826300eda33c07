"""A guard for housekeeping that acts for good on one reading of the wall clock.

Dropping old windows' counters (`BudgetBook.prune`) and recording grants expired
(`Workflow.expire_grants`) cannot be undone by the process that did them. Read while the wall
clock is stepped (NTP correcting a bad step, a VM resumed with a stale clock, `date -s`), they
forget this hour's spend or end today's grants although no window or grant ended. So each such
job first asks `StepGuard.steady`: did the wall clock advance like the monotonic clock since the
job last looked? A tick where they disagree is skipped; the next one, with the clock settled,
does the work (a laptop's suspend, which the monotonic clock does not count, costs one tick).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

TOLERANCE = 5.0  # seconds the two clocks may disagree between two looks (NTP slews far less)


@dataclass
class StepGuard:
    """One housekeeping job's last look at both clocks."""

    tolerance: float = TOLERANCE
    monotonic: Callable[[], float] = time.monotonic
    _last: tuple[datetime, float] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def steady(self, wall: datetime) -> bool:
        """True when the wall clock moved like the monotonic clock since the last call (the first
        call has nothing to compare with: True). Each call is the next call's reference."""
        mono = self.monotonic()
        with self._lock:
            last, self._last = self._last, (wall, mono)
        if last is None:
            return True
        return wall_step(last, (wall, mono)) <= self.tolerance


def wall_step(before: tuple[datetime, float], after: tuple[datetime, float]) -> float:
    """Seconds by which the wall clock's advance differs from the monotonic clock's."""
    return abs((after[0] - before[0]).total_seconds() - (after[1] - before[1]))
