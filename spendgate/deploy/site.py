"""The MDM site config: load, validate with FILE:LINE:COL, resolve into what the renderer needs.

Shape is checked by spendgate/site.schema.json; what a schema cannot say (files that must hold a
CA certificate, a policy whose identity chain must include the method we deploy, loopback in
laptop mode) is checked here, each problem at the position of the value that causes it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import jsonschema
from cryptography import x509

from spendgate.deploy import ca as ca_mod
from spendgate.metering import opaque
from spendgate.metering.providers import site_hosts
from spendgate.policy.model import PolicyError
from spendgate.policy.model import load as load_policy
from spendgate.yamlcheck import Problem, load_yaml_with_marks, mark, schema_problems

log = logging.getLogger(__name__)

USER_TOKEN = "@@USER@@"  # filled in by the install scripts with the machine's user
PASSWORD_TOKEN = "@@PROXY_PASSWORD@@"  # filled in at install time from SPENDGATE_PROXY_PASSWORD: the user's spendgate token
DEFAULT_HEADER = "x-spendgate-user"
OSES = ("linux", "macos", "windows")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
DASHBOARD_HOST = "spendgate.local"  # the gateway's own virtual host (option spendgate_dashboard_host)


class SiteError(PolicyError):
    """Every problem in a site config, one FILE:LINE:COL line each."""


@dataclass(frozen=True, slots=True)
class OSPaths:
    dir: str  # the kit's files on the machine (CA, bundle, PAC, site.json, policy)
    claude_settings: str  # Claude Code managed-settings.json
    install: str  # laptop mode: where spendgate and its .venv live
    windows: bool = False

    def join(self, *parts: str) -> str:
        cls = PureWindowsPath if self.windows else PurePosixPath
        return str(cls(self.dir, *parts))


OS_DEFAULTS: dict[str, OSPaths] = {
    "linux": OSPaths("/etc/spendgate", "/etc/claude-code/managed-settings.json", "/opt/spendgate"),
    "macos": OSPaths("/Library/Application Support/spendgate",
                     "/Library/Application Support/ClaudeCode/managed-settings.json", "/usr/local/spendgate"),
    "windows": OSPaths(r"C:\ProgramData\spendgate", r"C:\Program Files\ClaudeCode\managed-settings.json",
                       r"C:\Program Files\spendgate", windows=True),
}


@dataclass(frozen=True)
class Site:
    file: Path
    org_name: str
    identifier: str
    mode: str  # central | laptop
    host: str
    port: int
    pac_url: str | None
    ca_pem: bytes | None  # central: the CA (+ also_trust); laptop: None, each machine makes its own
    ca_fingerprints: tuple[str, ...]
    extra_roots_pem: bytes
    hosts: tuple[str, ...]  # exact provider hosts routed to the gateway
    patterns: tuple[str, ...]  # shell-glob hosts routed to the gateway
    identity_method: str
    identity_header: str
    identity_user: str
    no_proxy: tuple[str, ...]
    policy_file: Path | None
    paths: dict[str, OSPaths]
    warnings: tuple[Problem, ...] = field(default=())
    # hosts the gateway counts without decrypting (*.cursor.sh + the policy's opaque_hosts): routed
    # to the gateway too, or it never sees those connections
    opaque_patterns: tuple[str, ...] = opaque.DEFAULT_OPAQUE_HOSTS
    dashboard_host: str = DASHBOARD_HOST  # served by the gateway itself: must go to it
    store: str | None = None  # central replicas: the shared PostgreSQL store (no password)
    replicas: tuple[str, ...] = ()  # central replicas (host:port) behind gateway.host:port (haproxy.cfg)
    central: str | None = None  # laptop mode: the centre's API URL (spendgate_central)
    central_token_file: str | None = None  # laptop mode: the user's token file on each machine

    @property
    def proxy_hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def proxy_url(self) -> str:
        """The URL agents put in HTTPS_PROXY (credentials as install-time tokens)."""
        creds = f"{self.identity_user}:{PASSWORD_TOKEN}@" if self.identity_method == "proxy_auth" else ""
        return f"http://{creds}{self.proxy_hostport}"


def schema() -> dict[str, Any]:
    return json.loads(resources.files("spendgate.deploy").joinpath("site.schema.json").read_text())


_VALIDATOR = jsonschema.Draft202012Validator(schema())


def _read_certs(base: Path, rel: str, pos: tuple[int, int], problems: list[Problem],
                warnings: list[Problem]) -> list[x509.Certificate]:
    path = (base / rel).expanduser()
    try:
        pem = path.read_bytes()
    except OSError as e:
        hint = ""
        if path.name == ca_mod.CERT_FILE and not path.exists():  # a CA nobody has made yet
            hint = (f"; create the CA first: spendgate ca init --confdir {path.parent} (a central gateway's CA: run "
                    f"it on the gateway and copy only its {ca_mod.CERT_FILE} here; mdm/README.md section 2)")
        problems.append(Problem(*pos, f"cannot read {path}: {e.strerror}{hint}"))
        return []
    if b"PRIVATE KEY" in pem:
        problems.append(Problem(*pos, f"{path} contains a private key: give the certificate only "
                                      "(mitmproxy-ca-cert.pem); the key stays on the gateway"))
        return []
    certs = ca_mod.load_certs(pem)
    if not certs:
        problems.append(Problem(*pos, f"{path} holds no PEM certificate"))
    now = datetime.now(UTC)
    for c in certs:
        if c.not_valid_after_utc <= now:
            problems.append(Problem(*pos, f"{path}: the certificate expired on {c.not_valid_after_utc:%Y-%m-%d}"))
        elif c.not_valid_after_utc - now < timedelta(days=30):
            warnings.append(Problem(*pos, f"{path}: the certificate expires on {c.not_valid_after_utc:%Y-%m-%d}; "
                                          "plan the rotation (mdm/README.md)", warning=True))
    return certs


def parse(text: str, file: Path) -> Site:
    """Validate a site config and resolve it; raise SiteError naming every problem's position."""
    doc, marks, problems = load_yaml_with_marks(text)
    if not isinstance(doc, dict):
        raise SiteError(str(file), problems or [Problem(1, 1, "a site config is a mapping (version: 1, ...)")])
    problems += schema_problems(_VALIDATOR, doc, marks)
    if problems:
        raise SiteError(str(file), sorted(problems, key=lambda p: (p.line, p.col)))
    warnings: list[Problem] = []
    base = file.parent
    mode = doc["mode"]
    gw = doc.get("gateway") or {}
    ident = doc.get("identity") or {}
    method = ident.get("method", "local_user" if mode == "laptop" else "proxy_auth")
    at = lambda *path: mark(marks, path)  # noqa: E731

    host = gw.get("host", "127.0.0.1" if mode == "laptop" else "")
    if mode == "central" and not host:
        problems.append(Problem(*at("gateway"), "central mode needs gateway.host (the gateway's DNS name)"))
    if mode == "laptop" and host not in LOOPBACK:
        problems.append(Problem(*at("gateway", "host"), f"laptop mode listens on 127.0.0.1 only, not {host!r}"))
    replicas = tuple(gw.get("replicas") or ())
    if replicas and mode != "central":
        problems.append(Problem(*at("gateway", "replicas"), "replicas are for central mode"))
    elif replicas and not gw.get("store"):  # each replica would enforce the whole cap: N x the budget
        problems.append(Problem(*at("gateway", "replicas"), "several replicas need gateway.store (a PostgreSQL "
                                                            "store they share); without it each one enforces the "
                                                            "whole cap, N replicas N times it (docs/scale-out.md)"))
    if mode == "central" and method == "local_user":
        problems.append(Problem(*at("identity", "method"), "local_user names the gateway's own account in central "
                                                           "mode; use proxy_auth, api_key or header"))
    if method == "header":
        problems.append(Problem(*at("identity", "method"), "a header is set by the client itself, so anyone can "
                                                           "send any name: use proxy_auth (each machine gets its "
                                                           "user's token: spendgate tokens issue USER) in central "
                                                           "mode, local_user in laptop mode"))
    if gw.get("central") and mode != "laptop":
        problems.append(Problem(*at("gateway", "central"), "gateway.central is for laptop mode: laptops report to "
                                                           "a centre; a central gateway is the centre"))
    if mode == "laptop" and method == "proxy_auth":
        problems.append(Problem(*at("identity", "method"), "proxy_auth is for central mode; laptop mode charges "
                                                           "the OS user (local_user) or a header"))

    ca = doc.get("ca") or {}
    certs: list[x509.Certificate] = []
    if mode == "laptop" and ca.get("cert"):
        problems.append(Problem(*at("ca", "cert"), "laptop mode creates a CA on each machine at install (its key "
                                                   "never leaves it); remove ca.cert"))
    elif mode == "central":
        if not ca.get("cert"):
            problems.append(Problem(*at("ca") if "ca" in doc else (1, 1),
                                    "central mode needs ca.cert (create it on the gateway: spendgate ca init)"))
        else:
            certs += _read_certs(base, ca["cert"], at("ca", "cert"), problems, warnings)
        for i, extra in enumerate(ca.get("also_trust") or []):
            certs += _read_certs(base, extra, at("ca", "also_trust", i), problems, warnings)
    extra_roots = b""
    if ca.get("extra_roots"):
        got = _read_certs(base, ca["extra_roots"], at("ca", "extra_roots"), problems, warnings)
        extra_roots = b"".join(ca_mod.pem(c) for c in got)

    prov = doc.get("providers") or {}
    include_chatgpt = prov.get("include_chatgpt", True)
    hosts, builtin_patterns = site_hosts(include_chatgpt)  # exact hosts, then globs (Bedrock, Azure, ...)
    patterns = list(builtin_patterns)
    for i, h in enumerate(prov.get("extra_hosts") or []):
        h = h.lower()
        if h.strip("*.") == "":
            problems.append(Problem(*at("providers", "extra_hosts", i), f"{h!r} would send every host to the gateway"))
        elif "*" in h:
            if h not in patterns:
                patterns.append(h)
        elif h not in hosts:
            hosts += (h,)

    policy_file = None
    opaque_patterns = opaque.DEFAULT_OPAQUE_HOSTS
    if doc.get("policy"):
        policy_file = (base / doc["policy"]).expanduser()
        try:
            policy = load_policy(policy_file)
        except PolicyError as e:
            problems.append(Problem(*at("policy"), f"the policy is invalid:\n{e}"))
        else:
            opaque_patterns = opaque.patterns(policy.raw)
            if replicas and ("client_ip" in policy.identity or policy.trusted_proxies):
                # behind the kit's TCP balancer every replica sees the balancer's address
                problems.append(Problem(*at("gateway", "replicas"), "behind the replicas' TCP load balancer every "
                                        "connection comes from the balancer's address: the policy's client_ip "
                                        "identity and trusted_proxies would name (or trust) everyone alike; "
                                        "use proxy_auth or api_key"))
            wanted = f"header:{ident.get('header', DEFAULT_HEADER)}" if method == "header" else method
            if wanted.lower() not in [m.lower() for m in policy.identity]:
                problems.append(Problem(*at("identity", "method") if "identity" in doc else at("policy"),
                                        f"the policy's identity list {list(policy.identity)} lacks {wanted}: the "
                                        "gateway would not use the identity these machines send"))

    paths = {}
    for os_name in OSES:
        over = (doc.get("paths") or {}).get(os_name) or {}
        d = OS_DEFAULTS[os_name]
        paths[os_name] = OSPaths(over.get("dir", d.dir), over.get("claude_settings", d.claude_settings),
                                 over.get("install", d.install), d.windows)
    if problems:
        raise SiteError(str(file), sorted(problems, key=lambda p: (p.line, p.col)))
    org = doc["organization"]
    return Site(
        file=file, org_name=org["name"], identifier=org["identifier"], mode=mode, host=host,
        port=gw.get("port", 18080 if mode == "laptop" else 8080), pac_url=gw.get("pac_url"),
        ca_pem=b"".join(ca_mod.pem(c) for c in certs) if certs else None,
        ca_fingerprints=tuple(ca_mod.sha256_fingerprint(c) for c in certs),
        extra_roots_pem=extra_roots, hosts=hosts, patterns=tuple(patterns), opaque_patterns=opaque_patterns,
        dashboard_host=(gw.get("dashboard_host") or DASHBOARD_HOST).lower(), identity_method=method,
        identity_header=ident.get("header", DEFAULT_HEADER).lower(), identity_user=ident.get("user", USER_TOKEN),
        no_proxy=tuple(doc.get("no_proxy") or ("localhost", "127.0.0.1", "::1")), policy_file=policy_file,
        paths=paths, store=gw.get("store"), replicas=replicas,
        central=gw.get("central"), central_token_file=gw.get("central_token_file"),
        warnings=tuple(warnings),
    )  # fmt: skip


def load(path: Path) -> Site:
    try:
        text = path.read_text()
    except OSError as e:
        raise SiteError(str(path), [Problem(1, 1, f"cannot read: {e.strerror or e}")]) from None
    return parse(text, path)
