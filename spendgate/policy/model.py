"""The security team's YAML policy: load, validate with line numbers, resolve who pays what.

Validation has two layers: the JSON Schema (policies/policy.schema.json, also for editors) for
shape, and checks the schema cannot express (duplicate keys, unknown workspaces, expired
exceptions, time zones, CIDRs). Every problem names FILE:LINE:COL.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import json
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema

from spendgate.policy.sections import (
    AlertsConfig,
    ApprovalsConfig,
    SinkConfig,
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

WINDOWS = ("hour", "day", "week", "month")
Budgets = dict[str, Decimal]  # window -> limit in USD


class PolicyError(ValueError):
    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.render(file) for p in problems))


# --- the schema ------------------------------------------------------------------------------


def schema() -> dict[str, Any]:
    return json.loads(resources.files("spendgate.policy").joinpath("policy.schema.json").read_text())


_VALIDATOR = jsonschema.Draft202012Validator(schema())


def _explain(marks: Marks) -> Explain:
    """Policy-specific wording for the schema errors people actually make."""

    def explain(err: jsonschema.ValidationError, path: tuple, where: str) -> str | Problem | None:
        if err.validator == "propertyNames" or (err.validator == "pattern" and path == ("keys",)):
            bad = err.instance if isinstance(err.instance, str) else None
            pos = mark(marks, (*path, bad), key_of=True) if bad else mark(marks, path)
            return Problem(*pos, f"malformed key fingerprint {bad!r} (expected sha256: + 12 hex digits; "
                                 "`spendgate fingerprint` prints one)")
        if err.validator in ("type", "minimum") and len(path) >= 2 and path[-1] in WINDOWS:
            return f"budget {where} must be a non-negative number of USD, not {err.instance!r}"
        if err.validator == "oneOf" and path == ("unpriced",):
            return f"{where}: must be block, allow or {{charge_per_mtok: {{input: N, output: N}}}}"
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

    def workspaces_of(self, user: str) -> tuple[str, ...]:
        """Workspaces a user belongs to: listed on the user, or matched by members (names or globs)."""
        found = list(self.user_workspaces.get(user, ()))
        for ws in self.workspaces.values():
            if ws.name not in found and any(fnmatch.fnmatchcase(user, pat) for pat in ws.members):
                found.append(ws.name)
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


def _budgets(raw: dict | None) -> Budgets:
    return {w: Decimal(str(v)) for w, v in (raw or {}).items()}


def _date(v: str | None) -> date | None:
    return date.fromisoformat(v) if v else None


def parse(text: str, file: str = "<policy>", today: date | None = None) -> Policy:
    """Parse and validate a policy; raise PolicyError listing every problem with its position."""
    doc, marks, problems = load_yaml_with_marks(text)
    if doc is None or not isinstance(doc, dict):
        raise PolicyError(file, problems or [Problem(1, 1, "a policy is a mapping (version: 1, budgets, ...)")])
    problems += schema_problems(_VALIDATOR, doc, marks, _explain(marks))
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
        name: Workspace(name, tuple(w.get("members", [])), _budgets(w.get("budgets")), tuple(w.get("owners", [])))
        for name, w in (doc.get("workspaces") or {}).items()
    }
    users, user_ws = {}, {}
    for name, u in (doc.get("users") or {}).items():
        try:
            until = _date(u.get("until"))
        except ValueError:
            problems.append(Problem(*mark(marks, ("users", name, "until")), f"users.{name}.until: not a date"))
            until = None
        if until and until < today:
            warnings.append(Problem(*mark(marks, ("users", name, "until")),
                                    f"the exception for {name} expired on {until}; defaults apply", warning=True))
        users[name] = Exception_(_budgets(u.get("budgets")), until)
        for i, ws in enumerate(u.get("workspaces", [])):
            if ws not in workspaces:
                problems.append(Problem(*mark(marks, ("users", name, "workspaces", i)),
                                        f"{name} is a member of undefined workspace {ws!r}"))
        user_ws[name] = tuple(u.get("workspaces", []))
    keys = {}
    for fp, k in (doc.get("keys") or {}).items():
        until = _date(k.get("until")) if k.get("until") else None
        if until and until < today:
            warnings.append(Problem(*mark(marks, ("keys", fp, "until")),
                                    f"the exception for key {fp} expired on {until}", warning=True))
        keys[fp] = KeyRule(k.get("user"), _budgets(k.get("budgets")), until)
    nets = []
    for cidr, user in (doc.get("client_ips") or {}).items():
        try:
            nets.append((ipaddress.ip_network(cidr, strict=False), user))
        except ValueError:
            problems.append(Problem(*mark(marks, ("client_ips", cidr), key_of=True), f"not a CIDR: {cidr!r}"))
    identity = tuple(doc.get("identity") or DEFAULT_IDENTITY)
    if "client_ip" in identity and not nets:
        warnings.append(Problem(*mark(marks, ("identity",)), "client_ip is listed but client_ips is empty",
                                warning=True))
    alerts, sinks, approvals, found = parse_sections(doc, set(workspaces))
    problems += [Problem(*mark(marks, path), msg) for path, msg in found]
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
        org_owners=tuple(org.get("owners", [])),
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
        typical_output_tokens=dict(doc.get("typical_output_tokens") or {}),
        raw=doc,
        warnings=tuple(warnings),
        alerts=alerts,
        sinks=sinks,
        approvals=approvals,
    )


def load(path: Path, today: date | None = None) -> Policy:
    try:
        text = path.read_text()
    except OSError as e:
        raise PolicyError(str(path), [Problem(1, 1, f"cannot read: {e.strerror or e}")]) from None
    return parse(text, str(path), today)
