"""The policy's parse cache (spendgate.policy.parse_cache): a restart with an unchanged
policy reads its parse back instead of composing the YAML (issue 18: start-up with a 10,000-user
policy), with the same policy, the same warnings at the same positions, and nothing believed
that a local user other than the gateway's account could have written."""

from __future__ import annotations

import json
import logging
import os
from datetime import date
from pathlib import Path

import pytest

from spendgate import yamlcheck
from spendgate.policy import model, parse_cache
from tests.unit.test_policy import GOOD

TODAY = date(2026, 11, 29)  # bob's exception in GOOD has ended: a warning with a position


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SPENDGATE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "policy-parsed"


@pytest.fixture
def composed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every time YAML text is actually composed (a cache miss, or positions looked up)."""
    calls: list[str] = []
    real = yamlcheck.load_yaml_with_marks

    def counting(text: str):
        calls.append(text)
        return real(text)

    monkeypatch.setattr(yamlcheck, "load_yaml_with_marks", counting)
    return calls


def entries(cache: Path) -> list[Path]:
    return sorted(cache.iterdir()) if cache.exists() else []


def test_a_restart_reads_the_parse_back_with_the_same_policy_and_warning_positions(cache, composed) -> None:
    first = model.parse(GOOD, "good.yaml", TODAY)
    assert len(composed) == 1 and len(entries(cache)) == 1
    assert entries(cache)[0].stat().st_mode & 0o777 == 0o600 and cache.stat().st_mode & 0o777 == 0o700
    again = model.parse(GOOD, "good.yaml", TODAY)
    assert again == first
    # the expired exception's warning needs its position: composed then, and only for that
    assert [w.render("good.yaml") for w in again.warnings] == [w.render("good.yaml") for w in first.warnings]
    assert any("bob@acme.com expired" in w.message for w in again.warnings)


def test_a_clean_policy_without_warnings_is_never_composed_on_restart(cache, composed) -> None:
    text = GOOD.replace("until: 2026-01-01", "until: 2027-01-01")  # bob's exception still runs
    first = model.parse(text, "p.yaml", TODAY)
    assert not first.warnings and len(composed) == 1
    assert model.parse(text, "p.yaml", TODAY) == first
    assert len(composed) == 1  # read back, positions never needed


def test_problems_are_reported_every_time_at_their_positions(cache, composed) -> None:
    """The cache holds what YAML made of the text; every check runs on every load, so a policy the
    schema refuses is refused each time, at the same position (composed again for it)."""
    bad = GOOD.replace("day: 150", "day: -3")
    said = []
    for _ in range(2):
        with pytest.raises(model.PolicyError, match=r"bad.yaml:\d+:\d+: .*users") as e:
            model.parse(bad, "bad.yaml", TODAY)
        said.append(str(e.value))
    assert said[0] == said[1] and len(composed) == 2
    before = entries(cache)
    duplicate = GOOD + "version: 1\n"  # a problem YAML itself finds: never cached
    for _ in range(2):
        with pytest.raises(model.PolicyError, match="duplicate key 'version'"):
            model.parse(duplicate, "dup.yaml", TODAY)
    assert entries(cache) == before and len(composed) == 4


def test_an_edit_misses_the_cache(cache, composed) -> None:
    model.parse(GOOD, "p.yaml", TODAY)
    edited = model.parse(GOOD.replace("day: 150", "day: 151"), "p.yaml", TODAY)
    assert len(composed) == 2 and len(entries(cache)) == 2
    assert edited.user_budgets("alice@acme.com", TODAY)[0]["day"] == 151


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_an_entry_others_could_have_written_is_not_believed(cache, composed, mode, caplog) -> None:
    """Whoever can write an entry could rewrite the policy the gateway enforces: one readable or
    writable by anyone but the owner is ignored, and the policy's own text decides."""
    model.parse(GOOD, "p.yaml", TODAY)
    (entry,) = entries(cache)
    saved = json.loads(entry.read_text())
    saved["doc"]["users"]["alice@acme.com"]["budgets"]["day"] = 1_000_000  # a planted budget
    entry.write_text(json.dumps(saved))
    os.chmod(entry, mode)
    with caplog.at_level(logging.WARNING, "spendgate.policy.parse_cache"):
        p = model.parse(GOOD, "p.yaml", TODAY)
    assert p.user_budgets("alice@acme.com", TODAY)[0]["day"] == 150
    assert "not this account's private file" in caplog.text


def test_a_symlinked_entry_is_not_followed(cache, composed, tmp_path) -> None:
    model.parse(GOOD, "p.yaml", TODAY)
    (entry,) = entries(cache)
    planted = tmp_path / "planted.json"
    saved = json.loads(entry.read_text())
    saved["doc"]["users"]["alice@acme.com"]["budgets"]["day"] = 1_000_000
    planted.write_text(json.dumps(saved))
    os.chmod(planted, 0o600)
    entry.unlink()
    entry.symlink_to(planted)
    assert model.parse(GOOD, "p.yaml", TODAY).user_budgets("alice@acme.com", TODAY)[0]["day"] == 150


@pytest.mark.parametrize("garbage", [b"", b"{not json", b'{"doc": [], "texts": []}', b'{"doc": {}}',
                                     b'{"doc": {}, "texts": [[["a"], 5]]}', b"\xff\xfe"])
def test_a_garbled_entry_is_a_miss(cache, composed, garbage) -> None:
    expected = model.parse(GOOD, "p.yaml", TODAY)
    (entry,) = entries(cache)
    entry.write_bytes(garbage)
    assert model.parse(GOOD, "p.yaml", TODAY) == expected


def test_an_unwritable_cache_is_no_error(tmp_path, monkeypatch, composed) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SPENDGATE_CACHE_DIR", str(blocker))  # a file where the folder would be: a full disk alike
    first = model.parse(GOOD, "p.yaml", TODAY)
    assert model.parse(GOOD, "p.yaml", TODAY) == first and len(composed) >= 2


def test_off_turns_it_off_and_old_entries_are_pruned(cache, composed, monkeypatch) -> None:
    for day in range(12):
        model.parse(GOOD.replace("day: 150", f"day: {200 + day}"), "p.yaml", TODAY)
    assert len(entries(cache)) == parse_cache._CACHE_KEEP
    monkeypatch.setenv("SPENDGATE_CACHE_DIR", "off")
    before = len(composed)
    model.parse(GOOD, "p.yaml", TODAY)
    model.parse(GOOD, "p.yaml", TODAY)
    assert len(composed) == before + 2


def test_values_json_cannot_hold_exactly_are_not_cached(cache) -> None:
    """A !!binary value is bytes: no JSON for it, so no entry (the schema decides whether it is allowed)."""
    doc, _, problems = parse_cache.load_yaml_cached("a: !!binary aGVsbG8=\n", cache)
    assert doc == {"a": b"hello"} and not problems and entries(cache) == []
    doc, _, _ = parse_cache.load_yaml_cached("a: !!set {x, y}\nb: 2026-01-02\n", cache)
    assert entries(cache) and parse_cache.load_yaml_cached("a: !!set {x, y}\nb: 2026-01-02\n", cache)[0] == doc


def test_a_schema_stamp_names_the_code_that_decides_the_verdict(cache, tmp_path, monkeypatch) -> None:
    """The policy's verdict also rests on model._valid_fast, the overrides' on rates.py: a change
    to either (an upgrade) misses every stamp, as a schema or jsonschema change does."""
    from spendgate.pricing import rates

    assert set(parse_cache._DECIDERS) == {str(Path(model.__file__).resolve()), str(Path(rates.__file__).resolve())}
    decider = tmp_path / "model.py"
    decider.write_text("# spendgate's reader\n")
    monkeypatch.setattr(parse_cache, "_DECIDERS", (str(decider),))
    first = model._valid_stamp(GOOD)
    assert first is not None and model._valid_stamp(GOOD) == first
    os.utime(decider, ns=(1, 1))
    assert model._valid_stamp(GOOD) not in (None, first)
