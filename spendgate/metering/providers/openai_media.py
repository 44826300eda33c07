"""OpenAI image and audio endpoints: images, transcriptions, translations, speech.

Each is billed by its own unit, read from its own wire format:

* ``/v1/images/generations`` (JSON) and ``/v1/images/edits`` (multipart): gpt-image-* report
  ``usage`` {input_tokens (text + image, ``input_tokens_details``), output_tokens (image
  tokens)}; with ``stream: true`` the SSE events ``image_generation.completed`` /
  ``image_edit.completed`` carry it. dall-e-2/3 report no usage (priced per image, a price the
  catalogue does not list): the row is ``unpriced``, never $0.
* ``/v1/audio/transcriptions`` and ``/translations`` (multipart): whisper-1 reports
  ``usage: {type: duration, seconds}`` (billed per second of audio); gpt-4o-*-transcribe report
  ``usage: {type: tokens, input_tokens, input_token_details.audio_tokens, output_tokens}``; their
  ``stream=true`` SSE ends with ``transcript.text.done`` carrying the same usage.
* ``/v1/videos`` (create, multipart), ``/v1/videos/{id}/remix`` (JSON), ``/v1/videos/edits`` and
  ``/v1/videos/extensions`` (multipart): Sora is billed per second of video generated, dearer above
  720p for sora-2-pro. The answer is the job (a Video object: ``model``, ``seconds``, ``size``),
  which fixes the charge when it is accepted; polls, downloads and deletes are free.
* ``/v1/audio/speech`` (JSON in, audio bytes out): tts-1/tts-1-hd are billed per input character,
  which the request itself fixes (``RequestInfo.request_usage``); gpt-4o-mini-tts with
  ``stream_format: sse`` reports token usage in ``speech.audio.done``; as plain audio it says
  nothing and the row is estimated.

Multipart bodies are scanned for their small text fields only (``model``, ``stream``); file
parts are skipped, never copied.
"""

from __future__ import annotations

import math
import re
from typing import Any

from spendgate.metering.providers.base import (
    Adapter,
    JSONEventStreamParser,
    RequestInfo,
    ResponseResult,
    StreamParser,
    as_int,
    dig,
    error_type,
    json_answer,
    load_json,
    parse_json_request,
    str_or_none,
)
from spendgate.usage import Usage

# admission's guess of an upload's duration: 4,000 bytes a second (32 kbit/s) is below every
# common speech encoding, so the reservation errs high (a 16 kHz WAV is 32,000 bytes a second)
AUDIO_BYTES_PER_SECOND = 4000
MAX_FIELD_BYTES = 256  # a text field we read (model, stream) is short; longer ones are not ours
MAX_PARTS = 64  # bound on the multipart scan (the body is untrusted)
# name="model" or, as some clients write it, name=model (RFC 7578 §4.2 quotes it; servers accept both)
_DISPOSITION_NAME = re.compile(rb'content-disposition:[^\r\n]*?\bname=(?:"([^"]{1,64})"|([^";\s]{1,64}))',
                               re.IGNORECASE)
# the first delimiter line: a boundary (RFC 2046 §5.1.1: 1-70 characters of bcharsnospace and
# spaces) opening a part with headers; a preamble may come before it
_FIRST_DELIMITER = re.compile(rb"(?:\A|\r\n)(--[0-9A-Za-z'()+_,./:=? -]{1,70}?)\r\n(?:[^\r\n]{0,1000}\r\n){0,16}?"
                              rb"content-disposition:", re.IGNORECASE)
_SCAN_FOR_DELIMITER = 64 * 1024  # a preamble longer than this: not ours to read


def multipart_parts(body: bytes) -> list[tuple[str, str]]:
    """The short text parts (name, value) of a multipart/form-data body, in order, found by its
    own boundary; at most MAX_PARTS, file parts and anything malformed skipped. Never raises.

    The boundary is the first delimiter line that opens a part (``--BOUNDARY`` then headers), so
    no header is needed and a preamble before it is skipped as servers skip it (RFC 2046 §5.1.1);
    the meter first cuts a body at the Content-Type's own boundary (`from_boundary`), so a decoy
    part in the preamble is never read (tenth review, T3).
    """
    out: list[tuple[str, str]] = []
    try:
        first = _FIRST_DELIMITER.search(body, 0, _SCAN_FOR_DELIMITER)
        if first is None:
            return out
        delim = b"\r\n" + first.group(1)
        pos = first.end(1) + 2
        for _ in range(MAX_PARTS):
            head_end = body.find(b"\r\n\r\n", pos, pos + 4096)
            if head_end < 0:
                break
            m = _DISPOSITION_NAME.search(body, pos, head_end)
            nxt = body.find(delim, head_end + 4)
            if nxt < 0:
                break
            if m is not None and b"filename=" not in body[pos:head_end]:
                value = body[head_end + 4:nxt]
                if len(value) <= MAX_FIELD_BYTES:
                    out.append(((m.group(1) or m.group(2)).decode("ascii", "replace"),
                                value.decode("utf-8", "replace").strip()))
            pos = nxt + len(delim)
            if body[pos:pos + 2] == b"--":  # the closing delimiter
                break
            pos += 2  # CRLF after the delimiter
    except Exception:
        return out
    return out


def multipart_fields(body: bytes, names: frozenset[str]) -> dict[str, str]:
    """The short text fields `names` of a multipart/form-data body (a repeated one: its last
    value). Never raises."""
    return {name: value for name, value in multipart_parts(body) if name in names}


_BOUNDARY_PARAM = re.compile(r'boundary="?([0-9A-Za-z\'()+_,./:=? -]{1,70}?)"?\s*(?:;|$)', re.IGNORECASE)


def from_boundary(body: bytes, content_type: str) -> bytes:
    """A multipart/form-data body from its first real delimiter, the Content-Type's boundary
    (RFC 7578 §4.1): what a server reads. Any other body, or one without that delimiter, as is."""
    if "multipart/" not in content_type.lower():
        return body
    m = _BOUNDARY_PARAM.search(content_type)
    if m is None:
        return body
    delim = b"--" + m.group(1).encode("ascii", "replace")
    at = 0 if body.startswith(delim) else body.find(b"\r\n" + delim, 0, _SCAN_FOR_DELIMITER)
    return body if at < 0 else body[at:]


def _token_usage(u: Any, output_kind: str | None) -> Usage | None:
    """Images/audio token usage: input split by ``input_tokens_details``/``input_token_details``.

    ``output_kind`` names what output tokens are (``image``, ``audio``) unless details say text.
    """
    if not isinstance(u, dict) or "input_tokens" not in u:
        return None
    details = u.get("input_tokens_details") or u.get("input_token_details") or {}
    out_details = u.get("output_tokens_details") or u.get("output_token_details") or {}
    inp, out = as_int(u.get("input_tokens")), as_int(u.get("output_tokens"))
    usage = Usage(input_tokens=inp, output_tokens=out,
                  cache_read_tokens=min(as_int(dig(details, "cached_tokens")), inp))
    usage.input_image_tokens = min(as_int(dig(details, "image_tokens")), inp)
    usage.input_audio_tokens = min(as_int(dig(details, "audio_tokens")), inp)
    if output_kind == "image":
        text_out = as_int(dig(out_details, "text_tokens"))
        usage.output_image_tokens = max(out - text_out, 0) if "image_tokens" not in out_details \
            else min(as_int(out_details.get("image_tokens")), out)
    elif output_kind == "audio":
        usage.output_audio_tokens = out
    return usage


class _MediaStreamParser(JSONEventStreamParser):
    """SSE of the image and audio endpoints: the ``*.completed`` / ``*.done`` event has the usage."""

    def __init__(self, final_events: frozenset[str], output_kind: str | None, duration: bool = False):
        super().__init__()
        self._final = final_events
        self._kind = output_kind
        self._duration = duration

    def on_event(self, event: str | None, obj: dict) -> None:
        kind = obj.get("type")
        kind = kind if isinstance(kind, str) and kind else event
        if kind == "error" or "error" in obj and isinstance(obj.get("error"), dict):
            self._result.error = error_type(obj) or "error"
            return
        delta = obj.get("delta")
        if isinstance(delta, str):
            self._result.output_chars += len(delta)
        if kind in self._final:
            usage = _parse_usage(obj.get("usage"), self._kind)
            if usage is not None:
                self._result.usage = usage
                self._result.usage_final = True
            self._result.complete = True

    def on_done(self) -> None:
        self._result.complete = True


def _parse_usage(u: Any, output_kind: str | None) -> Usage | None:
    if isinstance(u, dict) and u.get("type") == "duration":
        seconds = u.get("seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds):
            return Usage(audio_seconds=as_int(math.ceil(seconds)))
        return None
    return _token_usage(u, output_kind)


class _MultipartAdapter(Adapter):
    """Requests as multipart/form-data (edits, transcriptions): model and stream from the fields."""

    provider = "openai"

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        try:
            return self._read(body)[1]
        except Exception:
            return RequestInfo(malformed=True)

    @staticmethod
    def _read(body: bytes, keys: tuple[str, ...] = ()) -> tuple[dict[str, Any], RequestInfo]:
        """The request facts and the fields `keys` (JSON values, or multipart text), in one pass."""
        if body[:1] == b"{":  # some clients send JSON (images/edits accepts image URLs as JSON)
            return parse_json_request(body, (), keys)
        f = multipart_fields(body, frozenset(("model", "stream", *keys)))
        return f, RequestInfo(model=str_or_none(f.get("model")), stream=f.get("stream", "").lower() == "true",
                              input_bytes=min(len(body), 4096), max_output_tokens=0)

    def is_stream_response(self, content_type: str, request: RequestInfo) -> bool:
        return "text/event-stream" in content_type.lower()


class ImagesAdapter(_MultipartAdapter):
    """``/v1/images/generations`` (JSON) and ``/v1/images/edits`` (multipart or JSON)."""

    def __init__(self, endpoint: str, final_event: str):
        self.endpoint = endpoint
        self._final = frozenset({final_event})

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        try:
            fields, info = self._read(body, ("n",))
        except Exception:
            return RequestInfo(malformed=True)
        info.max_output_tokens = 0  # image output tokens: only the response knows them
        # images asked for (n, default 1): the reservation of a model priced per image
        count = as_int(fields.get("n"))
        info.estimate = Usage(output_images=count if 0 < count <= 64 else 1)
        return info

    def parse_response(self, body: bytes) -> ResponseResult:
        try:
            obj, result = json_answer(body)
            if obj is None:
                return result
            result.model = str_or_none(obj.get("model"))
            usage = _token_usage(obj.get("usage"), "image")
            data = obj.get("data")
            if usage is None and isinstance(data, list) and not result.error:
                # no token usage (dall-e, Imagen behind Gemini's OpenAI-compatible endpoint): billed
                # per image returned (tenth review, T2)
                usage = Usage(output_images=sum(1 for d in data if isinstance(d, dict)))
            if usage is not None:
                result.usage, result.usage_final, result.complete = usage, True, True
            return result
        except Exception:
            return ResponseResult(garbled=True)

    def stream_parser(self, path: str) -> StreamParser:
        return _MediaStreamParser(self._final, "image")


class TranscriptionAdapter(_MultipartAdapter):
    """``/v1/audio/transcriptions`` and ``/translations``: duration (whisper) or tokens."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        info = super().parse_request(path, body)
        info.estimate = Usage(input_tokens=math.ceil(info.input_bytes / 4),
                              audio_seconds=math.ceil(len(body or b"") / AUDIO_BYTES_PER_SECOND))
        return info

    def parse_response(self, body: bytes) -> ResponseResult:
        try:
            obj = load_json(body)
            if not isinstance(obj, dict):  # response_format text/srt/vtt: no usage in the body
                return ResponseResult(output_chars=len(body))
            result = ResponseResult(model=str_or_none(obj.get("model")), error=error_type(obj))
            text = obj.get("text")
            result.output_chars = len(text) if isinstance(text, str) else 0
            usage = _parse_usage(obj.get("usage"), None)
            duration = obj.get("duration")  # verbose_json of whisper: seconds of audio
            if usage is None and isinstance(duration, (int, float)) and not isinstance(duration, bool) \
                    and math.isfinite(duration) and duration >= 0:
                usage = Usage(audio_seconds=as_int(math.ceil(duration)))
            if usage is not None:
                result.usage, result.usage_final, result.complete = usage, True, True
            return result
        except Exception:
            return ResponseResult(garbled=True)

    def stream_parser(self, path: str) -> StreamParser:
        return _MediaStreamParser(frozenset({"transcript.text.done"}), None)


class SpeechAdapter(Adapter):
    """``/v1/audio/speech``: characters of ``input`` (tts-1), or SSE token usage (gpt-4o-mini-tts)."""

    provider = "openai"
    endpoint = "audio.speech"
    PER_CHARACTER = ("tts-1", "tts-1-hd")  # billed per input character (and tts-1-1106 etc.)

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        try:
            obj, info = parse_json_request(body, (), ("input", "stream_format"))
            if info.malformed:
                return info
            text = obj.get("input")
            chars = len(text) if isinstance(text, str) else 0
            info.input_bytes = chars
            info.stream = obj.get("stream_format") == "sse"
            info.max_output_tokens = 0
            model = info.model or ""
            if any(model == m or model.startswith(m + "-") for m in self.PER_CHARACTER):
                info.request_usage = info.estimate = Usage(input_characters=chars)
            return info
        except Exception:
            return RequestInfo(malformed=True)

    def parse_response(self, body: bytes) -> ResponseResult:
        if body[:1] != b"{":  # the audio itself
            return ResponseResult()
        obj = load_json(body)
        return ResponseResult(error=error_type(obj)) if isinstance(obj, dict) else ResponseResult(garbled=True)

    def stream_parser(self, path: str) -> StreamParser:
        return _MediaStreamParser(frozenset({"speech.audio.done"}), "audio")

    def is_stream_response(self, content_type: str, request: RequestInfo) -> bool:
        return "text/event-stream" in content_type.lower()


SORA_DEFAULT_MODEL = "sora-2"  # the API's defaults (platform.openai.com/docs/api-reference/videos/create)
SORA_DEFAULT_SECONDS = 4
SORA_DEFAULT_SIZE = "720x1280"
SORA_LONGEST_SECONDS = 12  # a remix or edit keeps its source's length, unknown here: reserve the longest
SORA_DEAREST_MODEL = "sora-2-pro"  # a remix or edit keeps its source's model, unknown here: reserve the dearest


def video_usage(seconds: int, size: str | None) -> Usage:
    """`seconds` of video, all of it above 720p when the smaller side of `size` ("WxH") is larger
    than 720 pixels."""
    seconds = max(seconds, 0)
    try:
        w, _, h = (size or "").lower().partition("x")
        high = min(int(w), int(h)) > 720
    except ValueError:
        high = False
    return Usage(output_video_seconds=seconds, output_video_high_res_seconds=seconds if high else 0)


def _seconds(value: Any) -> int | None:
    """A clip length as the API writes it ("8", 8): whole seconds, or None."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return math.ceil(seconds) if math.isfinite(seconds) and 0 <= seconds <= 3600 else None


class VideosAdapter(_MultipartAdapter):
    """Sora: ``/v1/videos`` and its remix, edit and extension; billed per second of video."""

    output = False  # no tokens: the video's seconds are the bill

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        try:
            if body[:1] == b"{":  # remix: {"prompt": ...}; any of them may come as JSON
                obj, info = parse_json_request(body, (), ("seconds", "size"))
                fields = {k: obj.get(k) for k in ("seconds", "size")}
            else:
                parts = multipart_parts(body)
                fields: dict[str, Any] = {name: value for name, value in parts if name in ("model", "size")}
                # `seconds` twice: servers differ on which counts, so the longest does (errs high)
                lengths = [n for name, value in parts if name == "seconds" and (n := _seconds(value)) is not None]
                fields["seconds"] = max(lengths) if lengths else None
                info = RequestInfo(model=str_or_none(fields.get("model")), input_bytes=min(len(body), 4096))
            if info.malformed:
                return info
            if self.endpoint == "videos.create":
                info.model = info.model or SORA_DEFAULT_MODEL
            info.estimate_model = info.model or SORA_DEAREST_MODEL  # never the minimum (tenth review, T1)
            seconds = _seconds(fields.get("seconds"))
            if seconds is None:
                seconds = SORA_DEFAULT_SECONDS if self.endpoint == "videos.create" else SORA_LONGEST_SECONDS
            info.stream = False
            # a create's size defaults to 720x1280; a remix, edit or extension keeps its source's,
            # unknown here: reserved at the high-resolution rate (errs high)
            size = str_or_none(fields.get("size")) or (SORA_DEFAULT_SIZE if self.endpoint == "videos.create" else "1792x1024")
            info.estimate = video_usage(seconds, size)
            if self.endpoint == "videos.extend":  # the answer's seconds are the stitched total: bill the new part
                info.request_usage = info.estimate
            return info
        except Exception:
            return RequestInfo(malformed=True)

    def parse_response(self, body: bytes) -> ResponseResult:
        try:
            obj, result = json_answer(body)
            if obj is None:
                return result
            result.model = str_or_none(obj.get("model"))
            seconds = _seconds(obj.get("seconds"))
            if self.endpoint != "videos.extend" and obj.get("object") == "video" and seconds is not None \
                    and obj.get("status") != "failed":
                result.usage = video_usage(seconds, str_or_none(obj.get("size")))
                result.usage_final = result.complete = True
            return result
        except Exception:
            return ResponseResult(garbled=True)

    def stream_parser(self, path: str) -> StreamParser:
        return _MediaStreamParser(frozenset(), None)  # never streamed


IMAGES_GENERATIONS = ImagesAdapter("images.generations", "image_generation.completed")
IMAGES_EDITS = ImagesAdapter("images.edits", "image_edit.completed")
TRANSCRIPTIONS = TranscriptionAdapter("audio.transcriptions")
TRANSLATIONS = TranscriptionAdapter("audio.translations")
SPEECH = SpeechAdapter()
VIDEOS_CREATE = VideosAdapter("videos.create")
VIDEOS_REMIX = VideosAdapter("videos.remix")
VIDEOS_EDIT = VideosAdapter("videos.edit")
VIDEOS_EXTEND = VideosAdapter("videos.extend")

ENDPOINTS: dict[str, Adapter] = {
    "/images/generations": IMAGES_GENERATIONS,
    "/images/edits": IMAGES_EDITS,
    "/audio/transcriptions": TRANSCRIPTIONS,
    "/audio/translations": TRANSLATIONS,
    "/audio/speech": SPEECH,
}
# Sora's POSTs (routed by method: a GET of the same paths lists or polls, for free)
VIDEO_POSTS: dict[str, Adapter] = {
    "/v1/videos": VIDEOS_CREATE,
    "/v1/videos/edits": VIDEOS_EDIT,
    "/v1/videos/extensions": VIDEOS_EXTEND,
}
REMIX_PATH = re.compile(r"^/v1/videos/[^/]+/remix$")  # lower-cased
