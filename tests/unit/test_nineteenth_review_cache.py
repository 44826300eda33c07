"""Nineteenth review: the policy's parse cache (spendgate.policy.parse_cache).

An entry is believed when it is this account's private regular file; what it holds must also be
the parse of *this* text: an entry of ours moved to another name (a rename or hard link in a cache
folder someone else can write, or that belongs to someone else) must not hand the gateway an older,
more generous policy. Nothing at an entry's name may block a start or the policy watcher.
"""

from __future__ import annotations

import os
import threading
from datetime import date
from pathlib import Path

import pytest

from spendgate import yamlcheck
from spendgate.policy import model, parse_cache
from tests.unit.test_policy import GOOD

TODAY = date(2026, 11, 29)
STRICT = GOOD.replace("until: 2026-01-01", "until: 2027-01-01")  # alice: day 150; no warning (no position needed)
GENEROUS = STRICT.replace("day: 150", "day: 100000")  # the policy before the security team tightened it


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SPENDGATE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "policy-parsed"


def alice_day(text: str) -> object:
    return model.parse(text, "p.yaml", TODAY).user_budgets("alice@acme.com", TODAY)[0]["day"]


def entry_of(cache: Path, text: str) -> Path:
    return parse_cache._cache_entry(cache, text)


def test_an_entry_of_an_older_policy_moved_to_the_current_name_is_not_believed(cache: Path) -> None:
    """Both files are the gateway's own 0600 entries; only the name was changed (what anyone who
    can write the folder can do: a shared SPENDGATE_CACHE_DIR / XDG_CACHE_HOME, or a folder owned
    by the user whose HOME a root-run gateway inherited). The text, not the name, decides."""
    assert alice_day(GENEROUS) == 100000
    assert alice_day(STRICT) == 150
    os.replace(entry_of(cache, GENEROUS), entry_of(cache, STRICT))  # a rollback, file owner and mode unchanged
    assert alice_day(STRICT) == 150


def test_an_entry_hard_linked_to_another_name_is_not_believed(cache: Path) -> None:
    alice_day(GENEROUS)
    alice_day(STRICT)
    strict = entry_of(cache, STRICT)
    strict.unlink()
    os.link(entry_of(cache, GENEROUS), strict)
    assert alice_day(STRICT) == 150


def test_a_fifo_at_the_entry_name_does_not_block_the_load(cache: Path) -> None:
    """open(O_RDONLY) on a FIFO waits for a writer: the gateway's start, or the policy watcher's
    thread (every later reload), would hang before fstat ever saw it is no regular file."""
    alice_day(STRICT)
    entry = entry_of(cache, STRICT)
    entry.unlink()
    os.mkfifo(entry, 0o600)
    done: list[object] = []
    t = threading.Thread(target=lambda: done.append(alice_day(STRICT)), daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # release the blocked reader so the test run itself does not hang
        fd = os.open(entry, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(5)
        pytest.fail("loading the policy blocked on a FIFO at the cache entry's name")
    assert done == [150]


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_a_cache_folder_others_can_write_is_neither_read_nor_written(cache: Path, mode: int, monkeypatch) -> None:
    alice_day(STRICT)
    os.chmod(cache, mode)
    composed: list[str] = []
    real = yamlcheck.load_yaml_with_marks
    monkeypatch.setattr(yamlcheck, "load_yaml_with_marks", lambda text: composed.append(text) or real(text))
    assert alice_day(STRICT) == 150 and len(composed) == 1  # composed: the folder's entries are not believed
    before = sorted(cache.iterdir())
    alice_day(GENEROUS)
    assert sorted(cache.iterdir()) == before  # and nothing new is left there for others to move about


def test_a_symlinked_cache_folder_is_not_used(cache: Path, tmp_path: Path, monkeypatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    alice_day(STRICT)
    cache.rename(elsewhere)
    cache.symlink_to(elsewhere)
    composed: list[str] = []
    real = yamlcheck.load_yaml_with_marks
    monkeypatch.setattr(yamlcheck, "load_yaml_with_marks", lambda text: composed.append(text) or real(text))
    assert alice_day(STRICT) == 150 and len(composed) == 1


def test_positions_served_from_the_cache_are_the_whole_mapping(cache: Path) -> None:
    """A hit's marks are a yamlcheck.Marks: any way of reading them (iterating, len, items, ==,
    dict(...), truth) sees the same positions as a parse, not an empty mapping until `in` or
    `get` happens to be called first (a later check that walks the marks would find nothing)."""
    text = STRICT
    _, ref, _ = yamlcheck.load_yaml_with_marks(text)
    parse_cache.load_yaml_cached(text, cache)
    for read in (dict, len, bool, list, lambda m: list(m.items()), lambda m: list(m.keys()),
                 lambda m: list(m.values()), lambda m: m == ref, lambda m: dict(m.copy())):
        _, marks, _ = parse_cache.load_yaml_cached(text, cache)
        assert isinstance(marks, yamlcheck.LazyMarks)  # served from the cache
        assert read(marks) == read(ref)


# --- the schema stamps beside the parses (policy-valid/, same cache folder) -------------------------

NEGATIVE = STRICT.replace("day: 150", "day: -3")  # the schema refuses a negative budget


def test_a_schema_stamp_someone_else_left_does_not_skip_the_schema_check(cache: Path) -> None:
    """A stamp is an empty file whose existence says "this text passed the schema". One owned by
    another account (or in a folder others can write) must not make the gateway enforce a policy
    the schema refuses; the parse cache's own rule (this account's, private) applies to it too."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("planting a file owned by another account needs root")
    stamp = model._valid_stamp(NEGATIVE)
    assert stamp is not None
    alice_day(STRICT)  # the folders exist, 0700, as after any start
    stamp.write_bytes(b"")
    os.chown(stamp, 65534, 65534)
    with pytest.raises(model.PolicyError, match="non-negative"):
        model.parse(NEGATIVE, "p.yaml", TODAY)


def test_a_schema_stamp_in_a_folder_others_can_write_is_not_believed(cache: Path) -> None:
    alice_day(STRICT)
    stamp = model._valid_stamp(NEGATIVE)
    os.chmod(stamp.parent, 0o777)
    stamp.write_bytes(b"")
    os.chmod(stamp, 0o600)
    with pytest.raises(model.PolicyError, match="non-negative"):
        model.parse(NEGATIVE, "p.yaml", TODAY)


def test_schema_stamps_are_pruned_like_parses(cache: Path) -> None:
    for day in range(40):
        alice_day(STRICT.replace("day: 150", f"day: {1000 + day}"))
    stamps = list((cache.parent / "policy-valid").iterdir())
    assert len(stamps) <= 2 * parse_cache._CACHE_KEEP
