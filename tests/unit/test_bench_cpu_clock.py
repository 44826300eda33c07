"""scripts/bench_cpu.CpuClock: nanosecond per-thread counters, ticks when a thread took its time away."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

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


def test_the_event_loops_waits_are_its_voluntary_switches() -> None:
    """loop_waits: each time the main thread (mitmdump's event loop) blocked, on a lock another
    thread held as on a sleep, and nothing another thread does counts."""
    assert threading.current_thread() is threading.main_thread()  # the clock reads the main thread
    held = threading.Lock()
    held.acquire()
    go = threading.Event()

    def holder() -> None:  # blocks often itself: none of its switches are the main thread's
        go.wait(10)
        for _ in range(20):
            time.sleep(0.001)
        held.release()

    worker = threading.Thread(target=holder)
    worker.start()
    clock = bench_cpu.CpuClock(os.getpid())
    go.set()
    assert held.acquire(timeout=10)  # the main thread waits for the worker's lock: one block (or a few)
    blocked = clock.loop_waits()
    for _ in range(10):
        time.sleep(0.002)
    worker.join()
    assert 1 <= blocked < 10
    assert clock.loop_waits() >= blocked + 10
    assert bench_cpu.loop_switches(os.getpid()) >= clock.switches0 + blocked + 10
