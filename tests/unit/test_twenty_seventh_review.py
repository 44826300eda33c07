"""Twenty-seventh review: the price overrides' schema stamp (111fa38, spendgate.pricing.rates).

`parse_overrides` used to validate every text against overrides.schema.json; now a stamp (an
empty 0600 file in <cache>/overrides-valid, named by parse_cache.schema_stamp) lets a text that
passed before skip the check, and jsonschema is imported only when no stamp answers. The policy's
stamps (policy-valid) now go through the same schema_stamp.

Everything after the schema check in parse_overrides trusts what the schema guaranteed (a string
date, a known provider, non-negative numeric rates, known rate names): with a stamp of the
account's own for a text the schema refuses, `rates: {input_mtok: -1}` is a price, a typo'd rate
name a silent rate, `!!binary` or `true` a TypeError / InvalidOperation. So a stamp must never
answer for a document that was not the one validated.

Findings (each test's docstring says FINDING; they fail before the fix commit):
- Low: the stamp was named by the text, the schema and jsonschema, but the verdict is about the
  *document*, which yamlcheck and PyYAML make of the text. A spendgate upgrade (or another
  checkout over the same virtualenv) whose reader reads the same text differently found the old
  stamp and skipped the schema for a document never checked (shown: a reader that builds dates
  crashes parse_overrides with a TypeError, where a full check says where the problem is).
- Low, older than the change (fa6a901): a character YAML does not allow (NUL, ESC, DEL; a UTF-16
  file read as UTF-8) made every YAML load raise yaml.ReaderError instead of a positioned problem:
  a traceback at start-up and from `spendgate prices`, an unaudited failed reload, the same for
  the policy and the site config. yaml.SafeLoader(text) checks the characters in its
  constructor, before the `try` that meant to catch exactly this.

Held (tests that pass before and after the fix, and say HELD): the same result, problems, lines
and columns with the cache off, on a first load, on a stamped load and after an edit, over a
corpus of 41 texts; stamps in every folder or file state someone else could arrange are not
believed and folders others could write are not written; the stamp names cannot run into each
other; the policy's stamps are the same function as before; reloads and `spendgate prices` check
edits in full; a stamped gateway start imports no jsonschema.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml

from spendgate import yamlcheck
from spendgate.policy import model, parse_cache
from spendgate.pricing import rates
from tests.unit.test_overrides_stamp import cache, checks  # noqa: F401 - the shared fixtures

REPO = Path(__file__).resolve().parents[2]
GOOD = (REPO / "pricing" / "overrides.yaml").read_text()
H = "version: 1\nmodels:\n"
E = "  - provider: anthropic\n    model: m\n    effective_from: 2026-01-01\n"

PASSING = [
    GOOD,
    "version: 1\n",
    "version: 1\nmodels:\n",
    "version: 1\nmodels: null\n",
    H + E + "    rates: {input_mtok: 1, output_mtok: 5}\n",
    H + E + "    multipliers: {inference_geo: {us: 1.1}}\n",
    H + E + "    variants: {batch: {rates: {input_mtok: 0.5}}}\n",
    H + E + "    tiers: [{above_input_tokens: 1.0, rates: {input_mtok: 1}}]\n",
    H + E + "    rates: {input_mtok: 1}\n    note: \"\\u00e9 \\ud800\"\n",
    H + E.replace("2026-01-01", "'2026-01-01'") + "    rates: {input_mtok: 1}\n",
    (H + E + "    rates: {input_mtok: 1}\n").replace("\n", "\r\n"),
    "\ufeff" + H + E + "    rates: {input_mtok: 1}\n",
    H + "  - &e {provider: anthropic, model: m, effective_from: 2026-01-01, rates: {input_mtok: 1}}\n"
        "  - {<<: *e, model: n}\n",
]
# refused by the schema (the stamp's business) or after it (dates, duplicates, order), or by YAML
FAILING = [
    GOOD.replace("version: 1", "version: 2"),
    "",
    "x",
    "[]",
    H + E + "    rates: {input_mtok: -1}\n",
    H + E + "    rates: {inptu_mtok: 1}\n",
    H + E.replace("2026-01-01", "2026-02-30") + "    rates: {input_mtok: 1}\n",
    H + E.replace("2026-01-01", "'2026-1-1'") + "    rates: {input_mtok: 1}\n",
    H + E.replace("2026-01-01", "\"2026-01-01\\n\"") + "    rates: {input_mtok: 1}\n",
    H + E.replace("2026-01-01", "'\uff12\uff10\uff12\uff16-01-01'") + "    rates: {input_mtok: 1}\n",
    H + E.replace("anthropic", "bedrock") + "    rates: {input_mtok: 1}\n",
    H + E,
    H + E + "    rates: {input_mtok: 1}\n" + E + "    rates: {input_mtok: 2}\n",
    H + E + "    tiers:\n      - {above_input_tokens: 200000, rates: {input_mtok: 2}}\n"
            "      - {above_input_tokens: 100000, rates: {input_mtok: 3}}\n",
    H + E + "    rates: {input_mtok: 1\n",
    H + E + "    rates: {input_mtok: .nan}\n",
    H + E + "    rates: {input_mtok: 1.0e+400}\n",
    H + "  - {provider: anthropic, model: 1.5, effective_from: 2026-02-30, rates: {input_mtok: 1}}\n",
    H + E + "    multipliers: {inference_geo: {us: 0}}\n",
    H + E + "    multipliers: {inference_geo: {us: 1.1, 1: 2}}\n",
    H + E + "    variants: {batch: {}}\n",
    H + E + "    rates: {input_mtok: 1}\n    x: &a [*a]\n",
    H + E + "    rates: {input_mtok: 1}\n    rates: {input_mtok: 2}\n",
    H + "  - !!binary aGVsbG8=\n",
    "version: 1\n? [a]\n: 1\n",
    H + E + "    rates: {input_mtok: true}\n",
    H + E + "    tiers: [{above_input_tokens: 1.5, rates: {input_mtok: 1}}]\n",
    H + E + "    rates: {input_mtok: 1}\n    note: " + "[" * 300 + "]" * 300 + "\n",
]
CORPUS = PASSING + FAILING
NEGATIVE = H + E + "    rates: {input_mtok: -1}\n"




def outcome(text: str) -> tuple[str, str]:
    """What parse_overrides makes of `text`: the overrides, or the exception and its message."""
    try:
        return "ok", repr(rates.parse_overrides(text, "o.yaml"))
    except Exception as e:  # noqa: BLE001 -- a crash is an outcome to compare too
        return type(e).__name__, str(e)


def uncached(text: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    with monkeypatch.context() as m:
        m.setenv("SPENDGATE_CACHE_DIR", "off")
        return outcome(text)


def stamp_of(text: str) -> Path:
    s = parse_cache.schema_stamp(text, rates._SCHEMA_TEXT, "overrides-valid")
    assert s is not None
    return s


# --- every text loads alike: cache off, first load, stamped load, after an edit -----------------


def test_every_text_loads_alike_with_and_without_stamps(cache: Path, checks: list[int], monkeypatch) -> None:
    """HELD. 41 texts (the shipped file; BOM, CRLF, quoted dates, anchors; schema, date, duplicate,
    order and YAML problems; .nan, 1.0e+400, !!binary, non-name keys, deep nesting): the same
    overrides, or the same problems at the same line:col, with SPENDGATE_CACHE_DIR=off (the old
    always-validate path), on a first load, on a stamped second load and after an edit."""
    for text in CORPUS:
        want = uncached(text, monkeypatch)
        assert want[0] in ("ok", "PricingError"), (text, want)
        assert outcome(text) == want, text
        before = len(checks)
        assert outcome(text) == want, text
        if want[0] == "ok":
            assert len(checks) == before, text  # answered by the stamp
        edited = text + "# edited\n" if text.endswith("\n") else text
        assert outcome(edited) == uncached(edited, monkeypatch), edited
    assert 0 < len(list(cache.iterdir())) <= parse_cache._STAMPS_KEEP


def test_only_texts_that_pass_are_stamped_and_off_means_off(cache: Path, checks: list[int], monkeypatch) -> None:
    """HELD. A text refused after the schema (a duplicate entry) is stamped (it passed the schema)
    and still refused on every load; a text the schema refuses is never stamped; with the cache off
    nothing is written and every load is checked in full."""
    dup = FAILING[12]
    for _ in range(2):
        with pytest.raises(rates.PricingError, match="already defined on line 3"):
            rates.parse_overrides(dup)
    assert stamp_of(dup).exists()
    for _ in range(2):
        with pytest.raises(rates.PricingError, match="non-negative"):
            rates.parse_overrides(NEGATIVE)
    assert not stamp_of(NEGATIVE).exists()
    monkeypatch.setenv("SPENDGATE_CACHE_DIR", "off")
    n = len(checks)
    for _ in range(3):
        rates.parse_overrides(GOOD)
    assert len(checks) == n + 3 and parse_cache.schema_stamp(GOOD, rates._SCHEMA_TEXT, "overrides-valid") is None


# --- stamp folders and files someone else could arrange ------------------------------------------


def _plant_all(folder: Path, monkeypatch) -> list[str]:
    """Stamps for every failing text, as if each had passed, in `folder` (0700, ours, 0600 files)."""
    folder.mkdir(parents=True, mode=0o700, exist_ok=True)
    names = []
    for text in FAILING:
        name = stamp_of(text).name
        (folder / name).write_bytes(b"")
        os.chmod(folder / name, 0o600)
        names.append(name)
    return names


def _folder_is_a_file(cache: Path, mp) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_text("")


def _cache_dir_is_a_file(cache: Path, mp) -> None:
    cache.parent.parent.mkdir(parents=True, exist_ok=True)
    cache.parent.write_text("")


def _unwritable(cache: Path, mp) -> None:  # even root cannot make folders in /proc
    mp.setenv("SPENDGATE_CACHE_DIR", "/proc/self/spendgate-cache")


def _symlinked(cache: Path, mp) -> None:
    real = cache.parent.parent / "elsewhere"
    _plant_all(real, mp)
    cache.parent.mkdir(parents=True)
    cache.symlink_to(real)


def _mode(mode: int):
    def arrange(cache: Path, mp) -> None:
        _plant_all(cache, mp)
        os.chmod(cache, mode)
    return arrange


def _folder_of_another_account(cache: Path, mp) -> None:
    _plant_all(cache, mp)
    os.chown(cache, 65534, 65534)


def _stamps_of_another_account(cache: Path, mp) -> None:
    for name in _plant_all(cache, mp):
        os.chown(cache / name, 65534, 65534)


def _stamps_others_can_read(cache: Path, mp) -> None:
    for name in _plant_all(cache, mp):
        os.chmod(cache / name, 0o644)


def _stamps_are_links_to_a_real_stamp(cache: Path, mp) -> None:
    good = stamp_of(GOOD).name
    names = _plant_all(cache, mp)
    (cache / good).write_bytes(b"")
    os.chmod(cache / good, 0o600)
    for name in names:
        (cache / name).unlink()
        (cache / name).symlink_to(cache / good)


def _stamps_are_folders(cache: Path, mp) -> None:
    for name in _plant_all(cache, mp):
        (cache / name).unlink()
        (cache / name).mkdir()


def _stamps_are_fifos(cache: Path, mp) -> None:
    for name in _plant_all(cache, mp):
        (cache / name).unlink()
        os.mkfifo(cache / name, 0o600)


ARRANGEMENTS = {
    "folder-is-a-file": _folder_is_a_file,
    "cache-dir-is-a-file": _cache_dir_is_a_file,
    "unwritable": _unwritable,
    "symlinked-folder": _symlinked,
    "world-writable": _mode(0o777),
    "group-writable": _mode(0o770),
    "sticky-world-writable": _mode(0o1777),
    "folder-of-uid-65534": _folder_of_another_account,
    "stamps-of-uid-65534": _stamps_of_another_account,
    "stamps-0644": _stamps_others_can_read,
    "stamps-symlinked": _stamps_are_links_to_a_real_stamp,
    "stamps-are-folders": _stamps_are_folders,
    "stamps-are-fifos": _stamps_are_fifos,
}


@pytest.mark.parametrize("arrange", list(ARRANGEMENTS), ids=list(ARRANGEMENTS))
def test_stamps_someone_else_could_arrange_are_not_believed(cache: Path, monkeypatch, arrange: str) -> None:
    """HELD. In each state (the folder a file, a link, writable by others, another account's; each
    stamp another account's, readable by others, a link to a genuine stamp, a folder, a FIFO; no
    folder can be made), every failing text still fails exactly as with the cache off, the good
    ones load as with it off, twice, nothing blocks, and nothing is written where others could move
    it about."""
    if os.geteuid() != 0 and "65534" in arrange:
        pytest.skip("planting another account's files needs root")
    want = {t: uncached(t, monkeypatch) for t in CORPUS}
    ARRANGEMENTS[arrange](cache, monkeypatch)
    before = sorted(p.name for p in cache.iterdir()) if cache.is_dir() else None
    for _ in range(2):
        for text in CORPUS:
            assert outcome(text) == want[text], (arrange, text)
    if arrange in ("world-writable", "group-writable", "sticky-world-writable", "symlinked-folder",
                   "folder-of-uid-65534"):
        assert sorted(p.name for p in cache.iterdir()) == before  # no new stamp left there


def test_the_code_after_the_schema_relies_on_it(cache: Path) -> None:
    """HELD (the trust boundary, documented): a stamp of the account's own, private, in its private
    folder, is believed without question -- and parse_overrides then prices what the schema would
    have refused (a negative rate, a typo'd rate name) or crashes on it (TypeError on !!binary,
    decimal.InvalidOperation on `true`). Whoever can write the account's own cache folder could
    as well edit its overrides; everything else must never make a stamp match (tests above and
    below)."""
    _plant_all(cache, None)
    assert rates.parse_overrides(NEGATIVE)[0].prices.rates["input_mtok"].base == -1
    assert "inptu_mtok" in rates.parse_overrides(FAILING[5])[0].prices.rates
    with pytest.raises(TypeError):
        rates.parse_overrides(H + "  - !!binary aGVsbG8=\n")
    with pytest.raises(ArithmeticError):
        rates.parse_overrides(H + E + "    rates: {input_mtok: true}\n")


# --- what a stamp is named by ----------------------------------------------------------------


def test_stamp_names_cannot_run_into_each_other(cache: Path, monkeypatch) -> None:
    """HELD. entry_name hashes extra (the schema), each install ("path\\0size\\0mtime") and the text,
    each followed by "\\0\\0". Neither schema holds a NUL, an install holds single NULs only, and the
    text -- the one part a user writes -- comes last, so no text can shift bytes across a
    boundary. The same text has another name as a policy than as overrides (another schema): a
    policy stamp moved into overrides-valid vouches for nothing."""
    assert "\0" not in rates._SCHEMA_TEXT and "\0" not in model._SCHEMA_TEXT
    s = rates._SCHEMA_TEXT
    assert parse_cache.entry_name("x" + GOOD, extra=s) != parse_cache.entry_name(GOOD, extra=s + "x")
    # the "\0\0" ending is unambiguous only because no part but the text holds a NUL ...
    assert parse_cache.entry_name("\0\0" + GOOD, extra=s) == parse_cache.entry_name(GOOD, extra=s + "\0\0")
    # ... and a text holding one never gets as far as a stamp (YAML refuses it)
    for nul in ("\0\0" + GOOD, GOOD + "\0\0", GOOD.replace("\n", "\0\0", 1)):
        with pytest.raises(Exception):  # noqa: B017 -- a PricingError after the fix, yaml.ReaderError before
            rates.parse_overrides(nul)
    assert not cache.exists()
    text = "version: 1\ntimezone: UTC\n"  # a valid policy; overrides have no `timezone`
    model.parse(text, "p.yaml")
    policy_stamp = model._valid_stamp(text)
    assert policy_stamp is not None and policy_stamp.exists()
    assert policy_stamp.name != stamp_of(text).name
    cache.mkdir(mode=0o700, exist_ok=True)
    shutil.copy(policy_stamp, cache / policy_stamp.name)
    os.chmod(cache / policy_stamp.name, 0o600)
    with pytest.raises(rates.PricingError, match="unknown key 'timezone'"):
        rates.parse_overrides(text)


def test_the_policys_stamps_are_the_same_function(cache: Path, monkeypatch) -> None:
    """HELD. model._valid_stamp is schema_stamp over the policy schema in policy-valid, as before
    111fa38 (which computed the same entry_name inline); a policy that passed is not checked again,
    one that failed is never stamped, an edit is checked in full."""
    from tests.unit.test_policy import GOOD as POLICY

    calls: list[int] = []
    real = model._validator
    monkeypatch.setattr(model, "_validator", lambda: calls.append(1) or real())
    assert model._valid_stamp(POLICY) == parse_cache.schema_stamp(POLICY, model._SCHEMA_TEXT, "policy-valid")
    assert model._valid_stamp(POLICY).parent == cache.parent / "policy-valid"
    today = date(2026, 6, 1)
    model.parse(POLICY, "p.yaml", today)
    model.parse(POLICY, "p.yaml", today)
    assert len(calls) == 1
    model.parse(POLICY + "# edited\n", "p.yaml", today)
    assert len(calls) == 2
    bad = POLICY.replace("day: 150", "day: -3")
    for _ in range(2):
        with pytest.raises(model.PolicyError):
            model.parse(bad, "p.yaml", today)
    assert not model._valid_stamp(bad).exists()


@pytest.mark.parametrize("reader", ["yamlcheck", "yaml"])
def test_a_stamp_does_not_vouch_for_what_another_reader_makes_of_the_text(
    cache: Path, tmp_path: Path, monkeypatch, reader: str
) -> None:
    """FINDING (low). The schema's verdict is about the document yamlcheck and PyYAML make of the
    text, but the stamp was named only by the text, the schema and jsonschema. After an upgrade of
    spendgate (yamlcheck) or PyYAML that reads the same text otherwise -- or another checkout over
    the same virtualenv, sharing ~/.cache/spendgate -- the old stamp still answered, and the code
    after the schema met a document nobody checked. Shown with a reader that builds dates, as YAML
    1.1 does: parse_overrides raised TypeError (a gateway start or reload died with a traceback);
    a full check says where the problem is. The fix names the stamp by the reader too (as the
    parse cache's entries already are)."""
    text = H + E + "    rates: {input_mtok: 3}\n"
    rates.parse_overrides(text, "o.yaml")  # stamped by today's reader
    module = yamlcheck if reader == "yamlcheck" else yaml
    newer = tmp_path / f"newer_{reader}.py"
    newer.write_text(Path(module.__file__).read_text() + "\n# a later release\n")
    monkeypatch.setattr(module, "__file__", str(newer))
    real = rates.load_yaml_with_marks

    def reads_dates(t: str):
        doc, marks, problems = real(t)
        for e in (doc or {}).get("models") or []:
            e["effective_from"] = date.fromisoformat(e["effective_from"])
        return doc, marks, problems

    monkeypatch.setattr(rates, "load_yaml_with_marks", reads_dates)
    with pytest.raises(rates.PricingError, match=r"o\.yaml:5:\d+: .*effective_from"):
        rates.parse_overrides(text, "o.yaml")


# --- characters YAML does not allow ----------------------------------------------------------------


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f", "\x08", "\ufffe"], ids=["NUL", "ESC", "DEL", "BS", "FFFE"])
def test_a_character_yaml_refuses_is_a_positioned_problem(cache: Path, char: str) -> None:
    """FINDING (low, older than 111fa38: fa6a901). A character YAML does not allow anywhere in the
    file -- a comment included -- raised yaml.ReaderError out of parse_overrides, model.parse and
    the site config: yaml.SafeLoader(text) checks the characters in its constructor, outside the
    `try` that was written to catch exactly this. A start said a traceback instead of
    FILE:LINE:COL; a failed reload was logged as a crash, not audited as a rejected edit. Nothing
    is stamped for such a text either way."""
    text = "version: 1\n# note" + char + "\nmodels:\n"
    with pytest.raises(rates.PricingError, match=r"^o\.yaml:2:7: YAML: unacceptable character"):
        rates.parse_overrides(text, "o.yaml")
    with pytest.raises(model.PolicyError, match=r"^p\.yaml:2:7: YAML: unacceptable character"):
        model.parse(text.replace("models:\n", ""), "p.yaml")
    assert not (cache.exists() and list(cache.iterdir()))


def test_a_utf16_overrides_file_is_refused_with_a_problem(tmp_path: Path, cache: Path) -> None:
    """FINDING (low, as above): overrides saved as UTF-16 (PowerShell 5's `>`) are read as UTF-8
    with replacement, so they hold NULs: the gateway's start and `spendgate prices` died with
    yaml.ReaderError instead of saying the file is unreadable YAML."""
    folder = tmp_path / "pricing"
    shutil.copytree(REPO / "pricing", folder)
    (folder / "overrides.yaml").write_bytes(GOOD.encode("utf-16"))
    with pytest.raises(rates.PricingError, match="unacceptable character"):
        rates.Pricer(folder / "overrides.yaml")


# --- reloads, the CLI, and what a stamped start imports -----------------------------------------


@pytest.fixture
def gateway(tmp_path: Path, cache: Path):
    from spendgate.gateway import Gateway, Settings

    folder = tmp_path / "pricing"
    shutil.copytree(REPO / "pricing", folder)
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\ntimezone: UTC\ndefaults: {user: {day: 10}}\n")
    gw = Gateway(Settings(db=tmp_path / "l.duckdb", policy=policy, pricing=folder / "overrides.yaml",
                          user="mallory", admin_port=-1, reload_interval=0))
    try:
        yield gw
    finally:
        gw.close()


def test_reloads_check_every_edit_in_full(gateway, checks: list[int]) -> None:
    """HELD. With the shipped overrides stamped at start, a reload of the same bytes is answered by
    the stamp; an edit the schema refuses is rejected and the last good prices kept, on every
    attempt; going back to the good file needs no check."""
    path = gateway.settings.pricing
    good = path.read_bytes()
    first = gateway.pricer
    assert gateway.reload_pricing(good) and checks == []
    bad = good.decode().replace("version: 1", "version: 1\nmodels_typo: 1", 1).encode()
    for n in (1, 2):
        assert gateway.reload_pricing(bad) is False
        assert len(checks) == n
    assert gateway.pricer.overrides == first.overrides
    assert gateway.reload_pricing(good) and len(checks) == 2


def test_a_reload_with_a_character_yaml_refuses_is_rejected(gateway) -> None:
    """FINDING (low, older than 111fa38): reload_pricing let yaml.ReaderError out (the watcher
    logged a crash and wrote no `pricing_rejected` audit record); now it is a rejected edit."""
    kept = gateway.pricer
    assert gateway.reload_pricing(b"version: 1\n\x7f\n") is False
    assert gateway.pricer is kept


def _cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spendgate", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_spendgate_prices_check_reads_stamped_and_edited_overrides_alike(tmp_path: Path) -> None:
    """HELD. `spendgate prices check` on the same folder twice (the second stamped) says the same;
    after an edit the schema refuses it says the problem with its position, twice."""
    folder = tmp_path / "pricing"
    shutil.copytree(REPO / "pricing", folder)
    env = {**os.environ, "SPENDGATE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    args = ["prices", "check", "--pricing-dir", str(folder), "--db", str(tmp_path / "none.duckdb"), "--json"]
    a, b = _cli(args, env), _cli(args, env)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout
    (folder / "overrides.yaml").write_text(NEGATIVE)
    for _ in range(2):
        r = _cli(args, env)
        assert r.returncode != 0 and "overrides.yaml:6:25: models.0.rates.input_mtok: a rate must be" in r.stderr


def test_a_stamped_gateway_start_imports_no_jsonschema(tmp_path: Path) -> None:
    """HELD (the saving is real): a fresh process that loads the proxy edge (addons/gateway.py)
    and builds the Gateway with the example policy and the shipped overrides imports jsonschema on
    its first start and not on the second; spendgate.deploy.site (the one module that still imports
    it at import time) is not loaded."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1] + '/addons'); from pathlib import Path\n"
        "import gateway as addon\n"
        "from spendgate.gateway import Gateway, Settings\n"
        "r = Path(sys.argv[1]); t = Path(sys.argv[2])\n"
        "g = Gateway(Settings(db=t / sys.argv[3], policy=r / 'policies/example.yaml',"
        " pricing=r / 'pricing/overrides.yaml', admin_port=-1, reload_interval=0))\n"
        "print('jsonschema' in sys.modules, 'spendgate.deploy.site' in sys.modules)\n"
        "g.close()\n"
    )
    env = {**os.environ, "SPENDGATE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    runs = [subprocess.run([sys.executable, "-c", code, str(REPO), str(tmp_path), f"l{i}.duckdb"], env=env,
                           capture_output=True, text=True, timeout=180) for i in range(2)]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr[-2000:] for r in runs]
    assert [r.stdout.split()[-2:] for r in runs] == [["True", "False"], ["False", "False"]]
