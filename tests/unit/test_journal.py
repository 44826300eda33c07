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
