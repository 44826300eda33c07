"""spendgate.threadnames: the names `top -H` and `ps -L` show for spendgate's threads."""

from __future__ import annotations

import threading
from pathlib import Path

from spendgate import threadnames
from spendgate.gateway import Gateway, Settings


def comm(tid: int) -> str:
    return Path(f"/proc/self/task/{tid}/comm").read_text().strip()


def test_os_names_are_short_ascii_and_only_for_spendgate_threads() -> None:
    assert threadnames.os_name("spendgate-meter") == "sg-meter"
    assert threadnames.os_name("spendgate-ledger") == "sg-ledger"
    assert threadnames.os_name("spendgate-a-very-long-thread-name") == "sg-a-very-long-"  # the kernel keeps 15 bytes
    assert len(threadnames.os_name("spendgate-" + "x" * 40)) == threadnames.COMM_BYTES
    assert threadnames.os_name("spendgate-zähler") == "sg-z?hler"  # ASCII: a cut can never split a character
    assert threadnames.os_name("MainThread") is None
    assert threadnames.os_name("asyncio_0") is None


def test_living_spendgate_threads_are_named_and_others_left_alone() -> None:
    stop = threading.Event()
    ours = threading.Thread(target=stop.wait, args=(10,), name="spendgate-probe-thread-x")
    theirs = threading.Thread(target=stop.wait, args=(10,), name="not-ours")
    ours.start()
    theirs.start()
    try:
        before = comm(theirs.native_id)
        assert threadnames.label_threads() >= 1
        assert comm(ours.native_id) == "sg-probe-thread"
        assert comm(theirs.native_id) == before
        assert comm(threading.main_thread().native_id) != "sg-probe-thread"
    finally:
        stop.set()
        ours.join()
        theirs.join()


def test_without_proc_nothing_is_named_and_nothing_raises(tmp_path: Path) -> None:
    stop = threading.Event()
    ours = threading.Thread(target=stop.wait, args=(10,), name="spendgate-noproc")
    ours.start()
    try:
        assert threadnames.label_threads(tmp_path / "missing") == 0
    finally:
        stop.set()
        ours.join()


def test_a_started_gateway_names_its_meter_and_ledger_threads(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    gw = Gateway(Settings(db=tmp_path / "l.duckdb", policy=policy, user="unit", admin_port=-1, reload_interval=0))
    try:
        names = {comm(t.native_id) for t in threading.enumerate() if t.name.startswith("spendgate-")}
        assert {"sg-meter", "sg-ledger"} <= names
    finally:
        gw.close()
