"""YAML that silently means something else (issue 14, part 4): names read as written, value
errors positioned, and a policy watcher that survives anything."""

from __future__ import annotations

import logging
import threading
from datetime import date
from pathlib import Path

import pytest

from spendgate.deploy.site import SiteError
from spendgate.deploy.site import parse as parse_site
from spendgate.gateway import Gateway, Settings
from spendgate.policy.model import PolicyError, parse
from spendgate.pricing.rates import PricingError, parse_overrides
from spendgate.yamlcheck import load_yaml_with_marks

TODAY = date(2026, 1, 1)


def problems(text: str) -> str:
    with pytest.raises(PolicyError) as e:
        parse("version: 1\n" + text, "p.yaml", today=TODAY)
    return str(e.value)


def test_an_impossible_date_is_a_positioned_problem_not_a_traceback():
    msg = problems("users: {alice@acme.com: {budgets: {day: 150}, until: 2026-02-30}}\n")
    assert msg.startswith("p.yaml:2:54:") and "2026-02-30" in msg and "day is out of range" in msg


def test_an_impossible_date_on_a_key_rule_too():
    msg = problems("keys: {'sha256:aaaaaaaaaaaa': {budgets: {day: 1}, until: 2026-13-01}}\n")
    assert msg.startswith("p.yaml:2:") and "2026-13-01" in msg


@pytest.mark.parametrize("name", ["NO", "no", "on", "Off", "yes", "y", "n", "true", "null", "~", "010", "1_000",
                                  "2026-01-01", "1.5", "0x1F", "1:30", ".inf"])
def test_workspace_and_user_names_are_read_exactly_as_written(name):
    p = parse(f"version: 1\nworkspaces:\n  {name}: {{members: ['*@x.acme.com']}}\n"
              f"users:\n  {name}: {{budgets: {{day: 5}}}}\n", today=TODAY)
    assert list(p.workspaces) == [name] and p.workspaces[name].name == name
    assert list(p.users) == [name]
    assert p.workspaces_of("bob@x.acme.com") == (name,)


def test_the_field_report_workspaces_keep_their_country_codes():
    p = parse("version: 1\nworkspaces: {NO: {members: ['*@no.acme.com']}, SE: {members: ['*@se.acme.com']}}\n",
              today=TODAY)
    assert p.workspaces_of("ola@no.acme.com") == ("NO",)


def test_no_and_quoted_no_are_the_same_name_so_a_duplicate():
    assert "duplicate key 'NO'" in problems("workspaces: {NO: {}, 'NO': {}}\n")


@pytest.mark.parametrize("field,text", [
    ("workspaces: {core: {members: [%s]}}", "on"),
    ("approvals: {organization: {approvers: [%s]}}", "NO"),
    ("keys: {'sha256:aaaaaaaaaaaa': {user: %s}}", "123"),
    ("organization: {owners: [%s]}", "yes"),
    ("sinks: {off: {type: log}}\nalerts: {sinks: [%s]}", "off"),
    ("plans: {p: {price_usd: 20, holders: [%s]}}", "No"),
    ("plans: {p: {price_usd: 20, holders: [{user: %s}]}}", "1e0"),  # not a float in YAML 1.1...
    ("plans: {p: {price_usd: 20, holders: [{user: %s}]}}", "1.0e+3"),  # ...this one is
])
def test_a_name_value_yaml_would_type_is_rejected_with_a_hint_to_quote_it(field, text):
    body = field % text + "\n"
    if text == "1e0":  # YAML 1.1 reads 1e0 as text: nothing to reject
        parse("version: 1\n" + body, today=TODAY)
        return
    msg = problems(body)
    assert msg.startswith(f"p.yaml:{1 + body.count(chr(10))}:") and f'quote it: "{text}"' in msg
    parse("version: 1\n" + field % f'"{text}"' + "\n", today=TODAY)  # quoted, it is accepted


def test_mapping_keys_keep_source_text_in_every_loader():
    doc, marks, probs = load_yaml_with_marks("a:\n  NO: 1\n  2026-01-01: 2\n  010: 3\n  on: [x]\n")
    assert probs == [] and list(doc["a"]) == ["NO", "2026-01-01", "010", "on"]
    assert marks[("a", "NO", "<key>")] == (2, 3)


def test_overrides_model_names_and_dates_are_positioned():
    with pytest.raises(PricingError) as e:
        parse_overrides("version: 1\nmodels:\n  - {provider: anthropic, model: 1.5, effective_from: 2026-02-30,"
                        " rates: {input_mtok: 1}}\n", "o.yaml")
    msg = str(e.value)
    assert "o.yaml:3:" in msg and "2026-02-30" in msg and 'quote it: "1.5"' in msg


def test_site_config_names_are_read_as_written(tmp_path):
    example = Path(__file__).resolve().parents[2] / "mdm" / "site.example.yaml"
    text = example.read_text()
    assert "  name: Example Corp\n" in text
    with pytest.raises(SiteError) as e:
        parse_site(text.replace("  name: Example Corp\n", "  name: off\n"), example)
    assert 'organization.name: YAML reads off as a boolean' in str(e.value) and 'quote it: "off"' in str(e.value)


def test_the_policy_watcher_survives_any_exception_and_loads_the_next_good_edit(tmp_path, caplog):
    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\ndefaults: {user: {day: 10}}\n")
    boom = {"n": 0}
    caplog.set_level(logging.ERROR)
    gw = Gateway(Settings(db=tmp_path / "l.duckdb", policy=p, user="unit", admin_port=-1, reload_interval=0.01))
    try:
        real_apply = gw.plan_charger.apply

        def apply_once_broken(*a, **kw):  # an unexpected bug in one round of the watcher's loop
            boom["n"] += 1
            if boom["n"] == 1:
                raise RuntimeError("unexpected")
            return real_apply(*a, **kw)

        gw.plan_charger.apply = apply_once_broken
        for _ in range(3000):
            if boom["n"] >= 2:
                break
            threading.Event().wait(0.01)
        p.write_text("version: 1\nusers: {u: {until: 2026-02-30}}\n")  # rejected, positioned
        for _ in range(3000):
            if "policy edit rejected" in caplog.text:
                break
            threading.Event().wait(0.01)
        p.write_text("version: 1\nworkspaces: {NO: {members: [unit]}}\n")
        for _ in range(3000):
            if "NO" in gw.policy.workspaces:
                break
            threading.Event().wait(0.01)
        assert list(gw.policy.workspaces) == ["NO"]
        assert "periodic task of" in caplog.text and "2026-02-30" in caplog.text
    finally:
        gw.close()


@pytest.mark.parametrize("text,where", [
    ('keys: {"sha256:aaaaaaaaaaaa": {until: "2026-13-01"}}', "keys.sha256:aaaaaaaaaaaa.until"),
    ('plans: {p: {price_usd: 20, from: "2026-02-30", holders: [a]}}', "plans.p.from"),
    ('plans: {p: {price_usd: 20, holders: [{user: a, until: "2026-02-30"}]}}', "plans.p.holders.0"),
    ('users: {a: {until: "2026-02-30"}}', "users.a.until"),
])
def test_quoted_impossible_dates_are_positioned_problems_too(text, where):
    msg = problems(text + "\n")
    assert msg.startswith("p.yaml:2:") and where in msg and "Traceback" not in msg


def test_policy_check_cli_prints_positions_not_a_traceback(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "p.yaml"
    bad.write_text("version: 1\nusers: {alice@acme.com: {budgets: {day: 150}, until: 2026-02-30}}\n"
                   "workspaces: {core: {members: [on]}}\n")
    cp = subprocess.run([sys.executable, "-m", "spendgate.cli", "policy", "check", str(bad)], capture_output=True,
                        text=True, timeout=120)
    out = cp.stdout + cp.stderr
    assert cp.returncode == 1 and "Traceback" not in out
    assert f"{bad}:2:54:" in out and f"{bad}:3:31:" in out and 'quote it: "on"' in out
