"""The MDM kit renderer, site validation, PAC (evaluated by Node), CA files and access rules."""

from __future__ import annotations

import json
import os
import plistlib
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography import x509

from spendgate import access
from spendgate.cli import main
from spendgate.deploy import ca, pac, render, site
from spendgate.identity import Identity
from spendgate.metering.providers import PROVIDER_HOSTS

REPO = Path(__file__).resolve().parents[2]
NODE = pac.node_binary()
# skipped only off CI: on CI scripts/test installs node, so a missing one is a failure, not a skip
needs_node = pytest.mark.skipif(NODE is None and not os.environ.get("CI"), reason="node is not installed")


@pytest.fixture(scope="module")
def ca_cert(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ca")
    key, cert = ca.generate("kit test CA")
    ca.write_confdir(d / "conf", key, cert)
    return d / "conf" / ca.CERT_FILE


def write_site(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(textwrap.dedent(body))
    return p


def central(tmp_path: Path, ca_cert: Path, extra: str = "", identity: str = "proxy_auth") -> Path:
    return write_site(tmp_path, f"""\
        version: 1
        organization: {{name: Test Corp, identifier: com.example}}
        mode: central
        gateway: {{host: gw.corp.example, port: 3128, pac_url: http://wpad.corp.example/p.pac}}
        ca: {{cert: {ca_cert}}}
        identity: {{method: {identity}}}
        providers: {{extra_hosts: ["*.githubcopilot.com"]}}
        policy: {REPO}/policies/example.yaml
        {extra}""")


def laptop(tmp_path: Path, extra: str = "") -> Path:
    return write_site(tmp_path, f"""\
        version: 1
        organization: {{name: Test Corp, identifier: com.example}}
        mode: laptop
        policy: {REPO}/policies/example.yaml
        {extra}""")


def artifacts(s: site.Site) -> dict[str, bytes]:
    return {a.path: a.data for a in render.render(s)}


# --- site validation ---------------------------------------------------------------------------

def test_example_site_config_validates_once_a_ca_is_there(tmp_path, ca_cert):
    text = (REPO / "mdm" / "site.example.yaml").read_text()
    text = text.replace("cert: ca/mitmproxy-ca-cert.pem", f"cert: {ca_cert}")
    text = text.replace("policy: ../policies/example.yaml", f"policy: {REPO}/policies/example.yaml")
    s = site.parse(text, tmp_path / "site.yaml")
    assert s.mode == "central" and s.port == 8080 and s.hosts[:3] == tuple(PROVIDER_HOSTS)[:3]


@pytest.mark.parametrize("body, line, needle", [
    ("version: 1\norganization: {name: X, identifier: com.x}\nmode: central\ncolour: blue\n", 4, "unknown key 'colour'"),
    ("version: 1\norganization: {name: X, identifier: com.x}\nmode: laptop\ngateway:\n  host: 10.0.0.5\n", 5,
     "laptop mode listens on 127.0.0.1"),
    ("version: 1\norganization: {name: X, identifier: com.x}\nmode: sideways\n", 3, "mode"),
    ("version: 1\norganization: {name: X, identifier: com.x}\nmode: central\ngateway: {host: g}\n"
     "identity:\n  method: local_user\n", 6, "local_user names the gateway's own account"),
    ("version: 1\norganization: {name: X, identifier: com.x}\nmode: central\ngateway:\n  host: g\n"
     "  replicas: ['a:1', 'b:1']\n", 6, "several replicas need gateway.store"),
    ("version: 1\norganization: {name: X, identifier: com.x}\nmode: laptop\ngateway:\n"
     "  replicas: ['a:1', 'b:1']\n  store: postgresql://s@db/s\n", 5, "replicas are for central mode"),
    ("version: 1\norganization: {name: X, identifier: com.x}\nmode: central\ngateway:\n  host: g\n"
     "  store: postgresql://s@db/s\n  replicas: ['a:1', 'a:1']\n", 7, "replicas"),
    # the laptops' token must never cross the network in clear text (R7): the centre is https
    ("version: 1\norganization: {name: X, identifier: com.x}\nmode: laptop\ngateway:\n"
     "  central: http://spendgate.local\n", 5, "central"),
])
def test_site_problems_are_positioned(tmp_path, body, line, needle):
    with pytest.raises(site.SiteError) as e:
        site.parse(body, tmp_path / "s.yaml")
    assert any(p.line == line and needle in p.message for p in e.value.problems), str(e.value)
    assert f"s.yaml:{line}:" in str(e.value)


def test_identity_method_must_be_in_the_policy_chain(tmp_path, ca_cert):
    with pytest.raises(site.SiteError) as e:
        site.load(central(tmp_path, ca_cert, identity="header"))
    assert "lacks header:x-spendgate-user" in str(e.value) and ":6:" in str(e.value)


def test_a_private_key_is_refused_as_ca_cert(tmp_path, ca_cert):
    key_file = ca_cert.with_name(ca.KEY_FILE)
    with pytest.raises(site.SiteError, match="contains a private key"):
        site.load(central(tmp_path, key_file))


def test_laptop_mode_makes_its_own_ca(tmp_path, ca_cert):
    with pytest.raises(site.SiteError, match="creates a CA on each machine"):
        site.load(laptop(tmp_path, f"ca: {{cert: {ca_cert}}}"))


def test_cli_validate_reports_file_line_col(tmp_path, capsys):
    p = write_site(tmp_path, "version: 1\norganization: {name: X, identifier: com.x}\nmode: central\nbogus: 1\n")
    assert main(["mdm", "validate", "--config", str(p)]) == 1
    assert f"{p}:4:1: unknown key 'bogus'" in capsys.readouterr().err


# --- PAC -----------------------------------------------------------------------------------------

@needs_node
def test_pac_sends_provider_hosts_to_the_gateway_and_the_rest_direct(tmp_path, ca_cert):
    s = site.load(central(tmp_path, ca_cert))
    text = artifacts(s)["proxy.pac"].decode()
    providers = [f"https://{h}/v1/messages" for h in PROVIDER_HOSTS]
    others = ["https://example.com/", "https://github.com/x", "https://anthropic.com.evil.example/",
              "https://api.anthropic.com.evil.example/", "http://intranet/", "https://docs.anthropic.com/"]
    odd = ["https://API.Anthropic.COM./v1/messages", "https://api.individual.githubcopilot.com/chat/completions"]
    got = pac.evaluate(text, [*providers, *others, *odd])
    assert {u: got[u] for u in providers + odd} == {u: "PROXY gw.corp.example:3128" for u in providers + odd}
    assert {u: got[u] for u in others} == {u: "DIRECT" for u in others}


@needs_node
def test_pac_without_chatgpt_leaves_chatgpt_direct(tmp_path, ca_cert):
    p = central(tmp_path, ca_cert)
    p.write_text(p.read_text().replace('providers: {extra_hosts: ["*.githubcopilot.com"]}',
                                       "providers: {include_chatgpt: false}"))
    got = pac.evaluate(artifacts(site.load(p))["proxy.pac"].decode(),
                       ["https://chatgpt.com/backend-api/codex/responses", "https://api.openai.com/v1/responses"])
    assert got == {"https://chatgpt.com/backend-api/codex/responses": "DIRECT",
                   "https://api.openai.com/v1/responses": "PROXY gw.corp.example:3128"}


@needs_node
@needs_node
def test_pac_sends_everything_the_gateway_serves_or_counts_to_it(tmp_path, ca_cert):
    """The dashboard, whoami, Cursor and the policy's opaque_hosts: DIRECT, the gateway never sees them."""
    policy = tmp_path / "policy.yaml"
    policy.write_text((REPO / "policies" / "example.yaml").read_text()
                      + '\nopaque_hosts: ["*.windsurf.example", "codeium.example"]\n')
    p = central(tmp_path, ca_cert)
    p.write_text(p.read_text().replace(f"{REPO}/policies/example.yaml", str(policy)))
    s = site.load(p)
    text = artifacts(s)["proxy.pac"].decode()
    served = ["http://spendgate.local/", "http://SPENDGATE.LOCAL./api/overview", "http://whoami.spendgate.invalid/"]
    counted = ["https://api2.cursor.sh/aiserver.v1.ChatService/StreamUnified", "https://cursor.sh/",
               "https://repo42.cursor.sh/", "https://server.windsurf.example/", "https://codeium.example/"]
    others = ["https://cursor.sh.evil.example/", "https://notcursor.sh/", "https://windsurf.example.org/",
              "https://spendgate.local.evil.example/"]
    got = pac.evaluate(text, [*served, *counted, *others])
    assert {u: got[u] for u in served + counted} == {u: "PROXY gw.corp.example:3128" for u in served + counted}
    assert {u: got[u] for u in others} == {u: "DIRECT" for u in others}
    # site.json tells doctor the same hosts, and every one of them evaluates to the gateway
    doc = json.loads(artifacts(s)["linux/site.json"])
    routed = pac.routed_hosts(doc)
    assert {"spendgate.local", pac.WHOAMI_HOST, "api2.cursor.sh", "api2.windsurf.example", "codeium.example",
            "cursor.sh", "api.anthropic.com"} <= set(routed)
    got = pac.evaluate(text, [f"https://{h}/" for h in routed])
    assert set(got.values()) == {"PROXY gw.corp.example:3128"}


@needs_node
def test_pac_routes_a_renamed_dashboard_host_and_the_gateway_serves_it(tmp_path, ca_cert):
    p = central(tmp_path, ca_cert)
    p.write_text(p.read_text().replace("pac_url: http://wpad.corp.example/p.pac",
                                       "pac_url: http://wpad.corp.example/p.pac, dashboard_host: spend.corp.example"))
    kit = artifacts(site.load(p))
    got = pac.evaluate(kit["proxy.pac"].decode(), ["http://spend.corp.example/", "http://spendgate.local/"])
    assert got["http://spend.corp.example/"] == "PROXY gw.corp.example:3128"
    assert b"spendgate_dashboard_host=spend.corp.example" in kit["central/gateway.env"]


def test_a_broken_pac_is_reported():
    with pytest.raises(pac.PacError, match="does not evaluate"):
        pac.evaluate("function FindProxyForURL(url, host) { return nope(); }", ["https://x.example/"])


# --- macOS, Claude Code, env, scripts ------------------------------------------------------------

def test_mobileconfig_trusts_the_ca_and_sets_the_pac(tmp_path, ca_cert):
    s = site.load(central(tmp_path, ca_cert))
    profile = plistlib.loads(artifacts(s)["macos/spendgate.mobileconfig"])
    assert profile["PayloadType"] == "Configuration" and profile["PayloadScope"] == "System"
    root, proxy = profile["PayloadContent"]
    assert root["PayloadType"] == "com.apple.security.root"
    assert x509.load_der_x509_certificate(root["PayloadContent"]) == x509.load_pem_x509_certificate(ca_cert.read_bytes())
    assert proxy["PayloadType"] == "com.apple.proxy.http.global"
    assert (proxy["ProxyType"], proxy["ProxyPACURL"], proxy["ProxyPACFallbackAllowed"]) == \
        ("Auto", "http://wpad.corp.example/p.pac", False)
    uuids = [profile["PayloadUUID"], root["PayloadUUID"], proxy["PayloadUUID"]]
    assert len(set(uuids)) == 3
    again = plistlib.loads(artifacts(site.load(central(tmp_path, ca_cert)))["macos/spendgate.mobileconfig"])
    assert again["PayloadUUID"] == profile["PayloadUUID"]  # re-rendering updates the same profile


def test_laptop_mode_renders_services_bound_to_loopback(tmp_path):
    s = site.load(laptop(tmp_path))
    files = artifacts(s)
    assert "ca/spendgate-ca.pem" not in files and "central/spendgate-gateway.service" not in files
    agent = plistlib.loads(files["macos/com.example.spendgate.plist"])
    assert agent["Label"] == "com.example.spendgate" and agent["KeepAlive"] is True
    script = agent["ProgramArguments"][2]
    assert "'--listen-host' '127.0.0.1' '-p' '18080'" in script
    assert "/usr/local/spendgate/.venv/bin/mitmdump" in script and "$HOME/Library/Application Support" in script
    profile = plistlib.loads(files["macos/spendgate.mobileconfig"])
    assert [p["PayloadType"] for p in profile["PayloadContent"]] == ["com.apple.proxy.http.global"]
    assert (profile["PayloadContent"][0]["ProxyServer"], profile["PayloadContent"][0]["ProxyServerPort"]) == \
        ("127.0.0.1", 18080)
    unit = files["linux/spendgate.service"].decode()
    # runs as the system user spendgate (issue 13), charging the machine's user
    assert "User=spendgate" in unit and "spendgate_user=@@USER@@" in unit and "--listen-host 127.0.0.1 -p 18080" in unit
    assert "StateDirectoryMode=0700" in unit
    assert "spendgate_allow_clients=127.0.0.1/32,::1/128" in unit
    task = files["windows/spendgate-task.xml"].decode()
    assert "mitmdump.exe" in task and "<LogonTrigger>" in task
    import xml.dom.minidom
    xml.dom.minidom.parseString(task)
    settings = json.loads(files["claude-code/managed-settings.linux.json"])
    assert settings["env"]["HTTPS_PROXY"] == "http://127.0.0.1:18080"


@pytest.mark.parametrize("os_name, ca_path", [
    ("linux", "/etc/spendgate/spendgate-ca.pem"),
    ("macos", "/Library/Application Support/spendgate/spendgate-ca.pem"),
    ("windows", r"C:\ProgramData\spendgate\spendgate-ca.pem"),
])
def test_claude_code_managed_settings(tmp_path, ca_cert, os_name, ca_path):
    # issue 13: the kit used to name the user in a header the client sets (ANTHROPIC_CUSTOM_HEADERS);
    # it now puts the user's proxy token in the proxy URL, and refuses the header method
    p = central(tmp_path, ca_cert)
    p.write_text(p.read_text().replace(f"policy: {REPO}/policies/example.yaml\n", ""))
    env = json.loads(artifacts(site.load(p))[f"claude-code/managed-settings.{os_name}.json"])["env"]
    assert env == {
        "HTTPS_PROXY": "http://@@USER@@:@@PROXY_PASSWORD@@@gw.corp.example:3128",
        "NO_PROXY": "localhost,127.0.0.1,::1",
        "NODE_EXTRA_CA_CERTS": ca_path,
    }
    with pytest.raises(site.SiteError, match="a header is set by the client itself"):
        site.load(central(tmp_path, ca_cert, identity="header"))


def test_agent_env_covers_every_client(tmp_path, ca_cert):
    s = site.load(central(tmp_path, ca_cert))
    env = render.agent_env(s, "linux")
    assert env["HTTPS_PROXY"] == "http://@@USER@@:@@PROXY_PASSWORD@@@gw.corp.example:3128"
    assert env["NODE_EXTRA_CA_CERTS"] == "/etc/spendgate/spendgate-ca.pem"
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CODEX_CA_CERTIFICATE"):
        assert env[var] == "/etc/spendgate/spendgate-ca-bundle.pem"
    files = artifacts(s)
    bundle = ca.pem_sha256(files["ca/spendgate-ca-bundle.pem"])
    assert ca.pem_sha256(ca_cert.read_bytes())[0] in bundle and len(bundle) > 50  # public roots kept
    assert files["linux/spendgate.env"].decode().splitlines()[0] == \
        'HTTPS_PROXY="http://@@USER@@:@@PROXY_PASSWORD@@@gw.corp.example:3128"'


def test_rendered_scripts_are_complete_and_parse(tmp_path, ca_cert):
    for s in (site.load(central(tmp_path, ca_cert)), site.load(laptop(tmp_path))):
        out = tmp_path / s.mode
        render.write(render.render(s), out)
        for f in out.rglob("*"):
            if f.is_file() and f.suffix not in (".pem",):
                assert b"{{" not in f.read_bytes(), f"unfilled placeholder in {f}"
        for script in ("linux/install.sh", "macos/install.sh"):
            assert os.access(out / script, os.X_OK)
            cp = subprocess.run(["sh", "-n", str(out / script)], capture_output=True, text=True)
            assert cp.returncode == 0, cp.stderr
        ps = (out / "windows" / "install.ps1").read_text()
        assert f"$Mode = '{s.mode}'" in ps and "Import-Certificate" in ps
        if shutil.which("pwsh"):
            cp = subprocess.run(["pwsh", "-NoProfile", "-Command",
                                 f"$null = [ScriptBlock]::Create((Get-Content -Raw '{out}/windows/install.ps1'))"],
                                capture_output=True, text=True)
            assert cp.returncode == 0, cp.stderr
    unit = (tmp_path / "central" / "central" / "spendgate-gateway.service").read_text()
    assert "spendgate_allow_clients=${SPENDGATE_ALLOW_CLIENTS}" in unit
    assert "spendgate_store=${SPENDGATE_STORE}" in unit
    assert "\nSPENDGATE_STORE=\n" in (tmp_path / "central" / "central" / "gateway.env").read_text()  # alone
    assert "proxyauth=@/etc/spendgate/htpasswd" in (tmp_path / "central" / "central" / "gateway.env").read_text()


def test_fill_quotes_and_refuses_unknown_placeholders():
    assert render.fill("a={{v|sh}} b={{v|ps}} c={{v|xml}}", {"v": "it's <x>"}) == \
        "a='it'\"'\"'s <x>' b='it''s <x>' c=it's &lt;x&gt;"
    with pytest.raises(KeyError, match="nope"):
        render.fill("{{nope}}", {})


# --- CA ----------------------------------------------------------------------------------------

def test_ca_init_writes_mitmproxy_confdir_with_a_private_key(tmp_path, capsys):
    conf = tmp_path / "conf"
    assert main(["ca", "init", "--confdir", str(conf), "--cn", "ACME gateway CA", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert stat.S_IMODE((conf / ca.KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(conf.stat().st_mode) == 0o700
    assert stat.S_IMODE((conf / ca.CERT_FILE).stat().st_mode) == 0o644
    assert b"PRIVATE KEY" not in (conf / ca.CERT_FILE).read_bytes()
    cert = x509.load_pem_x509_certificate((conf / ca.CERT_FILE).read_bytes())
    assert shown["sha256"] == ca.sha256_fingerprint(cert) and shown["key_mode"] == "0600"
    assert "ACME gateway CA" in shown["subject"]
    # mitmproxy loads it as its own CA and signs leaves with it
    from mitmproxy.certs import CertStore
    store = CertStore.from_store(conf, "mitmproxy", 2048)
    leaf = store.get_cert("api.anthropic.com", [])
    assert leaf.cert.to_cryptography().issuer == cert.subject
    # a second init does not silently replace the CA clients trust
    assert main(["ca", "init", "--confdir", str(conf)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["ca", "show", "--confdir", str(conf), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == shown["sha256"]


def test_ca_show_flags_a_readable_key(tmp_path, capsys):
    conf = tmp_path / "conf"
    ca.write_confdir(conf, *ca.generate())
    (conf / ca.KEY_FILE).chmod(0o644)
    assert main(["ca", "show", "--confdir", str(conf)]) == 1
    assert "chmod 600" in capsys.readouterr().err


def test_ca_import_checks_what_it_gets(tmp_path):
    key, cert = ca.generate()
    other_key, _ = ca.generate()
    both = ca.pem(cert) + key.private_bytes(ca.serialization.Encoding.PEM, ca.serialization.PrivateFormat.PKCS8,
                                            ca.serialization.NoEncryption())
    k, c = ca.load_import(both)
    assert c == cert
    wrong = other_key.private_bytes(ca.serialization.Encoding.PEM, ca.serialization.PrivateFormat.PKCS8,
                                    ca.serialization.NoEncryption())
    with pytest.raises(ca.CAError, match="does not belong"):
        ca.load_import(ca.pem(cert), wrong)
    with pytest.raises(ca.CAError, match="no PEM certificate"):
        ca.load_import(wrong)


# --- access rules ---------------------------------------------------------------------------------

def test_client_networks():
    nets = access.parse_networks("10.0.0.0/8, 192.168.1.7,::1/128")
    assert access.client_allowed("10.2.3.4", nets) and access.client_allowed("192.168.1.7", nets)
    assert access.client_allowed("::ffff:10.9.9.9", nets) and access.client_allowed("::1", nets)
    assert not access.client_allowed("127.0.0.1", nets) and not access.client_allowed("192.168.1.8", nets)
    assert not access.client_allowed("garbage", nets)
    assert access.client_allowed("203.0.113.9", access.parse_networks(""))
    with pytest.raises(ValueError, match="not an IP network"):
        access.parse_networks("10.0.0.0/33")


def test_whoami_never_carries_a_key():
    body = json.loads(access.whoami_body(Identity("alice", "proxy_auth", "sha256:abc", "claude-code"), "10.1.1.1"))
    assert body == {"user": "alice", "source": "proxy_auth", "client": "claude-code",
                    "key_fingerprint": "sha256:abc", "workspaces": [], "client_ip": "10.1.1.1"}
    assert access.is_whoami("WHOAMI.spendgate.invalid.") and not access.is_whoami("api.anthropic.com")


# --- the README's MDM section on a fresh clone ------------------------------------------------

def _fresh_clone(dest: Path) -> Path:
    """The repository's tracked (and new, not ignored) files, without any CA, kit or ledger."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        src = REPO / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    assert not (dest / "mdm" / "ca").exists() and not (dest / "dist").exists()
    return dest


def _readme_mdm_commands(readme: str) -> list[list[str]]:
    section = readme.split("## Deploying with MDM", 1)[1].split("\n## ", 1)[0]
    block = section.split("```console", 1)[1].split("```", 1)[0]
    return [shlex.split(line[2:], comments=True) for line in block.splitlines() if line.startswith("$ ")]


def _spendgate(clone: Path, args: list[str]) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "spendgate"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "spendgate.cli"]
    env = {**os.environ, "PYTHONPATH": str(clone)}  # the clone's code, not this checkout's
    return subprocess.run([*cmd, *args], check=False, cwd=clone, capture_output=True, text=True, timeout=120, env=env)


def test_readme_mdm_commands_work_on_a_fresh_clone_as_written(tmp_path):
    clone = _fresh_clone(tmp_path / "clone")
    commands = _readme_mdm_commands((clone / "README.md").read_text())
    assert [c[:3] for c in commands] == [["spendgate", "ca", "init"], ["spendgate", "mdm", "render"]]

    # the render alone fails, and its error names the command to run first
    cp = _spendgate(clone, commands[1][1:])
    assert cp.returncode == 1
    assert "mdm/site.example.yaml:" in cp.stderr and "create the CA first: spendgate ca init --confdir mdm/ca" in cp.stderr

    for c in commands:
        cp = _spendgate(clone, c[1:])
        assert cp.returncode == 0, f"{' '.join(c)} exited {cp.returncode}:\n{cp.stdout}{cp.stderr}"
    kit = clone / "dist" / "mdm"
    made = ca.info(clone / "mdm" / "ca")
    assert ca.pem_sha256((kit / "ca" / "spendgate-ca.pem").read_bytes()) == [made.sha256]
    assert made.key_mode == "0600" and "ca/" in (clone / "mdm" / ".gitignore").read_text().split()
    assert not any(b"PRIVATE KEY" in f.read_bytes() for f in kit.rglob("*") if f.is_file())
    for f in ("proxy.pac", "macos/spendgate.mobileconfig", "linux/install.sh", "windows/install.ps1",
              "central/spendgate-gateway.service", "linux/site.json", "policy/policy.yaml"):
        assert (kit / f).is_file(), f


def test_doctor_judges_a_file_by_the_ca_that_signed_the_presented_leaf(tmp_path):
    """Without the gateway's CA certificate in hand, the leaf's signature still says which CA it uses."""
    import datetime as dt

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from spendgate.deploy import doctor

    key, gw_ca = ca.generate("spendgate gateway CA")
    _, twin = ca.generate("spendgate gateway CA")  # same name, another key: must not pass
    now = dt.datetime.now(dt.UTC)
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                   "api.anthropic.com")]))
            .issuer_name(gw_ca.subject).public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    files = {"ca": ca.pem(gw_ca), "bundle": ca.bundle_pem(ca.pem(gw_ca)), "twin": ca.pem(twin), "empty": b""}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    presented = doctor.GatewayCA(leaf)
    assert {n: presented.in_file(tmp_path / n) for n in files} == {"ca": True, "bundle": True, "twin": False,
                                                                   "empty": False}
    assert not presented.in_file(tmp_path / "missing")
    assert presented.issuer == "O=spendgate,CN=spendgate gateway CA" and presented.sha256 is None
    assert doctor.GatewayCA(leaf, gw_ca).sha256 == ca.sha256_fingerprint(gw_ca)


def test_doctor_warns_when_the_engineer_can_change_policy_or_ledger(tmp_path):
    """Laptop mode: a policy or ledger the engineer can write means budgets do not bind them."""
    from spendgate.deploy import doctor

    pol = tmp_path / "policy.yaml"
    pol.write_text("version: 1\n")
    site = {"mode": "laptop", "policy_file": str(pol), "ledger_file": str(tmp_path / "ledger.duckdb")}
    checks = doctor.check_tamper(site, euid=1000)
    assert [c.status for c in checks] == ["warn", "warn"] and "re-run the install script as root" in checks[0].fix
    assert doctor.check_tamper({**site, "mode": "central"}, euid=1000) == []
    assert {c.status for c in doctor.check_tamper(site, euid=0)} == {"skip"}


def test_kit_files_with_the_proxy_password_are_not_world_readable(tmp_path, ca_cert):
    """The install scripts put password-bearing files at 0640 root:<the user's private group> on
    Linux (an ACL for the user when the group is shared) and 0600 root plus an ACL for the user on
    macOS (every account is in staff), and keep the password out of the world-readable
    /etc/environment."""
    s = site.load(central(tmp_path, ca_cert))
    files = artifacts(s)
    for name, mode, reader in (("linux/install.sh", 640, "SECRET_GROUP"), ("macos/install.sh", 600, "SECRET_READER")):
        script = files[name].decode()
        assert f'SECRET_MODE={mode}' in script
        assert 'fill "$KIT/claude-code/managed-settings.' in script and f'"$SECRET_MODE" "${reader}"' in script
        assert 'site.json" 644' not in script and 'env" 644' not in script and "env.sh\" 644" not in script
    assert "grep -vi '^https_proxy='" in files["linux/install.sh"].decode()


def test_install_puts_the_users_token_in_the_proxy_url_percent_encoded(tmp_path, ca_cert):
    """issue 13: the machine's identity is its user's spendgate token in the proxy URL (an e-mail
    user name is percent-encoded there, and kept as is in site.json), never a client-set header."""
    inst = tmp_path / "installed"
    p = central(tmp_path, ca_cert, extra=f"paths: {{linux: {{dir: {inst}/etc, claude_settings: {inst}/claude.json}}}}")
    out = tmp_path / "kit"
    render.write(render.render(site.load(p)), out)
    token = "sgt_AbC-123_xyz"
    env = {**os.environ, "SPENDGATE_USER": "alice@acme.com", "SPENDGATE_PROXY_PASSWORD": token}
    cp = subprocess.run(["sh", str(out / "linux" / "install.sh"), "--files-only"], capture_output=True, text=True,
                        env=env, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    url = f"http://alice%40acme.com:{token}@gw.corp.example:3128"
    assert (inst / "etc" / "spendgate.env").read_text().splitlines()[0] == f'HTTPS_PROXY="{url}"'
    settings = json.loads((inst / "claude.json").read_text())
    assert settings["env"]["HTTPS_PROXY"] == url and "ANTHROPIC_CUSTOM_HEADERS" not in settings["env"]
    installed = json.loads((inst / "etc" / "site.json").read_text())
    assert installed["proxy"] == url and installed["identity"]["user"] == "alice@acme.com"
    from spendgate.deploy.doctor import Proxy

    assert (Proxy.parse(url).user, Proxy.parse(url).password) == ("alice@acme.com", token)
    cp = subprocess.run(["sh", str(out / "linux" / "install.sh"), "--files-only"], capture_output=True, text=True,
                        env={**env, "SPENDGATE_PROXY_PASSWORD": ""}, timeout=60)
    assert cp.returncode == 1 and "spendgate tokens issue USER" in cp.stderr


def test_central_replicas_share_the_store_named_in_the_site_config(tmp_path, ca_cert):
    def with_store(url: str) -> Path:
        p = central(tmp_path, ca_cert)
        p.write_text(p.read_text().replace("pac_url: http://wpad.corp.example/p.pac}",
                                           f"pac_url: http://wpad.corp.example/p.pac, store: '{url}'}}"))
        return p

    s = site.load(with_store("postgresql://spendgate@db.corp.example/spendgate"))
    env = artifacts(s)["central/gateway.env"].decode()
    assert "\nSPENDGATE_STORE=postgresql://spendgate@db.corp.example/spendgate\n" in env
    with pytest.raises(site.SiteError, match="store"):  # a password in the URL would sit in a readable file
        site.load(with_store("postgresql://u:secret@db/x"))


def test_central_replicas_get_a_tcp_load_balancer_in_the_kit(tmp_path, ca_cert):
    """gateway.replicas renders central/haproxy.cfg (run for real in tests/e2e/test_scaleout_e2e.py)."""
    plain = artifacts(site.load(central(tmp_path, ca_cert)))
    assert "central/haproxy.cfg" not in plain  # one gateway: nothing to balance
    (tmp_path / "r").mkdir()
    s = site.load(write_site(tmp_path / "r", f"""\
        version: 1
        organization: {{name: "Test\\nCorp", identifier: com.example}}
        mode: central
        gateway:
          host: gw.corp.example
          port: 3128
          store: postgresql://spendgate@db.corp.example/spendgate
          replicas: [gw1.corp.example:3128, gw2.corp.example:3128, 10.0.0.7:8080]
        ca: {{cert: {ca_cert}}}
        identity: {{method: proxy_auth}}
        """))
    cfg = artifacts(s)["central/haproxy.cfg"].decode()
    assert "mode tcp" in cfg and "bind :3128" in cfg and "balance leastconn" in cfg
    assert [ln.split()[1:3] for ln in cfg.splitlines() if ln.strip().startswith("server ")] == [
        ["replica1", "gw1.corp.example:3128"], ["replica2", "gw2.corp.example:3128"], ["replica3", "10.0.0.7:8080"]]
    assert "for Test Corp:" in cfg  # a name cannot break out of its comment line


def test_laptops_pointed_at_the_centre_get_its_url_and_token_file(tmp_path, ca_cert):
    s = site.load(laptop(tmp_path, "gateway: {central: 'https://spendgate.corp.example:8443'}"))
    files = artifacts(s)
    unit = files["linux/spendgate.service"].decode()
    assert "spendgate_central=https://spendgate.corp.example:8443" in unit
    assert "spendgate_central_token_file=/etc/spendgate/central.token" in unit
    assert r"spendgate_central_token_file=C:\ProgramData\spendgate\central.token" in \
        files["windows/spendgate-task.xml"].decode()
    with pytest.raises(site.SiteError, match="laptop mode"):  # a central gateway is the centre itself
        site.load(write_site(tmp_path, f"""\
            version: 1
            organization: {{name: Test Corp, identifier: com.example}}
            mode: central
            gateway: {{host: gw.corp.example, central: 'https://x.example'}}
            ca: {{cert: {ca_cert}}}
            identity: {{method: proxy_auth}}
            policy: {REPO}/policies/example.yaml
            """))


def test_replicas_behind_the_balancer_refuse_address_based_identity(tmp_path, ca_cert):
    """Found by the attacker review: the TCP balancer hides client addresses from the replicas."""
    pol = tmp_path / "p.yaml"
    pol.write_text("version: 1\nidentity: [proxy_auth, client_ip]\nclient_ips: {10.0.0.5/32: alice}\n")
    with pytest.raises(site.SiteError, match="balancer's address"):
        site.load(write_site(tmp_path, f"""\
            version: 1
            organization: {{name: Test Corp, identifier: com.example}}
            mode: central
            gateway: {{host: lb.corp.example, store: 'postgresql://s@db/s', replicas: ['a:1', 'b:1']}}
            ca: {{cert: {ca_cert}}}
            identity: {{method: proxy_auth}}
            policy: {pol}
            """))


def test_uninstall_removes_what_the_kit_placed_and_keeps_a_gateways_files(tmp_path, ca_cert):
    """New user (forty-third review): `--uninstall` ran `rm -rf /etc/spendgate`, where mdm/README
    has the central gateway keep its CA key, policy and gateway.env. It now removes only what the
    install placed (a manifest in the directory), then the directory if nothing else is left."""
    inst = tmp_path / "installed"
    etc = inst / "etc"
    (etc / "ca").mkdir(parents=True)
    gateway_files = [etc / "ca" / "mitmproxy-ca.pem", etc / "policy.yaml", etc / "gateway.env"]
    for f in gateway_files:
        f.write_text("the gateway's own\n")
    (inst / "claude.json").write_text('{"env": {"A": "1"}}')  # Claude Code's settings before the kit
    p = central(tmp_path, ca_cert, extra=f"paths: {{linux: {{dir: {etc}, claude_settings: {inst}/claude.json}}}}")
    out = tmp_path / "kit"
    render.write(render.render(site.load(p)), out)
    env = {**os.environ, "SPENDGATE_USER": "alice", "SPENDGATE_PROXY_PASSWORD": "sgt_x"}
    script = str(out / "linux" / "install.sh")
    cp = subprocess.run(["sh", script, "--files-only"], capture_output=True, text=True, env=env, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert (etc / "site.json").exists() and (etc / ".spendgate-installed").exists()
    cp = subprocess.run(["sh", script, "--files-only", "--uninstall"], capture_output=True, text=True, env=env,
                        timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert sorted(p.relative_to(etc).as_posix() for p in etc.rglob("*") if p.is_file()) == \
        ["ca/mitmproxy-ca.pem", "gateway.env", "policy.yaml"]
    assert "kept" in cp.stdout and json.loads((inst / "claude.json").read_text()) == {"env": {"A": "1"}}
    for f in gateway_files:  # nothing else left: the directory goes too
        f.unlink()
    (etc / "ca").rmdir()
    subprocess.run(["sh", script, "--files-only"], check=True, capture_output=True, env=env, timeout=60)
    subprocess.run(["sh", script, "--files-only", "--uninstall"], check=True, capture_output=True, env=env, timeout=60)
    assert not etc.exists()


def test_uninstall_of_a_laptop_placed_before_the_manifest_takes_its_ca_key_too(tmp_path):
    """Second review of the forty-third (B8): with no manifest (a kit before it), the fallback
    removed only the client files, leaving a laptop's own CA key behind; a central client's
    directory keeps what a gateway put there."""
    from spendgate.resources import mdm_templates

    fragment = (mdm_templates() / "placed-files.sh").read_text()
    for mode, left in (("laptop", []), ("central", ["ca/mitmproxy-ca.pem", "policy.yaml"])):
        d = tmp_path / mode
        (d / "ca").mkdir(parents=True)
        for f in ("ca/mitmproxy-ca.pem", "policy.yaml", "site.json", "spendgate-ca.pem", "proxy.pac"):
            (d / f).write_text("x")
        script = f'DIR="{d}"\nMODE={mode}\nsay() {{ echo "$*"; }}\n{fragment}\nremove_placed\n'
        subprocess.run(["sh", "-eu", "-c", script], check=True, capture_output=True, timeout=30)
        got = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()) if d.exists() else []
        assert got == left, (mode, got)
