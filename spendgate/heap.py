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
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

_settled = False  # this process opted in (settle was called once)


def settle() -> float:
    """Collect what was left behind, then freeze every surviving object; returns the seconds it
    took (one full pass: the last long one, ~0.1 s in a gateway with a 10,000-user policy).

    The previous freeze is undone first, so objects replaced since (an old policy's reference
    cycles) are still freed."""
    global _settled
    _settled = True
    t = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    took = time.perf_counter() - t
    log.debug("spendgate: %d long-lived objects out of the collector's walks (%.3f s)", gc.get_freeze_count(), took)
    return took


def resettle() -> float | None:
    """`settle` again after long-lived state was replaced, in a process that settled before;
    None (nothing done) in one that did not."""
    return settle() if _settled else None
