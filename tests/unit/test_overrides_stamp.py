"""Price overrides are checked against their schema once per text (spendgate.pricing.rates, issue 18).

Like the policy's stamps (tests/unit/test_nineteenth_review_cache.py): a start with unchanged
overrides neither imports jsonschema nor validates; a text that fails is never stamped and reports
every problem at its position on every load; a stamp the account does not privately own is not
believed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spendgate.policy import parse_cache
from spendgate.pricing import rates

REPO = Path(__file__).resolve().parents[2]
GOOD = (REPO / "pricing" / "overrides.yaml").read_text()
BAD = "version: 1\nmodels:\n  - provider: anthropic\n    model: x\n    effective_from: 2026-01-01\n    rates: {input_mtok: -1}\n"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SPENDGATE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "overrides-valid"


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every time the schema validator is asked for (a check no stamp answered)."""
    calls: list[int] = []
    real = rates._validator
    monkeypatch.setattr(rates, "_validator", lambda: calls.append(1) or real())
    return calls


def test_unchanged_overrides_are_checked_once_and_read_alike(cache: Path, checks: list[int]) -> None:
    first = rates.parse_overrides(GOOD, "overrides.yaml")
    assert len(checks) == 1 and len(list(cache.iterdir())) == 1
    assert (cache.stat().st_mode & 0o777, next(cache.iterdir()).stat().st_mode & 0o777) == (0o700, 0o600)
    again = rates.parse_overrides(GOOD, "overrides.yaml")
    assert len(checks) == 1 and again == first
    rates.parse_overrides(GOOD.replace("version: 1", "version: 1\n# edited"), "overrides.yaml")
    assert len(checks) == 2  # any edit is another text: checked in full


def test_failing_overrides_are_never_stamped(cache: Path, checks: list[int]) -> None:
    for _ in range(2):
        with pytest.raises(rates.PricingError, match=r"6:\d+: .*non-negative number of USD"):
            rates.parse_overrides(BAD, "overrides.yaml")
    assert len(checks) == 2 and not (cache.exists() and list(cache.iterdir()))


def test_a_stamp_in_a_folder_others_can_write_is_not_believed(cache: Path) -> None:
    stamp = parse_cache.schema_stamp(BAD, rates._SCHEMA_TEXT, "overrides-valid")
    rates.parse_overrides(GOOD, "overrides.yaml")  # the folder exists, 0700, as after any start
    os.chmod(cache, 0o777)
    stamp.write_bytes(b"")
    os.chmod(stamp, 0o600)
    with pytest.raises(rates.PricingError, match="non-negative"):
        rates.parse_overrides(BAD, "overrides.yaml")


def test_a_stamped_start_does_not_import_jsonschema(tmp_path: Path) -> None:
    """What the stamp saves: a fresh process loading the shipped overrides a second time never
    imports jsonschema (~40-100 ms of a start)."""
    code = ("import sys; from spendgate.pricing import rates; from pathlib import Path; "
            "rates.load_overrides(Path(sys.argv[1])); print('jsonschema' in sys.modules)")
    env = {**os.environ, "SPENDGATE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    runs = [subprocess.run([sys.executable, "-c", code, str(REPO / "pricing" / "overrides.yaml")], env=env,
                           capture_output=True, text=True, check=True).stdout.split() for _ in range(2)]
    assert runs == [["True"], ["False"]]
