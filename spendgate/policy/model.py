"""The security team's YAML policy: load, validate with line numbers, resolve who pays what.

Validation has two layers: the JSON Schema (policies/policy.schema.json, also for editors) for
shape, and checks the schema cannot express (duplicate keys, unknown workspaces, expired
exceptions, time zones, CIDRs). Every problem names FILE:LINE:COL.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from spendgate.policy.parse_cache import load_policy_yaml, private_stamp, remember_stamp, schema_stamp
from spendgate.policy.runway import RunwayConfig, parse_runway
from spendgate.policy.sections import (
    AlertsConfig,
    ApprovalsConfig,
    SinkConfig,
    canonical_user,
    parse_sections,
)
from spendgate.yamlcheck import (
    Explain,
    Marks,
    Problem,
    load_yaml_with_marks,
    mark,
    schema_problems,
)

if TYPE_CHECKING:  # annotations only: _validator() imports it on the first policy load
    import jsonschema

WINDOWS = ("hour", "day", "week", "month")
Budgets = dict[str, Decimal]  # window -> limit in USD


_GLOB = re.compile(r"[*?\[]")  # what makes fnmatch treat a member as a pattern


class PolicyError(ValueError):
    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.render(file) for p in problems))


# --- the schema ------------------------------------------------------------------------------


_SCHEMA_TEXT = resources.files("spendgate.policy").joinpath("policy.schema.json").read_text()


def schema() -> dict[str, Any]:
    return json.loads(_SCHEMA_TEXT)


@functools.cache
def _validator() -> Any:
    """The policy schema's validator, built (and jsonschema imported, ~40-90 ms) on the first load:
    commands that only import this module for its types (reports) do not pay for it.
    Formats are checked too: a quoted "2026-02-30" is a positioned problem, not a ValueError later."""
    import jsonschema

    return jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


# The `users` mapping's schema constrains each value alike and not the names (checked here, so a
# schema change that starts constraining names turns the shortcut below off rather than wrong).
_USERS_SCHEMA = schema()["properties"]["users"]
_USERS_DEDUP = set(_USERS_SCHEMA) <= {"type", "additionalProperties", "description"}


def _valid_fast(doc: dict) -> bool:
    """True when the policy passes the schema, checking each distinct `users` entry once.

    A 10,000-user policy holds a handful of distinct entries (budgets, until, workspaces): the
    schema's verdict on an entry does not depend on its name, so one entry per distinct value
    stands for all (0.45 s -> ~0.05 s of start-up). False -- including on any error -- sends the
    caller to the full check, which gives every problem with its own position, as before.

    Entries are told apart by `repr`: for what YAML builds (str, int, float, bool, None, dates,
    lists, dicts) equal reprs mean equal values of equal types, and it is ~5x cheaper than the JSON
    text it replaces (10,000 users: 41 -> 8 ms, issue 18). A reference cycle shows as `[...]`,
    which no YAML value spells; validating one recurses without end, so RecursionError is a False
    (as is anything else the validator raises: the full check then says what is wrong)."""
    users = doc.get("users")
    if not _USERS_DEDUP or not isinstance(users, dict) or len(users) < 64:
        return False
    try:
        distinct: dict[str, tuple[Any, Any]] = {}
        for name, entry in users.items():
            distinct.setdefault(repr(entry), (name, entry))
        return _validator().is_valid({**doc, "users": dict(distinct.values())})
    except (RecursionError, TypeError, ValueError):  # a cycle, a runaway nesting, a key no schema reads:
        return False  # the full check says what


def _valid_stamp(text: str) -> Path | None:
    """The stamp saying this policy text passed the policy schema (parse_cache.schema_stamp)."""
    return schema_stamp(text, _SCHEMA_TEXT, "policy-valid")


def _explain(marks: Marks) -> Explain:
    """Policy-specific wording for the schema errors people actually make."""

    def explain(err: jsonschema.ValidationError, path: tuple, where: str) -> str | Problem | None:
        if err.validator == "propertyNames" or (err.validator == "pattern" and path == ("keys",)):
            bad = err.instance if isinstance(err.instance, str) else None
            pos = mark(marks, (*path, bad), key_of=True) if bad else mark(marks, path)
            return Problem(*pos, f"malformed key fingerprint {bad!r} (expected sha256: + 12 hex digits; "
                                 "`spendgate fingerprint` prints one)")
        if err.validator == "format" and err.validator_value == "date":
            return f"{where}: not a date (YYYY-MM-DD): {err.instance!r}"
        if err.validator in ("type", "minimum") and len(path) >= 2 and path[-1] in WINDOWS:
            return f"budget {where} must be a non-negative number of USD, not {err.instance!r}"
        if err.validator == "oneOf" and path == ("unmetered",):
            return f"{where}: must be block, allow or {{charge: USD}} (a flat amount per request)"
        if err.validator == "oneOf" and path == ("unpriced",):
            return f"{where}: must be block, allow or {{charge_per_mtok: {{input: N, output: N}}}}"
        if err.validator == "oneOf" and len(path) == 3 and path[0] == "step_down" and path[2] == "at":
            return (f"step_down[{path[1]}].at must be a percent (0 < at <= 100, e.g. 80 or \"80%\") or cap, "
                    f"not {err.instance!r}")
        if err.validator == "minProperties" and len(path) == 2 and path[0] == "rate_limits":
            return f"rate_limits[{path[1]}] needs requests_per_minute, requests_per_day or tokens_per_minute"
        if err.validator == "enum" and path == ("subscription_usage",):
            return (f"subscription_usage must be count, ignore or separate, not {err.instance!r} "
                    "(what sign-in traffic covered by a seat does to budgets; see policies/README.md)")
        if err.validator == "pattern" and path and path[0] == "identity":
            return f"unknown identity source {err.instance!r} (proxy_auth, api_key, client_ip, local_user, header:NAME)"
        return None

    return explain


# --- the model -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exception_:
    budgets: Budgets
    until: date | None


@dataclass(frozen=True, slots=True)
class KeyRule:
    user: str | None
    budgets: Budgets
    until: date | None


@dataclass(frozen=True, slots=True)
class Workspace:
    name: str
    members: tuple[str, ...]
    budgets: Budgets
    owners: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SubscriptionBudgets:
    """Limits on subscription usage in notional USD (list-price equivalent), for `separate` mode."""

    organization: Budgets = field(default_factory=dict)  # all subscription usage of the organization
    user: Budgets = field(default_factory=dict)  # each user's subscription usage, every plan together
    plans: dict[str, Budgets] = field(default_factory=dict)  # per holder of a plan, that plan's usage

    def empty(self) -> bool:
        return not (self.organization or self.user or any(self.plans.values()))


# What subscription usage (sign-in traffic covered by a seat) does to budgets:
#   count    charged at its notional (list-price) value to the same budgets as API spend
#   ignore   recorded and reported, never charged to or blocked by any budget (the default:
#            budgets are money, and the seat, not the tokens, is what is paid)
#   separate charged at its notional value to its own budgets (subscription_budgets), never to
#            the API budgets
SUBSCRIPTION_USAGE = ("count", "ignore", "separate")
DEFAULT_SUBSCRIPTION_USAGE = "ignore"


@dataclass(frozen=True)
class Policy:
    path: str
    sha256: str
    timezone: ZoneInfo
    org_name: str
    org_budgets: Budgets
    org_owners: tuple[str, ...]
    identity: tuple[str, ...]
    defaults: dict[str, Budgets]
    workspaces: dict[str, Workspace]
    users: dict[str, Exception_]
    user_workspaces: dict[str, tuple[str, ...]]
    keys: dict[str, KeyRule]
    client_ips: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]
    unpriced: str | dict[str, Decimal]  # "block" | "allow" | {"input": x, "output": y}
    on_store_error: str
    degraded_allowance: Decimal  # USD per scope per replica while a shared store is away (fail_open_bounded)
    typical_output_tokens: dict[str, int]
    raw: dict[str, Any] = field(repr=False)
    warnings: tuple[Problem, ...] = ()
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    sinks: dict[str, SinkConfig] = field(default_factory=dict)
    approvals: ApprovalsConfig = field(default_factory=ApprovalsConfig)
    runway: RunwayConfig = field(default_factory=RunwayConfig)  # step_down, rate_limits, models
    mode: str | None = None  # central | laptop | None (not said)
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    unknown_users: str = "default"  # block | unattributed | default
    header_signing: HeaderSigning | None = field(default=None, repr=False)
    # a laptop reporting to a centre: USD per user per window admitted while the centre is away (none: fail closed)
    offline_allowance: Budgets = field(default_factory=dict)

    def trusts(self, ip: str | None) -> bool:
        """Whether a peer is one of the `trusted_proxies`, whose identity headers are believed."""
        if not ip or not self.trusted_proxies:
            return False
        addr = peer_address(ip)
        return addr is not None and any(addr in net for net in self.trusted_proxies)

    def knows(self, user: str) -> bool:
        """Whether the policy names this user anywhere: users:, workspace members (globs) or owners,
        organization owners, approvers, keys' users, client_ips. `unknown_users` decides the rest."""
        if user in self.users or user in self.org_owners:
            return True
        for ws in self.workspaces.values():
            if user in ws.owners or self.is_member(user, ws.name):
                return True
        rules = [*self.approvals.workspaces.values(), *([self.approvals.organization] if self.approvals.organization else [])]
        if any(user in r.approvers for r in rules):
            return True
        return any(k.user == user for k in self.keys.values()) or any(u == user for _, u in self.client_ips)
    unmetered: str | Decimal | None = None  # "block" | "allow" | USD per request; None: by gateway mode
    subscription_usage: str = DEFAULT_SUBSCRIPTION_USAGE
    subscription_usage_explicit: bool = False  # the policy says it (else the default applies)
    subscription_budgets: SubscriptionBudgets = field(default_factory=SubscriptionBudgets)

    @functools.cached_property
    def _members(self) -> tuple[tuple[str, frozenset[str], tuple[str, ...]], ...]:
        """Per workspace: (name, member names, member globs). A name without glob characters
        matches only itself, so big member lists cost a set lookup, not a scan per request."""
        out = []
        for ws in self.workspaces.values():
            globs = tuple(m for m in ws.members if _GLOB.search(m))
            out.append((ws.name, frozenset(m for m in ws.members if not _GLOB.search(m)), globs))
        return tuple(out)

    def is_member(self, user: str, workspace: str) -> bool:
        for name, names, globs in self._members:
            if name == workspace:
                return user in names or any(fnmatch.fnmatchcase(user, pat) for pat in globs)
        return False

    def workspaces_of(self, user: str) -> tuple[str, ...]:
        """Workspaces a user belongs to: listed on the user, or matched by members (names or globs)."""
        found = list(self.user_workspaces.get(user, ()))
        for name, names, globs in self._members:
            if name not in found and (user in names or any(fnmatch.fnmatchcase(user, pat) for pat in globs)):
                found.append(name)
        return tuple(found)

    def user_budgets(self, user: str, today: date) -> tuple[Budgets, date | None]:
        """Defaults with the user's live exception laid over them (window by window)."""
        base = self.defaults.get("unattributed" if user == UNATTRIBUTED else "user", {})
        exc = self.users.get(user)
        if exc and (exc.until is None or today <= exc.until):
            return {**base, **exc.budgets}, exc.until
        return dict(base), None

    def key_budgets(self, fp: str, today: date) -> tuple[Budgets, date | None]:
        base = self.defaults.get("key", {})
        rule = self.keys.get(fp)
        if rule and rule.budgets and (rule.until is None or today <= rule.until):
            return {**base, **rule.budgets}, rule.until
        return dict(base), None

    def workspace_budgets(self, name: str) -> Budgets:
        ws = self.workspaces.get(name)
        return {**self.defaults.get("workspace", {}), **(ws.budgets if ws else {})}

    def typical_output(self, model: str | None) -> int:
        t = self.typical_output_tokens
        if model:
            for pat, n in t.items():
                if pat != "*" and fnmatch.fnmatchcase(model, pat):
                    return n
        return t.get("*", DEFAULT_TYPICAL_OUTPUT)

    def user_for_ip(self, ip: str) -> str | None:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        for net, user in self.client_ips:
            if addr in net:
                return user
        return None


UNATTRIBUTED = "unattributed"
DEFAULT_TYPICAL_OUTPUT = 4096
DEFAULT_IDENTITY = ("proxy_auth", "api_key", "local_user")
CENTRAL_DEFAULT_IDENTITY = ("proxy_auth", "api_key")  # mode: central: the gateway's own user names nobody


@dataclass(frozen=True, slots=True)
class HeaderSigning:
    """`header_signature`: an asserted header is believed when an HMAC-SHA256 over
    "UNIX_SECONDS.HEADER_NAME.VALUE" with this secret is fresh and matches (see identity.signed)."""

    secret: bytes = field(repr=False)
    header: str = "x-spendgate-signature"
    max_age_seconds: int = 300


def _header_signing(doc: dict, marks: Marks, base: Path, warnings: list[Problem]) -> HeaderSigning | None:
    """The shared secret, from a file next to the policy or the environment; missing: a warning
    (the header is then never believed, which fails closed)."""
    raw = doc.get("header_signature")
    if not raw:
        return None
    secret = b""
    if raw.get("secret_file"):
        path = base / Path(raw["secret_file"]).expanduser()
        try:
            secret = path.read_bytes().strip()
        except OSError as e:
            warnings.append(Problem(*mark(marks, ("header_signature", "secret_file")),
                                    f"cannot read {path}: {e.strerror or e}; signed headers will be refused",
                                    warning=True))
    elif raw.get("secret_env"):
        secret = os.environ.get(raw["secret_env"], "").strip().encode()
        if not secret:
            warnings.append(Problem(*mark(marks, ("header_signature", "secret_env")),
                                    f"${raw['secret_env']} is not set here; signed headers will be refused",
                                    warning=True))
    if secret and len(secret) < 16:
        warnings.append(Problem(*mark(marks, ("header_signature",)), "the header secret is shorter than 16 bytes",
                                warning=True))
    return HeaderSigning(secret, raw.get("header", "x-spendgate-signature").lower(), int(raw.get("max_age_seconds", 300)))


@functools.lru_cache(maxsize=4096)  # per request on the event loop; peers are few, parsing is ~5 us
def peer_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client address as an object (IPv4-mapped IPv6 as IPv4); None when it is not one."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


# Identity sources a client cannot choose (each is checked against something the client does not
# control), and those it asserts (believed only from `trusted_proxies`). See docs/security.md.
AUTHENTICATING = ("proxy_auth", "api_key", "client_ip", "local_user")
ASSERTED_PREFIX = "header:"


def is_asserted(source: str) -> bool:
    return source.startswith(ASSERTED_PREFIX)


def _trusted_proxies(doc: dict, marks: Marks, problems: list[Problem]) -> tuple:
    nets = []
    for i, cidr in enumerate(doc.get("trusted_proxies") or []):
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            problems.append(Problem(*mark(marks, ("trusted_proxies", i)), f"not a CIDR: {cidr!r}"))
            continue
        if net.prefixlen == 0:
            problems.append(Problem(*mark(marks, ("trusted_proxies", i)),
                                    f"trusted_proxies {cidr!r} trusts every address: any client could name any "
                                    "user in a header; list only the proxies that set it"))
            continue
        nets.append(net)
    for version in (4, 6):  # several ranges that together cover everything trust everyone too
        if any(n.prefixlen == 0 for n in ipaddress.collapse_addresses(n for n in nets if n.version == version)):
            problems.append(Problem(*mark(marks, ("trusted_proxies",)),
                                    f"trusted_proxies together cover every IPv{version} address: any client could "
                                    "name any user in a header; list only the proxies that set it"))
    return tuple(nets)


def identity_problems(doc: dict, marks: Marks, identity: tuple[str, ...], trusted: tuple, mode: str | None,
                      signed: bool = False) -> list[Problem]:
    """Chains a client could talk its way through: an asserted source believed from anywhere, or
    (central mode) the gateway's own OS account standing in for every client."""
    out = []

    def pos(i: int) -> tuple[int, int]:  # looked up only for a problem (a cached parse composes positions then)
        return mark(marks, ("identity", i)) if doc.get("identity") else (1, 1)

    for i, source in enumerate(identity):
        if is_asserted(source) and not trusted and not signed:
            out.append(Problem(*pos(i), f"{source} is asserted by the client (anyone can send any name); it is "
                                     "believed only from the proxies listed under trusted_proxies: [CIDR, ...] "
                                     "(or signed: header_signature). Add the proxies that set it, or use "
                                     "proxy_auth (spendgate tokens issue)"))
        if source == "local_user" and mode == "central":
            out.append(Problem(*pos(i), "local_user names the gateway's own OS account in central mode, not the "
                                     "client; use proxy_auth, api_key or client_ip"))
    return out


def _budgets(raw: dict | None) -> Budgets:
    return {w: Decimal(str(v)) for w, v in (raw or {}).items()}


def _date(v: str | None) -> date | None:
    return date.fromisoformat(v) if v else None


def parse(text: str, file: str = "<policy>", today: date | None = None) -> Policy:
    """Parse and validate a policy; raise PolicyError listing every problem with its position."""
    doc, marks, problems = load_policy_yaml(text)
    if doc is None or not isinstance(doc, dict):
        raise PolicyError(file, problems or [Problem(1, 1, "a policy is a mapping (version: 1, budgets, ...)")])
    stamp = _valid_stamp(text)
    if stamp is None or not private_stamp(stamp):
        if not _valid_fast(doc):  # the schema's word on a value the loader could not read adds nothing
            read = {(p.line, p.col) for p in problems}
            problems += [p for p in schema_problems(_validator(), doc, marks, _explain(marks))
                         if (p.line, p.col) not in read]
        if not problems and stamp is not None:
            remember_stamp(stamp)
    if problems:
        raise PolicyError(file, sorted(problems, key=lambda p: (p.line, p.col)))
    warnings: list[Problem] = []
    tzname = doc.get("timezone", "UTC")
    try:
        tz = ZoneInfo(tzname)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(Problem(*mark(marks, ("timezone",)), f"unknown time zone {tzname!r}"))
        tz = ZoneInfo("UTC")
    today = today or datetime.now(tz).date()
    workspaces = {
        name: Workspace(name, tuple(canonical_user(m) for m in w.get("members", [])), _budgets(w.get("budgets")),
                        tuple(canonical_user(o) for o in w.get("owners", [])))
        for name, w in (doc.get("workspaces") or {}).items()
    }
    users, user_ws = {}, {}
    for raw_name, u in (doc.get("users") or {}).items():
        name = raw_name
        try:
            until = _date(u.get("until"))
        except ValueError:
            problems.append(Problem(*mark(marks, ("users", name, "until")), f"users.{name}.until: not a date"))
            until = None
        if until and until < today:
            warnings.append(Problem(*mark(marks, ("users", raw_name, "until")),
                                    f"the exception for {name} expired on {until}; defaults apply", warning=True))
        name = canonical_user(name)
        if name in users:
            problems.append(Problem(*mark(marks, ("users", raw_name), key_of=True),
                                    f"{raw_name!r} is listed twice (e-mail addresses compare case-insensitively)"))
        users[name] = Exception_(_budgets(u.get("budgets")), until)
        for i, ws in enumerate(u.get("workspaces", [])):
            if ws not in workspaces:
                problems.append(Problem(*mark(marks, ("users", raw_name, "workspaces", i)),
                                        f"{name} is a member of undefined workspace {ws!r}"))
        user_ws[name] = tuple(u.get("workspaces", []))
    keys = {}
    for fp, k in (doc.get("keys") or {}).items():
        until = _date(k.get("until")) if k.get("until") else None
        if until and until < today:
            warnings.append(Problem(*mark(marks, ("keys", fp, "until")),
                                    f"the exception for key {fp} expired on {until}", warning=True))
        keys[fp] = KeyRule(canonical_user(k["user"]) if k.get("user") else None, _budgets(k.get("budgets")), until)
    nets = []
    for cidr, user in (doc.get("client_ips") or {}).items():
        try:
            nets.append((ipaddress.ip_network(cidr, strict=False), canonical_user(user)))
        except ValueError:
            problems.append(Problem(*mark(marks, ("client_ips", cidr), key_of=True), f"not a CIDR: {cidr!r}"))
    mode = doc.get("mode")
    identity = tuple(doc.get("identity") or (CENTRAL_DEFAULT_IDENTITY if mode == "central" else DEFAULT_IDENTITY))
    if "client_ip" in identity and not nets:
        warnings.append(Problem(*mark(marks, ("identity",)), "client_ip is listed but client_ips is empty",
                                warning=True))
    trusted = _trusted_proxies(doc, marks, problems)
    signing = _header_signing(doc, marks, Path(file).parent, warnings)
    problems += identity_problems(doc, marks, identity, trusted, mode, signed=signing is not None)
    alerts, sinks, approvals, found = parse_sections(doc, set(workspaces))
    problems += [Problem(*mark(marks, path), msg) for path, msg in found]
    runway, found = parse_runway(doc, set(workspaces))
    problems += [Problem(*mark(marks, path), msg) for path, msg in found]
    unmetered = doc.get("unmetered")
    if isinstance(unmetered, dict):
        unmetered = Decimal(str(unmetered["charge"]))
        if unmetered <= 0:
            problems.append(Problem(*mark(marks, ("unmetered", "charge")),
                                    "unmetered.charge must be more than 0 USD (write `unmetered: allow` to forward "
                                    "unmetered endpoints free)"))
    sub_mode = doc.get("subscription_usage", DEFAULT_SUBSCRIPTION_USAGE)
    raw_sb = doc.get("subscription_budgets") or {}
    sub_budgets = SubscriptionBudgets(_budgets(raw_sb.get("organization")), _budgets(raw_sb.get("user")),
                                      {name: _budgets(b) for name, b in (raw_sb.get("plans") or {}).items()})
    if "subscription_budgets" in doc and sub_mode != "separate":
        problems.append(Problem(*mark(marks, ("subscription_budgets",), key_of=True),
                                f"subscription_budgets apply only with `subscription_usage: separate` "
                                f"(this policy says {sub_mode}{'' if 'subscription_usage' in doc else ', the default'})"))
    for name in sub_budgets.plans:
        if name not in (doc.get("plans") or {}):
            problems.append(Problem(*mark(marks, ("subscription_budgets", "plans", name), key_of=True),
                                    f"subscription_budgets.plans.{name}: no plan {name!r} under plans:"))
    if sub_mode == "count":
        for name, plan in (doc.get("plans") or {}).items():
            if isinstance(plan, dict) and plan.get("counts_against_budgets"):
                warnings.append(Problem(*mark(marks, ("plans", name, "counts_against_budgets")),
                                        f"plan {name} counts against budgets and subscription_usage is count: its "
                                        "holders' budgets are charged twice for the same work (the seat and its "
                                        "tokens at list price)", warning=True))
    if sub_mode == "separate" and sub_budgets.empty():
        warnings.append(Problem(*mark(marks, ("subscription_usage",)), "subscription_usage is separate but "
                                "subscription_budgets sets no limit: subscription usage is recorded, never limited",
                                warning=True))
    if problems:
        raise PolicyError(file, problems)
    unpriced = doc.get("unpriced", {"charge_per_mtok": {"input": 15, "output": 75}})
    if isinstance(unpriced, dict):
        unpriced = {k: Decimal(str(v)) for k, v in unpriced["charge_per_mtok"].items()}
    org = doc.get("organization") or {}
    return Policy(
        path=file,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        timezone=tz,
        org_name=org.get("name", "organization"),
        org_budgets=_budgets(org.get("budgets")),
        org_owners=tuple(canonical_user(o) for o in org.get("owners", [])),
        identity=identity,
        defaults={k: _budgets(v) for k, v in (doc.get("defaults") or {}).items()},
        workspaces=workspaces,
        users=users,
        user_workspaces=user_ws,
        keys=keys,
        client_ips=tuple(nets),
        unpriced=unpriced,
        on_store_error=doc.get("on_store_error", "fail_closed"),
        degraded_allowance=Decimal(str(doc.get("degraded_allowance_usd", 1))),
        offline_allowance=_budgets(doc.get("offline_allowance")),
        typical_output_tokens=dict(doc.get("typical_output_tokens") or {}),
        unmetered=unmetered,
        raw=doc,
        warnings=tuple(warnings),
        alerts=alerts,
        sinks=sinks,
        approvals=approvals,
        runway=runway,
        mode=mode,
        trusted_proxies=trusted,
        unknown_users=doc.get("unknown_users", "default"),
        subscription_usage=sub_mode,
        subscription_usage_explicit="subscription_usage" in doc,
        subscription_budgets=sub_budgets,
        header_signing=signing,
    )


def cap_count(policy: Policy) -> int:
    """How many budget caps (scope x window) the policy sets: a reload that lowers it is logged."""
    groups = [policy.org_budgets, *policy.defaults.values(), *(w.budgets for w in policy.workspaces.values()),
              *(u.budgets for u in policy.users.values()), *(k.budgets for k in policy.keys.values())]
    return sum(len(g) for g in groups)


def positioned(policy: Policy, found: list[tuple[tuple, str]]) -> list[Problem]:
    """(policy path, message) pairs found by checks outside this module, placed at FILE:LINE:COL."""
    if not found:
        return []
    try:
        _, marks, _ = load_yaml_with_marks(Path(policy.path).read_text())
    except OSError:
        marks = {}
    return [Problem(*mark(marks, path, key_of=True), msg) for path, msg in found]


def load(path: Path, today: date | None = None) -> Policy:
    try:
        text = path.read_text()
    except OSError as e:
        raise PolicyError(str(path), [Problem(1, 1, f"cannot read: {e.strerror or e}")]) from None
    return parse(text, str(path), today)
