"""Names the operating system shows for spendgate's threads (`top -H`, `ps -L`, `pidstat -t`).

Before Python 3.14 every thread of the proxy carries the process's name ("mitmdump"), so an
operator whose gateway holds a core cannot tell the event loop from the meter worker or the
ledger writer without a debugger. Linux reads a thread's name from, and lets the process set it
through, ``/proc/self/task/<tid>/comm`` (proc(5)); it keeps 15 bytes (TASK_COMM_LEN 16 with its
NUL, prctl(2) PR_SET_NAME), so ``spendgate-ledger`` is shown as ``sg-ledger``. The main thread
keeps the process's name: in mitmdump it is the event loop.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "spendgate-"  # how spendgate names its Python threads
OS_PREFIX = "sg-"
COMM_BYTES = 15  # what the kernel keeps of a thread's name (TASK_COMM_LEN - 1)
TASKS = Path("/proc/self/task")


def os_name(name: str) -> str | None:
    """The OS name of the Python thread `name` (``spendgate-meter`` -> ``sg-meter``), None for a
    thread that is not spendgate's; at most COMM_BYTES bytes of ASCII."""
    if not name.startswith(PREFIX):
        return None
    short = (OS_PREFIX + name[len(PREFIX):]).encode("ascii", "replace")[:COMM_BYTES]
    return short.decode("ascii")


def label_threads(tasks: Path = TASKS) -> int:
    """Give every living spendgate thread its OS name; returns how many were named.

    Call it after the threads started (the gateway does at the end of its start). Never raises:
    where there is no ``/proc`` (macOS, Windows) or a thread ended meanwhile, nothing is named."""
    named = 0
    main = threading.main_thread()
    for thread in threading.enumerate():
        name, tid = os_name(thread.name), thread.native_id
        # the main thread's name is the process's (ps -C, pgrep, /proc/PID/comm): never renamed
        if name is None or tid is None or thread is main:
            continue
        try:
            (tasks / str(tid) / "comm").write_text(name)
        except OSError:  # not Linux, or the thread is gone
            continue
        named += 1
    log.debug("spendgate: %d threads named for the OS", named)
    return named
