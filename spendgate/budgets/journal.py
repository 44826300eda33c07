"""A reservation journal that survives a crash of the gateway process.

Every admitted request appends one line before it is forwarded; once its ledger row is
committed, a settle line follows. A ledger row whose commit is put off (the ledger's HOLD_ROWS)
or that a failing store cannot take is written here whole first, and the next start writes it.
A plain `os.write` to an O_APPEND file lands in the kernel's page cache in microseconds and
survives `kill -9` (not a power cut: that is a documented trade-off against an fsync per request).
Held rows, which wait up to 30 s for a commit, are synced once SYNC_ROWS of them are not (`hold`).
At start-up, reservations without a settle line and without a ledger row are charged as
`interrupted`; then the journal starts afresh.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from spendgate import fsutil
from spendgate.store.ledger import LedgerRow, row_to_dict

_ENCODER = msgspec.json.Encoder()
# held rows not yet synced that make `hold` sync the file: a power cut loses at most this many
# more than a kill -9 does, or the rows of the writer's last 2 s at a busy gateway
SYNC_ROWS = 32


log = logging.getLogger(__name__)


def _row_id(row: LedgerRow | dict[str, Any]) -> str:
    """A kept row's request id: the ledger's rows are LedgerRows; a dict is a row read back."""
    return row.request_id if isinstance(row, LedgerRow) else row["request_id"]


_MINUTE = timedelta(minutes=1)


def _whole_minutes(ts: datetime) -> bool:
    """Whether msgspec writes `ts` exactly: it writes a UTC offset in whole minutes (RFC 3339),
    so a zone of 1900 (Amsterdam's +00:19:32) would read back 28 s off (review 39)."""
    offset = ts.utcoffset()
    return offset is None or not offset % _MINUTE


def _row_line(row: LedgerRow | dict[str, Any]) -> bytes:
    """A ledger row's line, as `row_to_dict` and `row_from_dict` read it. msgspec writes a
    LedgerRow as it is (~2.5 µs; through `row_to_dict` ~11 µs): its datetime as RFC 3339 (with
    "Z", which `datetime.fromisoformat` reads) and its Decimals as strings. A value it refuses (a
    lone surrogate) or would round (a UTC offset with seconds) goes through `row_to_dict` and
    json.dumps, as every row did before."""
    if isinstance(row, LedgerRow):
        if _whole_minutes(row.ts):
            try:
                return _ENCODER.encode({"op": "row", "id": row.request_id, "row": row}) + b"\n"
            except Exception:  # noqa: BLE001 -- the slower path below takes whatever a row holds
                pass
        row = row_to_dict(row)
    return Journal._line({"op": "row", "id": row["request_id"], "row": row})


@dataclass(frozen=True, slots=True)
class OpenReservation:
    request_id: str
    amount: Decimal
    record: dict[str, Any]


class Journal:
    def __init__(self, path: Path, compact_at: int = 16 << 20) -> None:
        self.path = path
        self.compact_at = compact_at  # bytes appended before the file is rewritten with open lines only
        self._fd = fsutil.open_append(path)  # 0600, a symlink at `path` is refused (O_NOFOLLOW)
        self._lock = threading.Lock()
        self._open: dict[str, bytes] = {}  # request id -> its reserve line, while in flight
        self._spilled: set[str] = set()  # ids of ledger rows spilled here while the store failed
        self._held: set[str] = set()  # ids of ledger rows written here whose commit is put off
        self._written = 0
        self._unsynced = 0  # held rows written since the file was last synced (`hold`)

    @staticmethod
    def _line(obj: dict[str, Any]) -> bytes:
        """One JSON line; msgspec writes a reserve line ~8x faster than json.dumps (event loop)."""
        try:
            return _ENCODER.encode(obj) + b"\n"
        except Exception:  # a type only json's default=str takes, or a lone surrogate
            pass
        return (json.dumps(obj, separators=(",", ":"), default=str) + "\n").encode()

    def reserve(self, request_id: str, amount: Decimal, record: dict[str, Any]) -> None:
        """Raises OSError (disk full...) so admission can apply `on_store_error`."""
        line = self._line({"op": "reserve", "id": request_id, "amount": str(amount), **record})
        with self._lock:
            self._append(line)
            self._open[request_id] = line

    def settle(self, request_ids: list[str]) -> None:
        if not request_ids:
            return
        line = self._line({"op": "settle", "ids": request_ids})
        with self._lock:
            for rid in request_ids:
                self._open.pop(rid, None)
                self._held.discard(rid)
            if not self._held:
                self._unsynced = 0  # every held row is committed, and DuckDB's commit syncs
            try:
                self._append(line)
                # spilled and held rows stay until written (compaction keeps reserve lines only)
                if self._written >= self.compact_at and not self._spilled and not self._held:
                    self._compact()
            except OSError as e:  # the ledger row exists; recovery checks it, so nothing is double-charged
                log.error("reservation journal: cannot write settle: %s", e)

    def spill(self, rows: list[LedgerRow] | list[dict[str, Any]]) -> None:
        """Keep ledger rows the store could not take (written back later, or at the next start).
        Rows held here already are not written again: they only count as spilled from now on (so
        they come back once, and a row lost with the rest never pins compaction). Raises OSError
        when the disk refuses the others."""
        with self._lock:
            moved = {_row_id(r) for r in rows} & self._held
            self._held -= moved
            self._spilled |= moved
        self._keep([r for r in rows if _row_id(r) not in moved], self._spilled)

    def hold(self, rows: list[LedgerRow] | list[dict[str, Any]]) -> None:
        """Keep ledger rows the ledger still holds in memory, its commit put off: after a crash
        the next start writes them (their settle line, after the commit, ends that). Raises
        OSError when the disk refuses them; the ledger then commits at once.

        Once SYNC_ROWS or more held rows are not yet synced, the file is synced (`fdatasync`,
        outside the lock so admissions do not wait): held rows wait up to the ledger's MAX_HOLD
        (30 s) for a commit, and DuckDB's commit, which syncs, was what bounded a power cut's loss
        to the writer's 2 s interval at busy gateways (review 39). The reserve lines before them
        are synced with them. At a laptop's pace fewer rows than that come in 30 s: no sync, as
        when the twenty-fifth part began holding them (~0.2 ms of CPU a sync there)."""
        self._keep(rows, self._held)
        self._unsynced += len(rows)  # the ledger's writer thread alone holds and settles
        if self._unsynced >= SYNC_ROWS:
            os.fdatasync(self._fd)
            self._unsynced = 0

    def _keep(self, rows: list[LedgerRow] | list[dict[str, Any]], ids: set[str]) -> None:
        if not rows:
            return
        data = b"".join(map(_row_line, rows))
        with self._lock:
            self._append(data)
            ids.update(map(_row_id, rows))

    def _append(self, data: bytes) -> None:
        """Append `data` whole or not at all (the caller holds the lock). A disk that fills during
        the write takes only part of it without an error: that part is cut off again (a torn line
        would also swallow the next one) and OSError(ENOSPC) raised, so callers act as on any
        failed write (admission: on_store_error; the ledger: commit now)."""
        n = os.write(self._fd, data)
        if n != len(data):
            try:
                os.ftruncate(self._fd, os.fstat(self._fd).st_size - n)
            except OSError as e:
                log.error("reservation journal: cannot cut off a partial write: %s", e)
            raise OSError(errno.ENOSPC, f"the reservation journal took {n} of {len(data)} bytes")
        self._written += n

    @property
    def has_spilled(self) -> bool:
        return bool(self._spilled)

    def take_spilled(self) -> list[dict[str, Any]]:
        """The spilled rows still owed to the ledger (read back from the file), once."""
        with self._lock:
            wanted, self._spilled = self._spilled, set()
        # one per id, as recovery keeps them: a row line written twice must not become two rows
        kept = {r["request_id"]: r for r in self.spilled_rows(self.path) if r.get("request_id") in wanted}
        return list(kept.values())

    @staticmethod
    def spilled_rows(path: Path) -> list[dict[str, Any]]:
        """Every ledger row kept in the journal at `path`, spilled or held (recovery dedups against
        the ledger: a held row may have been committed before its settle line was written)."""
        if not _regular_file(path):
            return []
        out = []
        with path.open("rb") as f:
            for raw in f:
                if b'"op":"row"' not in raw:
                    continue
                try:
                    out.append(json.loads(raw)["row"])
                except (ValueError, KeyError):
                    continue
        return out

    def _compact(self) -> None:
        """Rewrite the file with the reservations still open (a few lines), so it never grows without end."""
        fsutil.write_atomic(self.path, b"".join(self._open.values()))  # mkstemp + os.replace
        os.close(self._fd)
        self._fd = fsutil.open_append(self.path)
        self._written = 0

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass

    @staticmethod
    def open_reservations(path: Path, unreadable: Collection[str] = ()) -> list[OpenReservation]:
        """Reservations never settled (a torn last line from a crash is ignored). A request's kept
        ledger row closes its reservation, unless its id is in `unreadable` (recovery could not
        read that row: the reservation is charged instead)."""
        if not _regular_file(path):
            return []
        open_: dict[str, OpenReservation] = {}
        with path.open("rb") as f:
            for raw in f:
                try:
                    obj = json.loads(raw)
                except ValueError:
                    continue
                if obj.get("op") == "row":  # a kept ledger row: that request is accounted for
                    if obj.get("id") not in unreadable:
                        open_.pop(obj.get("id"), None)
                elif obj.get("op") == "reserve":
                    rid = obj.pop("id")
                    obj.pop("op")
                    open_[rid] = OpenReservation(rid, Decimal(obj.pop("amount")), obj)
                elif obj.get("op") == "settle":
                    for rid in obj.get("ids", []):
                        open_.pop(rid, None)
        return list(open_.values())

    @staticmethod
    def reset(path: Path) -> None:
        path.unlink(missing_ok=True)


def _regular_file(path: Path) -> bool:
    """True for an existing regular file. A device, FIFO or symlink in the journal's place is never
    read (a character device would be an endless read at start-up): OSError says what is there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{path} is not a regular file; move it away (the reservation journal is a plain file)")
    return True
