"""The dashboard and its JSON API as one transport-free app: request in, response out.

Served two ways with the same code: by the admin API's loopback server, and by the proxy itself
on a virtual host (http://spendgate.local/ through the proxy, like mitmproxy's mitm.it), where
the addon passes the identity it resolved exactly as for provider traffic.

Who the caller is, first match wins:
1. `Authorization: Bearer <token>`: an admin token (scripts, the CLI) -> the whole organization,
   under no person's name; a spendgate token (`spendgate tokens issue`) -> that person;
2. the `spendgate_session` cookie a browser got from POST /login with either kind of token;
3. the identity the proxy resolved from authenticating sources only (virtual host only) -> that
   engineer, their own rows only. Never a client-set header.
A wrong bearer token is a 401 even when 3 would have answered, so mistakes are visible.

Engineers (non-admin callers) may call only the self-service GET routes, with `user` forced to
their own name, POST /api/request, and approve/deny only when they are approvers identified by
their own credentials (see docs/security.md). Browser-made POSTs (cookie or proxy identity)
must carry `X-Spendgate: 1`, which no cross-site form can send (CSRF).
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from spendgate.store.postgres import StoreUnavailable
from spendgate.web import jsonbody, pollcache
from spendgate.web.caller import ApiError, Caller
from spendgate.workflow.approvals import DECIDING_SOURCES

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Caller], Any]

COOKIE = "spendgate_session"
SESSION_TTL = 12 * 3600.0
MAX_SESSIONS = 1000
SESSIONS_PER_CALLER = 10  # browsers one person keeps signed in; an 11th sign-in ends their oldest
MAX_BODY_BYTES = 64 * 1024 * 1024  # the largest POST body read (billing imports are the big ones)
ANONYMOUS_BODY_BYTES = 64 * 1024  # a request without a credential that checks out (the login form is tiny)
MAX_FORM_FIELDS = 16  # the login form has two
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/charts.js": ("charts.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
# GET routes an engineer may call; each honours `user`, which is forced to the caller's name
SELF_SERVICE = frozenset(
    {"/api/whoami", "/api/overview", "/api/series", "/api/ledger", "/api/spend", "/api/blocks",
     "/api/unpriced", "/api/budgets", "/api/runway", "/api/export", "/api/requests", "/api/subscriptions"}
)  # fmt: skip
# the only POSTs an approver without the admin token may make (never reprice, import, ...)
APPROVER_POSTS = frozenset({"/api/approve", "/api/deny"})
# what any identified person may POST: asking for more budget, as themselves
PERSON_POSTS = frozenset({"/api/request", "/api/ingest", "/api/lease"})  # ingest, lease: a laptop, as its user
# POST bodies bounded per route (bytes): laptops push their rows in batches (spendgate.central.ingest)
BODY_LIMITS = {"/api/ingest": 4 * 1024 * 1024}
# self-service routes whose handlers may not honour `user`: rows are filtered on this field for
# engineers who are not approvers (approvers see what they may decide on)
ROW_OWNER = {"/api/requests": "requester"}
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin: the page's own form POSTs carry its real Origin (no-referrer makes browsers send
    # `Origin: null`, which the login's CSRF check cannot tell from a sandboxed foreign frame)
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
}


# laptops post these every few seconds (spendgate.central): a lease changes nothing the page draws,
# and ingested rows show within the cache's few seconds anyway; clearing on them would mean the
# poll cache never hits on a centre
_POSTS_THAT_CHANGE_NO_PAGE = frozenset({"/api/lease", "/api/ingest"})


@dataclass(frozen=True, slots=True)
class WebRequest:
    method: str
    target: str  # path and query, as on the request line
    headers: Mapping[str, str]  # lower-case names
    body: bytes = b""
    ambient: Caller | None = None  # who the proxy recognised (virtual host only)


@dataclass(slots=True)
class StreamBody:
    """A response body sent in chunks (an export file), never held whole in memory: `length` bytes
    in total, from `chunks`; `close` releases what backs it (called after sending, even on error)."""

    length: int
    chunks: Iterator[bytes]
    close: Callable[[], None] = lambda: None

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks


@dataclass(slots=True)
class WebResponse:
    status: int
    body: bytes | StreamBody
    headers: dict[str, str] = field(default_factory=dict)

    def buffered(self) -> WebResponse:
        """This response with a streamed body read whole (for a server that needs bytes)."""
        if isinstance(self.body, StreamBody):
            try:
                return WebResponse(self.status, b"".join(self.body.chunks), self.headers)
            finally:
                self.body.close()
        return self


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> WebResponse:
    body = jsonbody.dumps(payload)  # msgspec, long lists a slice at a time: see jsonbody
    return WebResponse(status, body, {"Content-Type": "application/json", **SECURITY_HEADERS, **(headers or {})})


def asset(name: str) -> bytes:
    return resources.files("spendgate.web").joinpath(name).read_bytes()


def cookie_value(header: str, name: str = COOKIE) -> str | None:
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name and v:
            return v
    return None


def same_origin(headers: Mapping[str, str]) -> bool:
    """A POST from the dashboard's own page, or from a client that is no browser (CLIs send neither
    header). Browsers send Origin on every cross-site POST; `Origin: null` (a sandboxed frame, a
    privacy setting) passes only when the browser itself says the request is same-origin
    (`Sec-Fetch-Site`, which no page can set)."""
    origin = headers.get("origin")
    if origin is None:
        return headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
    if origin == "null":
        return headers.get("sec-fetch-site") == "same-origin"
    return (urlsplit(origin).netloc.lower() or "-") == headers.get("host", "").lower()


def token_matches(given: str, tokens: Sequence[str]) -> bool:
    """Constant-time comparison against every accepted admin token."""
    ok = False
    for t in tokens:
        if t and hmac.compare_digest(given.encode(), t.encode()):
            ok = True
    return ok and bool(given)


class Sessions:
    """Browser sessions: random ids in an HttpOnly cookie, kept in memory only (a restart logs out).

    Each session keeps the credential it was traded for (in memory, never on disk) so every use
    checks it again: a token revoked, expired or rotated out of the admin token file ends its
    sessions at once, not after `ttl` (eighth review, E1).
    """

    def __init__(self, ttl: float = SESSION_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._s: dict[str, tuple[Caller, str, float]] = {}
        self._lock = threading.Lock()

    def create(self, caller: Caller, credential: str) -> str:
        """A new session; a person's 11th ends their own oldest, and at MAX_SESSIONS the person
        holding the most loses their oldest: signing in again and again never signs others out
        (ninth review, N7)."""
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        who = (caller.name, caller.admin)
        with self._lock:
            self._s = {k: v for k, v in self._s.items() if v[2] > now}
            mine = [k for k, v in self._s.items() if (v[0].name, v[0].admin) == who]
            if len(mine) >= SESSIONS_PER_CALLER:
                del self._s[min(mine, key=lambda k: self._s[k][2])]
            elif len(self._s) >= MAX_SESSIONS:
                held = collections.Counter((v[0].name, v[0].admin) for v in self._s.values())
                top = held.most_common(1)[0][0]
                del self._s[min((k for k, v in self._s.items() if (v[0].name, v[0].admin) == top),
                                key=lambda k: self._s[k][2])]
            self._s[sid] = (caller, credential, now + self.ttl)
        return sid

    def get(self, sid: str | None) -> tuple[Caller, str] | None:
        """The session's caller and the credential it was traded for; None if unknown or expired."""
        if not sid:
            return None
        with self._lock:
            hit = self._s.get(sid)
            if hit is None or hit[2] <= self.clock():
                self._s.pop(sid, None)
                return None
            return hit[0], hit[1]

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._s.pop(sid or "", None)


@dataclass
class WebApp:
    """Dashboard pages and the JSON API. `routes`/`post_routes` are shared with the AdminServer."""

    routes: dict[str, Handler]
    post_routes: dict[str, Handler]
    tokens: Callable[[], Sequence[str]]  # admin tokens accepted right now
    is_approver: Callable[[Caller], bool] = lambda c: c.admin
    person: Callable[[str], str | None] = lambda token: None  # a spendgate token -> its user (None: not one)
    raw_routes: dict[str, Callable[[dict[str, Any], Caller], WebResponse]] = field(default_factory=dict)
    sessions: Sessions = field(default_factory=Sessions)
    metrics: Callable[[str], tuple[bytes, str]] | None = None  # Prometheus exposition (accept -> body, type)
    poll_cache: pollcache.PollCache = field(default_factory=pollcache.PollCache)  # polled routes, encoded

    def handle(self, req: WebRequest) -> WebResponse:
        """Never raises: every failure becomes a JSON error with a status."""
        url = urlsplit(req.target)
        path = url.path or "/"
        try:
            if req.method == "GET" and path in ASSETS and path.startswith("/static/"):
                return self._asset(path)
            if path == "/login" and req.method == "POST":
                return self._login(req)
            if path == "/logout" and req.method == "POST":
                return self._logout(req)
            caller = self.authenticate(req)
            if path in ASSETS and req.method == "GET":  # the page shell holds no data; 401 shows the login
                resp = self._asset(path)
                resp.status = 200 if caller else 401
                return resp
            if path == "/metrics" and req.method == "GET" and self.metrics is not None:
                return self._metrics(req, caller)
            if not path.startswith("/api/"):
                raise ApiError(404, f"no such page {path}")
            if caller is None:
                raise ApiError(401, "missing or wrong admin token")
            return self._api(req, path, dict(parse_qsl(url.query)), caller)
        except ApiError as e:
            return json_response(e.status, {"error": str(e)})
        except StoreUnavailable as e:  # the shared store is away: retry later, nothing was changed
            return json_response(503, {"error": str(e)})
        except (ValueError, KeyError, TypeError) as e:
            return json_response(400, {"error": str(e)})
        except Exception as e:
            log.exception("dashboard %s %s failed", req.method, path)
            return json_response(500, {"error": f"{type(e).__name__}: {e}"})

    def authenticate(self, req: WebRequest) -> Caller | None:
        auth = req.headers.get("authorization", "")
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer" and token_matches(value.strip(), self.tokens()):
                return Caller("admin", admin=True, source="admin-token")
            user = self.person(value.strip()) if scheme.lower() == "bearer" else None
            if user:
                return Caller(user, admin=False, source="token")
            raise ApiError(401, "wrong token (neither an admin token nor a live spendgate token)")
        sid = cookie_value(req.headers.get("cookie", ""))
        session = self.sessions.get(sid)
        if session is not None:
            caller, credential = session
            if self._still_valid(caller, credential):
                return caller
            self.sessions.drop(sid)  # revoked, expired or rotated out: signed out (the page shows the login)
        return req.ambient

    def body_limit(self, target: str, headers: Any) -> int:
        """The most bytes of body read for this request, decided before reading any: the route's own
        limit (BODY_LIMITS, else MAX_BODY_BYTES), and ANONYMOUS_BODY_BYTES unless the request carries
        a credential that checks out now (a live session's cookie, an admin or spendgate bearer
        token): a header's mere presence proves nothing (ninth review, N2). `/login` is always
        anonymous. Never raises."""
        path = urlsplit(target).path
        limit = BODY_LIMITS.get(path, MAX_BODY_BYTES)
        if path == "/login" or not self._credentialed(headers):
            limit = min(limit, ANONYMOUS_BODY_BYTES)
        return limit

    def _credentialed(self, headers: Any) -> bool:
        try:
            lowered = {k.lower(): v for k, v in headers.items()}
            return self.authenticate(WebRequest("GET", "/", lowered, b"")) is not None
        except Exception:
            return False

    def _still_valid(self, caller: Caller, credential: str) -> bool:
        if caller.admin:
            return token_matches(credential, self.tokens())
        return self.person(credential) == caller.name

    # -- routes --
    def _api(self, req: WebRequest, path: str, params: dict[str, Any], caller: Caller) -> WebResponse:
        browser = not req.headers.get("authorization")
        if req.method == "GET":
            routes: Mapping[str, Any] = {**self.routes, **self.raw_routes}
            if path == "/api/whoami":
                return json_response(200, self.whoami(caller))
            if not caller.admin:
                if path not in routes:  # the same answer an administrator gets (below)
                    raise ApiError(404, f"no such endpoint {path}")
                if path not in SELF_SERVICE:
                    raise ApiError(403, f"{path} is for administrators; you can see your own spend")
                params["user"] = caller.name
        elif req.method == "POST":
            routes = self.post_routes
            if browser and req.headers.get("x-spendgate") != "1":
                raise ApiError(403, "browser requests must carry X-Spendgate: 1")
            # a person with their own credentials may try to decide: the one rule (workflow.approvals)
            # then answers with its reason and puts the refused attempt on record
            decider = self.is_approver(caller) or caller.source in DECIDING_SOURCES
            if not caller.admin and path not in PERSON_POSTS and not (decider and path in APPROVER_POSTS):
                raise ApiError(403, "read-only: only approvers may approve or deny; everything else needs the admin token")
            limit = BODY_LIMITS.get(path)
            if limit is not None and len(req.body) > limit:
                raise ApiError(413, f"{path} takes at most {limit} bytes per request; send smaller batches")
            if req.body:
                body = json.loads(req.body)
                if not isinstance(body, dict):
                    raise ValueError("a JSON object is expected")
                params.update(body)
        else:
            raise ApiError(405, f"{req.method} is not supported")
        handler = routes.get(path)
        if handler is None:
            raise ApiError(404, f"no such endpoint {path}")
        if path in self.raw_routes and req.method == "GET":
            return self.raw_routes[path](params, caller)

        # what the page polls, asked by the page (a signed-in browser, no Authorization header):
        # answered from the poll cache shared by every tab; API clients always get a fresh answer
        polled = req.method == "GET" and browser and pollcache.polled(path, params)

        def answer() -> WebResponse:
            result = handler(params, caller)
            owner = ROW_OWNER.get(path)
            if owner and req.method == "GET" and not caller.admin and not self.is_approver(caller) and isinstance(result, list):
                result = [r for r in result if isinstance(r, dict) and r.get(owner) == caller.name]
            return json_response(200, result)

        if polled:  # shared across tabs
            key = (path, tuple(sorted(params.items())), caller.name, caller.admin, caller.source)
            return self.poll_cache.get(key, answer)[0]
        resp = answer()
        if req.method == "POST" and resp.status == 200 and path not in _POSTS_THAT_CHANGE_NO_PAGE:
            self.poll_cache.clear()  # a decision, a grant, a re-pricing: the page sees it now
        return resp

    def _metrics(self, req: WebRequest, caller: Caller | None) -> WebResponse:
        """Prometheus scrapes need the admin token (scrape config `authorization`), like the rest of the API."""
        if caller is None:
            raise ApiError(401, "missing or wrong admin token")
        if not caller.admin:
            raise ApiError(403, "/metrics is for administrators and scrapers with the admin token")
        body, ctype = self.metrics(req.headers.get("accept", ""))
        return WebResponse(200, body, {"Content-Type": ctype, "Cache-Control": "no-store",
                                       "X-Content-Type-Options": "nosniff"})

    def whoami(self, caller: Caller) -> dict[str, Any]:
        return {
            "name": caller.name,
            "admin": caller.admin,
            "approver": self.is_approver(caller),  # may decide some request: own credentials + the policy's rule
            "source": caller.source,
            "scope": "organization" if caller.admin else "self",
            "routes": sorted(p for p in {**self.routes, **self.raw_routes} if caller.admin or p in SELF_SERVICE),
            "post_routes": sorted(p for p in self.post_routes if caller.admin or p in PERSON_POSTS
                                  or (self.is_approver(caller) and p in APPROVER_POSTS)),
        }

    def _asset(self, path: str) -> WebResponse:
        name, ctype = ASSETS[path]
        return WebResponse(200, asset(name), {"Content-Type": ctype, **SECURITY_HEADERS})

    def _login(self, req: WebRequest) -> WebResponse:
        """Exchange a token (JSON or form body) for an HttpOnly session cookie.

        An admin token opens the organization view; `name` (optional) only labels the page, it
        never decides anything. A spendgate token signs its user in (their view, and their
        decisions if the policy makes them an approver).
        """
        if not same_origin(req.headers):
            # login CSRF: a page elsewhere must not sign this browser into someone else's session
            raise ApiError(403, "sign in from the dashboard's own page")
        ctype = req.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            form = json.loads(req.body or b"{}") or {}
        else:
            form = dict(parse_qsl(req.body.decode(errors="replace"), max_num_fields=MAX_FORM_FIELDS))
        token, name = str(form.get("token") or ""), str(form.get("name") or "").strip()[:128]
        token = token.strip()
        if token_matches(token, self.tokens()):
            caller = Caller(name or "admin", admin=True, source="admin-token")
        elif user := self.person(token):
            caller = Caller(user, admin=False, source="token")
        else:
            log.warning("spendgate: dashboard login with a wrong token")
            return json_response(401, {"error": "wrong admin token"})
        sid = self.sessions.create(caller, token)
        cookie = f"{COOKIE}={sid}; HttpOnly; SameSite=Strict; Path=/; Max-Age={int(self.sessions.ttl)}"
        if ctype.startswith("application/json"):
            return json_response(200, {"ok": True}, {"Set-Cookie": cookie})
        return WebResponse(303, b"", {"Location": "/", "Set-Cookie": cookie, **SECURITY_HEADERS})

    def _logout(self, req: WebRequest) -> WebResponse:
        self.sessions.drop(cookie_value(req.headers.get("cookie", "")))
        return json_response(200, {"ok": True}, {"Set-Cookie": f"{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"})


# -- wiring into a running gateway -------------------------------------------------------------


def admin_tokens(policy: Any, discovery_token: str | None, env: Mapping[str, str]) -> list[str]:
    """Tokens that open the organization view: the discovery file's, $SPENDGATE_ADMIN_TOKEN, the policy's file.

    The policy's `admin.token_file` (relative to the policy) is read on each login or API call,
    so rotating it needs no restart; an unreadable file is logged and ignored.
    """
    out = [t for t in (discovery_token, env.get("SPENDGATE_ADMIN_TOKEN", "").strip()) if t]
    name = ((policy.raw.get("admin") or {}) if policy else {}).get("token_file")
    if name:
        path = Path(policy.path).parent / Path(name).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as e:
            log.error("spendgate: cannot read admin.token_file %s: %s", path, e.strerror or e)
        else:
            if token:
                out.append(token)
    return out


def approvers(policy: Any) -> set[str]:
    """Everyone who may decide some request (spendgate.workflow.approvals.all_approvers: one rule)."""
    from spendgate.workflow.approvals import all_approvers

    return all_approvers(policy)


def for_gateway(gw: Any) -> WebApp:
    """The app a running `spendgate.gateway.Gateway` serves, sharing its admin API's routes."""
    from spendgate.reports import dashboard
    from spendgate.web import routes as gateway_routes

    routes = gw.admin.routes if gw.admin else gateway_routes.get_routes(gw)
    post_routes = gw.admin.post_routes if gw.admin else gateway_routes.post_routes(gw)

    def export(params: dict[str, Any], caller: Caller) -> WebResponse:
        fmt = params.get("format") or "parquet"

        try:  # a replica of a shared store exports the store's rows (every replica's and laptop's)
            out = dashboard.ExportFile(gw.report_cursor("export"), params)  # to a temp file, then streamed
        except StoreUnavailable as e:
            # not this replica's own rows instead: a file of one replica's share would pass for the
            # company's export (fourth attacker review); the dashboard's polls fall back, an export says so
            raise ApiError(503, f"the shared store is unreachable, nothing exported; try again later ({e})") from None
        ctype = "application/vnd.apache.parquet" if fmt == "parquet" else "text/csv; charset=utf-8"
        name = dashboard.default_export_name(fmt)
        return WebResponse(200, StreamBody(out.size, out.chunks(), out.close), {"Content-Type": ctype, "Content-Disposition": f'attachment; filename="{name}"',
                                       **SECURITY_HEADERS})

    return WebApp(
        routes=routes,
        post_routes=post_routes,
        tokens=lambda: admin_tokens(gw.policy, gw.admin.token if gw.admin else None, os.environ),
        is_approver=lambda c: c.source in DECIDING_SOURCES and c.name in approvers(gw.policy),
        person=gw.tokens.verify,
        raw_routes={"/api/export": export},
        metrics=gw.telemetry.metrics_payload if getattr(gw, "telemetry", None) else None,
    )
