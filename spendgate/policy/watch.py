"""Live reload: poll a few files and call back for each one whose content changed.

The gateway watches its policy and its pricing overrides with one `FileWatcher` thread. Content,
not mtime, decides (sha256 of the bytes): editors that rewrite a file with the same text, or
filesystems with coarse timestamps, neither miss nor invent a change. Each callback validates
and swaps in the new file itself (and keeps the last good one when it is invalid). The watcher
thread takes a new content only once it has read the same twice, one interval apart. The watcher
only has to survive: an exception from a callback, or a file that cannot be read for a while,
is logged and the thread keeps polling.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

# Called with the changed file's path. It may return the sha256 (hex) of the bytes it read itself:
# the watcher then records those as applied, so a file that changed again between the watcher's read
# and the callback's is read and applied once more (twelfth review, T5).
Callback = Callable[[Path], object]
UNSETTLED_ROUNDS = 5  # a file that changed on this many reads in a row is reported (once)


def digest(path: Path) -> str | None:
    """sha256 of the file's bytes, or None when it cannot be read right now."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class FileWatcher:
    """Calls `callbacks[path](path)` when that file's content changes, checked every `interval` seconds.

    `tick`, when given, runs once per poll before the files are checked (periodic housekeeping
    that shares this thread). `poll()` does one round synchronously (tests, or a caller that
    wants to check now); `start()` runs rounds on a daemon thread until `stop()`.
    """

    def __init__(self, callbacks: Mapping[Path, Callback], interval: float = 1.0, *,
                 tick: Callable[[], object] | None = None, name: str = "spendgate-watch",
                 loaded: Mapping[Path, str | None] | None = None) -> None:
        """`loaded`: the sha256 of what the caller already loaded, per file (default: read now), so
        an edit made between the caller's load and this constructor is not missed."""
        self.callbacks = dict(callbacks)
        self.interval = interval
        self.tick = tick
        self.name = name
        loaded = loaded or {}
        self._seen: dict[Path, str | None] = {p: loaded[p] if p in loaded else digest(p) for p in self.callbacks}
        self._unreadable: set[Path] = set()
        self._settling: dict[Path, str] = {}  # path -> a new content read once, applied if it reads the same next round
        self._unsettled: dict[Path, int] = {}  # path -> rounds in a row its content changed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self, settle: bool = False) -> list[Path]:
        """One round: the files whose callback ran because their content changed.

        `settle`: a new content is taken only once it reads the same on two rounds in a row (the
        watcher thread's way): a file read while a tool is still writing it in place (truncate,
        then write) can be a valid prefix of the policy with its budgets cut off (eleventh review,
        F6); one round later it reads differently, so it is never applied."""
        if self.tick is not None:
            try:
                self.tick()
            except Exception:
                log.exception("spendgate: periodic task of %s failed", self.name)
        changed = []
        for path, callback in self.callbacks.items():
            now = digest(path)
            if now is None:
                if path not in self._unreadable:  # once per outage, not every second
                    log.error("spendgate: cannot read %s; keeping the last good version", path)
                    self._unreadable.add(path)
                continue
            self._unreadable.discard(path)
            if now == self._seen.get(path):
                self._settling.pop(path, None)
                self._unsettled.pop(path, None)
                continue
            if settle and self._settling.get(path) != now:  # first read of this content: once more
                self._settling[path] = now
                self._unsettled[path] = rounds = self._unsettled.get(path, 0) + 1
                if rounds == UNSETTLED_ROUNDS:  # once: a file rewritten every round is never applied
                    log.warning("spendgate: %s has changed on each of the last %d reads; it is applied once it "
                                "reads the same twice in a row", path, rounds)
                continue
            self._settling.pop(path, None)
            self._unsettled.pop(path, None)
            self._seen[path] = now  # a bad version is reported once, not on every poll
            changed.append(path)
            try:
                acted_on = callback(path)
            except Exception:
                log.exception("spendgate: reloading %s failed; keeping the last good version", path)
                continue
            if isinstance(acted_on, str):  # the sha256 of the bytes the callback itself read: when the file
                self._seen[path] = acted_on  # changed under it, the next rounds see the difference and reload
        return changed

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll(settle=True)
            except Exception:  # never let the watcher die: the next edit must still apply
                log.exception("spendgate: %s poll failed", self.name)

    def start(self) -> FileWatcher:
        if self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
