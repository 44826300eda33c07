"""Ninth review: the Windows kit gives the user's proxy token to every local account.

The eighth review (E4) made the files that carry a machine's proxy password readable by root and
the user alone on macOS and Linux, and kept the password-bearing `HTTPS_PROXY` out of the
world-readable /etc/environment; docs/security.md now says so of "Kit files that carry a
machine's proxy password". Nobody examined windows/install.ps1, which with `identity: proxy_auth`:

* sets every variable of the kit, `HTTPS_PROXY=http://alice%40acme.com:<token>@gw:3128`
  included, at **Machine** scope (`[Environment]::SetEnvironmentVariable(..., 'Machine')`): the
  value lives in HKLM\\SYSTEM\\CurrentControlSet\\Control\\Session Manager\\Environment, which
  every local account reads, and lands in the environment of every process of every user who
  signs in (and of services);
* writes `C:\\ProgramData\\spendgate\\site.json` and `C:\\Program Files\\ClaudeCode\\managed-settings.json`
  with the token and the folders' inherited ACLs (BUILTIN\\Users: read & execute on both).

So on a shared Windows machine (a build box, a lab PC, a terminal server, a second account) any
account spends as alice on her budget, opens her dashboard view, and if she is an approver decides
requests as her (her spendgate token is her approver credential on spendgate.local).

Rendered from a central, proxy_auth site by the real `spendgate.deploy.render`; the PowerShell is
read, not run (no Windows here): the checks name what the script must (not) say.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from spendgate.deploy import ca, render, site

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "@@PROXY_PASSWORD@@"
EVERYONE = ("Users", "Everyone", "Authenticated Users", "*S-1-5-32-545", "*S-1-1-0", "*S-1-5-11")


@pytest.fixture
def script(tmp_path) -> str:
    conf = tmp_path / "ca"
    key, cert = ca.generate("kit test CA")
    ca.write_confdir(conf, key, cert)
    cfg = tmp_path / "site.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        version: 1
        organization: {{name: Test Corp, identifier: com.example}}
        mode: central
        gateway: {{host: gw.corp.example, port: 3128}}
        ca: {{cert: {conf / ca.CERT_FILE}}}
        identity: {{method: proxy_auth}}
        policy: {REPO}/policies/example.yaml
        """))
    files = {a.path: a.data for a in render.render(site.load(cfg))}
    assert PASSWORD in files["windows/site.json"].decode()  # the kit's files do carry the token
    assert PASSWORD in files["claude-code/managed-settings.windows.json"].decode()
    return files["windows/install.ps1"].decode()


def env_vars(ps: str) -> dict[str, str]:
    block = ps.split("$EnvVars = [ordered]@{", 1)[1].split("\n}", 1)[0]
    return dict(re.findall(r"^\s*(\w+) = '([^']*)'", block, re.M))


def test_the_proxy_password_is_not_a_machine_wide_environment_variable(script):
    machine_loop = re.search(r"foreach \(\$kv in \$EnvVars\.GetEnumerator\(\)\) \{(.*?)\n\}", script, re.S)
    if machine_loop is None or "'Machine'" not in machine_loop.group(1):
        return  # the kit's variables are no longer set machine-wide wholesale
    body = machine_loop.group(1)
    if "continue" in body or "'User'" in body:  # the loop keeps some variables out of the Machine scope
        return
    leaked = sorted(k for k, v in env_vars(script).items() if PASSWORD in v)
    assert not leaked, (f"{leaked} carry the user's proxy token and are set at Machine scope: every local "
                        f"account reads them (HKLM Session Manager\\Environment, and every process's environment)")


@pytest.mark.parametrize("target", [r"$Dir\site.json", "$ClaudeSettings"])
def test_files_with_the_proxy_token_are_acl_restricted_to_the_user(script, target):
    writes = [line for line in script.splitlines() if line.startswith("Write-Filled") and line.rstrip().endswith(
        (f'"{target}"', f" {target}"))]
    assert writes, f"the script no longer writes {target}?"
    fn = script.split("function Write-Filled", 1)[1].split("\n}\n", 1)[0]
    after = script.split(writes[0], 1)[1]
    acl_lines = [line for line in (fn + "\n" + after).splitlines() if "icacls" in line and "/inheritance:r" in line
                 and ("$To" in line or target in line)]
    assert acl_lines, (f"{target} carries the user's proxy token and keeps its folder's inherited ACL "
                       f"(BUILTIN\\Users may read it): no `icacls ... /inheritance:r` restricts it to the user")
    for line in acl_lines:
        assert not any(f"{who}:" in line or f"'{who}:" in line for who in EVERYONE), line
