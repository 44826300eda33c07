"""Thirty-fifth review: spendgate.threadnames and the bench's per-thread CPU (commit cf24417)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_main_thread_keeps_the_process_name_even_when_called_spendgate() -> None:
    """The module promises the main thread keeps the process's name (what ps -C, pgrep and
    /proc/PID/comm match); label_threads renamed any thread whose Python name starts with
    "spendgate-", the main thread included. Run apart: renaming pytest's own process is a side effect."""
    code = (
        "import threading, pathlib\n"
        "from spendgate import threadnames\n"
        "before = pathlib.Path('/proc/self/comm').read_text().strip()\n"
        "threading.main_thread().name = 'spendgate-main'\n"
        "threadnames.label_threads()\n"
        "print(before, pathlib.Path('/proc/self/comm').read_text().strip())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    before, after = out.stdout.split()
    assert after == before != "sg-main"


def test_label_threads_never_raises_without_proc_or_with_a_file_in_its_way(tmp_path: Path) -> None:
    import threading

    from spendgate import threadnames

    stop = threading.Event()
    ours = threading.Thread(target=stop.wait, args=(10,), name="spendgate-review35")
    ours.start()
    try:
        (tmp_path / "task").write_text("not a directory")  # NotADirectoryError: an OSError, skipped
        assert threadnames.label_threads(tmp_path / "task") == 0
        (tmp_path / "tasks" / str(ours.native_id) / "comm").mkdir(parents=True)  # IsADirectoryError
        assert threadnames.label_threads(tmp_path / "tasks") == 0
    finally:
        stop.set()
        ours.join()
