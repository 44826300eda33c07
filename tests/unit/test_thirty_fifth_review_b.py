"""Thirty-fifth review (b): bench --instructions counted per thread (commits 4d15d6e, 4df8be2).

No valgrind here: callgrind's dump files are fabricated the way callgrind/dump.c names and writes
them (new_dumpfile: ``<out>[.<dump>][-<tid "%02d">]``, the ``totals:`` line last, thread 1 first;
init_dumps creates the base file ``<out>`` empty at start)."""

from __future__ import annotations

import collections
import gc
import json
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import bench_instructions as bi  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PID = 4242


def dump_file(d: Path, dump: int, tid: int, total: int | None, tail: str = "\n") -> Path:
    f = d / f"callgrind.{PID}.{dump}-{tid:02d}"
    body = f"# callgrind format\nversion: 1\npart: {dump}\nthread: {tid}\nevents: Ir\nsummary: {total or 0}\n\n"
    f.write_text(body + (f"totals: {total}{tail}" if total is not None else "fn=(1) x\n"))
    return f


def test_main_thread_is_thread_1_only_whatever_the_thread_numbers(tmp_path: Path) -> None:
    """"-%02d": threads 1, 10, 11, 100, 101, 201, 1001; only thread 1 is the main thread."""
    (tmp_path / f"callgrind.{PID}").write_text("")  # init_dumps' empty base file, from the start
    before = set(tmp_path.iterdir())
    for tid, n in {1: 5, 10: 7, 11: 11, 100: 13, 101: 17, 201: 19, 1001: 23}.items():
        dump_file(tmp_path, 1, tid, n)
    assert bi._dumped(tmp_path, before, timeout_s=5, poll_s=0.01) == (95, 5)


def test_the_base_file_and_the_exit_dump_are_no_dump(tmp_path: Path) -> None:
    """A stray base file (empty: no totals) made the old test `len(totals) == len(new)` wait its
    30 s out and raise; the exit dump's files (no dump number) are not an intermediate dump's."""
    before = set(tmp_path.iterdir())
    (tmp_path / f"callgrind.{PID}").write_text("")
    (tmp_path / f"callgrind.{PID}-01").write_text("totals: 999\n")
    dump_file(tmp_path, 3, 1, 40)
    dump_file(tmp_path, 3, 2, 2)
    assert bi._dumped(tmp_path, before, timeout_s=5, poll_s=0.01) == (42, 40)


def test_earlier_dumps_are_not_counted(tmp_path: Path) -> None:
    dump_file(tmp_path, 1, 1, 1000)
    dump_file(tmp_path, 1, 2, 1000)
    before = set(tmp_path.iterdir())
    dump_file(tmp_path, 2, 1, 3)
    dump_file(tmp_path, 2, 2, 4)
    assert bi._dumped(tmp_path, before, timeout_s=5, poll_s=0.01) == (7, 3)


def test_a_dump_seen_after_its_first_thread_file_only_is_not_complete(tmp_path: Path) -> None:
    """Callgrind writes thread 1's file whole, then creates thread 2's: the old test returned on a
    look between the two (one file, one totals line), without the background threads."""
    before = set(tmp_path.iterdir())
    dump_file(tmp_path, 1, 1, 10)

    def rest() -> None:
        time.sleep(0.3)
        dump_file(tmp_path, 1, 2, 20)
        time.sleep(0.3)
        dump_file(tmp_path, 1, 3, 30)

    # the others follow within a poll: a look must see the same files twice
    t = threading.Thread(target=rest)
    t.start()
    try:
        got = bi._dumped(tmp_path, before, timeout_s=5, poll_s=0.4)
    finally:
        t.join()
    assert got == (60, 10)


def test_a_totals_line_not_yet_ended_is_not_read(tmp_path: Path) -> None:
    """Callgrind's buffered writer can flush "totals: 12" before "345\\n": int() read 12."""
    before = set(tmp_path.iterdir())
    f = dump_file(tmp_path, 1, 1, 12, tail="")  # "totals: 12", no newline yet
    with pytest.raises(RuntimeError):
        bi._dumped(tmp_path, before, timeout_s=0.3, poll_s=0.05)
    f.write_text(f.read_text() + "345\n")
    assert bi._dumped(tmp_path, before, timeout_s=5, poll_s=0.01) == (12345, 12345)


def test_no_main_thread_file_is_no_dump(tmp_path: Path) -> None:
    """Without thread 1's file the event loop's count would read 0 and its ratio None, silently."""
    before = set(tmp_path.iterdir())
    dump_file(tmp_path, 1, 2, 20)
    with pytest.raises(RuntimeError):
        bi._dumped(tmp_path, before, timeout_s=0.3, poll_s=0.05)


def test_print_shows_a_dash_not_none_without_an_event_loop_ratio() -> None:
    from io import StringIO

    from rich.console import Console

    fig = {"c1": {"unit": "request", "floor": "plain", "per_unit": {"plain": 10, "spendgate": 11}, "ratio": 1.1,
                  "added": 1, "event_loop_per_unit": {"plain": 0, "spendgate": 0}, "event_loop_ratio": None}}
    out = StringIO()
    bi.print_instructions(fig, Console(file=out, width=400))
    assert "None" not in out.getvalue()


def test_the_collector_runs_in_whichever_thread_sets_it_off() -> None:
    """Why the event loop's (thread 1's) count is not free of the background threads (docs caveat):
    a background thread that allocates runs collector passes over every thread's objects."""
    seen: collections.Counter[str] = collections.Counter()

    def cb(phase: str, info: dict) -> None:
        if phase == "start":
            seen[threading.current_thread().name] += 1

    keep: list[list[int]] = []
    gc.callbacks.append(cb)
    try:
        t = threading.Thread(target=lambda: [keep.append([]) for _ in range(50_000)], name="review35b-bg")
        t.start()
        t.join()
    finally:
        gc.callbacks.remove(cb)
    if not gc.isenabled():
        pytest.skip("collector disabled in this process")
    assert seen["review35b-bg"] > 0, seen
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert "does not depend on when the background's batches run" not in doc
    assert "do not move with when the background threads' batches" not in bi.__doc__


def test_meta_started_is_when_the_run_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """meta "started" was taken when the results were written: bench-20261204-194333.json (started
    19:43:33, 347 s) reads "started": "19:49:20"."""
    from datetime import UTC, datetime

    import bench

    class Fake:
        def __init__(self, plan, work) -> None:
            pass

        def instructions_only(self, against):
            time.sleep(2.2)
            return {}

        def close(self) -> None:
            pass

    monkeypatch.setattr(bench, "Bench", Fake)
    t0 = datetime.now(UTC).replace(microsecond=0)
    bench.run(bench.Plan(), "instructions", tmp_path / "out.json", keep=False)
    started = datetime.fromisoformat(json.loads((tmp_path / "out.json").read_text())["meta"]["started"])
    assert (started - t0).total_seconds() <= 1, (started, t0)
