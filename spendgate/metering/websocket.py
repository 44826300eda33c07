"""Model calls over a WebSocket: one ledger row per turn, never one per socket.

Codex runs its turns over ``wss://api.openai.com/v1/responses`` (and chatgpt.com's
``/backend-api/codex/responses``): each ``response.create`` message up is one model call, the
Responses event stream comes down as one JSON event per message and ends with
``response.completed`` / ``.incomplete`` / ``.failed`` (or an ``error`` event). OpenAI Realtime
(``/v1/realtime``) is the same idea with ``response.done``.

A `SocketSession` lives as long as the socket. The proxy edge hands it every text message:

* `client_message` returns a `Turn` for each ``response.create``: the edge asks admission
  (budgets) about ``turn.exchange`` before forwarding the message, and drops it when refused,
  sending `refusal_event` to the client instead.
* `server_message` feeds the open turn's parser and finishes the turn (hands it to the meter)
  when the response ends.
* `close` finishes every turn still open as cut: usage estimated, like an interrupted stream.

Everything here is in-memory work on the proxy's event loop; pricing and the ledger happen on
the meter's worker, so messages are never held back by metering. The handshake itself is not a
model call and makes no row.
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from spendgate.metering.meter import CHARS_PER_TOKEN, Exchange, Meter
from spendgate.metering.providers import openai_realtime, openai_responses
from spendgate.metering.providers.base import Adapter, Route, StreamParser, top_level

log = logging.getLogger(__name__)

RESPONSES_WS = "responses.websocket"  # ledger endpoint of a Responses turn over a WebSocket
CREATE = "response.create"
_TYPE = re.compile(rb'"type"\s*:\s*"([^"]{1,80})"')
_CONTINUES = re.compile(rb'"previous_response_id"\s*:\s*"')
_RESPONSE_ID = re.compile(rb'"response_id"\s*:\s*"([^"]{1,200})"')  # a Realtime event's response
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # larger messages are passed on, not parsed
WEBSOCKET_VERSION = "13"  # RFC 6455 section 4.1; compared as mitmproxy's HTTP layer compares it


def is_upgrade(headers: Mapping[str, str]) -> bool:
    """The request asks for a WebSocket (headers lower-cased): a handshake, or a client saying so."""
    return "websocket" in headers.get("upgrade", "").lower()


def is_handshake(method: str, headers: Mapping[str, str], body: bytes | None) -> bool:
    """A WebSocket opening handshake whose turns are metered one by one instead of the request.

    Only a GET with no body, asking to upgrade to websocket at protocol version 13 (RFC 6455
    section 4.1; mitmproxy carries a connection on as a WebSocket only at that version). Any other
    request that names websocket in its Upgrade header is an ordinary call, metered and admitted
    as one: it becomes a socket only if the server switches protocols on it, which the proxy edge
    refuses (addons/gateway.py, `_refuse_unmetered_switch`). So the header alone never skips the
    budget (forty-second review)."""
    return (method.upper() == "GET" and not body and is_upgrade(headers)
            and headers.get("sec-websocket-version") == WEBSOCKET_VERSION)


def socket_route(route: Route | None) -> Route | None:
    """The WebSocket flavour of an HTTP route, or None when turns on it are not metered."""
    if route is None or route.adapter is None:
        return None
    if route.adapter is openai_responses.RESPONSES:
        return Route(route.adapter, route.provider, RESPONSES_WS, dict(route.extra))
    if route.adapter is openai_realtime.REALTIME:
        return route
    return None


_TYPE_KEY = frozenset({"type"})


def client_event_type(data: bytes) -> str | None:
    """The ``type`` of a client's JSON message, as the provider's parser reads it.

    Untrusted bytes: a message may name ``type`` twice, and JSON parsers take the last, so
    the first-bytes shortcut of `event_type` would let ``{"type":"session.update",...,
    "type":"response.create"}`` reach the provider as a turn nobody admitted. One validating
    pass (base.top_level: json.loads's answer) instead."""
    kind = (top_level(data, _TYPE_KEY) or {}).get("type")
    return kind if isinstance(kind, str) else None


def event_type(data: bytes) -> str | None:
    """The ``type`` of a provider's JSON event, read from its first bytes without parsing the whole message.

    Responses events put ``type`` first; ``response.created`` can carry 30 KB of instructions we
    never need to build. Only for the provider's events: a client's go through `client_event_type`.
    """
    if data.startswith(b'{"type":"'):  # compact JSON, type first: what OpenAI and Codex send
        m = _TYPE.match(data, 1, 200)
        if m is not None:
            return m.group(1).decode("utf-8", "replace")
    try:  # "type" is not the first member: read the whole event (rare)
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind if isinstance(kind, str) else None


@dataclass(slots=True)
class Turn:
    """One model call over the socket (one ``response.create``)."""

    exchange: Exchange
    parser: StreamParser
    admitted: bool = True  # False once refused: it never reaches the provider
    started: bool = False  # the provider began answering (response.created or any event)
    response_id: str | None = None  # Realtime: the response the provider runs for it (events are routed by it)


class SocketSession:
    """Meters the turns of one WebSocket connection to a provider."""

    def __init__(
        self,
        meter: Meter,
        route: Route,
        host: str,
        path: str,
        headers: Mapping[str, str],
        *,
        proxy_user: str | None = None,
        client_ip: str | None = None,
    ) -> None:
        self.meter = meter
        self.route = route
        self.host = host
        self.path = path
        self.headers = dict(headers)
        self.proxy_user = proxy_user
        self.client_ip = client_ip
        self.realtime = route.adapter is openai_realtime.REALTIME
        self.model: str | None = openai_realtime.url_model(path) if self.realtime else None
        self.open: deque[Turn] = deque()  # admitted turns the provider has not finished, oldest first
        self.turns = 0
        self.context_tokens = 0  # the last finished turn's input + output: what a continuation re-reads
        # a response the server started itself was cancelled at the cap: the client's audio is not
        # passed on (server voice detection would start the next one) until a response.create is admitted
        self.capped = False
        self.by_response: dict[str, Turn] = {}  # Realtime: responses run side by side (out-of-band and voice)

    @property
    def adapter(self) -> Adapter:
        assert self.route.adapter is not None
        return self.route.adapter

    # -- client -> provider --
    def client_message(self, data: bytes) -> Turn | None:
        """A message from the client; a new `Turn` when it asks for a response. Never raises."""
        try:
            if len(data) > MAX_MESSAGE_BYTES or client_event_type(data) != CREATE:
                return None
            return self._begin(data)
        except Exception:  # a bug here must never break the socket
            log.exception("spendgate: cannot read a WebSocket request message")
            return None

    def _begin(self, data: bytes, admitted: bool = True) -> Turn:
        query = self.path.partition("?")[2]
        request = self.adapter.parse_request(self.path, data)
        request.stream = True
        if self.context_tokens and (self.realtime or _CONTINUES.search(data)):
            # a continuation sends only the new input; the model reads the whole conversation, so
            # the estimate (admission, and the usage of a turn cut short) counts what came before
            request.input_bytes += self.context_tokens * CHARS_PER_TOKEN
        if request.model is None:
            request.model = self.model
        elif self.realtime and self.model and request.model != self.model:  # the session's model runs, whatever
            request.models = (self.model, request.model)  # a response.create names: rules check both, the dearest reserves
        identity = self.meter.identify(self.headers, query, self.proxy_user, self.client_ip)
        ex = self.meter.begin_exchange(self.route, request, identity, len(data), host=self.host, path=self.path,
                                       headers=self.headers)
        parser = self.adapter.stream_parser(self.path)
        ex.parser = parser
        turn = Turn(ex, parser, admitted=admitted)
        self.turns += 1
        self.open.append(turn)
        return turn

    def refused(self, turn: Turn) -> None:
        """Admission said no: the message was dropped; record the refusal as the turn's row."""
        turn.admitted = False
        turn.exchange.extra.setdefault("blocked", True)
        try:
            self.open.remove(turn)
        except ValueError:
            pass
        self.meter.finish(turn.exchange, None)

    @staticmethod
    def refusal_event(status: int, body: bytes, headers: Mapping[str, str]) -> bytes:
        """The error event a client reads as a failed request: the HTTP refusal, wrapped.

        Codex maps ``{"type": "error", "status": N, "error": {...}, "headers": {...}}`` to the
        HTTP error it would have got for a POST; Realtime clients read ``error.message``.
        """
        try:
            error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            error = None
        if not isinstance(error, dict):
            error = {"type": "error", "message": body.decode("utf-8", "replace")}
        event = {"type": "error", "status": status, "error": error, "headers": dict(headers)}
        return json.dumps(event).encode()

    # -- provider -> client --
    def server_message(self, data: bytes) -> Turn | None:
        """A message from the provider: feed the open turn; finish it at its end. Never raises.

        Returns the turn the provider started on its own (Realtime with server voice detection
        answers each committed audio buffer; no `response.create` went up): it is metered, and
        the proxy edge admits it now, cancelling it at the cap (`over_cap`)."""
        try:
            return self._server_message(data)
        except Exception:
            log.exception("spendgate: cannot read a WebSocket event")
            return None

    def _server_message(self, data: bytes) -> Turn | None:
        if len(data) > MAX_MESSAGE_BYTES:
            return None
        kind = event_type(data)
        if kind is None:
            return None
        if self.realtime and kind in ("session.created", "session.updated"):
            self._session_model(data)
            return None
        if not kind.startswith("response.") and kind != "error":
            return None  # rate limits, session, conversation and audio-buffer events: not a turn's
        started = None
        if self.realtime and kind != "error":
            turn, started = self._realtime_turn(kind, data)
            if turn is None:
                return None
        else:
            if not self.open:
                if kind != "response.created":
                    return None
                # a response no admitted turn asked for: a request we did not see as one; metered
                started = self._begin(b"", admitted=False)
            turn = self.open[0]
        ex = turn.exchange
        if not turn.started:
            turn.started = True
            ex.status = 200
            ex.headers_at = ex.first_byte_at = self.meter.clock()
        if kind.endswith("audio.delta") and "transcript" not in kind:
            return None  # Realtime audio chunks: large base64, nothing to count (usage comes at the end)
        text = data.decode("utf-8", "replace")
        turn.parser.feed_message(text)
        if kind == "error":
            if self.realtime and turn.parser.result().events > 1:
                return None  # a Realtime error inside a running response: response.done still comes
            ex.status = _error_status(text)
            self._finish(turn, None)
        elif turn.parser.result().complete:
            self._finish(turn, None)
        return started if started is not None and self.realtime else None

    def _realtime_turn(self, kind: str, data: bytes) -> tuple[Turn | None, Turn | None]:
        """(the turn a Realtime event belongs to, the turn it starts when the server began a
        response no `response.create` of the client accounts for). Realtime runs responses side
        by side (an out-of-band one while voice detection starts the conversation's), so events
        are routed by their response id, not by order."""
        if kind in ("response.created", "response.done"):
            try:
                rid = json.loads(data).get("response", {}).get("id")
            except (ValueError, AttributeError):
                rid = None
        else:
            m = _RESPONSE_ID.search(data, 0, 4096)
            rid = m.group(1).decode("utf-8", "replace") if m else None
        rid = rid if isinstance(rid, str) and rid else None
        turn = self.by_response.get(rid) if rid else None
        if turn is not None or kind != "response.created":
            return (turn or (self.open[0] if self.open and not rid else None)), None
        unbound = next((t for t in self.open if t.response_id is None), None)
        if unbound is not None:  # the answer to the oldest response.create still waiting for one
            unbound.response_id = rid
            if rid:
                self.by_response[rid] = unbound
            return unbound, None
        started = self._begin(b"", admitted=False)  # the server started it on its own (voice)
        started.response_id = rid
        if rid:
            self.by_response[rid] = started
        return started, started

    def over_cap(self, turn: Turn) -> bytes:
        """Admission refused a response the provider started on its own: it is already running,
        so it stays metered (the provider bills what it generated before the cancel) and the
        event to send the provider is returned: Realtime's ``response.cancel``."""
        ex = turn.exchange
        ex.extra.pop("blocked", None)  # not a blocked row: a cancelled response, charged what it used
        ex.extra["cancelled_at_cap"] = ex.extra.pop("blocked_reason", None) or "over budget"
        ex.status = 200
        self.capped = True
        return json.dumps({"type": "response.cancel"}).encode()

    def withheld(self, data: bytes) -> bool:
        """True for a client message not to pass on: audio while the session is capped (it would
        make the server start responses nobody admitted)."""
        return self.capped and client_event_type(data) == "input_audio_buffer.append"

    def _session_model(self, data: bytes) -> None:
        try:
            model = json.loads(data).get("session", {}).get("model")
        except (ValueError, AttributeError):
            return
        if isinstance(model, str) and model:
            self.model = model

    def _finish(self, turn: Turn, ended: str | None) -> None:
        try:
            self.open.remove(turn)
        except ValueError:
            pass
        if turn.response_id:
            self.by_response.pop(turn.response_id, None)
        result = turn.parser.result()
        if result.usage is not None and result.usage_final:
            self.context_tokens = result.usage.input_tokens + result.usage.output_tokens
        self.meter.finish(turn.exchange, result, ended=ended)

    def close(self, reason: str = "websocket closed") -> int:
        """The socket ended: every turn still open is finished as cut (usage estimated)."""
        n = 0
        while self.open:
            turn = self.open[0]
            self._finish(turn, f"{reason} before the response completed")
            n += 1
        return n


def _error_status(text: str) -> int:
    """The HTTP-like status of an ``error`` event (Codex's wrapped errors carry one), else 400."""
    try:
        obj = json.loads(text)
    except ValueError:
        return 400
    status = obj.get("status", obj.get("status_code")) if isinstance(obj, dict) else None
    return status if isinstance(status, int) and not isinstance(status, bool) and 400 <= status < 600 else 400
