"""Keep the garbage collector's full passes off the proxy's critical path.

CPython's oldest-generation collection walks every tracked object in the process, holding the
interpreter lock: in a running gateway (mitmproxy, the policy, the pricing catalogue, the budget
counters) one such pass took ~50 ms on the 2-core machine, and allocations anywhere in the
process (a dashboard poll builds thousands of short-lived objects) set one off now and then: a
stall of every proxied request and stream event in flight. What start-up builds lives as long as
the process, so the proxy edge (addons/gateway.py) settles the heap once the gateway runs, and
the gateway settles it again after each policy reload: survivors are moved out of the
collector's sight (`gc.freeze`, Python docs "gc - Garbage Collector interface"), and full passes
walk only what was made since. Processes that never opted in (tests, the CLI) are left alone.

While start-up or a policy reload builds those objects the collector is paused (`paused`): each
few hundred new containers set off a pass, and every few passes one over the whole heap, which
with mitmproxy loaded made a 10,000-user policy's start ~0.45 s slower in CPU (issue 18).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

_settled = False  # this process opted in (settle was called once)
_pause_lock = threading.Lock()
_pauses = 0  # paused() sections running now, in any thread
_resume = False  # whether the collector was on when the first of them began


def settle(generation: int = 2) -> float:
    """Collect what was left behind in generations up to `generation`, then freeze every
    surviving object; returns the seconds it took (a full pass is the last long one, ~0.1 s in a
    gateway with a 10,000-user policy).

    The previous freeze is undone first, so objects replaced since (an old policy's reference
    cycles) are still freed: unfrozen, they are in the oldest generation, so a process that froze
    before always takes the full pass (a second start in one process: the proxy edge rebuilds its
    gateway when an option changes; twenty-sixth review, F1). Start-up passes 1: what it built
    under `paused` is all young, and a full pass there found nothing more for ~5x the time
    (issue 18); whatever older garbage a freeze keeps is freed at the next `resettle`."""
    global _settled
    _settled = True
    t = time.perf_counter()
    if gc.get_freeze_count():
        generation = 2
    gc.unfreeze()
    gc.collect(generation)
    gc.freeze()
    took = time.perf_counter() - t
    log.debug("spendgate: %d long-lived objects out of the collector's walks (%.3f s)", gc.get_freeze_count(), took)
    return took


def resettle() -> float | None:
    """`settle` again after long-lived state was replaced, in a process that settled before;
    None (nothing done) in one that did not."""
    return settle() if _settled else None


@contextmanager
def paused() -> Iterator[None]:
    """The collector off while a burst of long-lived objects is built (a policy, the price
    catalogue, the budget book), restored on exit, whatever is raised. Nothing is lost: cyclic
    garbage made meanwhile waits for the next pass (`settle` runs one). Process-wide, so the
    proxy's thread skips its passes too for the moment; that only delays them.

    Counted across threads (a reload on the watcher's thread while the event loop starts or
    configures): the collector comes back on when the last of them ends, if it was on when the
    first began. Read-then-disable per section left it off for good when another section ended in
    between (twenty-sixth review, F2)."""
    global _pauses, _resume
    with _pause_lock:
        if not _pauses:
            _resume = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if not _pauses and _resume:
                gc.enable()
