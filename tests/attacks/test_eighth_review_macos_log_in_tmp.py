"""Eighth review: the macOS laptop gateway logs to /tmp/spendgate.log.

The LaunchAgent the kit renders (`render.launchd_plist`) sends mitmdump's stdout and stderr to
`/tmp/spendgate.log`: a fixed name in a world-writable directory. launchd opens it as the
engineer, with the agent's default umask (022), before the addon sets umask 077, so the log is
0644: every local account reads the gateway's log (mitmdump's flow lines with every provider URL,
user names, request reasons from the log sink, errors). Another account can also create that
name first (its own file, or a symlink), and the gateway then appends to a file that account owns,
or to any file the engineer may write. docs/security.md promises owner-only state files.
"""

from __future__ import annotations

import os
import plistlib
import stat
import subprocess
import textwrap
from pathlib import Path

from spendgate.deploy import render, site

REPO = Path(__file__).resolve().parents[2]
SHARED_DIRS = ("/tmp/", "/private/tmp/", "/var/tmp/", "/private/var/tmp/", "/Users/Shared/")


def test_the_macos_laptop_gateway_does_not_log_into_a_shared_directory(tmp_path):
    cfg = tmp_path / "site.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        version: 1
        organization: {{name: Test Corp, identifier: com.example}}
        mode: laptop
        policy: {REPO}/policies/example.yaml
        """))
    files = {a.path: a.data for a in render.render(site.load(cfg))}
    plist = plistlib.loads(files["macos/com.example.spendgate.plist"])
    for key in ("StandardErrorPath", "StandardOutPath"):
        path = plist.get(key)
        if path:
            assert not path.startswith(SHARED_DIRS), f"{key} is {path}: a fixed name every local account can read or plant"


def test_the_launch_agent_logs_under_the_users_library_with_mode_0600(tmp_path):
    """The agent's own shell line, run with a stand-in mitmdump: the log lands in
    ~/Library/Logs/spendgate/gateway.log, 0600 in a 0700 directory, whatever the caller's umask."""
    inst = tmp_path / "inst"
    (inst / ".venv" / "bin").mkdir(parents=True)
    fake = inst / ".venv" / "bin" / "mitmdump"
    fake.write_text('#!/bin/sh\necho "started $1 $2"; echo "to stderr" >&2\n')
    fake.chmod(0o755)
    cfg = tmp_path / "site.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        version: 1
        organization: {{name: Test Corp, identifier: com.example}}
        mode: laptop
        policy: {REPO}/policies/example.yaml
        paths: {{macos: {{install: {inst}}}}}
        """))
    files = {a.path: a.data for a in render.render(site.load(cfg))}
    plist = plistlib.loads(files["macos/com.example.spendgate.plist"])
    assert plist["Umask"] == 0o077
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(plist["ProgramArguments"], env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, check=True,
                   timeout=30, preexec_fn=lambda: os.umask(0o022))
    log = home / "Library" / "Logs" / "spendgate" / "gateway.log"
    assert log.read_text().splitlines() == [f"started -s {inst}/addons/gateway.py", "to stderr"]
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and stat.S_IMODE(log.parent.stat().st_mode) == 0o700
