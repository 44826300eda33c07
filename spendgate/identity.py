"""Who is spending: API key fingerprints, the client program, the agent session.

Raw keys never leave this module: they are turned into fingerprints at once.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from spendgate.policy.model import UNATTRIBUTED, Policy

FINGERPRINT_HEX = 12


def fingerprint(secret: str) -> str:
    """`sha256:` + the first 12 hex digits: enough to tell keys apart, useless to an attacker."""
    return "sha256:" + hashlib.sha256(secret.strip().encode()).hexdigest()[:FINGERPRINT_HEX]


def api_key(headers: Mapping[str, str], query: str = "") -> str | None:
    """The credential a provider request carries (headers are lower-cased)."""
    for name in ("x-api-key", "x-goog-api-key", "api-key"):
        if headers.get(name):
            return headers[name]
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()  # also Bedrock API keys and Google OAuth tokens (Vertex)
    if auth.startswith("AWS4-HMAC-SHA256"):
        return sigv4_access_key(auth)
    if query:
        keys = parse_qs(query).get("key")
        if keys and keys[0]:
            return keys[0]
    return None


_SIGV4_CREDENTIAL = re.compile(r"Credential=([A-Z0-9]{16,128})/")


def sigv4_access_key(authorization: str) -> str | None:
    """The access key id of an AWS SigV4 ``Authorization`` header (``Credential=AKIA.../date/...``).

    The key id is what identifies an AWS caller (the secret never travels); like every credential
    it is only ever stored as a fingerprint.
    """
    m = _SIGV4_CREDENTIAL.search(authorization or "")
    return m.group(1) if m else None


# (client, header, substring) checked in order; the first match wins.
_CLIENT_RULES: tuple[tuple[str, str, str], ...] = (
    ("claude-code", "x-claude-code-session-id", ""),
    ("claude-code", "user-agent", "claude-cli"),
    ("claude-code", "user-agent", "claude-code"),
    ("codex", "originator", "codex"),
    ("codex", "user-agent", "codex"),
    ("gemini-cli", "user-agent", "geminicli"),
    ("gemini-cli", "user-agent", "gemini-cli"),
    ("copilot", "copilot-integration-id", ""),
    ("copilot", "user-agent", "githubcopilot"),
    ("copilot", "user-agent", "copilot"),
    ("openai-sdk", "user-agent", "openai/"),
    ("anthropic-sdk", "user-agent", "anthropic/"),
)


def recognize_client(headers: Mapping[str, str]) -> str:
    for client, header, needle in _CLIENT_RULES:
        value = headers.get(header)
        if value is not None and needle in value.lower():
            return client
    return "other"


def session_id(headers: Mapping[str, str]) -> str | None:
    for name in ("x-claude-code-session-id", "session_id", "session-id", "x-session-id"):
        if headers.get(name):
            return headers[name][:128]
    return None


def local_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return os.environ.get("USER") or f"uid:{os.getuid()}"


@dataclass(slots=True, frozen=True)
class Identity:
    user: str
    source: str  # which identity method answered: local_user, api_key, proxy_auth, ...
    key_fingerprint: str | None = None
    client: str = "other"
    session_id: str | None = None
    workspaces: tuple[str, ...] = field(default=())


def resolve(
    policy: Policy,
    headers: Mapping[str, str],
    query: str = "",
    *,
    proxy_user: str | None = None,
    client_ip: str | None = None,
    default_user: str | None = None,
) -> Identity:
    """Walk the policy's identity chain; the first source that answers names the user."""
    key = api_key(headers, query)
    fp = fingerprint(key) if key else None
    user, source = None, UNATTRIBUTED
    for method in policy.identity:
        if method == "proxy_auth":
            user = proxy_user
        elif method == "api_key":
            rule = policy.keys.get(fp) if fp else None
            user = rule.user if rule else None
        elif method.startswith("header:"):
            user = (headers.get(method[7:].lower()) or "").strip()[:256] or None
        elif method == "client_ip":
            user = policy.user_for_ip(client_ip) if client_ip else None
        elif method == "local_user":
            user = default_user or local_user()
        if user:
            source = method
            break
    user = user or UNATTRIBUTED
    return Identity(
        user=user,
        source=source,
        key_fingerprint=fp,
        client=recognize_client(headers),
        session_id=session_id(headers),
        workspaces=policy.workspaces_of(user) if user != UNATTRIBUTED else (),
    )
