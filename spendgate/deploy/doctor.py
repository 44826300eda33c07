"""`spendgate doctor`: check on a machine what the MDM kit promised, and say how to fix what is not.

It reads the site.json the install script placed (what the kit promised), then checks the real
thing, not the configuration: a TCP connection to the proxy, a TLS handshake through the gateway
that trusts only the file each agent's variable names, the PAC file evaluated by a JavaScript
engine, and the gateway's own answer to "who am I" for this machine.

CA trust is judged against the CA the running gateway actually presents: the issuer of the leaf
certificate it serves for a provider host (checked by signature, and named by the CA certificate
the gateway serves at mitmproxy's http://mitm.it/cert/pem when it does). So a variable pointing
at the gateway's CA passes even when the kit's copy is missing, and one pointing at a stale kit CA
fails. Without a kit (no site.json) the same checks run against `HTTPS_PROXY` (or --proxy), and
the checks that need the kit (its CA file, Claude Code's managed settings, the PAC) are listed
as skipped.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import platform
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from spendgate.deploy import ca as ca_mod
from spendgate.deploy import pac
from spendgate.deploy.site import OS_DEFAULTS, PASSWORD_TOKEN, USER_TOKEN
from spendgate.metering.providers import PROVIDER_HOSTS

CA_VARS = {  # variable -> who reads it
    "NODE_EXTRA_CA_CERTS": "Claude Code, Gemini CLI, Copilot CLI",
    "SSL_CERT_FILE": "Python SDKs, Codex",
    "REQUESTS_CA_BUNDLE": "Python requests",
    "CODEX_CA_CERTIFICATE": "Codex CLI",
}
# read when the first is unset: Codex takes SSL_CERT_FILE (codex-rs login and HTTP clients: CODEX_CA_CERTIFICATE
# first, then SSL_CERT_FILE)
FALLBACK_VARS = {"CODEX_CA_CERTIFICATE": "SSL_CERT_FILE"}
CONTROL_HOSTS = ("example.com", "github.com", "pypi.org")  # must stay DIRECT
TIMEOUT = 5.0
PROBE_HOST = "api.anthropic.com"  # a provider host: the gateway decrypts it, so it presents its own leaf
CA_URL = "http://mitm.it/cert/pem"  # mitmproxy's onboarding app, answered by the gateway itself
NEEDS_KIT = ("CA certificate", "Claude Code managed settings", "PAC routing")  # skipped without site.json


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # ok | fail | warn | skip
    detail: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    user: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> Proxy:
        u = urlsplit(url if "://" in url else f"http://{url}")
        if not u.hostname or not u.port:
            raise ValueError(f"not a proxy URL: {url!r}")
        return cls(u.hostname, u.port, unquote(u.username) if u.username else None,
                   unquote(u.password) if u.password else None)

    def auth_header(self) -> dict[str, str]:
        if self.user is None:
            return {}
        token = base64.b64encode(f"{self.user}:{self.password or ''}".encode()).decode()
        return {"Proxy-Authorization": f"Basic {token}"}

    def same_endpoint(self, other: Proxy) -> bool:
        return (self.host.lower(), self.port) == (other.host.lower(), other.port)


def default_site_path() -> Path:
    if env := os.environ.get("SPENDGATE_SITE"):
        return Path(env)
    os_name = {"Darwin": "macos", "Windows": "windows"}.get(platform.system(), "linux")
    return Path(OS_DEFAULTS[os_name].join("site.json"))


@dataclass(frozen=True)
class GatewayCA:
    """What the running gateway presents: the leaf it signs for a provider host, and its CA
    certificate when the gateway serves it (mitm.it) and that certificate really signed the leaf."""

    leaf: x509.Certificate
    ca: x509.Certificate | None = None

    @property
    def issuer(self) -> str:
        return self.leaf.issuer.rfc4514_string()

    @property
    def sha256(self) -> str | None:
        return ca_mod.sha256_fingerprint(self.ca) if self.ca is not None else None

    def describe(self) -> str:
        return f"{self.issuer}" + (f", SHA-256 {self.sha256}" if self.sha256 else "")

    def signed_by(self, cert: x509.Certificate) -> bool:
        try:
            self.leaf.verify_directly_issued_by(cert)  # issuer name and signature
            return True
        except (InvalidSignature, ValueError, TypeError):  # another CA, or a key type it cannot have signed with
            return False

    def in_file(self, path: str | Path) -> bool:
        """Does this PEM file (a CA file or a whole bundle) hold the CA that signed the leaf?"""
        try:
            certs = ca_mod.load_certs(Path(path).read_bytes())
        except OSError:
            return False
        return any(self.signed_by(c) for c in certs)


# --- the network probes ----------------------------------------------------------------------

def tunnel(proxy: Proxy, host: str, port: int = 443) -> socket.socket:
    """A CONNECT tunnel through the proxy (what Node and Rust clients open for HTTPS)."""
    s = socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT)
    try:
        head = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in proxy.auth_header().items())
        s.sendall((head + "\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("the proxy closed the connection")
            buf += chunk
        status = buf.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 200" not in status:
            raise ConnectionError(f"the proxy answered {status!r}")
        return s
    except BaseException:
        s.close()
        raise


def tls_through(proxy: Proxy, host: str, cafile: str) -> None:
    """Handshake with `host` through the gateway, trusting only `cafile`; raises on failure."""
    ctx = ssl.create_default_context(cafile=cafile)
    with tunnel(proxy, host) as raw, ctx.wrap_socket(raw, server_hostname=host):
        pass


def presented_leaf(proxy: Proxy, host: str = PROBE_HOST) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The certificate the gateway presents for `host` (unverified: we want to see it, not trust
    it), and any further certificates it sends in the chain."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with tunnel(proxy, host) as raw, ctx.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
        chain: list[x509.Certificate] = []
        get_chain = getattr(tls, "get_unverified_chain", None)  # Python 3.13+: DER bytes, leaf first
        if get_chain is not None:
            for der_c in (get_chain() or [])[1:]:
                try:
                    chain.append(x509.load_der_x509_certificate(bytes(der_c)))
                except (ValueError, TypeError):
                    pass
    if not der:
        raise ConnectionError(f"the gateway presented no certificate for {host}")
    return x509.load_der_x509_certificate(der), chain


def served_ca_pem(proxy: Proxy) -> bytes:
    """The CA certificate the gateway serves at mitmproxy's onboarding address (plain HTTP via the proxy)."""
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=TIMEOUT)
    try:
        conn.request("GET", CA_URL, headers=proxy.auth_header())
        resp = conn.getresponse()
        body = resp.read(1_000_000)
        if resp.status != 200:
            raise ConnectionError(f"{CA_URL} answered {resp.status}")
        return body
    finally:
        conn.close()


def gateway_ca(proxy: Proxy, host: str = PROBE_HOST) -> GatewayCA:
    """The CA the running gateway uses, judged by the leaf it presents; raises OSError/ssl.SSLError/
    ConnectionError when the gateway cannot be reached or will not talk TLS for `host`."""
    leaf, chain = presented_leaf(proxy, host)
    found = GatewayCA(leaf)
    candidates = list(chain)
    try:
        candidates += ca_mod.load_certs(served_ca_pem(proxy))
    except (OSError, ConnectionError, http.client.HTTPException):
        pass  # onboarding off, or providers_only: the leaf's issuer still identifies the CA
    for c in candidates:
        if found.signed_by(c):
            return GatewayCA(leaf, c)
    return found


def whoami(proxy: Proxy, headers: Mapping[str, str]) -> dict[str, Any]:
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=TIMEOUT)
    try:
        conn.request("GET", f"http://{pac.WHOAMI_HOST}/", headers={**proxy.auth_header(), **headers})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise ConnectionError(f"the gateway answered {resp.status}: {body[:200].decode(errors='replace')}")
        return json.loads(body)
    finally:
        conn.close()


# --- the checks --------------------------------------------------------------------------------

def _cert_fps(path: str) -> list[str]:
    try:
        return ca_mod.pem_sha256(Path(path).read_bytes())
    except OSError:
        return []


def check_ca_file(site: dict) -> tuple[Check, list[str]]:
    fps = _cert_fps(site["ca_file"])
    if not fps:
        return Check("CA certificate", "fail", f"{site['ca_file']} is missing or holds no certificate",
                     "re-run the install script from the MDM kit"), []
    promised = site.get("ca_sha256") or []
    if promised and not set(fps) & set(promised):
        return Check("CA certificate", "fail", f"{site['ca_file']} is not the site's CA ({fps[0][:23]}...)",
                     "re-run the install script with the current kit"), fps
    return Check("CA certificate", "ok", f"{site['ca_file']} SHA-256 {fps[0]}"), fps


def check_proxy(proxy: Proxy) -> Check:
    try:
        socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT).close()
    except OSError as e:
        return Check("proxy reachable", "fail", f"{proxy.host}:{proxy.port}: {e}",
                     "start the gateway (laptop: the spendgate service; central: ask IT) and check the firewall")
    return Check("proxy reachable", "ok", f"{proxy.host}:{proxy.port} accepts connections")


def check_os_store(ca_file: str, ca_fps: list[str], os_store: Path | None, gw: GatewayCA | None = None) -> Check:
    name = "OS trust store"
    system = platform.system()
    if os_store is not None or system not in ("Darwin", "Windows"):
        bundle = os_store or Path(ssl.get_default_verify_paths().openssl_cafile or "/etc/ssl/certs/ca-certificates.crt")
        if gw is not None:  # judged against the CA the gateway presents
            if gw.in_file(bundle):
                return Check(name, "ok", f"{bundle} includes the CA the gateway presents ({gw.issuer})")
            return Check(name, "fail", f"{bundle} does not include the CA the gateway presents ({gw.describe()})",
                         "re-run the install script as root (it runs update-ca-certificates / update-ca-trust)")
        if set(ca_fps) & set(_cert_fps(str(bundle))):
            return Check(name, "ok", f"{bundle} includes the CA")
        return Check(name, "fail", f"{bundle} does not include the CA",
                     "re-run the install script as root (it runs update-ca-certificates / update-ca-trust)")
    if system == "Darwin":
        return _run_check(name, ["security", "verify-cert", "-p", "ssl", "-c", ca_file],
                          "push macos/spendgate.mobileconfig (central) or approve the CA in System Settings")
    thumb = ca_fps[0] if ca_fps else ""
    return _run_check(name, ["powershell", "-NoProfile", "-Command",
                             f"if (Get-ChildItem Cert:\\LocalMachine\\Root | Where-Object {{ $_.GetCertHashString("
                             f"'SHA256') -eq '{thumb.replace(':', '')}' }}) {{ exit 0 }} else {{ exit 1 }}"],
                      "re-run windows\\install.ps1 (Import-Certificate into LocalMachine\\Root)")


def _run_check(name: str, cmd: list[str], fix: str) -> Check:
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except OSError as e:
        return Check(name, "warn", f"cannot run {cmd[0]}: {e}")
    if cp.returncode == 0:
        return Check(name, "ok", "the OS trusts the CA")
    return Check(name, "fail", (cp.stdout + cp.stderr).strip()[-200:] or "the OS does not trust the CA", fix)


def check_env_proxy(site_proxy: Proxy, env: Mapping[str, str], hosts: list[str]) -> list[Check]:
    out = []
    value = env.get("HTTPS_PROXY") or env.get("https_proxy")
    if not value:
        out.append(Check("HTTPS_PROXY", "fail", "not set in this environment (Codex, Gemini CLI, Python SDKs "
                                                "need it)", "log out and in again; else re-run the install script"))
    else:
        try:
            ok = Proxy.parse(value).same_endpoint(site_proxy)
        except ValueError:
            ok = False
        out.append(Check("HTTPS_PROXY", "ok", f"points at {site_proxy.host}:{site_proxy.port}") if ok else
                   Check("HTTPS_PROXY", "fail", f"is {value.split('@')[-1]!r}, not the gateway "
                                                f"{site_proxy.host}:{site_proxy.port}",
                         "remove the override from your shell profile, or re-run the install script"))
    no_proxy = [p.strip().lower().lstrip("*") for p in (env.get("NO_PROXY") or env.get("no_proxy") or "").split(",")]
    bypassed = [h for h in hosts if any(p and (h == p.lstrip(".") or h.endswith("." + p.lstrip(".")) or p == "*")
                                        for p in no_proxy)]
    out.append(Check("NO_PROXY", "fail", f"sends {', '.join(bypassed)} around the gateway",
                     "remove those hosts from NO_PROXY") if bypassed else
               Check("NO_PROXY", "ok", "no provider host bypasses the gateway"))
    return out


def check_ca_vars(env: Mapping[str, str], ca_fps: list[str], proxy: Proxy | None, probe_host: str,
                  gw: GatewayCA | None = None, kit: bool = True) -> list[Check]:
    """Each agent's CA variable: names a file holding the CA the gateway presents (`gw`; else, with
    the gateway unreachable, the kit's CA `ca_fps`), and a handshake trusting only it verifies.
    `kit`: the MDM kit set these (fix: its install script); else `scripts/run` printed them."""
    out = []
    handshakes: dict[str, str | None] = {}
    unset_fix = ("log out and in again; else re-run the install script" if kit else
                 "export it as `scripts/run` prints it (README, the first command)")
    for var, who in CA_VARS.items():
        path = env.get(var)
        if not path and var in FALLBACK_VARS and env.get(FALLBACK_VARS[var]):
            out.append(Check(var, "ok", f"not set: {who} reads {FALLBACK_VARS[var]} (checked above)"))
            continue
        if not path:
            out.append(Check(var, "fail", f"not set ({who} will not trust the gateway)", unset_fix))
            continue
        if gw is not None:
            if not gw.in_file(path):
                out.append(Check(var, "fail", f"{path} does not contain the CA the gateway presents "
                                              f"({gw.describe()}) ({who})",
                                 "point it at the gateway's CA (the kit's CA file), or re-run the install script"))
                continue
        elif not ca_fps:
            out.append(Check(var, "warn", f"{path}: cannot judge, the gateway presented no CA and no kit names "
                                          "its CA", "start the gateway, then run doctor again"))
            continue
        elif not set(ca_fps) & set(_cert_fps(path)):
            out.append(Check(var, "fail", f"{path} does not contain the kit's gateway CA ({who})",
                             "point it at the kit's CA file, or re-run the install script"))
            continue
        if proxy is None:
            out.append(Check(var, "ok", f"{path} contains the CA"))
            continue
        if path not in handshakes:
            try:
                tls_through(proxy, probe_host, path)
                handshakes[path] = None
            except (OSError, ssl.SSLError, ConnectionError) as e:
                handshakes[path] = str(e)
        err = handshakes[path]
        out.append(Check(var, "ok", f"{path}: TLS to {probe_host} through the gateway verifies ({who})") if err is None
                   else Check(var, "fail", f"{path}: TLS to {probe_host} through the gateway fails: {err}",
                              "make sure the gateway uses the CA this kit installed (spendgate ca show on it)"))
    return out


def check_claude_settings(path: Path, site: dict, site_proxy: Proxy, ca_fps: list[str],
                          gw: GatewayCA | None = None) -> Check:
    name = "Claude Code managed settings"
    try:
        env = json.loads(path.read_text()).get("env") or {}
    except OSError as e:
        return Check(name, "fail", f"{path}: {e.strerror}", "re-run the install script")
    except (ValueError, AttributeError) as e:
        return Check(name, "fail", f"{path} is not valid JSON: {e}", "re-run the install script")
    problems = []
    try:
        if not Proxy.parse(env.get("HTTPS_PROXY", "")).same_endpoint(site_proxy):
            problems.append("HTTPS_PROXY is not the gateway")
    except ValueError:
        problems.append("HTTPS_PROXY is missing")
    node_ca = env.get("NODE_EXTRA_CA_CERTS", "")
    if not (gw.in_file(node_ca) if gw is not None else set(ca_fps) & set(_cert_fps(node_ca))):
        problems.append("NODE_EXTRA_CA_CERTS does not name the CA")
    ident = site.get("identity") or {}
    if ident.get("method") == "header" and ident.get("header", "") not in env.get("ANTHROPIC_CUSTOM_HEADERS", "").lower():
        problems.append(f"ANTHROPIC_CUSTOM_HEADERS lacks {ident.get('header')}")
    if problems:
        return Check(name, "fail", f"{path}: " + "; ".join(problems), "re-run the install script")
    return Check(name, "ok", f"{path} sends Claude Code through the gateway")


def check_pac(site: dict, site_proxy: Proxy, pac_text: str | None, where: str, node: str | None) -> Check:
    name = "PAC routing"
    if pac_text is None:
        return Check(name, "fail", f"cannot read the PAC file ({where})", "publish proxy.pac at pac_url / re-install")
    hosts = pac.routed_hosts(site)  # providers, counted hosts, the dashboard and whoami
    urls = [f"https://{h}/" for h in [*hosts, *CONTROL_HOSTS]]
    try:
        got = pac.evaluate(pac_text, urls, node)
    except pac.PacError as e:
        return Check(name, "warn" if "not installed" in str(e) else "fail", str(e), "install Node.js to evaluate it")
    want = f"PROXY {site_proxy.host}:{site_proxy.port}"
    wrong = [f"{u} -> {r!r}" for u, r in got.items()
             if (u in urls[: len(hosts)]) != (r.replace("  ", " ").strip().rstrip(";") == want)]
    if wrong:
        return Check(name, "fail", f"{where}: " + "; ".join(wrong), "re-render the kit and publish its proxy.pac")
    return Check(name, "ok", f"{where}: {len(hosts)} provider, counted and gateway hosts -> gateway, others DIRECT")


def _read_pac(site: dict) -> tuple[str | None, str]:
    if url := site.get("pac_url"):
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the PAC itself is DIRECT
            with opener.open(url, timeout=TIMEOUT) as resp:
                return resp.read().decode(), url
        except (OSError, ValueError):
            pass
    path = site.get("pac_file") or ""
    try:
        return Path(path).read_text(), path
    except OSError:
        return None, site.get("pac_url") or path


def check_identity(proxy: Proxy, site: dict) -> Check:
    name = "identity seen by the gateway"
    ident = site.get("identity") or {}
    expected = ident.get("user") or ""
    headers = {}
    if ident.get("method") == "header":
        headers[ident["header"]] = expected
    try:
        got = whoami(proxy, headers)
    except (OSError, ConnectionError, ValueError) as e:
        return Check(name, "fail", f"no answer from the gateway's identity echo: {e}",
                     "check the proxy credentials (proxy_auth) and that the gateway runs spendgate")
    user, source = got.get("user"), got.get("source")
    if user == "unattributed":
        return Check(name, "fail", f"the gateway cannot tell who this is (method {ident.get('method')})",
                     "add the method to the policy's identity list, or fix the credentials")
    if expected and USER_TOKEN not in expected and ident.get("method") != "api_key" and user != expected:
        return Check(name, "fail", f"charged to {user!r} (via {source}), expected {expected!r}",
                     "re-run the install script with SPENDGATE_USER set to the right person")
    return Check(name, "ok", f"charged to {user!r} (via {source})")


def check_gateway_ca(proxy: Proxy | None, probe_host: str, promised: list[str] | None = None
                     ) -> tuple[Check, GatewayCA | None]:
    """The CA the running gateway presents (and, with a kit, whether it is one the kit installs)."""
    name = "gateway CA"
    if proxy is None:
        return Check(name, "skip", "the proxy is not reachable"), None
    try:
        gw = gateway_ca(proxy, probe_host)
    except (OSError, ssl.SSLError, ConnectionError) as e:
        if " 502" in str(e):  # mitmproxy connects upstream at CONNECT: a 502 is the gateway's own way out failing
            return Check(name, "fail", f"the gateway could not reach {probe_host} ({e})",
                         "check the gateway machine's network, DNS or firewall (the gateway's log names the cause)"), None
        return Check(name, "fail", f"no TLS from the gateway for {probe_host}: {e}",
                     "check the proxy credentials (proxy_auth) and that the gateway runs spendgate"), None
    if promised and gw.sha256 and gw.sha256 not in promised:
        return Check(name, "fail", f"the gateway presents {gw.describe()}, which is not a CA this kit installs",
                     "the gateway's CA changed: re-render the kit with its current certificate (mdm/README.md, "
                     "'Rotating the CA')"), gw
    return Check(name, "ok", f"the gateway presents {gw.describe()}"), gw


def run(site: dict | None, env: Mapping[str, str], *, os_store: Path | None = None,
        claude_settings: Path | None = None, node: str | None = None, proxy_url: str | None = None) -> list[Check]:
    """Every check, in the order a person would fix them; `site` None: no kit on this machine."""
    if site is None:
        return run_without_kit(env, os_store=os_store, proxy_url=proxy_url)
    checks: list[Check] = []
    try:
        proxy = Proxy.parse(site["proxy"])
    except (KeyError, ValueError) as e:
        return [Check("site config", "fail", f"no usable proxy in site.json: {e}", "re-run the install script")]
    if PASSWORD_TOKEN in site["proxy"] or USER_TOKEN in site["proxy"]:
        checks.append(Check("site config", "fail", "site.json still holds install-time tokens",
                            "run the install script; do not copy the kit's files by hand"))
    reachable = check_proxy(proxy)
    checks.append(reachable)
    hosts = list(site.get("provider_hosts") or [])
    probe = hosts[0] if hosts else PROBE_HOST
    live = proxy if reachable.status == "ok" else None
    gw_check, gw = check_gateway_ca(live, probe, promised=site.get("ca_sha256") or [])
    checks.append(gw_check)
    ca_check, fps = check_ca_file(site)
    checks.append(ca_check)
    fps = fps or ([gw.sha256] if gw is not None and gw.sha256 else [])  # the kit's copy is missing: the live one
    checks.append(check_os_store(site["ca_file"], fps, os_store, gw))
    checks += check_ca_vars(env, fps, live, probe, gw)
    checks += check_env_proxy(proxy, env, hosts)
    checks.append(check_claude_settings(claude_settings or Path(site["claude_settings"]), site, proxy, fps, gw))
    checks.append(check_pac(site, proxy, *_read_pac(site), node))
    if live:
        checks.append(check_identity(proxy, site))
    else:
        checks.append(Check("identity seen by the gateway", "skip", "the proxy is not reachable"))
    checks += check_tamper(site)
    return checks


def run_without_kit(env: Mapping[str, str], *, os_store: Path | None = None, proxy_url: str | None = None,
                    where: str = "") -> list[Check]:
    """What can be checked on a machine without the MDM kit: the proxy the environment names,
    the CA the gateway presents against every agent variable and the OS store, NO_PROXY, and the
    identity the gateway sees. The kit-only checks are reported as skipped, naming the kit."""
    value = proxy_url or env.get("HTTPS_PROXY") or env.get("https_proxy")
    checks = [Check("site config", "skip", f"no MDM kit on this machine{where}: checking what the environment "
                                           "names; " + ", ".join(NEEDS_KIT) + " need the kit (--site FILE)")]
    if not value:
        checks.append(Check("HTTPS_PROXY", "fail", "not set in this environment, so no agent uses a gateway",
                            "set HTTPS_PROXY to the gateway (or pass --proxy URL), or install the MDM kit"))
        return checks + [Check(n, "skip", "needs the MDM kit") for n in NEEDS_KIT]
    try:
        proxy = Proxy.parse(value)
    except ValueError as e:
        return checks + [Check("HTTPS_PROXY", "fail", str(e), "set HTTPS_PROXY to http://HOST:PORT of the gateway")]
    reachable = check_proxy(proxy)
    checks.append(reachable)
    live = proxy if reachable.status == "ok" else None
    gw_check, gw = check_gateway_ca(live, PROBE_HOST)
    checks.append(gw_check)
    if gw is not None:  # without a kit the agents trust the gateway through the variables: the store is a warning
        store = check_os_store("", [], os_store, gw)
        checks.append(store if store.status != "fail" else Check(
            store.name, "warn", f"{store.detail}; agents that read the variables below are not affected, apps that "
                                "read only the OS store (editors, browsers) are", store.fix))
    else:
        checks.append(Check("OS trust store", "skip", "no gateway CA to look for (the gateway presented none)"))
    checks += check_ca_vars(env, [], live, PROBE_HOST, gw, kit=False)
    checks += check_env_proxy(proxy, env, list(PROVIDER_HOSTS))
    if live:
        checks.append(check_identity(proxy, {"identity": {}}))
    else:
        checks.append(Check("identity seen by the gateway", "skip", "the proxy is not reachable"))
    return checks + [Check(n, "skip", "needs the MDM kit") for n in NEEDS_KIT]


def as_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]


def failed(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


def check_tamper(site: dict, euid: int | None = None) -> list[Check]:
    """Laptop mode: warn when this user can change the policy or the ledger (then budgets on this
    machine bind only those who do not try). Root can always; the check is for the engineer."""
    if site.get("mode") != "laptop":
        return []
    euid = os.geteuid() if euid is None and hasattr(os, "geteuid") else euid
    out = []
    for label, key in (("policy", "policy_file"), ("ledger", "ledger_file")):
        raw = site.get(key)
        if not raw:
            continue
        path = Path(os.path.expanduser(raw))
        name = f"{label} protected"
        if euid == 0:
            out.append(Check(name, "skip", "running as root: run `spendgate doctor` as the engineer"))
            continue
        writable = [str(p) for p in (path, path.parent) if p.exists() and os.access(p, os.W_OK)]
        if writable:
            out.append(Check(name, "warn", f"you can change {', '.join(writable)}: budgets on this machine do not "
                                           "bind you", "re-run the install script as root: laptop mode runs the "
                                                       "gateway as the system user spendgate with a root-owned policy"))
        else:
            out.append(Check(name, "ok", f"{path} cannot be changed by this user"))
    return out
