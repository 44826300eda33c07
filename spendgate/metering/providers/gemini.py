"""Gemini API on ``generativelanguage.googleapis.com``: ``models/{model}:generateContent`` and
``:streamGenerateContent`` (SSE with ``alt=sse``, otherwise one JSON array sent incrementally).

``usageMetadata`` appears in every chunk as running totals (Vertex-style chunks may carry only
``trafficType``): the last one with counts wins. ``promptTokenCount`` includes
``cachedContentTokenCount``; ``thoughtsTokenCount`` is NOT inside ``candidatesTokenCount``, so
normalized output adds it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from spendgate.identity import BodyHints
from spendgate.metering.framing import Oversized
from spendgate.metering.providers.base import (
    MODIFIER_CHARS,
    Adapter,
    JSONEventStreamParser,
    Key,
    RequestInfo,
    ResponseResult,
    StreamParser,
    add_finish_reason,
    as_int,
    dig,
    error_type,
    json_answer,
    load_json,
    outputs_of,
    parse_json_request,
    str_or_none,
)
from spendgate.metering.salvage import head_field, tail_field
from spendgate.usage import Usage

# case-insensitive: routing must not be dodged by spelling (/V1BETA/Models/m:GENERATECONTENT)
# models/NAME, or tunedModels/NAME (a tuned model: named so in the ledger; no list price, so unpriced)
PATH_RE = re.compile(r"^/(?:v1|v1beta|v1alpha)/((?:tuned)?models/[^/:]+)"
                     r":(generateContent|streamGenerateContent|embedContent|batchEmbedContents|predict|predictLongRunning)$",
                     re.IGNORECASE)
_METHODS = {"generatecontent": "generateContent", "streamgeneratecontent": "streamGenerateContent",
            "embedcontent": "embedContent", "batchembedcontents": "batchEmbedContents",
            "predict": "predict", "predictlongrunning": "predictLongRunning"}
_COUNT_KEYS = (
    "promptTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "cachedContentTokenCount",
    "toolUsePromptTokenCount",
    "totalTokenCount",
)
_UNFINISHED = ("", "FINISH_REASON_UNSPECIFIED")


@dataclass(slots=True, frozen=True)
class GeminiPath:
    model: str
    method: str  # generateContent | streamGenerateContent | embedContent | batchEmbedContents | predict | predictLongRunning
    sse: bool  # alt=sse in the query


def parse_path(path: str) -> GeminiPath | None:
    """Model and method from a request path (query string allowed); None if not ours."""
    try:
        parts = urlsplit(path)
        m = PATH_RE.match(parts.path)
        if m is None:
            return None
        alt = parse_qs(parts.query).get("alt", [])
        name = unquote(m.group(1))
        model = name.partition("/")[2] if name[:7].lower() == "models/" else name
        return GeminiPath(model=model, method=_METHODS[m.group(2).lower()], sse="sse" in alt)
    except Exception:
        return None


def has_counts(meta: Any) -> bool:
    return isinstance(meta, dict) and any(key in meta for key in _COUNT_KEYS)


# modality -> our kind; DOCUMENT (PDF pages) is billed like images, as genai-prices maps it
_MODALITY = {"AUDIO": "audio", "IMAGE": "image", "DOCUMENT": "image", "VIDEO": "video"}


def modality_counts(*details: Any) -> dict[str, int]:
    """Token counts per kind (audio, image, video) from ``*TokensDetails`` lists."""
    out: dict[str, int] = {}
    for items in details:
        for item in items if isinstance(items, list) else ():
            kind = _MODALITY.get(str(dig(item, "modality") or "").upper())
            if kind:
                out[kind] = out.get(kind, 0) + as_int(dig(item, "tokenCount"))
    return out


def gemini_usage(meta: dict, web_searches: int = 0) -> Usage:
    """Normalize ``usageMetadata`` (tool-use prompt tokens count as input); modality details split
    out the tokens that have their own rates (audio, image, video)."""
    thoughts = as_int(meta.get("thoughtsTokenCount"))
    inp = as_int(meta.get("promptTokenCount")) + as_int(meta.get("toolUsePromptTokenCount"))
    out = as_int(meta.get("candidatesTokenCount")) + thoughts
    cached = as_int(meta.get("cachedContentTokenCount"))
    prompt = modality_counts(meta.get("promptTokensDetails"), meta.get("toolUsePromptTokensDetails"))
    cands = modality_counts(meta.get("candidatesTokensDetails"))
    cache = modality_counts(meta.get("cacheTokensDetails"))
    return Usage(
        input_tokens=inp,
        cache_read_tokens=cached,
        output_tokens=out,
        reasoning_tokens=thoughts,
        web_search_requests=web_searches,
        input_audio_tokens=min(prompt.get("audio", 0), inp),
        input_image_tokens=min(prompt.get("image", 0), inp),
        input_video_tokens=min(prompt.get("video", 0), inp),
        cache_read_audio_tokens=min(cache.get("audio", 0), cached, prompt.get("audio", 0)),
        output_audio_tokens=min(cands.get("audio", 0), out),
        output_image_tokens=min(cands.get("image", 0), out),
        output_video_tokens=min(cands.get("video", 0), out),
    )


def _part_chars(part: Any) -> int:
    if not isinstance(part, dict):
        return 0
    text = part.get("text")
    total = len(text) if isinstance(text, str) else 0
    call = part.get("functionCall")
    if isinstance(call, dict) and call.get("args") is not None:
        total += len(str(call["args"]))
    return total


class GeminiChunkFolder:
    """Folds chunk objects (stream elements or a whole response) into a ResponseResult."""

    def __init__(self, result: ResponseResult) -> None:
        self.result = result
        self._meta: dict | None = None  # the last usageMetadata with counts
        self._web_searches = 0  # most search queries any chunk reported (they repeat)

    def fold(self, obj: dict) -> None:
        inner = obj.get("response")
        if isinstance(inner, dict) and "candidates" not in obj and "usageMetadata" not in obj:
            obj = inner  # Code Assist (Gemini CLI login) wraps each chunk
        r = self.result
        err = error_type(obj)
        if err is not None:
            r.error = r.error or err
        r.model = str_or_none(obj.get("modelVersion")) or r.model
        candidates = obj.get("candidates")
        for cand in candidates if isinstance(candidates, list) else ():
            parts = dig(cand, "content", "parts")
            r.output_chars += sum(_part_chars(p) for p in parts) if isinstance(parts, list) else 0
            queries = dig(cand, "groundingMetadata", "webSearchQueries")
            if isinstance(queries, list):
                self._web_searches = max(self._web_searches, len(queries))
            if dig(cand, "finishReason") not in (None, *_UNFINISHED):
                r.complete = True
                add_finish_reason(r, dig(cand, "finishReason"))
        meta = obj.get("usageMetadata")
        if has_counts(meta):
            self._meta = meta
            if r.input_tokens_hint is None:
                r.input_tokens_hint = gemini_usage(meta).input_tokens
        if self._meta is not None:
            r.usage = gemini_usage(self._meta, self._web_searches)
        r.usage_final = r.complete and r.usage is not None


def salvaged_chunk(over: Oversized) -> dict:
    """The chunk fields we meter, rebuilt from an oversized chunk's head and tail."""
    obj: dict[str, Any] = {}
    meta = tail_field(over, "usageMetadata")
    if isinstance(meta, dict):
        obj["usageMetadata"] = meta
    version = tail_field(over, "modelVersion")
    if isinstance(version, str):
        obj["modelVersion"] = version
    reason = tail_field(over, "finishReason")
    if isinstance(reason, str):
        obj["candidates"] = [{"finishReason": reason}]
    error = head_field(over, "error")
    if isinstance(error, dict):
        obj["error"] = error
    return obj


class GeminiStreamParser(JSONEventStreamParser):
    """``streamGenerateContent``: SSE (``alt=sse``) or the incremental JSON array."""

    def __init__(self, json_array: bool) -> None:
        super().__init__(json_array=json_array)
        self._folder = GeminiChunkFolder(self._result)

    def on_event(self, event: str | None, obj: dict) -> None:
        self._folder.fold(obj)

    def on_oversized(self, event: str | None, over: Oversized) -> None:
        """An image/audio chunk beyond the cap: usageMetadata, finishReason and modelVersion
        come after the candidates' data, so the tail has them."""
        self._folder.fold(salvaged_chunk(over))

    def on_done(self) -> None:
        self._result.complete = True
        self._result.usage_final = self._result.usage is not None


def normalize_tier(value: Any) -> str | None:
    """`priority`, `PRIORITY` and `SERVICE_TIER_PRIORITY` all name the priority tier."""
    text = str_or_none(value)
    if not text:
        return None
    text = text.strip().lower()
    return text.removeprefix("service_tier_")[:MODIFIER_CHARS] or None


class GeminiAdapter(Adapter):
    provider = "gemini"
    dialect = "gemini"

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def with_model(self, path: str, body: bytes, model: str) -> tuple[str, bytes] | None:
        """Gemini names the model in the path (`models/{model}:method`); the body stays as it is."""
        parts = urlsplit(path)
        m = PATH_RE.match(parts.path)
        if m is None:
            return None
        new = parts.path[: m.start(1)] + "models/" + quote(model, safe="") + parts.path[m.end(1):]
        return new + (f"?{parts.query}" if parts.query else ""), body

    def served_tier(self, headers: Any) -> str | None:
        """Gemini says which tier served the request in `x-gemini-service-tier` (a priority request
        over its limit is served, and billed, at standard)."""
        try:
            return normalize_tier(headers.get("x-gemini-service-tier"))
        except Exception:
            return None

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        try:
            return self.read_request(path, body)[1]
        except Exception:
            return RequestInfo(malformed=True)

    def read_request(self, path: str, body: bytes, *keys: Key) -> tuple[dict, RequestInfo]:
        """The body's members a Gemini request is read for, and `keys` (subclasses' own), in one
        pass; and its facts. Raises on what parse_request answers malformed."""
        obj, info = parse_json_request(body, (), ("generationConfig", "generation_config", "user_prompt_id",
                                                  "service_tier", "serviceTier", *keys))
        if tier := normalize_tier(obj.get("service_tier", obj.get("serviceTier"))):
            info.modifiers = {"service_tier": tier}  # asked for; the response header says what was served
        if prompt_id := str_or_none(obj.get("user_prompt_id")):  # Gemini CLI, Code Assist body
            info.hints = BodyHints(user_prompt_id=prompt_id[:256])
        gpath = parse_path(path)
        info.model = gpath.model if gpath else info.model
        info.stream = gpath is not None and gpath.method == "streamGenerateContent"
        config = obj.get("generationConfig", obj.get("generation_config"))
        cap = dig(config, "maxOutputTokens")
        cap = dig(config, "max_output_tokens") if cap is None else cap
        info.max_output_tokens = as_int(cap) if cap is not None else None
        info.outputs = outputs_of(dig(config, "candidateCount"), dig(config, "candidate_count"))
        return obj, info

    def parse_response(self, body: bytes) -> ResponseResult:
        """A whole body: one response object, or a buffered stream array of them."""
        try:
            obj = load_json(body)
            chunks = obj if isinstance(obj, list) else [obj]
            result = ResponseResult()
            folder = GeminiChunkFolder(result)
            for chunk in chunks:
                if isinstance(chunk, dict):
                    folder.fold(chunk)
                else:
                    result.garbled = True
            if isinstance(obj, dict) and result.usage is not None:
                result.complete = result.usage_final = True
            if isinstance(obj, list):
                result.complete = True
                result.usage_final = result.usage is not None
            return result
        except Exception:
            return ResponseResult(garbled=True)

    def stream_parser(self, path: str) -> StreamParser:
        gpath = parse_path(path)
        return GeminiStreamParser(json_array=not (gpath and gpath.sse))


class GeminiEmbedAdapter(GeminiAdapter):
    """``models/{model}:embedContent`` and ``:batchEmbedContents``: billed per input token, no output
    (ai.google.dev/gemini-api/docs/pricing, gemini-embedding-*). The answer (``embedding`` /
    ``embeddings``) carries ``usageMetadata.promptTokenCount`` where the API reports usage; where
    it does not, the row is estimated from the request's size (``outcome = estimated``), never $0.
    """

    output = False

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        try:
            return _path_model_request(path, body)[0]
        except Exception:
            return RequestInfo(malformed=True)

    def parse_response(self, body: bytes) -> ResponseResult:
        try:
            obj, result = json_answer(body)
            if obj is None:
                return result
            meta = obj.get("usageMetadata")
            tokens = as_int(dig(meta, "promptTokenCount") or dig(meta, "totalTokenCount")) if isinstance(meta, dict) else 0
            if tokens:
                result.usage = Usage(input_tokens=tokens)
                result.usage_final = True
            result.complete = "embedding" in obj or "embeddings" in obj
            return result
        except Exception:
            return ResponseResult(garbled=True)

    def is_stream_response(self, content_type: str, request: RequestInfo) -> bool:
        return "text/event-stream" in content_type.lower()  # never streamed; JSON is one answer


IMAGEN_DEFAULT_IMAGES = IMAGEN_MOST_IMAGES = 4  # sampleCount: 1-4, four when left out (ai.google.dev/gemini-api/docs/imagen)
VEO_DEFAULT_SECONDS = 8  # durationSeconds left out: an 8-second clip, the longest (ai.google.dev/gemini-api/docs/video)
VEO_MOST_VIDEOS = 4  # sampleCount / numberOfVideos: at most 4 (Veo 2), one when left out
MEDIA_MAX_COUNT = 64  # a count we believe from a request (sampleCount x instances): the API allows far fewer


def _path_model_request(path: str, body: bytes, keys: tuple[str, ...] = ()) -> tuple[RequestInfo, dict]:
    """A request naming its model in the path (`models/{model}:method`), never streamed; and the
    body's top-level `keys`."""
    obj, info = parse_json_request(body, (), keys)
    gpath = parse_path(path)
    info.model = gpath.model if gpath else info.model
    info.stream = False
    return info, obj


def _media_request(path: str, body: bytes) -> tuple[RequestInfo, dict, int]:
    """Model (from the path), `parameters`, and how many instances a :predict body holds."""
    info, obj = _path_model_request(path, body, ("instances", "parameters"))
    params = obj.get("parameters")
    instances = obj.get("instances")
    return info, params if isinstance(params, dict) else {}, len(instances) if isinstance(instances, list) else 1


# the names a count goes by: Google's JSON mapping takes the camelCase and the proto's snake_case
IMAGE_COUNT_KEYS = ("sampleCount", "sample_count", "numberOfImages", "number_of_images")
VIDEO_COUNT_KEYS = ("sampleCount", "sample_count", "numberOfVideos", "number_of_videos")
DURATION_KEYS = ("durationSeconds", "duration_seconds")
_DIGITS = re.compile(r"\s*\d{1,6}(\.\d+)?\s*")


def _count(params: dict, keys: tuple[str, ...], default: int, unreadable: int) -> int:
    """The first of `keys` in `parameters`, as a number or a digit string (the same field to
    Google's JSON mapping), rounded up; `default` when none is given, `unreadable` (the most the
    API allows: errs high) when one is given but not readable (tenth review, T6)."""
    given = [params[k] for k in keys if k in params]
    for v in given:
        if isinstance(v, str) and _DIGITS.fullmatch(v):
            v = float(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= MEDIA_MAX_COUNT:
            return math.ceil(v)
    return unreadable if given else default


class ImagenAdapter(GeminiAdapter):
    """``models/imagen-*:predict``: billed per image generated (ai.google.dev/gemini-api/docs/pricing).

    The answer lists one ``predictions[]`` entry per image (``bytesBase64Encoded``); an image the
    safety filter withheld comes back as ``raiFilteredReason`` and is not counted.
    """

    output = False

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        try:
            info, params, instances = _media_request(path, body)
            images = _count(params, IMAGE_COUNT_KEYS, IMAGEN_DEFAULT_IMAGES, IMAGEN_MOST_IMAGES)
            info.estimate = Usage(output_images=min(images * instances, MEDIA_MAX_COUNT))
            return info
        except Exception:
            return RequestInfo(malformed=True)

    def parse_response(self, body: bytes) -> ResponseResult:
        try:
            obj, result = json_answer(body)
            predictions = obj.get("predictions") if obj is not None else None
            if isinstance(predictions, list) and not result.error:
                images = sum(1 for p in predictions if isinstance(p, dict) and p.get("bytesBase64Encoded"))
                result.usage = Usage(output_images=images)
                result.usage_final = result.complete = True
            return result
        except Exception:
            return ResponseResult(garbled=True)

    def is_stream_response(self, content_type: str, request: RequestInfo) -> bool:
        return False


class VeoAdapter(ImagenAdapter):
    """``models/veo-*:predictLongRunning``: billed per second of video generated
    (ai.google.dev/gemini-api/docs/pricing). The answer is an operation polled later (free), so the
    request fixes the charge: ``durationSeconds`` (default 8) x ``sampleCount`` / ``numberOfVideos``
    (default 1) x instances, charged when the job is accepted."""

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        try:
            info, params, instances = _media_request(path, body)
            seconds = _count(params, DURATION_KEYS, VEO_DEFAULT_SECONDS, VEO_DEFAULT_SECONDS)
            videos = min(_count(params, VIDEO_COUNT_KEYS, 1, VEO_MOST_VIDEOS) * instances,
                         MEDIA_MAX_COUNT)
            info.request_usage = info.estimate = Usage(output_video_seconds=seconds * videos)
            return info
        except Exception:
            return RequestInfo(malformed=True)

    def parse_response(self, body: bytes) -> ResponseResult:
        try:
            return json_answer(body)[1]  # {"name": ".../operations/ID"}: the request's usage is the bill
        except Exception:
            return ResponseResult(garbled=True)


GENERATE_CONTENT = GeminiAdapter("generateContent")
STREAM_GENERATE_CONTENT = GeminiAdapter("streamGenerateContent")
EMBED_CONTENT = GeminiEmbedAdapter("embedContent")
BATCH_EMBED_CONTENTS = GeminiEmbedAdapter("batchEmbedContents")
IMAGEN_PREDICT = ImagenAdapter("predict")
VEO_PREDICT_LONG_RUNNING = VeoAdapter("predictLongRunning")
