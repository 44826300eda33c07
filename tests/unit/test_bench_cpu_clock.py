"""scripts/bench_cpu: CpuClock (nanosecond per-thread counters, ticks when a thread took its time away)
and how often an event loop blocked (loop_switches, counted by interleaved over a proxy's own turns)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import bench_cpu  # noqa: E402


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_the_nanosecond_counters_see_every_living_thread() -> None:
    """Both of the clock's baselines are taken while nothing runs (as the bench takes them, after
    a settle pause): a thread burning while they were read would put them apart in time."""
    go, stop = threading.Event(), threading.Event()
    worker = threading.Thread(target=lambda: (go.wait(10), burn(0.15), stop.wait(10)))
    worker.start()
    try:
        clock = bench_cpu.CpuClock(os.getpid())
        go.set()
        burn(0.1)  # this thread, and the worker meanwhile
        time.sleep(0.3)
        seconds, counter = clock.stop()
    finally:
        go.set()
        stop.set()
        worker.join()
    assert counter == "ns"
    assert 0.2 <= seconds < 1.0  # both threads' time, not the main thread's alone (nor 10 ms steps)


def test_a_thread_that_ended_in_the_window_falls_back_to_the_tick_counter() -> None:
    clock = bench_cpu.CpuClock(os.getpid())
    worker = threading.Thread(target=burn, args=(0.2,))
    worker.start()
    worker.join()
    # join() returns before the OS thread is gone: wait until the kernel dropped it, so its time
    # has left the per-thread counters and only the process's ticks still hold it
    deadline = time.monotonic() + 10
    while Path(f"/proc/self/task/{worker.native_id}").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    seconds, counter = clock.stop()
    assert counter == "ticks"
    assert seconds >= 0.15


def test_cpu_is_split_by_the_names_the_os_shows() -> None:
    """by_thread: the main thread (mitmdump's event loop) apart, spendgate's threads under their OS
    names (spendgate.threadnames), anything else as "other"."""
    from spendgate import threadnames

    go, stop = threading.Event(), threading.Event()

    def work() -> None:
        go.wait(10)
        burn(0.15)
        stop.wait(10)

    named = threading.Thread(target=work, name="spendgate-benchprobe")
    unnamed = threading.Thread(target=work, name="someone-else")
    named.start()
    unnamed.start()
    try:
        assert threadnames.label_threads() >= 1
        clock = bench_cpu.CpuClock(os.getpid())
        go.set()
        burn(0.05)
        time.sleep(0.4)
        clock.stop()
        groups = clock.by_thread()
    finally:
        go.set()
        stop.set()
        named.join()
        unnamed.join()
    assert 0.12 <= groups["sg-benchprobe"] < 0.5
    assert 0.12 <= groups["other"]  # the unnamed thread (and nothing of the main thread's)
    assert 0.03 <= groups["event loop"] < 0.12
    assert bench_cpu.thread_medians([{"event loop": 3.0, "sg-meter": 1.0}, {"event loop": 5.0},
                                     {"event loop": 4.0, "sg-meter": 2.0}]) == {"event loop": 4.0, "sg-meter": 1.0}


def test_the_loops_blocks_are_its_main_threads_voluntary_switches() -> None:
    """loop_switches counts each time the main thread (mitmdump's event loop) blocked, on a lock
    another thread held as on a sleep; another thread's own blocks do not count."""
    assert threading.current_thread() is threading.main_thread()  # it reads the main thread
    held = threading.Lock()
    held.acquire()
    go = threading.Event()

    def holder() -> None:  # blocks 20 times itself: none of them are the main thread's
        go.wait(10)
        for _ in range(20):
            time.sleep(0.001)
        held.release()

    worker = threading.Thread(target=holder)
    worker.start()
    start = bench_cpu.loop_switches(os.getpid())
    go.set()
    assert held.acquire(timeout=10)  # the main thread waits for the worker's lock
    blocked = bench_cpu.loop_switches(os.getpid()) - start
    worker.join()
    assert 1 <= blocked < 15  # one block on the lock (a few more if it then waited for the GIL)
    before = bench_cpu.loop_switches(os.getpid())
    for _ in range(10):
        time.sleep(0.002)
    assert bench_cpu.loop_switches(os.getpid()) - before >= 10


@pytest.mark.skipif(not getattr(sys, "_is_gil_enabled", lambda: True)(), reason="no GIL to wait for")
def test_a_wait_for_the_gil_is_a_block() -> None:
    """Two threads running Python hand the GIL back and forth (every switch interval, 5 ms): each
    time the main thread hands it over it blocks until it is its turn again, as mitmdump's event
    loop does while spendgate's meter worker runs."""
    spinner = threading.Thread(target=burn, args=(0.1,))
    before = bench_cpu.loop_switches(os.getpid())
    spinner.start()
    burn(0.1)  # 0.1 s of CPU each: ~0.2 s of taking turns, ~20 hand-overs each way
    spinner.join()
    assert bench_cpu.loop_switches(os.getpid()) - before >= 5


def test_a_proxys_blocks_are_counted_over_its_own_turns(monkeypatch) -> None:
    """interleaved counts each proxy's blocks only while it takes its turns: while the others take
    theirs its loop sleeps, and what an idle loop's timers do then is no wait."""
    monkeypatch.setattr(bench_cpu, "SETTLE_S", 0.01)
    ticking = "import time\nwhile True:\n    time.sleep(0.01)\n"  # blocks ~100 times a second, busy or not
    procs = [subprocess.Popen([sys.executable, "-c", ticking]) for _ in range(2)]
    try:
        proxies = {f"p{i}": types.SimpleNamespace(proc=p, port=i) for i, p in enumerate(procs)}

        async def turn(port: int, n: int) -> int:
            await asyncio.sleep(0.1)
            return n

        window = asyncio.run(bench_cpu.interleaved(proxies, turn, 8))  # 8 turns each, 0.8 s of own turns
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for name, (_seconds, units, _counter, _groups, blocked) in window.items():
        assert units == 8
        # ~80 over its own 0.8 s; the window's whole 1.6 s would give ~160
        assert 30 <= blocked <= 115, (name, blocked)


def test_what_one_more_unit_costs_leaves_out_what_every_window_costs() -> None:
    """Two proxies cost the same per request; one also pays 50 ms per window (a commit, timers).
    Per window, the 40-request window charges it 1,250 µs a request and the 400-request one 125;
    the slope between a window and one a quarter its size charges neither."""
    def rounds(per_unit_us: float, fixed_s: float, n: int) -> list:
        small, big = n // 4, n
        return [((fixed_s + small * per_unit_us / 1e6, small), (fixed_s + big * per_unit_us / 1e6, big))] * 3

    for n in (40, 400):
        fig = bench_cpu.marginal({"plain": rounds(2000, 0.0, n), "control": rounds(2010, 0.0, n),
                                  "spendgate": rounds(2200, 0.05, n)})
        assert fig["marginal_us"] == {"plain": 2000.0, "control": 2010.0, "spendgate": 2200.0}
        assert (fig["marginal_added_us"], fig["marginal_control_us"]) == (200.0, 10.0)
    assert bench_cpu.small_count(40) == 10 and bench_cpu.small_count(3) == 0  # too few for a slope


@pytest.mark.parametrize("added_5mb, control_5mb, judged", [
    (300.0, 50.0, 1.5),  # within the target, measured precisely enough: judged (and holds)
    (1389.0, 90.0, 6.945),  # over it: judged (and missed)
    (300.0, 166.0, None),  # the control moved by more than the 100 µs margin: the run cannot tell
    (-231.0, -610.0, None),  # a reading below zero is noise, never a pass
])
def test_the_size_target_is_judged_only_when_the_run_can_tell(added_5mb, control_5mb, judged) -> None:
    out = bench_cpu.size_judgement({"marginal_added_us": 200.0},
                                   {"marginal_added_us": added_5mb, "marginal_control_us": control_5mb})
    assert out["marginal_size_ratio"] == round(added_5mb / 200.0, 3)
    if judged is None:
        assert not out["marginal_size_precise"] and out["marginal_size_judged"] != out["marginal_size_judged"]  # NaN
    else:
        assert out["marginal_size_precise"] and out["marginal_size_judged"] == judged
