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


def _full_row(i: int, **changes):
    """A ledger row with every field set to a value of its own (none left at its default)."""
    import dataclasses
    from datetime import UTC, datetime, timedelta, timezone

    from spendgate.store.ledger import LedgerRow

    values = {}
    for n, f in enumerate(dataclasses.fields(LedgerRow)):
        kind = str(f.type)
        if "datetime" in kind:
            values[f.name] = datetime(2026, 12, 5, 7, 8, 9, 123456, tzinfo=UTC) + timedelta(seconds=i)
        elif "Decimal" in kind:
            values[f.name] = Decimal(f"0.{i + 1:04d}{n:06d}")
        elif kind == "bool":
            values[f.name] = n % 2 == 0
        elif "int" in kind:
            values[f.name] = 1_000_000_007 * (n + 1) + i
        elif "float" in kind:
            values[f.name] = n + i / 7
        else:
            values[f.name] = f"{f.name}-{i}-é\u2014\U0001f600\"\\\n"
    values["request_id"] = f"row-{i}"
    values.update(changes)
    return LedgerRow(**values)


def test_held_and_spilled_rows_read_back_exactly(tmp_path):
    """Rows are written to the journal as they are (msgspec: datetimes in RFC 3339 with "Z",
    Decimals as strings), or through row_to_dict when msgspec would refuse or round a value (a
    lone surrogate; a UTC offset with seconds, which RFC 3339 cannot write): recovery reads every
    field back as it was, integers past 64 bits and times in other zones included."""
    import dataclasses
    from datetime import datetime, timedelta, timezone
    from zoneinfo import ZoneInfo

    from spendgate.store.ledger import row_from_dict

    rows = [_full_row(0), _full_row(1, user="lone \ud800 surrogate"), _full_row(2, input_tokens=2**70),
            _full_row(3, ts=datetime(2026, 12, 5, 9, 0, tzinfo=timezone(timedelta(hours=5, minutes=30)))),
            _full_row(4, model=None, cost_usd=None, latency_ms=None),
            _full_row(5, ts=datetime(1900, 1, 1, 12, 0, 7, 5, tzinfo=ZoneInfo("Europe/Amsterdam"))),  # +00:19:32
            _full_row(6, ts=datetime(2026, 7, 1, tzinfo=timezone(timedelta(seconds=-30))))]
    path = tmp_path / "j"
    j = Journal(path)
    j.hold(rows[:3])
    j.spill(rows[2:])  # row 2 was held: kept once
    j.close()
    back = {d["request_id"]: row_from_dict(d) for d in Journal.spilled_rows(path)}
    assert len(Journal.spilled_rows(path)) == len(rows)
    for row in rows:
        got = back[row.request_id]
        for f in dataclasses.fields(row):
            assert getattr(got, f.name) == getattr(row, f.name), f.name
            assert type(getattr(got, f.name)) is type(getattr(row, f.name)), f.name
        assert got.ts.utcoffset() == row.ts.utcoffset()


def test_held_rows_are_synced_to_disk(tmp_path, monkeypatch):
    """A held row waits up to 30 s for its commit: once SYNC_ROWS held rows are not synced the
    journal is, so a busy gateway's power cut loses no more than when DuckDB's commit came every
    2 s; a laptop's few rows are not synced (review 39)."""
    import os

    from spendgate.budgets.journal import SYNC_ROWS

    synced = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(fd) or real(fd))
    j = Journal(tmp_path / "j")
    j.reserve("a", Decimal(1), {"user": "u"})
    j.settle(["a"])
    j.hold([_full_row(i) for i in range(SYNC_ROWS - 1)])
    assert synced == []  # a reservation, or a laptop's few held rows, is not synced (kill -9 safe)
    j.hold([_full_row(SYNC_ROWS)])
    assert len(synced) == 1
    j.hold([_full_row(i) for i in range(100, 100 + SYNC_ROWS)])  # a busy gateway's 2 s batch
    assert len(synced) == 2
    j.hold([_full_row(200)])
    j.settle([f"row-{i}" for i in (*range(SYNC_ROWS - 1), SYNC_ROWS, *range(100, 100 + SYNC_ROWS), 200)])
    j.hold([_full_row(i) for i in range(300, 300 + SYNC_ROWS - 1)])  # counted afresh after a commit
    assert len(synced) == 2
    j.close()
