"""The live-reload watcher: one callback per changed file, content decides, nothing kills it."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from spendgate.policy.watch import FileWatcher, digest


def test_calls_back_per_changed_file_and_survives_errors(tmp_path: Path, caplog):
    a, b = tmp_path / "policy.yaml", tmp_path / "overrides.yaml"
    a.write_text("one")
    b.write_text("two")
    calls: list[str] = []
    ticks: list[int] = []

    def boom(p: Path) -> None:
        calls.append(p.name)
        raise RuntimeError("a reload bug")

    def tick() -> None:
        ticks.append(1)
        raise ValueError("housekeeping bug")

    w = FileWatcher({a: lambda p: calls.append(p.name), b: boom}, interval=0, tick=tick)
    assert w.poll() == [] and calls == []  # nothing changed since construction
    a.write_text("one")  # rewritten with the same content: not a change
    assert w.poll() == []
    b.write_text("two, edited")
    with caplog.at_level(logging.ERROR):
        assert w.poll() == [b]
    assert calls == ["overrides.yaml"] and "reloading" in caplog.text and "a reload bug" in caplog.text
    assert w.poll() == []  # a failed version is not retried every poll...
    a.write_text("one, edited")
    assert w.poll() == [a] and calls == ["overrides.yaml", "policy.yaml"]  # ...and the watcher still works
    assert len(ticks) == 5


def test_an_unreadable_file_is_reported_once_and_picked_up_when_back(tmp_path: Path, caplog):
    a = tmp_path / "policy.yaml"
    a.write_text("v1")
    calls: list[Path] = []
    w = FileWatcher({a: calls.append}, interval=0)
    a.unlink()
    with caplog.at_level(logging.ERROR):
        assert w.poll() == [] and w.poll() == []
    assert caplog.text.count("cannot read") == 1
    a.write_text("v1")  # back with the same content: no reload needed
    assert w.poll() == []
    a.write_text("v2")
    assert w.poll() == [a] and calls == [a]


def test_loaded_digests_catch_an_edit_made_before_the_watcher_started(tmp_path: Path):
    a = tmp_path / "policy.yaml"
    a.write_text("v1")
    loaded = hashlib.sha256(b"v1").hexdigest()
    a.write_text("v2")  # edited between the caller's load and the watcher's start
    calls: list[Path] = []
    w = FileWatcher({a: calls.append}, interval=0, loaded={a: loaded})
    assert w.poll() == [a] and digest(a) == hashlib.sha256(b"v2").hexdigest()


def test_the_thread_runs_polls_until_stopped(tmp_path: Path):
    import threading

    a = tmp_path / "f"
    a.write_text("x")
    seen = threading.Event()
    w = FileWatcher({a: lambda p: seen.set()}, interval=0.05).start()
    a.write_text("y")
    assert seen.wait(10)
    w.stop()
    assert w._thread is not None and not w._thread.is_alive()
