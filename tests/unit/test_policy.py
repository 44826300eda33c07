import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from spendgate.identity import fingerprint, resolve
from spendgate.policy.model import UNATTRIBUTED, PolicyError, load, parse

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
version: 1
timezone: Europe/Berlin
organization: {name: acme, budgets: {month: 100000}, owners: [cfo@acme.com]}
identity: [proxy_auth, api_key, "header:x-spendgate-user", client_ip, local_user]
trusted_proxies: [10.9.0.0/16]
defaults:
  user: {hour: 10, day: 50, week: 200, month: 600}
  key: {day: 100}
  workspace: {month: 5000}
  unattributed: {day: 20}
workspaces:
  platform: {members: [alice@acme.com, "*@platform.acme.com"], budgets: {month: 8000}}
users:
  alice@acme.com: {budgets: {day: 150}, until: 2026-12-31}
  bob@acme.com: {budgets: {day: 5}, until: 2026-01-01}
keys:
  "sha256:3f2a9c1e0b7d": {user: carol@acme.com, budgets: {day: 20}}
client_ips: {"10.1.0.0/16": dave@acme.com}
unpriced: {charge_per_mtok: {input: 15, output: 75}}
on_store_error: fail_closed
"""


def test_example_policy_is_valid():
    policy = load(REPO / "policies" / "example.yaml")
    assert policy.defaults["user"]["day"] == Decimal(50)


def test_exceptions_overlay_defaults_and_expire():
    p = parse(GOOD, "good.yaml", today=date(2026, 11, 29))
    budgets, until = p.user_budgets("alice@acme.com", date(2026, 11, 29))
    assert budgets == {"hour": 10, "day": 150, "week": 200, "month": 600} and until == date(2026, 12, 31)
    after, until = p.user_budgets("alice@acme.com", date(2027, 1, 1))
    assert after["day"] == 50 and until is None
    assert p.user_budgets(UNATTRIBUTED, date(2026, 11, 29))[0] == {"day": 20}
    # bob's exception is already over: a warning, and the defaults apply
    assert any("bob@acme.com expired" in w.message for w in p.warnings)
    assert p.user_budgets("bob@acme.com", date(2026, 11, 29))[0]["day"] == 50


def test_workspace_members_by_name_and_glob():
    p = parse(GOOD, "good.yaml")
    assert p.workspaces_of("alice@acme.com") == ("platform",)
    assert p.workspaces_of("eve@platform.acme.com") == ("platform",)
    assert p.workspaces_of("mallory@acme.com") == ()
    assert p.workspace_budgets("platform") == {"month": 8000}


BAD = """\
version: 1
timezone: Mars/Olympus
defaults:
  user: {hour: -3, day: lots, fortnight: 4}
users:
  alice: {budgets: {day: 5}, workspaces: [nowhere]}
  alice: {budgets: {day: 6}}
keys:
  "sha256:zz": {user: a}
identity: [api_key, magic]
colour: blue
"""


def test_every_problem_has_file_line_col():
    with pytest.raises(PolicyError) as err:
        parse(BAD, "bad.yaml")
    text = str(err.value).splitlines()
    assert "bad.yaml:4:16: budget defaults.user.hour must be a non-negative number of USD, not -3" in text
    assert "bad.yaml:4:25: budget defaults.user.day must be a non-negative number of USD, not 'lots'" in text
    assert "bad.yaml:4:31: unknown key 'fortnight' in defaults.user (known: hour, day, week, month)" in text
    assert "bad.yaml:7:3: duplicate key 'alice'" in text
    assert any(l.startswith("bad.yaml:9:3: malformed key fingerprint 'sha256:zz'") for l in text)
    assert any(l.startswith("bad.yaml:10:21: unknown identity source 'magic'") for l in text)
    assert "bad.yaml:11:1: unknown key 'colour' in top level" in text


def test_semantic_problems():
    text = "version: 1\ntimezone: Mars/Olympus\nusers:\n  a: {workspaces: [nowhere]}\nclient_ips: {banana: x}\n"
    with pytest.raises(PolicyError) as err:
        parse(text, "p.yaml")
    msgs = str(err.value)
    assert "p.yaml:2:11: unknown time zone 'Mars/Olympus'" in msgs
    assert "p.yaml:4:20: a is a member of undefined workspace 'nowhere'" in msgs
    assert "p.yaml:5:14: not a CIDR: 'banana'" in msgs


def test_yaml_syntax_error_is_positioned():
    with pytest.raises(PolicyError) as err:
        parse("version: 1\ndefaults: {user: [1,\n", "s.yaml")
    assert str(err.value).startswith("s.yaml:3:1: YAML syntax")


def test_policy_check_cli_exit_codes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    cli = [sys.executable, "-m", "spendgate.cli", "policy", "check"]
    r = subprocess.run([*cli, str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{bad}:4:16: budget defaults.user.hour" in r.stdout
    r = subprocess.run([*cli, str(REPO / "policies" / "example.yaml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_fingerprint_cli_reads_stdin_only():
    r = subprocess.run(
        [sys.executable, "-m", "spendgate.cli", "fingerprint"], input="sk-ant-secret\n", capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.strip() == fingerprint("sk-ant-secret")
    assert "sk-ant-secret" not in r.stdout


def test_identity_chain_order():
    p = parse(GOOD, "good.yaml")
    h_key = {"x-api-key": "sk-carol"}
    carol_fp = fingerprint("sk-carol")
    policy = parse(GOOD.replace("sha256:3f2a9c1e0b7d", carol_fp), "good.yaml")
    # proxy auth wins over everything
    assert resolve(policy, h_key, proxy_user="pat").user == "pat"
    # then the key map
    i = resolve(policy, h_key)
    assert (i.user, i.source, i.key_fingerprint) == ("carol@acme.com", "api_key", carol_fp)
    # then a listed header
    i = resolve(p, {"x-spendgate-user": "eve@platform.acme.com"}, client_ip="10.9.0.1")  # from a trusted proxy
    assert (i.user, i.source, i.workspaces) == ("eve@platform.acme.com", "header:x-spendgate-user", ("platform",))
    # then the client address
    assert resolve(p, {}, client_ip="10.1.2.3").user == "dave@acme.com"
    # then the local user
    assert resolve(p, {}, client_ip="127.0.0.1", default_user="me").source == "local_user"  # a loopback client
    # nothing answers: unattributed
    only_header = parse("version: 1\nidentity: ['header:x-who']\ntrusted_proxies: [10.9.0.1/32]\n", "h.yaml")
    assert resolve(only_header, {}).user == UNATTRIBUTED


def _many_users(n: int, bad: dict[int, str] | None = None) -> str:
    lines = ["version: 1", "organization: {name: x, budgets: {month: 100}}", "defaults:", "  user: {day: 10}", "users:"]
    for i in range(n):
        lines.append(f"  dev{i}@x.example:")
        lines.append(f"    budgets: {{day: {bad.get(i, '5') if bad else '5'}}}")
        if i % 3 == 0:
            lines.append("    until: 2099-01-01")
    return "\n".join(lines) + "\n"


def test_a_big_policy_is_checked_entry_by_distinct_entry_and_still_names_every_bad_one():
    """Start-up checks one `users` entry per distinct value against the schema; a policy with any
    problem gets the full check, so each bad entry is named at its own line."""
    from spendgate.policy import model

    p = parse(_many_users(300))
    assert len(p.users) == 300 and p.users["dev299@x.example"].budgets == {"day": Decimal(5)}
    assert model._valid_fast(model.load_yaml_with_marks(_many_users(300))[0])
    with pytest.raises(PolicyError) as e:
        parse(_many_users(300, {7: "-1", 250: "lots"}))
    text = str(e.value)
    assert "users.dev7@x.example.budgets.day" in text and "users.dev250@x.example.budgets.day" in text
    assert "<policy>:24:20: budget users.dev7@x.example.budgets.day" in text  # its own line and column
