"""Dashboard and admin work runs at background CPU priority, so it never outruns proxied traffic.

The gateway's process serves the dashboard too (DuckDB lets one process hold the ledger). On a
small machine a dashboard poll's DuckDB work and the proxy's event loop want the same cores: with
two tabs polling, proxy p99 rose to 1.3x of p99 without (issue 22). The threads that answer admin
and dashboard requests are lowered to nice 10 (Linux: the nice value is per thread, setpriority(2)
"BUGS"; macOS: PRIO_DARWIN_BG for the calling thread, setpriority(2) there). A poll then takes the
cores the proxy leaves, and takes longer only when the proxy is busy. DuckDB runs a query on the
calling thread (the gateway keeps its ledger at threads = cores - 1; one on two cores), so the
query's work is lowered with it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

BACKGROUND_NICE = 10  # CFS weight 110 against 1024 at nice 0: ~10% of a contended core


def lower_this_thread() -> bool:
    """Put the calling thread at background priority; False where the platform cannot (it then
    runs as before). A thread cannot raise its priority back without privilege: call this only on
    threads that serve the dashboard or the admin API and nothing else."""
    try:
        if sys.platform == "linux":
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
            return True
        if sys.platform == "darwin" and hasattr(os, "PRIO_DARWIN_THREAD"):
            os.setpriority(os.PRIO_DARWIN_THREAD, 0, os.PRIO_DARWIN_BG)
            return True
    except OSError as e:  # a container without the permission: serve at normal priority
        log.debug("spendgate: cannot lower the admin thread's priority: %s", e)
    return False
