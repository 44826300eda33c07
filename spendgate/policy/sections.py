"""The policy's `alerts`, `sinks` and `approvals` sections, parsed into plain frozen config.

Kept apart from policy.py (which calls `parse_sections`) so the alert and approval workflow can
grow without touching the budget model. No spendgate imports: problems come back as
(path, message) pairs and policy.py turns them into FILE:LINE:COL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

DEFAULT_THRESHOLDS: tuple[Decimal, ...] = (Decimal(50), Decimal(80), Decimal(95), Decimal(100))
EVENTS = ("alert", "request", "decision")


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    thresholds: tuple[Decimal, ...] = DEFAULT_THRESHOLDS  # percent of the limit, ascending
    projected_overrun: bool = True
    projection_min_percent: Decimal = Decimal(25)  # no projection from the first few cents of a window
    sinks: tuple[str, ...] | None = None  # None: every sink that takes alerts
    in_band: bool = True  # x-spendgate-warning on responses


@dataclass(frozen=True, slots=True)
class SinkConfig:
    name: str
    type: str  # log | webhook | slack | email
    url: str | None = None
    url_env: str | None = None  # read the URL (a secret for Slack) from the environment at send time
    headers: tuple[tuple[str, str], ...] = ()
    events: tuple[str, ...] = EVENTS
    retries: int = 3
    backoff_seconds: float = 2.0
    timeout_seconds: float = 5.0
    host: str | None = None
    port: int = 25
    sender: str | None = None
    to: tuple[str, ...] = ()  # email: extra recipients; also used when a notice names none
    starttls: bool = False
    ssl: bool = False
    username_env: str | None = None
    password_env: str | None = None


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    approvers: tuple[str, ...]
    auto_approve_up_to: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class ApprovalsConfig:
    organization: ApprovalRule | None = None
    workspaces: dict[str, ApprovalRule] = field(default_factory=dict)
    allow_self_approval: bool = False


Found = list[tuple[tuple, str]]


def canonical_user(name: str) -> str:
    """The form a user name is compared in: e-mail addresses case-insensitively (lower-cased).

    Other names (OS accounts, LDAP uids) keep their case: `Alice` and `alice` may be two accounts.
    """
    name = name.strip()
    return name.lower() if "@" in name else name


def _rule(raw: dict[str, Any]) -> ApprovalRule:
    return ApprovalRule(tuple(canonical_user(a) for a in raw.get("approvers", [])),
                        Decimal(str(raw.get("auto_approve_up_to", 0))))


def _sink(name: str, raw: dict[str, Any], problems: Found) -> SinkConfig:
    kind = raw["type"]
    if kind in ("webhook", "slack") and not (raw.get("url") or raw.get("url_env")):
        problems.append((("sinks", name), f"sink {name!r} ({kind}) needs url or url_env"))
    if kind == "email":
        if not raw.get("host"):
            problems.append((("sinks", name), f"sink {name!r} (email) needs host"))
        if not raw.get("from"):
            problems.append((("sinks", name), f"sink {name!r} (email) needs from"))
    return SinkConfig(
        name=name,
        type=kind,
        url=raw.get("url"),
        url_env=raw.get("url_env"),
        headers=tuple((raw.get("headers") or {}).items()),
        events=tuple(raw.get("events") or EVENTS),
        retries=int(raw.get("retries", 3)),
        backoff_seconds=float(raw.get("backoff_seconds", 2.0)),
        timeout_seconds=float(raw.get("timeout_seconds", 5.0)),
        host=raw.get("host"),
        port=int(raw.get("port", 465 if raw.get("ssl") else 25)),
        sender=raw.get("from"),
        to=tuple(raw.get("to") or ()),
        starttls=bool(raw.get("starttls", False)),
        ssl=bool(raw.get("ssl", False)),
        username_env=raw.get("username_env"),
        password_env=raw.get("password_env"),
    )


def parse_sections(
    doc: dict[str, Any], workspaces: set[str]
) -> tuple[AlertsConfig, dict[str, SinkConfig], ApprovalsConfig, Found]:
    """Schema-valid `alerts`/`sinks`/`approvals` -> config, plus cross-reference problems."""
    problems: Found = []
    sinks = {name: _sink(name, raw, problems) for name, raw in (doc.get("sinks") or {}).items()}
    a = doc.get("alerts") or {}
    thresholds = tuple(sorted(Decimal(str(t)) for t in a.get("thresholds", DEFAULT_THRESHOLDS)))
    wanted = a.get("sinks")
    for i, name in enumerate(wanted or []):
        if name not in sinks:
            problems.append((("alerts", "sinks", i), f"alerts.sinks names undefined sink {name!r}"))
    alerts = AlertsConfig(
        thresholds=thresholds,
        projected_overrun=bool(a.get("projected_overrun", True)),
        projection_min_percent=Decimal(str(a.get("projection_min_percent", 25))),
        sinks=tuple(wanted) if wanted is not None else None,
        in_band=bool(a.get("in_band", True)),
    )
    ap = doc.get("approvals") or {}
    ws_rules = {}
    for name, raw in (ap.get("workspaces") or {}).items():
        if name not in workspaces:
            problems.append((("approvals", "workspaces", name), f"approvals for undefined workspace {name!r}"))
        ws_rules[name] = _rule(raw)
    approvals = ApprovalsConfig(
        organization=_rule(ap["organization"]) if ap.get("organization") else None,
        workspaces=ws_rules,
        allow_self_approval=bool(ap.get("allow_self_approval", False)),
    )
    return alerts, sinks, approvals, problems
