"""What every provider adapter offers. Adapters are pure: bytes in, facts out, never raise."""

from __future__ import annotations

import codecs
import json
from contextvars import ContextVar
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from decimal import Decimal
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from spendgate.identity import NO_HINTS, BodyHints
from spendgate.metering.framing import (
    DEFAULT_MAX_EVENT_BYTES,
    JSONArrayStreamSplitter,
    Oversized,
    SSEDecoder,
    SSEEvent,
)
from spendgate.usage import Usage


@dataclass(slots=True)
class RequestInfo:
    """What we learn from a request body before forwarding it."""

    model: str | None = None
    stream: bool = False
    max_output_tokens: int | None = None  # max_tokens / max_output_tokens / maxOutputTokens
    outputs: int = 1  # answers generated, each up to max_output_tokens: OpenAI n (best_of), Gemini candidateCount
    input_bytes: int = 0  # size of the prompt-bearing body, the basis of input estimates
    free: bool = False  # e.g. count_tokens: never charged, never blocked
    rewritten_body: bytes | None = None  # set when the body is to change (include_usage, a step-down)
    rewritten_path: str | None = None  # set when the path is to change (a step-down on Gemini)
    drop_usage_chunk: bool = False  # the client did not ask for the usage chunk we added
    metadata_user: str | None = None  # e.g. Anthropic body metadata.user_id
    hints: BodyHints = NO_HINTS  # session facts in the body, for identity's per-client chains
    modifiers: dict[str, str] = field(default_factory=dict)  # serving asked for (speed: fast), for estimates
    malformed: bool = False  # body was not the JSON we expected: forward untouched
    unreadable: bool = False  # content-encoded in a way we cannot undo: refused, never forwarded unread
    continues: str | None = None  # previous_response_id: the provider re-reads that context (metering/context.py)
    request_usage: Usage | None = None  # usage the request itself fixes (tts-1: input characters)
    estimate: Usage | None = None  # what admission reserves for when tokens do not apply (audio seconds)
    estimate_model: str | None = None  # the model to reserve at when the request names none (a Sora remix)
    # every model a request may run when it names several, distinct, in order: an Anthropic batch's,
    # OpenRouter's fallbacks, a Realtime turn's and its session's; None in it: past the bound read
    # (model rules count it as any model). Admission checks each, and reserves at the dearest.
    models: tuple[str | None, ...] = ()
    results: bool = False  # a batch results download: never refused, charged when recorded
    upload: bytes | None = None  # a file upload's body, estimated on the meter worker (providers/batch_input.py)
    batch_file: str | None = None  # an OpenAI batch's input_file_id
    batch_input: Any = None  # that file's InputEstimate, when this process saw it uploaded


MAX_OUTPUTS = 128  # answers one request may ask for: OpenAI's n and best_of stop there (API reference)


def outputs_of(*counts: Any) -> int:
    """How many answers a request has generated (each up to its output cap; all are billed): the
    largest count it names, within 1..MAX_OUTPUTS (a value that is not a count: 1)."""
    found = [n for n in (as_int(c) for c in counts if c is not None) if n > 1]
    return min(max(found), MAX_OUTPUTS) if found else 1


def several_models(names: Iterable[Any], bound: int) -> tuple[str | None, ...]:
    """`RequestInfo.models` from the models a request names (repeats, non-strings as None): the
    distinct ones in order, at most `bound`, then None for "more, unread" (model rules count it
    as any model); () when it names at most one."""
    out: dict[str | None, None] = {}
    for name in names:
        name = str_or_none(name)
        if name not in out:
            out[name if len(out) < bound else None] = None
    return tuple(out) if len(out) > 1 else ()


@dataclass(slots=True)
class ResponseResult:
    """What we learned from a response (whole body or stream so far)."""

    model: str | None = None
    usage: Usage | None = None  # None until the provider reported usage (maybe provisional)
    service_tier: str | None = None  # as the provider reported it: priority, flex, batch, standard...
    modifiers: dict[str, str] = field(default_factory=dict)  # how it was served: speed, inference_geo
    usage_final: bool = False  # True when usage came from the provider's final report
    input_tokens_hint: int | None = None  # e.g. message_start input, for estimates
    output_chars: int = 0  # text/thinking/tool-arg characters seen, for estimates
    error: str | None = None  # in-stream or body error type, e.g. "overloaded_error"
    complete: bool = False  # the stream reached its terminal event
    garbled: bool = False  # some bytes could not be parsed (we kept going)
    response_id: str | None = None  # the provider's id of this response, when a later request may continue it
    events: int = 0  # number of events parsed (streams)
    finish_reasons: tuple[str, ...] = ()  # as the provider said them: end_turn, stop, length, STOP...
    reported_cost_usd: str | None = None  # the provider's own statement of the charge (OpenRouter usage.cost)
    free: bool = False  # the answer bills nothing (a batch submission, a file that is not batch output)
    note: str | None = None  # what the row should say about it (e.g. why it is free)
    parts: tuple[tuple[str | None, Usage], ...] = ()  # several models billed in one answer: a row each
    results_key: str | None = None  # batch results, a stored Response: charged once per key by this process
    # a background Response answered before it ran (queued): the request's reservation is charged now,
    # and counted against what its fetch charges (budgets.admission.HeldEstimates)
    held: bool = False
    background: bool = False  # the provider said it runs the response in the background (`background: true`)
    finished: bool = False  # the answer showed the response ended (completed, incomplete, failed, cancelled)


class StreamParser(ABC):
    """Incremental parser over the DECODED bytes of a streamed response body."""

    @abstractmethod
    def feed(self, data: bytes) -> None:
        """Consume the next bytes; boundaries are arbitrary network reads. Never raises."""

    @abstractmethod
    def result(self) -> ResponseResult:
        """What was learned so far (callable at any time, also after an interruption)."""

    def first_event_seen(self) -> bool:
        return self.result().events > 0

    def close(self) -> None:
        """The body ended: read a last event that lacked its terminator. Never raises."""


class Adapter(ABC):
    provider: str = ""  # "anthropic" | "openai" | "gemini"
    endpoint: str = ""  # e.g. "messages", "chat.completions", "responses", "generateContent"
    dialect: str = "openai"  # whose error format this API's clients read: anthropic | openai | gemini | bedrock
    output: bool = True  # False: the endpoint bills no output tokens (embeddings): estimates reserve input only

    @abstractmethod
    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        """Inspect a request body. Never raises: a malformed body gives RequestInfo(malformed=True)."""

    @abstractmethod
    def parse_response(self, body: bytes) -> ResponseResult:
        """Parse a whole (decoded) non-streamed response body. Never raises."""

    @abstractmethod
    def stream_parser(self, path: str) -> StreamParser:
        """A fresh incremental parser for one streamed response."""

    def with_model(self, path: str, body: bytes, model: str) -> tuple[str, bytes] | None:
        """The request asking for `model` instead (a step-down): JSON bodies carry it in `model`.

        Returns (path, body), or None when the request cannot be rewritten (then it is not).
        """
        try:
            obj = load_json(body)
            if not isinstance(obj, dict) or not isinstance(obj.get("model"), str):
                return None
            obj["model"] = model
            return path, dumps_compact(obj)
        except Exception:
            return None

    def served_tier(self, headers: Any) -> str | None:
        """The service tier a provider says, in response headers, that it served (None: not said)."""
        return None

    def is_stream_response(self, content_type: str, request: RequestInfo) -> bool:
        ct = content_type.lower()
        return "text/event-stream" in ct or (request.stream and "json" in ct)


@dataclass(slots=True)
class Route:
    adapter: Adapter | None  # None: a provider host, but a path we do not meter
    provider: str
    endpoint: str
    extra: dict = field(default_factory=dict)
    dialect: str = ""  # error format of the API (refusals answer in it); "" = the provider's name


# -- shared helpers for adapters (pure, never raise) -------------------------------------------


MAX_TOKENS = 10**12  # no call reports more; a larger count is garbage that would overflow counters and columns


def as_int(value: Any) -> int:
    """A token count from untrusted JSON: ints (not bools), floats, digit strings; else 0.

    Capped at MAX_TOKENS: an absurd count (1e30) must not overflow a BIGINT column or a budget.
    """
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return min(max(value, 0), MAX_TOKENS)
    if isinstance(value, float):
        return min(max(int(value), 0), MAX_TOKENS) if value == value and abs(value) != float("inf") else 0
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 13:
        return min(int(value.strip()), MAX_TOKENS)
    return 0


def output_with_reasoning(inp: int, output: int, reasoning: int, total: Any) -> int:
    """Output tokens (reasoning included) of a usage block whose ``output`` may leave reasoning out.

    OpenAI counts reasoning inside ``completion_tokens``/``output_tokens`` (total = input +
    output); xAI counts it beside them (total = input + output + reasoning: "Reasoning",
    https://docs.x.ai/docs/guides/reasoning). Decided from the block itself: only a total that
    adds up with reasoning outside, and not with it inside, adds it; anything else is left as read.
    """
    if reasoning > 0 and as_int(total) == inp + output + reasoning:
        return min(output + reasoning, MAX_TOKENS)
    return output


def dig(obj: Any, *keys: str) -> Any:
    """obj[k1][k2]... or None when any level is missing or not a dict."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def dumps_compact(obj: Any) -> bytes:
    """Compact JSON, keeping non-ASCII text as is unless it cannot be encoded (lone surrogates)."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode("ascii")


_JSON = msgspec.json.Decoder()
_SAFE_DEPTH = 5_000  # nesting both msgspec and json.loads take from any caller (each stops near 10,000)


def load_json(data: bytes | str, strict: bool = True) -> Any:
    """What json.loads returns (``json.loads(data, strict=strict)``), or None where it raises.
    Never raises. `strict` False takes control characters inside strings (stream events:
    JSONEventStreamParser._handle says why).

    msgspec reads first (~3.5x faster on a stream event; nothing else reads every event of every
    stream). It refuses what json.loads may still take (NaN, 1e400, lone surrogates, UTF-16 or
    UTF-32 bytes), and json.loads then decides; where both take a document they return the same
    value, and both refuse integers past Python's digit limit (tests/unit/test_load_json.py).
    Their depth limits differ (and json.loads's depends on the caller's stack), so msgspec's answer
    stands only for documents that cannot nest _SAFE_DEPTH deep: short ones, ones holding few
    values (`_few_values`), or ones with fewer brackets than that.
    """
    if isinstance(data, (bytes, str)):  # json.loads also takes bytearray; msgspec also memoryview
        try:
            obj = _JSON.decode(data)
        except Exception:  # refused (DecodeError), too deep, a lone surrogate in a str: json.loads decides
            return _loads(data, strict)
        if len(data) <= 2 * _SAFE_DEPTH or _few_values(obj, len(data)):  # each level takes two characters
            return obj
        opener, array = (b"{", b"[") if isinstance(data, bytes) else ("{", "[")
        if data.count(opener) + data.count(array) < _SAFE_DEPTH:
            return obj
    return _loads(data, strict)


_WALK_VALUES = 256  # values `_few_values` looks at before counting brackets is the cheaper way


def _few_values(obj: Any, size: int) -> bool:
    """Whether `obj` holds at most _WALK_VALUES values in all, and its texts (keys and strings) take
    all but 2 * _SAFE_DEPTH of the document's `size` characters, so it nests no deeper than that.

    A long stream event is usually one long text (a 16 KB delta holds 6 values: ~1.5 µs to see),
    where counting its brackets read every character twice (~17 µs); a document of many small
    values has its brackets counted. The value alone cannot vouch for the depth: a member that a
    later duplicate key replaced is gone from it, not from the document, and may nest as deep as
    msgspec takes (one level more than json.loads). What is not text in the value is bracket,
    separator or such a lost member (a text is never longer in the value than in the document).
    """
    if type(obj) is not dict and type(obj) is not list:
        return True
    stack = [obj]
    seen = text = 0
    while stack:
        value = stack.pop()
        seen += len(value)
        if seen > _WALK_VALUES:
            return False
        if type(value) is dict:
            text += sum(map(len, value))  # its keys
        for child in value.values() if type(value) is dict else value:
            if type(child) is dict or type(child) is list:
                stack.append(child)
            elif type(child) is str:
                text += len(child)
    return size - text <= 2 * _SAFE_DEPTH


def _loads(data: bytes | str, strict: bool = True) -> Any:
    """json.loads, or None where it raises (for what msgspec has refused already)."""
    try:
        return json.loads(data, strict=strict)
    except (ValueError, TypeError, RecursionError):
        return None


MAX_FINISH_REASONS = 8  # choices are usually 1; bounded because the body is untrusted


def add_finish_reason(result: ResponseResult, value: Any) -> None:
    """Record a finish/stop reason once (strings only, at most 64 characters each). Never raises."""
    if isinstance(value, str) and value and value not in result.finish_reasons:
        if len(result.finish_reasons) < MAX_FINISH_REASONS:
            result.finish_reasons = (*result.finish_reasons, value[:64])


def cost_or_none(value: Any) -> str | None:
    """A provider-reported USD amount from untrusted JSON: a finite, non-negative number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        return None
    return str(amount) if amount.is_finite() and amount >= 0 else None


def reported_cost(usage: dict) -> str | None:
    """USD the request cost per the provider's own accounting (OpenRouter ``usage.cost``), or None.

    With BYOK (``usage.is_byok: true``) ``cost`` is only OpenRouter's fee: the upstream provider
    bills the customer's own key ``usage.cost_details.upstream_inference_cost`` (OpenRouter docs,
    "Usage Accounting"). Both are spend, so they are added; a BYOK response without the upstream
    figure gives None and the row is priced at list price instead of a fee that looks like the bill.
    """
    cost = cost_or_none(usage.get("cost"))
    if cost is None or usage.get("is_byok") is not True:
        return cost
    details = usage.get("cost_details")
    upstream = cost_or_none(details.get("upstream_inference_cost")) if isinstance(details, dict) else None
    return None if upstream is None else str(Decimal(cost) + Decimal(upstream))


def str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


MODIFIER_CHARS = 32  # a reported serving modifier's value as kept: real ones (priority, fast, us) are a few characters


def modifier(value: Any) -> str | None:
    """A serving modifier as reported (`fast`, `us`): short lower-case text, else None."""
    text = str_or_none(value)
    return text.strip().lower()[:MODIFIER_CHARS] if text and text.strip() else None


def error_type(obj: Any) -> str | None:
    """The error kind of an error body/event: error.type, error.status, error.code."""
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        for key in ("type", "status", "code"):
            value = err.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
                return str(value)
        return "error"
    if isinstance(err, str) and err:
        return err
    return None


_UTF8_SLICE = 1 << 16  # bytes: small enough that a few non-ASCII characters cost little, large
# enough that the loop around the slices is noise (80 of them for a 5 MB body)
_UTF8_PART = 1 << 12  # bytes: a slice that holds another byte is checked in parts of this size


def is_utf8(data: bytes) -> bool:
    """Whether `data` decodes as UTF-8 (what ``data.decode("utf-8")`` accepts), without the text.

    ASCII is UTF-8, and `bytes.isascii` checks it at memory speed. Only the 64 KB slices that hold
    another byte are looked into, and in them only the 4 KB parts that do are decoded: decoding a
    whole 5 MB agent body took ~2.6 ms once one em dash sat near its start (CPython widens and
    copies all the text after it), slice by slice it is ~0.5 ms, and the 100 KB bench body, whose
    non-ASCII text is its system prompt, takes 16 µs instead of 32 in parts. A character split
    between two parts is carried over by the incremental decoder, which refuses what
    `bytes.decode` refuses (surrogates, overlong forms, a truncated end).
    """
    if data.isascii():
        return True
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for start in range(0, len(data), _UTF8_SLICE):
            piece = data[start : start + _UTF8_SLICE]
            if piece.isascii() and not decoder.getstate()[0]:  # nor a character begun in the slice before
                continue
            for at in range(0, len(piece), _UTF8_PART):
                part = piece[at : at + _UTF8_PART]
                if not part.isascii() or decoder.getstate()[0]:
                    decoder.decode(part)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


# any JSON value, an array's elements kept as raw JSON (views into the body): what a conversation
# member (messages, input, contents) is decoded as when prefixes.py wants where its elements end
_ELEMENTS = list[msgspec.Raw] | dict[str, msgspec.Raw] | str | int | float | bool | None

Key = str | tuple[str, ...]  # a top-level member's name, or the path to a member inside objects
_Decoder = tuple[Any, tuple[tuple[Key, tuple[str, ...]], ...], tuple[tuple[str, str], ...]]
_TOP_DECODERS: dict[tuple[frozenset[Key], frozenset[str]], _Decoder] = {}


def _top_decoder(keys: frozenset[Key], arrays: frozenset[str]) -> _Decoder:
    """A msgspec decoder that keeps the raw JSON of `keys`, the elements of `arrays` (top-level
    names, disjoint from `keys`), and skips every other member; (decoder, each key's attribute path
    in what it decodes, each array's attribute). Raises ValueError when one key is inside another."""
    cached = _TOP_DECODERS.get((keys, arrays))
    if cached is None:
        tree: dict[str, Any] = {}
        for key in keys:
            *outer, leaf = (key,) if isinstance(key, str) else key
            node = tree
            for part in outer:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ValueError(f"{key!r} is inside another member asked for")
            if leaf in node:
                raise ValueError(f"{key!r} holds another member asked for")
            node[leaf] = msgspec.Raw
        if arrays & tree.keys():
            raise ValueError("an array is also a member asked for")
        tree.update(dict.fromkeys(arrays, _ELEMENTS))
        struct, attrs = _members_struct(tree)
        key_attrs = []
        for key in keys:
            path, names = (key,) if isinstance(key, str) else key, attrs
            at = []
            for part in path:
                name, sub = names[part]
                at.append(name)
                names = sub
            key_attrs.append((key, tuple(at)))
        cached = _TOP_DECODERS[keys, arrays] = (
            msgspec.json.Decoder(struct), tuple(key_attrs), tuple((a, attrs[a][0]) for a in sorted(arrays)))
    return cached


def _members_struct(tree: dict[str, Any]) -> tuple[Any, dict[str, tuple[str, Any]]]:
    """A Struct type with a field per member of `tree` (its type, or a subtree: an object, or null,
    read for its own members), every other member skipped; and member -> (field, subtree's fields)."""
    fields, names = [], {}
    for i, (member, kind) in enumerate(sorted(tree.items())):
        sub = None
        if isinstance(kind, dict):
            kind, sub = _members_struct(kind)
            kind = kind | None
        names[member] = f"f{i}", sub
        fields.append((f"f{i}", kind, msgspec.UNSET))
    struct = msgspec.defstruct("Members", fields, rename={f: m for m, (f, _) in names.items()})
    return struct, names


def _member(raw: Any) -> Any:
    """One member's raw JSON as json.loads reads it: msgspec (~20x faster) for what it takes, else
    json.loads of the member alone (1e400, lone surrogates), which may raise."""
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return json.loads(bytes(raw))


def msgspec_members(body: bytes, keys: frozenset[Key], arrays: frozenset[str],
                    member: Callable[[Any], Any] | None = None) -> tuple[dict, dict[str, list]]:
    """msgspec's reading of a JSON object body: (`keys` members, `arrays` members' raw elements).
    Each member is `member(its msgspec.Raw)` (`bytes`: its raw JSON; default `_member`, looked up
    per call). Raises on anything msgspec is stricter about than json.loads (see top_level)."""
    member = member or _member
    decoder, key_attrs, array_attrs = _top_decoder(keys, arrays)
    top = decoder.decode(body)
    if not is_utf8(body):  # json.loads rejects invalid UTF-8 even inside skipped strings
        raise ValueError("not UTF-8")
    out = {}
    for key, at in key_attrs:
        raw = top
        for name in at:  # an object member that is null or absent: the path is absent
            raw = getattr(raw, name)
            if raw is msgspec.UNSET or raw is None:
                break
        else:
            out[key] = member(raw)
    elements = {key: value for key, name in array_attrs if type(value := getattr(top, name)) is list}
    return out, elements


def top_level(body: bytes, keys: frozenset[Key]) -> dict | None:
    """The members `keys` of a JSON object body (absent ones left out); None if not an object.

    Same answer as ``json.loads(body)`` restricted to `keys`, but agent bodies are ~100 KB of
    conversation we never read: msgspec validates and skips it without building objects, about
    8x faster, on the proxy's event loop. Whatever msgspec is stricter about (not UTF-8, a BOM,
    NaN, lone surrogates, non-object bodies) takes the plain json.loads path. A key that is a
    path (``("request", "session_id")``) is the member at that path, present when every object
    on the way is (json.loads's last member of a repeated name wins at every level). Raises
    ValueError when one key is inside another (a caller's mistake, whatever the body).
    """
    _top_decoder(keys, frozenset())
    try:
        return msgspec_members(body, keys, frozenset())[0]
    except Exception:  # anything unusual: let json.loads decide (msgspec has had its pass)
        pass
    obj = _loads(body)
    if not isinstance(obj, dict):
        return None
    for key in keys:
        if isinstance(key, tuple):
            value = obj
            for part in key:
                value = value.get(part, _ABSENT) if isinstance(value, dict) else _ABSENT
            if value is not _ABSENT:
                obj[key] = value
    return obj


_ABSENT = object()


def top_level_elements(body: bytes, keys: frozenset[Key], arrays: frozenset[str]) -> tuple[dict | None, dict[str, list]]:
    """top_level(body, keys), and the raw elements (msgspec.Raw, views into `body`) of each of the
    top-level members `arrays` (not in `keys`) that holds an array, for prefixes.py; no elements
    when msgspec did not read the body alone (the answer then is json.loads's, as top_level's)."""
    try:
        return msgspec_members(body, keys, arrays)
    except Exception:
        return top_level(body, keys), {}


def nested(body: bytes, path: tuple[str, ...]) -> Any:
    """One value inside a JSON object body (e.g. ``("response",)``), or None: the whole body is
    validated, only the objects on `path` are built."""
    key = path[0] if len(path) == 1 else path
    return (top_level(body, frozenset((key,))) or {}).get(key)


# set by the meter around a large request's parse: top_level that may reuse the same caller's
# previous body (prefixes.py); None: plain top_level
RESENT: ContextVar[Callable[[bytes, frozenset[Key]], dict | None] | None] = ContextVar("resent", default=None)


def parse_json_request(
    body: bytes, max_tokens_keys: tuple[str, ...], keys: tuple[Key, ...] = ()
) -> tuple[dict, RequestInfo]:
    """Common request facts (model, stream, output cap). Non-object bodies are malformed.

    The dict returned holds the top-level members model, stream, `max_tokens_keys` and `keys`
    (maybe more): adapters name what else they read, the rest of the body is never built.
    """
    read = RESENT.get() or top_level
    obj = read(body, frozenset(("model", "stream", *max_tokens_keys, *keys))) if body else None
    if not isinstance(obj, dict):
        return {}, RequestInfo(input_bytes=len(body or b""), malformed=True)
    cap = next((obj[k] for k in max_tokens_keys if k in obj and obj[k] is not None), None)
    info = RequestInfo(
        model=str_or_none(obj.get("model")),
        stream=obj.get("stream") is True,
        max_output_tokens=as_int(cap) if cap is not None else None,
        input_bytes=len(body),
    )
    return obj, info


def json_answer(body: bytes) -> tuple[dict | None, ResponseResult]:
    """A whole answer that should be one JSON object: (the object, a result carrying its error
    type), or (None, a garbled result) for anything else. May raise on invalid UTF-8 (callers
    catch everything, as every parse_response does)."""
    obj = load_json(body)
    if not isinstance(obj, dict):
        return None, ResponseResult(garbled=bool(body))
    return obj, ResponseResult(error=error_type(obj))


def snapshot(result: ResponseResult) -> ResponseResult:
    """A copy callers may keep or mutate without touching the parser's state."""
    usage = replace(result.usage) if result.usage is not None else None
    return replace(result, usage=usage, modifiers=dict(result.modifiers))


class JSONEventStreamParser(StreamParser):
    """The shared shell of every adapter's stream parser: frames -> JSON objects -> on_event.

    Subclasses only interpret payloads. Framing is SSE, or (Gemini without ``alt=sse``) one JSON
    array whose elements are the events. ``[DONE]`` and the array's closing bracket call
    ``on_done``. Memory is one pending event plus the subclass's running counters.
    """

    def __init__(self, json_array: bool = False, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES):
        self._sse = None if json_array else SSEDecoder(max_event_bytes)
        self._array = JSONArrayStreamSplitter(max_event_bytes) if json_array else None
        self._done_signalled = False
        self._result = ResponseResult()

    @abstractmethod
    def on_event(self, event: str | None, obj: dict) -> None:
        """Interpret one JSON payload (``event`` is the SSE event name, if any)."""

    def on_oversized(self, event: str | None, over: Oversized) -> None:
        """An event beyond the memory cap: only its head and tail were kept.

        Adapters override this to read their small fields (spendgate.metering.salvage); by default
        the event is lost, which makes the stream garbled.
        """
        self._result.garbled = True

    def on_done(self) -> None:
        """The stream's own terminator was seen."""
        self._result.complete = True

    def feed(self, data: bytes) -> None:
        try:
            if self._array is not None:
                self._handle([SSEEvent(None, s) if isinstance(s, str) else SSEEvent(None, s.head, s)
                              for s in self._array.feed(data)])
                if self._array.closed and not self._done_signalled:
                    self._done_signalled = True
                    self.on_done()
            elif self._sse is not None:
                self._handle(self._sse.feed(data))
        except Exception:  # a parser bug must never break the proxied stream
            self._result.garbled = True

    def feed_message(self, text: str) -> None:
        """One already-framed event: a WebSocket text message holds exactly one JSON event."""
        try:
            self._handle([SSEEvent(None, text)])
        except Exception:
            self._result.garbled = True

    def close(self) -> None:
        try:
            if self._sse is not None:
                self._handle(self._sse.flush())
        except Exception:
            self._result.garbled = True

    def result(self) -> ResponseResult:
        framer = self._sse if self._sse is not None else self._array
        if framer is not None and framer.garbled:
            self._result.garbled = True
        return snapshot(self._result)

    def _handle(self, events: list[SSEEvent]) -> None:
        for ev in events:
            if ev.oversized is not None:
                self._result.events += 1
                try:
                    self.on_oversized(ev.event, ev.oversized)
                except Exception:
                    self._result.garbled = True
                continue
            data = ev.data.strip()
            if not data:
                continue
            self._result.events += 1
            if data == "[DONE]":
                self.on_done()
                continue
            # Leniently: a control character inside a string (invalid JSON, which no provider
            # sends) does not make a provider's event unreadable, so a fast path that counts a
            # long plain text without looking at every byte for one reads what this reads
            # (anthropic._plain_until). Only provider bytes come here, never a client's.
            obj = load_json(data, strict=False)
            if not isinstance(obj, dict):
                self._result.garbled = True
                continue
            try:
                self.on_event(ev.event, obj)
            except Exception:
                self._result.garbled = True
