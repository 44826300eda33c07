"""The metering pipeline, free of mitmproxy: request -> identity -> usage -> price -> ledger.

The proxy edge calls `begin()` with a request and `finish()` once the response is over (or
broken). `finish()` only enqueues; pricing and everything after it run later in batches, never
inside the request's own hooks: on one worker thread, or, inside the proxy with in-memory budget
counters, on the event loop between its callbacks (`record_on`, which measured cheaper there).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from spendgate import bounds
from spendgate.batcher import Batcher, LoopBatcher
from spendgate.identity import Identity, credentials
from spendgate.metering import billing, providers
from spendgate.metering.context import ContextBook
from spendgate.metering.providers import batch_input, batches, openai_media, prefixes
from spendgate.metering.providers.base import (
    MODIFIER_CHARS,
    RESENT,
    Adapter,
    RequestInfo,
    ResponseResult,
    Route,
    StreamParser,
)
from spendgate.metering.providers.openai_responses import FETCHES, RESULTS_KEY, response_key
from spendgate.metering.streams import PIECE, AfterForwarding, DecodedTooLarge, IncrementalDecoder, is_identity
from spendgate.pricing import cards
from spendgate.pricing.rates import Pricer, PriceResult, reported
from spendgate.store.ledger import Ledger, LedgerRow
from spendgate.usage import Usage

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # the usual rough ratio, only for estimates when the provider said nothing


@dataclass(slots=True)
class Exchange:
    """One metered request in flight."""

    request_id: str
    ts: datetime
    started: float
    route: Route
    request: RequestInfo
    identity: Identity
    bytes_in: int = 0
    status: int | None = None
    headers_at: float | None = None
    parser: StreamParser | None = None
    first_byte_at: float | None = None
    served_tier: str | None = None  # the tier a response header says served it (Gemini)
    extra: dict = field(default_factory=dict)  # room for admission (budgets) to hang state
    host: str = ""  # the provider host the client asked for (server.address in spans)
    traceparent: str | None = None  # the client's W3C trace context header, unparsed (untrusted)
    tracestate: str | None = None
    response: ResponseResult | None = None  # what the worker parsed, for row listeners (telemetry)
    billing: billing.Billing = billing.API_BILLING  # invoiced per token, or covered by a seat

    @property
    def provider(self) -> str:
        return self.route.provider

    @property
    def dialect(self) -> str:
        """Whose error format the client reads (anthropic, openai, gemini, bedrock)."""
        return self.route.dialect or self.route.provider


@dataclass(frozen=True, slots=True)
class Body:
    """A whole (non-streamed) response body as it came, content-encoded."""

    raw: bytes
    content_encoding: str = ""

    def decode(self, limit: int = bounds.MAX_DECODED_BYTES) -> bytes:
        """The body as the provider sent it before encoding. Raises DecodedTooLarge past `limit`
        bytes (decoding stops right after it), or the decoder's error for garbage."""
        decoder = IncrementalDecoder(self.content_encoding, limit)
        return b"".join(decoder.feed_iter(self.raw, min(limit + 1, PIECE)))

    def parse(self, adapter: Adapter | None) -> ResponseResult | None:
        if adapter is None:
            return None
        try:
            body = self.decode()
        except Exception:  # an encoding we cannot undo, garbage, or a bomb: usage unknown, row estimated
            return ResponseResult(garbled=True)
        return adapter.parse_response(body)


def request_body(raw: bytes, content_encoding: str, limit: int = bounds.MAX_DECODED_BYTES) -> bytes | None:
    """The request body as the provider reads it; None when it cannot be decoded.

    Providers accept compressed request bodies (Codex sends zstd to the ChatGPT backend), so the
    model, the stream flag and the input size must be read from the decoded body: read
    compressed, the model rules and step-downs would not see the model and the estimate would be
    the compressed size. Raises DecodedTooLarge past `limit` decoded bytes (decoding stops right
    after it): a body too large to read, which the proxy edge answers with a 413 or decodes on a
    worker thread, never an unreadable one.
    """
    if not raw or is_identity(content_encoding):
        return raw
    try:
        return Body(raw, content_encoding).decode(limit)
    except DecodedTooLarge:
        raise
    except Exception:  # an encoding we do not know (or a chain of them), or garbage
        return None


def canonical(path: str) -> str:
    """The path adapters see: normalised (providers.normalize_path), the query kept as sent."""
    query = path.partition("?")[2]
    return providers.normalize_path(path) + ("?" + query if query else "")


IdentifyFn = Callable[[Mapping[str, str], str, str | None, str | None], Identity]
PlanFn = Callable[[str | None, str, datetime], str | None]  # (vendor, user, when) -> policy plan name
RowListener = Callable[[Exchange, LedgerRow], None]


def results_already_charged(status: int | None, result: ResponseResult, fetched: bool = True, host: str = "") -> bool:
    """True for batch results or a Response this process charged before (fetching it again is then $0).

    Only a complete download (200) marks a file charged: a ranged one (206) is charged for the
    lines it carries and marks nothing, so part of a file can never make the whole of it free
    (ranges followed by a full download pay the overlap twice; reconciliation shows it).
    `fetched` False (the call that ran the model: a Responses POST) marks its response charged and
    is never itself made free: only a fetch is, so a provider that reuses a response id can never
    make a model call free.
    """
    if not (result.results_key and result.usage_final) or status != 200:
        return False
    key, once = result.results_key, batches.CHARGED
    if key.startswith(RESULTS_KEY) and result.response_id:
        key, once = response_key(host, result.response_id), batches.RESPONSES_CHARGED
    first = once.first_time(key)
    return fetched and not first


def estimate_usage(req: RequestInfo, result: ResponseResult) -> Usage:
    """Best guess when the provider's final usage never arrived (cut, error, crash). Quantities
    billed per unit (images, video and audio seconds, characters) come from the request's own
    estimate when the answer did not say (tenth review, T4): never dropped to a token guess."""
    seen = result.usage or Usage()
    # what the request fixes (tts-1's characters, a Veo job's seconds), else the media it asked for
    # (images, video seconds); a transcription's guessed audio length is for reserving only (a
    # gpt-4o-transcribe row priced by it would find no per-second rate)
    fixed = req.request_usage or Usage()
    media = req.request_usage or req.estimate or Usage()
    units = replace(media, audio_seconds=fixed.audio_seconds, input_characters=fixed.input_characters)
    per_unit = bool(units.audio_seconds or units.input_characters or units.output_images or units.output_video_seconds)
    # billed per unit: the request's own usage says which tokens too (none for a video job)
    guess = units.input_tokens if per_unit else math.ceil(req.input_bytes / CHARS_PER_TOKEN)
    inp = seen.input_tokens or result.input_tokens_hint or guess
    out = max(seen.output_tokens, math.ceil(result.output_chars / CHARS_PER_TOKEN))
    return Usage(
        input_tokens=inp,
        cache_read_tokens=seen.cache_read_tokens,
        cache_write_tokens=seen.cache_write_tokens,
        cache_write_1h_tokens=seen.cache_write_1h_tokens,
        output_tokens=out,
        reasoning_tokens=min(seen.reasoning_tokens, out),
        web_search_requests=seen.web_search_requests,
        input_audio_tokens=seen.input_audio_tokens,
        input_image_tokens=seen.input_image_tokens,
        input_video_tokens=seen.input_video_tokens,
        cache_read_audio_tokens=seen.cache_read_audio_tokens,
        output_audio_tokens=seen.output_audio_tokens,
        output_image_tokens=seen.output_image_tokens,
        output_video_tokens=seen.output_video_tokens,
        audio_seconds=seen.audio_seconds or units.audio_seconds,
        input_characters=seen.input_characters or units.input_characters,
        output_images=seen.output_images or units.output_images,
        output_video_seconds=seen.output_video_seconds or units.output_video_seconds,
        output_video_high_res_seconds=(seen.output_video_high_res_seconds if seen.output_video_seconds
                                       else units.output_video_high_res_seconds),
    )


def serving_modifiers(result: ResponseResult | None, routed: dict[str, str] | None = None) -> dict[str, str]:
    """What the provider reported about how it served the request (changes the price), over what
    its URL states (`routed`: Route.extra["modifiers"], e.g. a Vertex regional endpoint)."""
    out = dict(routed or {})
    if result is None:
        return out
    out.update(result.modifiers)
    if result.service_tier:  # cut like every other reported modifier (providers.base.modifier): OpenAI's is read whole
        out["service_tier"] = result.service_tier.lower()[:MODIFIER_CHARS]
    return out


CACHED_MODIFIER_CHARS = 2 * MODIFIER_CHARS  # a name and its value, each as long as a reported modifier is kept
CACHED_MODIFIERS = 8  # pairs in one set


def modifiers_json(modifiers: dict[str, str]) -> str:
    """A row's `modifiers` column: JSON with sorted keys. The same pair or two ({"service_tier":
    "standard"}) is on nearly every row, so each distinct set is encoded once (~3 µs a row).

    Only short plain strings are cached: 1, 1.0 and True (or 0, 0.0, -0.0 and False) are equal cache
    keys but different JSON, and a long value (from a caller that does not cut it) would be kept
    after its row."""
    if len(modifiers) > CACHED_MODIFIERS:
        return json.dumps(modifiers, sort_keys=True)
    for k, v in modifiers.items():
        if type(k) is not str or type(v) is not str or len(k) + len(v) > CACHED_MODIFIER_CHARS:
            return json.dumps(modifiers, sort_keys=True)
    return _encoded_modifiers(tuple(sorted(modifiers.items())))


@functools.lru_cache(maxsize=256)
def _encoded_modifiers(items: tuple[tuple[str, str], ...]) -> str:
    return json.dumps(dict(items), sort_keys=True)


@dataclass(slots=True, frozen=True)
class Verdict:
    outcome: str
    usage: Usage
    estimated: bool
    note: str | None
    free: bool = False  # answered, and bills nothing (a batch submission; results already charged)


def judge(ex: Exchange, result: ResponseResult | None, ended: str | None) -> Verdict:
    """Decide outcome and usage of a finished exchange (before pricing)."""
    if ex.extra.get("blocked"):  # refused at admission, metered endpoint or not
        return Verdict("blocked", Usage(), False, ex.extra.get("blocked_reason"))
    if ex.route.adapter is None:
        return Verdict("unmetered", Usage(), False, None)
    if ex.request.free:  # e.g. count_tokens: nothing is billed whatever the answer
        return Verdict("ok" if (ex.status or 0) < 400 else "upstream_error", Usage(), False, None)
    result = result or ResponseResult()
    status = ex.status or 0
    if result.free and status < 400 and not ended:
        return Verdict("ok", Usage(), False, result.note, free=True)
    if ended == "interrupted":
        return Verdict("interrupted", estimate_usage(ex.request, result), True, "gateway stopped mid-request")
    if ex.extra.get("abandoned") and not (result.usage and result.usage_final):
        return Verdict("estimated", estimate_usage(ex.request, result), True,
                       f"{ended}: the client left after the request went upstream; charged its estimate")
    if status >= 400 and not (result.usage and result.usage_final):
        return Verdict("upstream_error", Usage(), False, result.error or ended or f"HTTP {status}")
    if result.usage is not None and result.usage_final:
        return Verdict("ok", result.usage, False, result.error)
    if ex.request.request_usage is not None and status < 400 and not ended and not result.error:
        return Verdict("ok", ex.request.request_usage, False, None)  # billed by what was sent (tts-1)
    why = ended or result.error or ("stream garbled" if result.garbled else "no usage reported")
    if status == 0 and ended and not result.events:
        # never got a response at all (upstream unreachable): nothing was billed
        return Verdict("upstream_error", Usage(), False, ended)
    return Verdict("estimated", estimate_usage(ex.request, result), True, why)


RECORD_INTERVAL = 0.05  # seconds: finished exchanges are recorded in batches this often
LOOP_BODY_BYTES = 64 * 1024  # a larger whole body, as sent or decoded, is parsed on the worker thread


def light(item: tuple) -> bool:
    """Whether a finished exchange (Meter.finish's item) may be recorded on the event loop: not
    batch results (one row per model, each priced), and no whole body over LOOP_BODY_BYTES as sent
    (msgspec parses 64 KiB in under 0.1 ms). A compressed body is decoded there only up to that
    size (`Meter._record_loop_batch`). Streams were read as they passed: their result is ready. A
    background response's fetch is one response, and releases its hold on the budgets
    (budgets.admission): recorded on the loop, a request right after it is judged without the hold."""
    ex, result = item[0], item[1]
    if ex.request.results and ex.route.endpoint not in FETCHES:
        return False
    return not isinstance(result, Body) or len(result.raw) <= LOOP_BODY_BYTES


def split_parts(ex: Exchange, result: ResponseResult | None) -> list[Exchange]:
    """One exchange per model a response bills (batch results of several models), else `ex`.

    Each part after the first gets the request id with ``-N`` appended; all share the rest.
    """
    ex.response = result
    if result is None or len(result.parts) < 2:
        return [ex]
    out = []
    for i, (model, usage) in enumerate(result.parts):
        part = replace(ex, request_id=ex.request_id if i == 0 else f"{ex.request_id}-{i + 1}",
                       extra=dict(ex.extra) if i == 0 else {k: v for k, v in ex.extra.items() if k != "reservation"})
        part.response = replace(result, model=model, usage=usage, parts=())
        out.append(part)
    return out


class Meter:
    """Owns the flow from request facts to ledger rows."""

    def __init__(
        self,
        pricer: Pricer,
        ledger: Ledger,
        identify: IdentifyFn,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.pricer = pricer
        self.ledger = ledger
        self.identify = identify
        self.clock = clock
        self.now = now
        self.listeners: list[RowListener] = []
        self.plan_for: PlanFn | None = None  # set by the gateway: which policy plan a seat belongs to
        self._thread: Batcher[tuple] = Batcher(self._record_batch, RECORD_INTERVAL, "spendgate-meter")
        self._worker: Batcher[tuple] | LoopBatcher[tuple] = self._thread  # record_on() may move it to the loop
        self._inflight: dict[str, Exchange] = {}  # single dict operations: atomic, no lock needed
        self.contexts = ContextBook()  # what continuations (previous_response_id) re-read
        self.batch_inputs = batch_input.BatchInputBook()  # OpenAI batch input files seen uploaded, estimated
        self.prefixes = prefixes.Prefixes()  # each caller's last large body: its next turn reads only what is new
        # request ids: random per process, then a counter (cheaper than uuid4 on the event loop)
        # (the prefix is drawn once: os.urandom per id cost ~20 us of a syscall on every request)
        prefix = os.urandom(10).hex()
        self._ids = (f"{prefix}{n:012x}" for n in itertools.count())

    def _parse(self, route: Route, path: str, body: bytes, headers: Mapping[str, str], query: str,
               *caller: str | None) -> RequestInfo:
        """The adapter's reading of a request; a large body may resume the same caller's last one."""
        if route.adapter is None:
            return RequestInfo()
        # a multipart body is read from the Content-Type's own boundary, as the server reads it
        body = openai_media.from_boundary(body, headers.get("content-type", ""))
        if len(body) < prefixes.MIN_BODY_BYTES:
            return route.adapter.parse_request(path, body)
        scope = prefixes.scope_of(*caller, *credentials(headers, query))
        token = RESENT.set(functools.partial(self.prefixes.members, scope))
        try:
            return route.adapter.parse_request(path, body)
        finally:
            RESENT.reset(token)

    def read_request(self, route: Route, path: str, headers: Mapping[str, str], body: bytes,
                     *caller: str | None) -> RequestInfo:
        """The adapter's reading of a decoded request body, on any thread: the proxy edge reads a
        body that decoded large on a worker thread and hands the result to `begin` (`read`), so a
        few compressed bytes never make the event loop parse megabytes (forty-second review).
        `caller`: (proxy user, client address, host), which scope the resent-conversation memory
        (`prefixes`, which holds its own lock)."""
        return self._parse(route, canonical(path), body, headers, path.partition("?")[2], *caller)

    # -- edge side (event loop) --
    def begin(
        self,
        host: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        proxy_user: str | None = None,
        client_ip: str | None = None,
        method: str | None = None,
        unreadable: bool = False,
        route: Route | None = None,
        read: RequestInfo | None = None,
    ) -> Exchange | None:
        """Start metering a request to `host` (the connection's real target, never the Host
        header); None when the host is not a provider. Adapters see the canonical path.

        `body` is decoded (:func:`request_body`); `unreadable` says it could not be, and the
        exchange is then marked so admission refuses it. `route`: ``providers.route(host, path,
        method)`` when the caller has it already (the proxy routes each request at its headers).
        `read`: the body as `read_request` read it already, on a worker thread."""
        route = route or providers.route(host, path, method)
        if route is None:
            return None
        canon, query = canonical(path), path.partition("?")[2]
        if unreadable:
            req = RequestInfo(malformed=True, unreadable=True, input_bytes=len(body))
        else:
            req = read if read is not None else self._parse(route, canon, body, headers, query, proxy_user,
                                                            client_ip, host)
        if not req.model:  # Bedrock/Vertex name the model in the path, Azure its deployment
            req.model = route.extra.get("model") or route.extra.get("deployment")
        if req.continues:  # the body holds the new turn only; the provider bills the context again
            req.input_bytes += self.contexts.tokens(req.continues) * CHARS_PER_TOKEN
        if req.batch_file:  # an OpenAI batch: its requests are in a file uploaded before (batch_input.py)
            req.batch_input = self.batch_inputs.get(req.batch_file)
        bounds.clip_request(req)
        ts = self.now()
        identity = bounds.clip_identity(self.identify(headers, query, proxy_user, client_ip, hints=req.hints))
        identity, bill = self._billing(host, canon, headers, identity, ts)
        ex = Exchange(
            request_id=next(self._ids),
            ts=ts,
            started=self.clock(),
            route=route,
            request=req,
            identity=identity,
            bytes_in=len(body),
            host=host,
            traceparent=headers.get("traceparent"),
            tracestate=headers.get("tracestate"),
            billing=bill,
        )
        ex.extra["path"] = bounds.clip(providers.normalize_path(path), 200)
        if route.provider == "copilot":  # agent follow-ups are not premium requests
            ex.extra["initiator"] = headers.get("x-initiator")
        self._inflight[ex.request_id] = ex
        return ex

    def saw_headers(self, ex: Exchange, headers: Mapping[str, str]) -> None:
        """Response headers arrived: keep the serving facts some providers put there."""
        if ex.route.adapter is not None:
            ex.served_tier = ex.route.adapter.served_tier(headers)

    def _billing(self, host: str, canon: str, headers: Mapping[str, str], identity: Identity,
                 ts: datetime) -> tuple[Identity, billing.Billing]:
        """How the call is paid for (API key, or a subscription seat with its policy plan)."""
        bill = billing.classify(providers.normalize_host(host), canon, headers)
        if bill.subscription:
            plan = self.plan_for(bill.vendor, identity.user, ts) if self.plan_for else None
            identity = replace(identity, basis=bill.basis, plan=plan)
        return identity, bill

    def begin_exchange(self, route: Route, request: RequestInfo, identity: Identity, bytes_in: int, *,
                       host: str = "", path: str = "", headers: Mapping[str, str] | None = None) -> Exchange:
        """Start metering a call whose request was already read (a WebSocket turn).

        `host`, `path` and `headers` are the socket's handshake: they say how the turn is paid
        for (a ChatGPT sign-in over chatgpt.com is a subscription seat, like its HTTP calls).
        """
        ts = self.now()
        bill = billing.API_BILLING
        if host:
            identity, bill = self._billing(host, providers.normalize_path(path), headers or {}, identity, ts)
        ex = Exchange(
            request_id=next(self._ids),
            ts=ts,
            started=self.clock(),
            route=route,
            request=request,
            identity=identity,
            bytes_in=bytes_in,
            host=host,
            billing=bill,
        )
        self._inflight[ex.request_id] = ex
        return ex

    def stream_parser(self, ex: Exchange, path: str, content_type: str,
                      later: Callable[[float, Callable[[], None]], Any] | None = None) -> StreamParser | None:
        """The parser of a streamed response, or None when the response is not a stream.

        `later` (the event loop's ``call_later``): read the chunks in batches once they were handed
        on (streams.AfterForwarding) rather than each before."""
        adapter = ex.route.adapter
        if adapter is None or not adapter.is_stream_response(content_type, ex.request):
            return None
        parser = adapter.stream_parser(canonical(path))
        ex.parser = parser if later is None else AfterForwarding(parser, later)
        return ex.parser

    def record_on(self, loop: Any) -> None:
        """Record finished exchanges (parse, price, settle, telemetry, ledger append) on `loop`'s own
        thread from now on, in batches every RECORD_INTERVAL, instead of on the worker thread: on the
        proxy's event loop that costs less CPU than handing them to a thread (batcher.LoopBatcher
        says why). Call it on the loop's thread, and only when every listener is memory-only
        (in-memory budget counters; alert writes handed to a thread): nothing blocking may run there.
        Large bodies (`light`) still go to the worker thread, in order."""
        self._worker = LoopBatcher(self._record_loop_batch, RECORD_INTERVAL, loop, self._thread, light)

    def record_finished(self) -> bool:
        """On the event loop (record_on): record now the finished exchanges waiting for the next
        batch (up to RECORD_INTERVAL later otherwise); True if there were any. Elsewhere: False."""
        worker = self._worker
        return isinstance(worker, LoopBatcher) and worker.drain_here()

    def leave_loop(self) -> None:
        """Record on the worker thread again; what waits on the loop is recorded first. The gateway's
        close() starts with it, so threads it then stops never wait for a loop that waits for them."""
        worker = self._worker
        if isinstance(worker, LoopBatcher):
            worker.detach()
            self._worker = self._thread

    def finish(
        self,
        ex: Exchange,
        result: ResponseResult | Body | None,
        *,
        ended: str | None = None,
        bytes_out: int = 0,
    ) -> None:
        """Hand a finished exchange to the worker. Safe to call once per exchange.

        A whole response body is passed as `Body`, still encoded: it is decoded and parsed when the
        exchange is recorded (on the worker thread, or on the loop in batches when small, record_on).
        """
        if self._inflight.pop(ex.request_id, None) is None:
            return
        self._worker.put((ex, result, ended, bytes_out, self.clock()))

    def learn_upload(self, ex: Exchange, body: Body) -> None:
        """A file upload was answered: estimate a batch input file and remember it under the answered
        id (providers/batch_input.py). A worker thread's job (the file may be large); the gateway runs
        it before the answer reaches the client, so a batch naming the file right after finds it."""
        upload, ex.request.upload = ex.request.upload, None
        if upload is None or (ex.status or 0) >= 400 or ex.route.adapter is None:
            return
        try:
            result = body.parse(ex.route.adapter)
            if result is not None and result.response_id:
                self.batch_inputs.remember(result.response_id, batch_input.estimate_upload(upload))
        except Exception:
            log.exception("spendgate: estimating an uploaded batch input file failed")

    def abandon_inflight(self) -> list[Exchange]:
        """At shutdown: record every exchange still in flight as interrupted."""
        pending = list(self._inflight.values())
        for ex in pending:
            result = ex.parser.result() if ex.parser else None
            self.finish(ex, result, ended="interrupted")
        return pending

    def flush(self, timeout: float = 10.0, paced: bool = False) -> bool:
        """Wait until every row settled so far is committed; `paced`: a reader's (ledger.FLUSH_GAP)."""
        return self._worker.flush(timeout) and self.ledger.flush(timeout, paced)

    def close(self) -> None:
        self.abandon_inflight()
        self._worker.close()  # (a LoopBatcher closes the worker thread after it)

    # -- worker thread, or the event loop (record_on) --
    def _record_batch(self, items: list[tuple]) -> None:
        for item in items:
            self._record_item(item)

    def _record_item(self, item: tuple) -> None:
        try:
            self._record(*item)
        except Exception:  # one exchange's failure must not lose the rest of its batch
            log.exception("spendgate: recording %s failed", item[0].request_id)

    def _record_loop_batch(self, items: list[tuple]) -> list[tuple] | None:
        """The event loop's batch (record_on): as `_record_batch`, but a compressed body is decoded
        here only up to LOOP_BODY_BYTES (a few hundred bytes of brotli can hold 64 MiB). At the first
        one larger, that item and those after it are returned, for the worker thread, in order."""
        for i, item in enumerate(items):
            result = item[1]
            if isinstance(result, Body) and not is_identity(result.content_encoding):
                try:
                    item = (item[0], Body(result.decode(LOOP_BODY_BYTES)), *item[2:])
                except DecodedTooLarge:
                    return items[i:]
                except Exception:  # noqa: BLE001 -- garbage fails as fast in Body.parse: recorded garbled there
                    pass
            self._record_item(item)
        return None

    def _record(
        self, ex: Exchange, result: ResponseResult | Body | None, ended: str | None, bytes_out: int, done_at: float
    ) -> None:
        if isinstance(result, Body):
            result = result.parse(ex.route.adapter)
        ex.response = result
        if result is not None and results_already_charged(ex.status, result, ex.request.results, ex.host):
            what = "batch results" if ex.route.endpoint == "batch.results" else "response"
            result = ResponseResult(free=True, note=f"{what} fetched again: already charged")
        if result is not None and result.response_id and result.usage is not None:
            self.contexts.remember(result.response_id, result.usage.input_tokens + result.usage.output_tokens)
        for part in split_parts(ex, result):
            try:
                row = self.build_row(part, part.response, ended, bytes_out, done_at)
            except Exception:
                log.exception("could not build ledger row for %s", ex.request_id)
                return
            for listener in self.listeners:  # budgets settle here and may set row.charged_usd
                try:
                    listener(part, row)
                except Exception:
                    log.exception("row listener failed")
            self.ledger.append(row)

    def build_row(
        self, ex: Exchange, result: ResponseResult | None, ended: str | None, bytes_out: int, done_at: float
    ) -> LedgerRow:
        verdict = judge(ex, result, ended)
        model = bounds.clip(result.model if result and result.model else None, bounds.MODEL) or ex.request.model
        modifiers = serving_modifiers(result, ex.route.extra.get("modifiers"))
        if ex.served_tier:  # what the provider's response header says it served wins over the body
            modifiers["service_tier"] = ex.served_tier
        price = self.price(ex, verdict, model, modifiers)
        price = self.side_by_side(ex, verdict, model, result, price)
        outcome = verdict.outcome
        if outcome in ("ok", "estimated") and price.cost is None:
            outcome = "unpriced"
        ident = ex.identity
        first = ex.first_byte_at or ex.headers_at
        card_id, card_json = cards.of_result(price)  # the detail is recomputed from it (slim rows)
        cost, notional = price.cost, None
        if ex.billing.subscription:  # covered by a seat: nothing invoiced per token, list price kept apart
            cost, notional = (Decimal(0), price.cost) if verdict.outcome != "unmetered" else (None, None)
        return LedgerRow(
            ts=ex.ts,
            request_id=ex.request_id,
            provider=ex.provider,
            endpoint=ex.route.endpoint,
            model=model,
            user=ident.user,
            key_fingerprint=ident.key_fingerprint,
            client=ident.client,
            session_id=ident.session_id,
            stream=bool(ex.request.stream or ex.parser is not None),
            status=ex.status,
            outcome=outcome,
            estimated=verdict.estimated,
            cost_usd=cost,
            price_source=price.source,
            latency_ms=round((done_at - ex.started) * 1000, 3),
            ttft_ms=round((first - ex.started) * 1000, 3) if first else None,
            identity_source=ident.source,
            workspace=",".join(ident.workspaces) or None,
            price_card=card_id,
            card_json=card_json,
            note=verdict.note,
            bytes_in=ex.bytes_in,
            bytes_out=bytes_out,
            charged_usd=price.cost,  # budgets: the gateway applies subscription_usage (count/ignore/separate)
            billing_basis=ex.billing.basis,
            credential=ex.billing.credential,
            notional_usd=notional,
            plan=ident.plan,
            modifiers=modifiers_json(modifiers) if modifiers else None,
            **verdict.usage.as_dict(),
        )

    def side_by_side(
        self, ex: Exchange, verdict: Verdict, model: str | None, result: ResponseResult | None, price: PriceResult
    ) -> PriceResult:
        """A provider-stated cost replaces the list price (kept alongside); Copilot adds premium requests."""
        if verdict.outcome not in ("ok", "estimated"):
            return price
        if result is not None and result.reported_cost_usd is not None and not verdict.estimated:
            price = reported(price, Decimal(result.reported_cost_usd), ex.provider)
        table = getattr(self.pricer, "copilot", None)
        if ex.provider == "copilot" and table is not None:
            view = table.view(model, ex.extra.get("initiator"))
            price = replace(price, alternatives={**price.alternatives, "copilot_premium": view})
        return price

    def price(self, ex: Exchange, verdict: Verdict, model: str | None, modifiers: dict[str, str] | None = None) -> PriceResult:
        if verdict.outcome == "unmetered":
            return PriceResult(None, "unmetered")
        if ex.request.free:
            return PriceResult(Decimal(0), "free")
        if verdict.free:
            return PriceResult(Decimal(0), f"not billed ({verdict.note})" if verdict.note else "not billed")
        if verdict.outcome in ("blocked", "upstream_error"):
            return PriceResult(Decimal(0), "not billed")
        try:
            return self.pricer.price(ex.provider, model, verdict.usage, ex.ts, modifiers=modifiers)
        except Exception:  # a pricing bug must not lose the row: record it unpriced, loudly
            log.exception("pricing failed for %s %r", ex.provider, model)
            return PriceResult(None, "pricing error")
