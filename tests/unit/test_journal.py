from decimal import Decimal

from spendgate.budgets.journal import Journal


def test_open_reservations_survive_and_settled_ones_do_not(tmp_path):
    path = tmp_path / "j"
    j = Journal(path)
    j.reserve("a", Decimal("0.5"), {"user": "u"})
    j.reserve("b", Decimal("0.25"), {"user": "v"})
    j.settle(["a"])
    j.close()
    with path.open("ab") as f:
        f.write(b'{"op":"reserve","id":"torn')  # a crash in the middle of a write
    (only,) = Journal.open_reservations(path)
    assert (only.request_id, only.amount, only.record) == ("b", Decimal("0.25"), {"user": "v"})


def test_journal_compacts_to_the_open_reservations(tmp_path):
    path = tmp_path / "j"
    j = Journal(path, compact_at=4096)
    for i in range(200):
        j.reserve(f"r{i}", Decimal(1), {"user": "u", "pad": "x" * 50})
        if i != 7:
            j.settle([f"r{i}"])
    assert path.stat().st_size < 4096 + 200  # rewritten at least once, never growing without end
    j.reserve("late", Decimal(2), {"user": "u"})
    j.close()
    assert sorted(r.request_id for r in Journal.open_reservations(path)) == ["late", "r7"]


def test_held_rows_survive_compaction_until_settled(tmp_path):
    """Rows the ledger holds uncommitted are in the journal alone: compaction must not drop them."""
    path = tmp_path / "j"
    j = Journal(path, compact_at=4096)
    j.hold([{"request_id": "held-1", "pad": "x" * 50}])
    for i in range(100):
        j.reserve(f"r{i}", Decimal(1), {"user": "u", "pad": "x" * 50})
        j.settle([f"r{i}"])
    assert path.stat().st_size > 4096  # not compacted: a held row waits for its commit
    assert [r["request_id"] for r in Journal.spilled_rows(path)] == ["held-1"]
    j.settle(["held-1"])  # committed: the next settle past the size compacts
    j.reserve("late", Decimal(1), {"user": "u"})
    j.settle(["late"])
    assert path.stat().st_size < 4096 and Journal.spilled_rows(path) == []
    j.close()


def test_a_short_write_is_cut_off_and_raised(tmp_path, monkeypatch):
    """A disk that fills mid-write takes part of a line without an error: the part is cut off
    again and OSError raised, and the next line is whole (review 37, finding 2)."""
    import os

    import pytest

    path = tmp_path / "j"
    j = Journal(path)
    j.reserve("a", Decimal(1), {"user": "u"})
    size = path.stat().st_size
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, data[:7]))
    with pytest.raises(OSError):
        j.hold([{"request_id": "h", "pad": "x" * 100}])
    with pytest.raises(OSError):
        j.reserve("b", Decimal(1), {"user": "u"})
    monkeypatch.setattr(os, "write", real)
    assert path.stat().st_size == size
    j.reserve("c", Decimal(1), {"user": "u"})
    j.close()
    assert sorted(r.request_id for r in Journal.open_reservations(path)) == ["a", "c"]
    assert Journal.spilled_rows(path) == []


def test_rows_held_then_spilled_are_kept_once(tmp_path):
    path = tmp_path / "j"
    j = Journal(path)
    j.hold([{"request_id": "r1"}, {"request_id": "r2"}])
    j.spill([{"request_id": "r1"}, {"request_id": "r3"}])  # r1 was held: not written again
    assert sorted(r["request_id"] for r in Journal.spilled_rows(path)) == ["r1", "r2", "r3"]
    assert sorted(r["request_id"] for r in j.take_spilled()) == ["r1", "r3"]
    j.settle(["r2"])
    assert not j._held and not j._spilled  # nothing pins compaction
    j.close()
