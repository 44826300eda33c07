"""Eighth review: on macOS the kit makes the user's proxy token readable by every local user.

docs/security.md: "Kit files that carry a machine's proxy password (`site.json`,
`spendgate.env.sh`, Claude Code's `managed-settings.json`) are installed 0640, owned by root and
the user's group". macos/install.sh takes that group from `id -gn USER`, and on macOS a user's
primary group is `staff` (gid 20), which every local account belongs to (the script even falls
back to `staff` by name). So every other account on a shared or lab Mac reads
`/Library/Application Support/spendgate/site.json` and gets alice's spendgate token: they spend
on her budget as her (proxy credentials), see her dashboard, and if she is an approver, decide
requests as her on spendgate.local.

The rendered macos/install.sh (central mode, proxy_auth) is run as root with the kit's paths
under a temporary directory and stand-ins for what only macOS has: `id -gn` answers `staff` as
macOS does, `stat -f` (console user) and `chgrp` (recorded, not applied). Its two writes to
/etc (zshenv, profile) are pointed at the temporary directory.
"""

from __future__ import annotations

import os
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from spendgate.deploy import ca, render, site

REPO = Path(__file__).resolve().parents[2]
SHARED_GROUPS = {"staff", "everyone", "users"}  # macOS: every local account is in staff and everyone

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the install script's group step runs as root")


@pytest.fixture
def kit(tmp_path):
    conf = tmp_path / "ca"
    key, cert = ca.generate("kit test CA")
    ca.write_confdir(conf, key, cert)
    inst = tmp_path / "installed"
    cfg = tmp_path / "site.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        version: 1
        organization: {{name: Test Corp, identifier: com.example}}
        mode: central
        gateway: {{host: gw.corp.example, port: 3128}}
        ca: {{cert: {conf / ca.CERT_FILE}}}
        identity: {{method: proxy_auth}}
        policy: {REPO}/policies/example.yaml
        paths: {{macos: {{dir: {inst}/spendgate, claude_settings: {inst}/managed-settings.json}}}}
        """))
    out = tmp_path / "kit"
    render.write(render.render(site.load(cfg)), out)
    return tmp_path, out, inst


def _stubs(bin_dir: Path, log: Path) -> None:
    bin_dir.mkdir()
    stubs = {
        # macOS: a user's primary group is staff
        "id": f'if [ "$1" = -gn ]; then echo staff; exit 0; fi\nexec /usr/bin/id "$@"\n',
        "stat": 'echo alice\n',  # stat -f%Su /dev/console: the console user
        "chgrp": f'echo "chgrp $*" >> {log}\n',
        # macOS ACLs (chmod +a) recorded; every other chmod is the real one
        "chmod": f'if [ "$1" = +a ]; then echo "acl $3 $2" >> {log}; exit 0; fi\nexec /bin/chmod "$@"\n',
    }
    for name, body in stubs.items():
        p = bin_dir / name
        p.write_text("#!/bin/sh\n" + body)
        p.chmod(0o755)


def test_files_with_the_proxy_token_are_not_readable_by_every_local_user(kit):
    tmp, out, inst = kit
    script = (out / "macos" / "install.sh").read_text()
    assert "for rc in /etc/zshenv /etc/profile; do" in script
    script = script.replace("for rc in /etc/zshenv /etc/profile; do",
                            f"for rc in {tmp}/zshenv {tmp}/profile; do")  # keep the test off the host's /etc
    (out / "macos" / "install-test.sh").write_text(script)
    log = tmp / "chgrp.log"
    log.write_text("")
    _stubs(tmp / "bin", log)
    token = "sgt_AliceSecretToken123"
    env = {**os.environ, "PATH": f"{tmp / 'bin'}:{os.environ['PATH']}", "SPENDGATE_USER": "alice@acme.com",
           "SPENDGATE_PROXY_PASSWORD": token}
    cp = subprocess.run(["sh", str(out / "macos" / "install-test.sh")], capture_output=True, text=True, env=env,
                        timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr

    groups, acls = {}, {}
    for line in log.read_text().splitlines():  # "chgrp GROUP FILE" or "acl FILE ENTRY"
        what, rest = line.split(" ", 1)
        if what == "chgrp":
            group, path = rest.split(" ", 1)
            groups[Path(path).name.removesuffix(".spendgate.tmp")] = group
        else:
            path, entry = rest.split(" ", 1)
            acls[Path(path).name.removesuffix(".spendgate.tmp")] = entry
    secrets = [inst / "spendgate" / "site.json", inst / "spendgate" / "spendgate.env.sh",
               inst / "managed-settings.json"]
    for f in secrets:
        assert token in f.read_text(), f  # these files do carry the token
        mode = stat.S_IMODE(f.stat().st_mode)
        assert not mode & 0o004, f"{f} is world-readable ({mode:o})"
        if mode & 0o040:
            group = groups.get(f.name)
            assert group not in SHARED_GROUPS, (
                f"{f.name} ({mode:o}) is given to group {group!r}: every local account on a Mac reads "
                f"the user's proxy token")
        # ... and the user's own account still reads it (Claude Code and the shell run as alice)
        assert acls.get(f.name) == "user:alice allow read", (f.name, acls)



def test_linux_grants_a_shared_primary_group_nothing(tmp_path):
    """The same on Linux where a user's primary group is shared (`users`, with other members): the
    files go to the user alone by an ACL; a user-private group is still used as is."""
    conf = tmp_path / "ca"
    key, cert = ca.generate("kit test CA")
    ca.write_confdir(conf, key, cert)
    inst = tmp_path / "installed"
    cfg = tmp_path / "site.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        version: 1
        organization: {{name: Test Corp, identifier: com.example}}
        mode: central
        gateway: {{host: gw.corp.example, port: 3128}}
        ca: {{cert: {conf / ca.CERT_FILE}}}
        identity: {{method: proxy_auth}}
        policy: {REPO}/policies/example.yaml
        paths: {{linux: {{dir: {inst}/etc, claude_settings: {inst}/claude.json}}}}
        """))
    out = tmp_path / "kit"
    render.write(render.render(site.load(cfg)), out)
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def run(primary: str, members: str) -> set[str]:
        log.write_text("")
        stubs = {
            "id": f'if [ "$1" = -gn ]; then echo {primary}; exit 0; fi\nexec /usr/bin/id "$@"\n',
            "getent": f'echo "{primary}:x:100:{members}"\n',
            "chgrp": f'echo "chgrp $1" >> {log}\n',
            "setfacl": f'echo "setfacl $2" >> {log}\n',
        }
        for name, body in stubs.items():
            (bin_dir / name).write_text("#!/bin/sh\n" + body)
            (bin_dir / name).chmod(0o755)
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SPENDGATE_USER": "alice",
               "SPENDGATE_PROXY_PASSWORD": "sgt_AliceSecretToken123"}
        cp = subprocess.run(["sh", str(out / "linux" / "install.sh"), "--files-only"], capture_output=True,
                            text=True, env=env, timeout=60)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        for f in (inst / "etc" / "site.json", inst / "etc" / "spendgate.env", inst / "claude.json"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o640, f
        return set(log.read_text().splitlines())

    assert run("users", "bob,carol") == {"setfacl u:alice:r"}  # shared: an ACL for alice, no group
    assert run("alice", "") == {"chgrp alice"}  # her private group
