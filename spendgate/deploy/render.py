"""Render a site config into the MDM kit: PAC, profiles, install scripts, units, agent settings.

Structured files (plist, mobileconfig, JSON) are built as data and serialized by plistlib/json so
they are valid by construction; scripts and unit files come from mdm/templates with `{{name}}`
placeholders (`{{name|sh}}`, `{{name|ps}}`, `{{name|xml}}` quote for the target language). The
tokens @@USER@@ and @@PROXY_PASSWORD@@ (the user's spendgate token, `spendgate tokens issue USER`)
are left for the install scripts to fill per machine.
"""

from __future__ import annotations

import json
import plistlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

from spendgate import fsutil, resources
from spendgate.deploy import ca as ca_mod
from spendgate.deploy import pac
from spendgate.deploy.site import DASHBOARD_HOST, OSES, USER_TOKEN, Site

TEMPLATES = resources.mdm_templates()
CA_NAME = "spendgate-ca.pem"  # the gateway CA (what NODE_EXTRA_CA_CERTS adds)
BUNDLE_NAME = "spendgate-ca-bundle.pem"  # public roots + CA (what SSL_CERT_FILE replaces the store with)
CLAUDE_HEADERS = "ANTHROPIC_CUSTOM_HEADERS"  # Claude Code sends these on every API request
LINUX_LAPTOP_LEDGER = "/var/lib/spendgate/ledger.duckdb"  # systemd StateDirectory of the spendgate user
LAPTOP_LEDGER = {"linux": LINUX_LAPTOP_LEDGER, "macos": "~/Library/Application Support/spendgate/ledger.duckdb"}


@dataclass(frozen=True, slots=True)
class Artifact:
    path: str  # relative to the output directory
    data: bytes
    mode: int = 0o644


# --- small pure helpers ----------------------------------------------------------------------

def sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def ps_quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


_FILTERS = {"": str, "sh": sh_quote, "ps": ps_quote, "xml": xml_escape}
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*(?:\|\s*([a-z]+)\s*)?\}\}")


def fill(template: str, values: dict[str, str]) -> str:
    """Replace {{name}} / {{name|filter}}; an unknown name is a bug in the template, so it raises."""
    def sub(m: re.Match) -> str:
        name, filt = m.group(1), m.group(2) or ""
        if name not in values:
            raise KeyError(f"template placeholder {{{{{name}}}}} has no value")
        return _FILTERS[filt](values[name])

    return _PLACEHOLDER.sub(sub, template)


def stable_uuid(*parts: str) -> str:
    """Same site config, same UUIDs: re-pushing a profile updates it instead of adding a twin."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "spendgate:" + ":".join(parts))).upper()


# --- what each OS gets -------------------------------------------------------------------------

def agent_env(site: Site, os_name: str) -> dict[str, str]:
    """Machine-wide variables: the proxy for every agent, and the CA in the form each one reads."""
    p = site.paths[os_name]
    ca, bundle = p.join(CA_NAME), p.join(BUNDLE_NAME)
    no_proxy = ",".join(site.no_proxy)
    return {
        "HTTPS_PROXY": site.proxy_url,  # Claude Code, Codex, Gemini CLI, Copilot CLI, Python SDKs
        "https_proxy": site.proxy_url,
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
        "NODE_EXTRA_CA_CERTS": ca,  # Node: Claude Code, Gemini CLI, Copilot CLI (adds to Node's roots)
        "SSL_CERT_FILE": bundle,  # Python (httpx, ssl), Codex fallback, OpenSSL tools (replaces roots)
        "REQUESTS_CA_BUNDLE": bundle,  # Python requests
        "CODEX_CA_CERTIFICATE": bundle,  # Codex CLI
    }


def claude_settings(site: Site, os_name: str) -> dict:
    """Claude Code's managed-settings.json: only the env block; Claude Code applies it itself.

    Who pays travels in the proxy URL's credentials (the user and their spendgate token, filled in
    per machine), never in a header the client sets (ANTHROPIC_CUSTOM_HEADERS): see docs/security.md.
    """
    env = {k: v for k, v in agent_env(site, os_name).items() if k in ("HTTPS_PROXY", "NO_PROXY", "NODE_EXTRA_CA_CERTS")}
    return {"env": env}


def site_json(site: Site, os_name: str) -> dict:
    """What `spendgate doctor` checks on the machine: the promises this kit makes."""
    p = site.paths[os_name]
    return {
        "version": 1,
        "organization": site.org_name,
        "mode": site.mode,
        "os": os_name,
        "proxy": site.proxy_url,
        "pac_url": site.pac_url,
        "pac_file": p.join("proxy.pac"),
        "ca_file": p.join(CA_NAME),
        "bundle_file": p.join(BUNDLE_NAME),
        "ca_sha256": list(site.ca_fingerprints),  # empty in laptop mode: each machine makes its own
        "provider_hosts": list(site.hosts),
        "provider_patterns": list(site.patterns),
        "opaque_patterns": list(site.opaque_patterns),  # counted undecrypted: the PAC routes them too
        "dashboard_host": site.dashboard_host,
        "identity": {"method": site.identity_method, "header": site.identity_header, "user": site.identity_user},
        "env": agent_env(site, os_name),
        "claude_settings": p.claude_settings,
        # laptop mode: what `spendgate doctor` checks the engineer cannot change
        "policy_file": p.join("policy.yaml") if site.mode == "laptop" else None,
        "ledger_file": LAPTOP_LEDGER.get(os_name) if site.mode == "laptop" else None,
    }


def mobileconfig(site: Site) -> bytes:
    """macOS profile: the CA as a trusted root (central mode) and the system proxy (PAC or fixed)."""
    ident = f"{site.identifier}.spendgate"
    payloads: list[dict] = []
    if site.ca_pem:
        for i, cert in enumerate(ca_mod.load_certs(site.ca_pem)):
            fp = ca_mod.sha256_fingerprint(cert)
            payloads.append({
                "PayloadType": "com.apple.security.root", "PayloadVersion": 1,
                "PayloadIdentifier": f"{ident}.ca.{i}", "PayloadUUID": stable_uuid(ident, "ca", fp),
                "PayloadDisplayName": f"spendgate gateway CA {fp[:11]}",
                "PayloadCertificateFileName": f"spendgate-ca-{i}.cer",
                "PayloadContent": cert.public_bytes(ca_mod.serialization.Encoding.DER),
            })
    proxy: dict = {
        "PayloadType": "com.apple.proxy.http.global", "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.proxy", "PayloadUUID": stable_uuid(ident, "proxy"),
        "PayloadDisplayName": "spendgate proxy",
        "ProxyCaptiveLoginAllowed": True,
    }
    if site.pac_url:
        proxy.update({"ProxyType": "Auto", "ProxyPACURL": site.pac_url, "ProxyPACFallbackAllowed": False})
    else:
        proxy.update({"ProxyType": "Manual", "ProxyServer": site.host, "ProxyServerPort": site.port})
    payloads.append(proxy)
    profile = {
        "PayloadType": "Configuration", "PayloadVersion": 1, "PayloadScope": "System",
        "PayloadIdentifier": ident, "PayloadUUID": stable_uuid(ident, "profile"),
        "PayloadDisplayName": f"{site.org_name}: AI spend gateway",
        "PayloadDescription": "Routes AI provider traffic through the company's spendgate gateway.",
        "PayloadOrganization": site.org_name, "PayloadRemovalDisallowed": True,
        "PayloadContent": payloads,
    }
    return plistlib.dumps(profile)


def launchd_plist(site: Site) -> bytes:
    """macOS laptop mode: a LaunchAgent running mitmdump on 127.0.0.1 as the logged-in user."""
    p = site.paths["macos"]
    args = " ".join(sh_quote(a) for a in [f"{p.install}/.venv/bin/mitmdump", *gateway_args(site, "macos")])
    state = '"$HOME/Library/Application Support/spendgate"'
    # the log in the user's own ~/Library/Logs, created 0600 under umask 077, never a fixed name in
    # /tmp that another account could read or plant first (eighth review, E6); launchd's
    # StandardErrorPath would open it before the umask and cannot expand $HOME
    logs = '"$HOME/Library/Logs/spendgate"'
    script = (f'umask 077; mkdir -p {state} {logs} && exec {args} --set spendgate_db={state[:-1]}/ledger.duckdb" '
              f'>> {logs[:-1]}/gateway.log" 2>&1')
    return plistlib.dumps({
        "Label": f"{site.identifier}.spendgate",
        "ProgramArguments": ["/bin/sh", "-c", script],
        "RunAtLoad": True,
        "KeepAlive": True,
        "ProcessType": "Background",
        "Umask": 0o077,
    })


def gateway_args(site: Site, os_name: str, ledger: str | None = None) -> list[str]:
    """mitmdump arguments for laptop mode (but the executable; the ledger when given)."""
    p = site.paths[os_name]
    sep = "\\" if p.windows else "/"
    return [
        "-s", f"{p.install}{sep}addons{sep}gateway.py", "--listen-host", "127.0.0.1", "-p", str(site.port),
        "--set", f"confdir={p.join('ca')}", "--set", f"spendgate_policy={p.join('policy.yaml')}",
        "--set", "spendgate_allow_clients=127.0.0.1/32,::1/128",
    ] + (["--set", f"spendgate_db={ledger}"] if ledger else []) + _dashboard_args(site) + _central_args(site, os_name)


def _central_args(site: Site, os_name: str) -> list[str]:
    """Laptops reporting to a centre (docs/scale-out.md): its URL and the user's token file the MDM drops."""
    if not site.central:
        return []
    token = site.central_token_file or site.paths[os_name].join("central.token")
    return ["--set", f"spendgate_central={site.central}", "--set", f"spendgate_central_token_file={token}"]


def _dashboard_args(site: Site) -> list[str]:
    """The dashboard's virtual host, when the site renames it (the PAC routes that name)."""
    return [] if site.dashboard_host == DASHBOARD_HOST else ["--set", f"spendgate_dashboard_host={site.dashboard_host}"]


def _template(name: str, values: dict[str, str]) -> bytes:
    return fill((TEMPLATES / name).read_text(), values).encode()


def haproxy_cfg(site: Site) -> bytes:
    """A TCP load balancer for the central replicas (HAProxy configuration manual, "mode tcp").

    TCP, not HTTP: agents open CONNECT tunnels to the gateway and the TLS inside is the
    gateway's to terminate; a balancer that spoke HTTP would have to proxy CONNECT itself. Any
    replica may take any connection (they share the store), so `leastconn` spreads the long-lived
    tunnels; a replica that stops accepting connections is taken out by the TCP health check.
    """
    servers = "".join(f"    server replica{i} {hp} check inter 2s fall 2 rise 2\n"
                      for i, hp in enumerate(site.replicas, 1))
    return _template("haproxy.cfg", {"org": " ".join(site.org_name.split()), "port": str(site.port), "servers": servers})


def _env_lines(env: dict[str, str]) -> str:
    return "".join(f'{k}="{v}"\n' for k, v in env.items())


def _ps_env(env: dict[str, str]) -> str:
    return "\n".join(f"  {k} = {ps_quote(v)}" for k, v in env.items())


def render(site: Site) -> list[Artifact]:
    """Every file of the kit, in memory; `write` puts them on disk."""
    out: list[Artifact] = []
    pac_text = pac.render(site.proxy_hostport, site.hosts, [*site.patterns, *site.opaque_patterns], site.org_name,
                          served=[site.dashboard_host])
    out.append(Artifact("proxy.pac", pac_text.encode()))
    if site.ca_pem:
        out.append(Artifact(f"ca/{CA_NAME}", site.ca_pem))
        out.append(Artifact(f"ca/{BUNDLE_NAME}", ca_mod.bundle_pem(site.ca_pem, site.extra_roots_pem)))
    elif site.extra_roots_pem:
        out.append(Artifact("ca/extra-roots.pem", site.extra_roots_pem))
    if site.policy_file:
        out.append(Artifact("policy/policy.yaml", site.policy_file.read_bytes()))
    for os_name in OSES:
        p = site.paths[os_name]
        out.append(Artifact(f"claude-code/managed-settings.{os_name}.json",
                            (json.dumps(claude_settings(site, os_name), indent=2) + "\n").encode()))
        out.append(Artifact(f"{os_name}/site.json", (json.dumps(site_json(site, os_name), indent=2) + "\n").encode()))
        env = agent_env(site, os_name)
        values = {
            "org": site.org_name, "identifier": site.identifier, "mode": site.mode, "dir": p.dir,
            "install": p.install, "claude_settings": p.claude_settings, "port": str(site.port),
            "proxy_hostport": site.proxy_hostport, "pac_url": site.pac_url or "", "host": site.host,
            "identity_method": site.identity_method, "user_token": USER_TOKEN,
            "env_lines": _env_lines(env), "ps_env": _ps_env(env), "no_proxy": ",".join(site.no_proxy),
            "ca_fingerprints": " ".join(site.ca_fingerprints) or "(made on each machine at install)",
            "extra_args": " ".join((["--set", "spendgate_proxy_tokens=true"]
                                    if site.identity_method == "proxy_auth" else []) + _dashboard_args(site)),
            "store": site.store or "",
            "placed_files_sh": (TEMPLATES / "placed-files.sh").read_text(),  # what --uninstall may remove
        }
        if os_name == "linux":
            out.append(Artifact("linux/spendgate.env", _env_lines(env).encode()))
            out.append(Artifact("linux/install.sh", _template("linux-install.sh", values), 0o755))
            if site.mode == "laptop":
                # runs as the system user spendgate, so it is told whom to charge
                args = " ".join(gateway_args(site, "linux", LINUX_LAPTOP_LEDGER) + ["--set", f"spendgate_user={USER_TOKEN}"])
                out.append(Artifact("linux/spendgate.service",
                                    _template("spendgate-laptop.service", {**values, "args": args})))
            else:
                out.append(Artifact("central/spendgate-gateway.service",
                                    _template("spendgate-gateway.service", values)))
                out.append(Artifact("central/gateway.env", _template("gateway.env", values), 0o640))
                if site.replicas:
                    out.append(Artifact("central/haproxy.cfg", haproxy_cfg(site)))
        elif os_name == "macos":
            out.append(Artifact("macos/spendgate.mobileconfig", mobileconfig(site)))
            out.append(Artifact("macos/spendgate.env.sh", "".join(f"export {k}=\"{v}\"\n"
                                                                  for k, v in env.items()).encode()))
            out.append(Artifact("macos/install.sh", _template("macos-install.sh", values), 0o755))
            if site.mode == "laptop":
                out.append(Artifact(f"macos/{site.identifier}.spendgate.plist", launchd_plist(site)))
        else:
            out.append(Artifact("windows/install.ps1", _template("windows-install.ps1", values)))
            if site.mode == "laptop":
                mitmdump = f"{p.install}\\.venv\\Scripts\\mitmdump.exe"
                args = " ".join(f'"{a}"' if " " in a else a
                                for a in gateway_args(site, "windows", r"%LOCALAPPDATA%\spendgate\ledger.duckdb"))
                out.append(Artifact("windows/spendgate-task.xml",
                                    _template("windows-task.xml", {**values, "command": mitmdump, "args": args})))
    return out


def write(artifacts: list[Artifact], out_dir: Path) -> list[Path]:
    written = []
    for a in artifacts:
        path = out_dir / a.path
        path.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_atomic(path, a.data, a.mode)  # the mode from the first byte on
        written.append(path)
    return written
