"""Who is spending: API key fingerprints, the client program, the agent session.

Raw keys never leave this module: they are turned into fingerprints at once.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import hmac
import os
import time
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

import ipaddress
import json
from collections.abc import Callable

from spendgate.policy.model import UNATTRIBUTED, Policy, canonical_user, is_asserted

FINGERPRINT_HEX = 12
# OpenAI Realtime from a browser: the key as a WebSocket subprotocol (`realtime, openai-insecure-api-key.KEY`)
REALTIME_KEY_PROTOCOL = "openai-insecure-api-key."


def fingerprint(secret: str) -> str:
    """`sha256:` + the first 12 hex digits: enough to tell keys apart, useless to an attacker."""
    return "sha256:" + hashlib.sha256(secret.strip().encode("utf-8", "surrogatepass")).hexdigest()[:FINGERPRINT_HEX]


def credentials(headers: Mapping[str, str], query: str = "") -> list[str]:
    """The distinct credentials a provider request carries, up to two (enough to tell one from
    several); the first names the key. Headers are lower-cased, a repeated one folded with ", ".

    Read from ``x-api-key``, ``x-goog-api-key``, ``api-key``, ``Authorization`` (Bearer, or a SigV4
    access key id), a Realtime socket's ``Sec-WebSocket-Protocol`` entry
    ``openai-insecure-api-key.<KEY>``, and ``?key=`` (its name percent-decoded, as servers do).
    More than one means the charged key would be our guess: each provider reads its own header
    (api.openai.com only ``Authorization``), so a decoy in another one, or a second copy of the
    same header, would name the key, and its budget, while the provider bills the real one.
    Admission refuses such a request. No key or token holds a comma (billing.classify's rule too)."""
    found: list[str] = []
    for value in _credential_values(headers, query):
        if value and value not in found:
            found.append(value)
            if len(found) == 2:
                break
    return found


def _credential_values(headers: Mapping[str, str], query: str) -> Iterator[str]:
    for name in ("x-api-key", "x-goog-api-key", "api-key"):
        for part in headers.get(name, "").split(","):
            yield part.strip()
    auth = headers.get("authorization", "")
    sigv4 = auth.startswith("AWS4-HMAC-SHA256")  # its own fields are comma-separated
    if sigv4:
        yield sigv4_access_key(auth) or ""
    for i, part in enumerate(auth.split(",")):
        part = part.strip()
        if part[:7].lower() == "bearer ":  # also Bedrock API keys and Google OAuth tokens (Vertex)
            yield part[7:].strip()
        elif i and not sigv4:  # "Bearer a, b": a second token, its scheme left out
            yield part
    for part in headers.get("sec-websocket-protocol", "").split(","):
        part = part.strip()
        if part.startswith(REALTIME_KEY_PROTOCOL):  # browsers cannot set headers on a WebSocket
            yield part[len(REALTIME_KEY_PROTOCOL):]
    for part in query.split("&") if "key" in query.lower() or "%" in query else ():
        name, _, value = part.partition("=")
        if "%" in name or "+" in name:  # `k%65y=` is `key=` to a server's form decoder
            name = unquote_plus(name)
        if name.strip() == "key":
            yield unquote_plus(value).strip()


@dataclass(frozen=True, slots=True)
class BodyHints:
    """Attribution facts a client put in the request body (untrusted; adapters fill them in).

    Read by the session chains below when the client's primary header is missing.
    """

    user_id: str | None = None  # Anthropic `metadata.user_id` (Claude Code packs its session in it)
    prompt_cache_key: str | None = None  # OpenAI; Codex sets it to its conversation (session) id
    session_id: str | None = None  # Gemini CLI with Google login (Code Assist): `request.session_id`
    user_prompt_id: str | None = None  # Gemini CLI (Code Assist): `<session id>########<turn>`


NO_HINTS = BodyHints()


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
    ("gemini-cli", "x-gemini-api-privileged-user-id", ""),  # only Gemini CLI sends it (installation id)
    ("copilot", "copilot-integration-id", ""),
    ("copilot", "user-agent", "githubcopilot"),
    ("copilot", "user-agent", "copilot"),
    ("openai-sdk", "user-agent", "openai/"),
    ("anthropic-sdk", "user-agent", "anthropic/"),
)

MAX_SESSION_CHARS = 128
_SESSION_TEXT = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces: ids, not prose
# Claude Code before its JSON form: user_<64 hex>_account_<uuid or empty>_session_<uuid>
_CLAUDE_LEGACY_USER_ID = re.compile(r"^user_[0-9a-fA-F]+_account_[0-9a-fA-F-]*_session_([0-9a-fA-F-]{8,64})$")
_GEMINI_PROMPT_ID = re.compile(r"^(.+?)#{8}\d+$")  # interactive turns: <session>########<n>


def _clean(value: object) -> str | None:
    """A client-sent id fit to store: printable ASCII without spaces, at most 128 characters."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if _SESSION_TEXT.match(value) else None


def claude_code_session(user_id: str | None) -> str | None:
    """The session id inside Claude Code's `metadata.user_id`, in every form it has had.

    * current: a JSON string ``{"device_id": ..., "account_uuid": ..., "session_id": ...}``;
    * older: ``user_<sha256 hex>_account_<uuid or empty>_session_<uuid>``.
    Anything else (an SDK user's own user_id) is not a Claude Code session: None.
    """
    if not user_id:
        return None
    text = user_id.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            return None
        return _clean(obj.get("session_id")) if isinstance(obj, dict) else None
    m = _CLAUDE_LEGACY_USER_ID.match(text)
    return m.group(1) if m else None


def gemini_cli_session(hints: BodyHints) -> str | None:
    """Gemini CLI (Code Assist body): `request.session_id`, else the session part of `user_prompt_id`.

    Interactive prompts are ``<session>########<turn>``; non-interactive runs send the session id
    itself as the prompt id. With an API key Gemini CLI sends no session id at all (its
    `x-gemini-api-privileged-user-id` header is a per-installation id, not a session).
    """
    if sid := _clean(hints.session_id):
        return sid
    prompt = _clean(hints.user_prompt_id)
    if not prompt:
        return None
    m = _GEMINI_PROMPT_ID.match(prompt)
    return m.group(1) if m else prompt


def _header(name: str) -> Callable[[Mapping[str, str], BodyHints], str | None]:
    return lambda headers, hints: _clean(headers.get(name))


_GENERIC_HEADERS = ("x-claude-code-session-id", "session_id", "session-id", "x-session-id")

# Where each client has carried its session id over its versions, most authoritative first.
# Documented in docs/architecture.md ("Session facts"); each form has a unit test.
SESSION_CHAINS: dict[str, tuple[tuple[str, Callable[[Mapping[str, str], BodyHints], str | None]], ...]] = {
    "claude-code": (
        ("header x-claude-code-session-id", _header("x-claude-code-session-id")),
        ("body metadata.user_id", lambda h, b: claude_code_session(b.user_id)),
    ),
    "codex": (
        ("header session_id", _header("session_id")),
        ("header conversation_id", _header("conversation_id")),  # older Codex versions
        ("body prompt_cache_key", lambda h, b: _clean(b.prompt_cache_key)),  # = the conversation id
    ),
    "gemini-cli": (("body request.session_id / user_prompt_id", lambda h, b: gemini_cli_session(b)),),
    # Copilot CLI 1.0.102: the session's id (its ~/.copilot/session-state dir, `copilot --resume=<id>`)
    "copilot": (("header x-client-session-id", _header("x-client-session-id")),),
}
_GENERIC_CHAIN = tuple((f"header {name}", _header(name)) for name in _GENERIC_HEADERS)


def recognize_client(headers: Mapping[str, str], hints: BodyHints = NO_HINTS) -> str:
    """The client program: headers first, then body forms only one client uses."""
    for client, header, needle in _CLIENT_RULES:
        value = headers.get(header)
        if value is not None and needle in value.lower():
            return client
    if claude_code_session(hints.user_id):
        return "claude-code"
    if hints.user_prompt_id and _GEMINI_PROMPT_ID.match(hints.user_prompt_id):
        return "gemini-cli"
    return "other"


def session_source(
    headers: Mapping[str, str], hints: BodyHints = NO_HINTS, client: str | None = None
) -> tuple[str | None, str | None]:
    """(session id, where it came from): the client's own chain, then the generic headers."""
    client = client or recognize_client(headers, hints)
    for where, read in (*SESSION_CHAINS.get(client, ()), *_GENERIC_CHAIN):
        value = read(headers, hints)
        if value:
            return value[:MAX_SESSION_CHARS], where
    return None, None


def session_id(headers: Mapping[str, str], hints: BodyHints = NO_HINTS, client: str | None = None) -> str | None:
    return session_source(headers, hints, client)[0]


def local_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return os.environ.get("USER") or f"uid:{os.getuid()}"


def os_account() -> str:
    """The OS account of this process from the password database, never from $USER/$LOGNAME
    (which any caller sets): what the offline CLI records as a requester without a token."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return f"uid:{os.getuid()}"


@functools.lru_cache(maxsize=4096)  # per request on the event loop: parsing costs ~8 us, a hit ~0.1 us
def is_loopback(ip: str | None) -> bool:
    if not ip:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def sign_header(secret: bytes, name: str, value: str, at: int | None = None) -> str:
    """What an authenticating proxy puts in the signature header for `name: value` (see docs/security.md):
    `t=UNIX_SECONDS,v1=HEX(HMAC-SHA256(secret, "t.name.value"))`, name lower-cased."""
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret, f"{t}.{name.lower()}.{value}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def signed(policy: Policy, headers: Mapping[str, str], name: str, value: str, now: float | None = None) -> bool:
    """Whether `name: value` carries a valid, fresh signature under the policy's header_signature."""
    cfg = policy.header_signing
    if cfg is None or not cfg.secret:
        return False
    parts = dict(p.strip().partition("=")[::2] for p in headers.get(cfg.header, "").split(","))
    try:
        t = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - t) > cfg.max_age_seconds:
        return False
    want = sign_header(cfg.secret, name, value, t).partition("v1=")[2]
    return hmac.compare_digest(want.encode(), parts.get("v1", "").encode())


@dataclass(slots=True, frozen=True)
class Identity:
    user: str
    source: str  # which identity method answered: local_user, api_key, proxy_auth, ...
    key_fingerprint: str | None = None
    client: str = "other"
    session_id: str | None = None
    workspaces: tuple[str, ...] = field(default=())
    unknown: bool = False  # a name the policy does not list (see `unknown_users`)
    several_credentials: bool = False  # the request carries more than one credential (see `credentials`)
    # how the traffic is billed (spendgate.metering.billing): "api" or "subscription", and for
    # subscription traffic the policy plan (plans:) of the user's seat; set by the meter
    basis: str = "api"
    plan: str | None = None


def resolve(
    policy: Policy,
    headers: Mapping[str, str],
    query: str = "",
    *,
    proxy_user: str | None = None,
    client_ip: str | None = None,
    default_user: str | None = None,
    proxy_verified: bool = True,
    authenticating_only: bool = False,
    hints: BodyHints = NO_HINTS,
) -> Identity:
    """Walk the policy's identity chain; the first source that answers names the user.

    Sources a client can choose are skipped unless the peer may assert them: `header:NAME` only
    from the policy's `trusted_proxies` or with a valid `header_signature`; `proxy_auth` when the
    proxy accepts any password (`proxy_verified=False`) only from `trusted_proxies`; `local_user` only for loopback clients (the machine's own user, in
    laptop mode). `authenticating_only` (the dashboard and admin routes) drops asserted sources
    altogether. A name the policy does not list gets what `unknown_users` says. `hints` are the
    session facts a client put in the body (see `recognize_client` and `session_id`).
    """
    client = recognize_client(headers, hints)
    keys = credentials(headers, query)
    fp = fingerprint(keys[0]) if keys else None
    user, source = None, UNATTRIBUTED
    trusted_peer = policy.trusts(client_ip)
    for method in policy.identity:
        user = None
        if method == "proxy_auth":
            if proxy_verified or (trusted_peer and not authenticating_only):
                user = proxy_user
        elif method == "api_key":
            rule = policy.keys.get(fp) if fp else None
            user = rule.user if rule else None
        elif is_asserted(method) and not authenticating_only:
            value = (headers.get(method[7:].lower()) or "").strip()[:256] or None
            if value and (trusted_peer or signed(policy, headers, method[7:], value)):
                user = value
        elif method == "client_ip":
            user = policy.user_for_ip(client_ip) if client_ip else None
        elif method == "local_user":
            # None: an in-process caller (tests, benchmarks), not a network peer
            if (client_ip is None or is_loopback(client_ip)) and policy.mode != "central":
                user = default_user or local_user()
        if user:
            source = method
            break
    unknown = False
    if user:
        user = canonical_user(user)
        if policy.unknown_users != "default" and not policy.knows(user):  # knows() scans globs: only when asked
            unknown = True
            if policy.unknown_users == "unattributed":
                user, unknown = None, False
    user = user or UNATTRIBUTED
    return Identity(
        user=user,
        source=source,
        key_fingerprint=fp,
        client=client,
        session_id=session_id(headers, hints, client),
        workspaces=policy.workspaces_of(user) if user != UNATTRIBUTED else (),
        unknown=unknown,
        several_credentials=len(keys) > 1,
    )
