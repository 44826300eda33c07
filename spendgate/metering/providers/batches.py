"""The batch APIs: admitted at submission with an estimate, charged when the results are fetched.

Decision (docs/pricing.md, "Batch APIs"): a batch is billed by the provider per request it
completed, at the batch variant of each model's rates (usually half the list price). Those
numbers exist only in the results, so:

* **Submission** (Anthropic ``POST /v1/messages/batches``, OpenAI ``POST /v1/batches``, Gemini
  ``models/M:batchGenerateContent``) is admitted against the budgets with an estimate (the body's
  size as input tokens, the requests' ``max_tokens`` as output, at batch rates) and refused at the
  cap like any call. Its row says ``batch submitted: charged when its results are fetched`` and
  costs $0 itself (``price_source`` says so): nothing was billed yet.
* **Results** (Anthropic ``GET /v1/messages/batches/{id}/results``, OpenAI
  ``GET /v1/files/{id}/content``, Gemini ``GET /download/v1beta/files/{id}:download``) are read as
  they stream through, one JSONL line at a time, adding each line's usage; one ledger row per
  model (endpoint ``batch.results``), priced at the batch variant (``service_tier: batch``). A
  results download is never refused (the spend already happened at the provider; refusing the
  download would save nothing), and it counts against the budgets when it is recorded.
* Gemini's inline batches return their results inside the batch operation
  (``GET /v1beta/batches/{id}`` once done): charged when a done operation carries them; the
  polls before bill nothing.
* A results file downloaded again by this gateway process is recorded at $0 ("already charged").
  A file that holds no batch results (any other OpenAI file) bills nothing.

Lines that are errors, cancelled or expired requests bill nothing (as the providers bill them).
Each line is read with msgspec for its usage and model only; a line over MAX_LINE_BYTES is
skipped and the row is marked garbled.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict

from spendgate.metering.providers import batch_input
from spendgate.metering.providers.anthropic import AnthropicUsageState
from spendgate.metering.providers.base import (
    Adapter,
    RequestInfo,
    ResponseResult,
    StreamParser,
    as_int,
    error_type,
    load_json,
    nested,
    several_models,
    str_or_none,
    top_level,
)
from spendgate.metering.providers.gemini import gemini_usage
from spendgate.metering.providers.openai_chat import chat_usage
from spendgate.metering.providers.openai_responses import responses_usage
from spendgate.usage import USAGE_FIELDS, Usage

BATCH_TIER = "batch"
MAX_LINE_BYTES = 16 * 1024 * 1024  # one result line (a long answer); past this it is skipped
MAX_MODELS = 32  # distinct models in one results file (one row each); more are folded into the last
MAX_BATCH_MODELS = 256  # distinct models read from one submitted batch; past it, "any model" (RequestInfo.models)
MAX_REMEMBERED = 10_000  # results already charged by this process, newest kept

SUBMITTED_NOTE = "batch submitted: charged when its results are fetched"


def add_usage(a: Usage, b: Usage) -> Usage:
    return Usage(**{f: getattr(a, f) + getattr(b, f) for f in USAGE_FIELDS})


class _Charged:
    """Results already charged by this process (provider, file or batch id), bounded: the newest
    `limit` kept."""

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self.limit = limit
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, key: str) -> bool:
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            if len(self._seen) > self.limit:
                self._seen.popitem(last=False)
            return True


CHARGED = _Charged()
# stored Responses (openai_responses.RESULTS_KEY): kept apart, so every agent turn remembered there
# never pushes a batch's results out of CHARGED
RESPONSES_CHARGED = _Charged(50_000)


# -- submission ---------------------------------------------------------------------------------


class BatchSubmitAdapter(Adapter):
    """A batch submission: estimated for admission, billed nothing itself."""

    endpoint = "batch.submit"

    def __init__(self, provider: str, dialect: str):
        self.provider = provider
        self.dialect = dialect

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        info = RequestInfo(input_bytes=len(body or b""), modifiers={"service_tier": BATCH_TIER})
        try:
            if self.provider == "anthropic":
                obj = top_level(body, frozenset({"requests"})) if body else None
                reqs = obj.get("requests") if isinstance(obj, dict) else None
                if not isinstance(reqs, list):
                    info.malformed = True
                    return info
                params = [p for r in reqs if isinstance(r, dict) and isinstance(p := r.get("params"), dict)]
                info.model = next((m for p in params if (m := str_or_none(p.get("model")))), None)
                info.models = several_models((p.get("model") for p in params), MAX_BATCH_MODELS)
                info.max_output_tokens = sum(as_int(p.get("max_tokens")) for p in params)
            elif self.provider == "gemini":
                m = re.search(r"/models/([^/:]+):batchgeneratecontent$", path.split("?", 1)[0], re.IGNORECASE)
                info.model = m.group(1) if m else None
            else:  # OpenAI: {input_file_id, endpoint, completion_window}; the requests are in an uploaded file
                info.estimate = Usage()  # estimated from that file when this process saw it (batch_input.py)
                obj = top_level(body, frozenset({"input_file_id"})) if body else None
                info.batch_file = str_or_none(obj.get("input_file_id")) if isinstance(obj, dict) else None
        except Exception:
            info.malformed = True
        return info

    def parse_response(self, body: bytes) -> ResponseResult:
        obj = load_json(body)
        err = error_type(obj) if isinstance(obj, dict) else None
        return ResponseResult(error=err, free=err is None, note=SUBMITTED_NOTE)

    def stream_parser(self, path: str) -> StreamParser:
        return _Nothing()

    def is_stream_response(self, content_type: str, request: RequestInfo) -> bool:
        return False


class BatchUploadAdapter(Adapter):
    """OpenAI ``POST /v1/files``: bills nothing; a ``purpose=batch`` file is estimated once answered.

    The body is kept (by reference) for the meter's worker, which reads it after the response
    (batch_input.estimate_upload) and remembers the estimate under the answered file id.
    """

    endpoint = "files.upload"

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        return RequestInfo(free=True, upload=body or None)

    def parse_response(self, body: bytes) -> ResponseResult:
        obj = load_json(body)
        err = error_type(obj) if isinstance(obj, dict) else None
        return ResponseResult(error=err, free=True, note=UPLOAD_NOTE,
                              response_id=None if err else batch_input.uploaded_id(body))

    def stream_parser(self, path: str) -> StreamParser:
        return _Nothing(UPLOAD_NOTE)

    def is_stream_response(self, content_type: str, request: RequestInfo) -> bool:
        return False


UPLOAD_NOTE = "file upload: bills nothing (a batch input file is estimated for its batches)"


class _Nothing(StreamParser):
    def __init__(self, note: str = SUBMITTED_NOTE) -> None:
        self.note = note

    def feed(self, data: bytes) -> None:
        pass

    def result(self) -> ResponseResult:
        return ResponseResult(free=True, note=self.note)


# -- results ------------------------------------------------------------------------------------


def _anthropic_line(line: bytes) -> tuple[str | None, Usage] | None:
    result = nested(line, ("result",))
    if not isinstance(result, dict) or result.get("type") != "succeeded":
        return None  # errored, canceled, expired: not billed
    message = result.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
        return None
    state = AnthropicUsageState.empty()
    state.merge(message["usage"])
    return str_or_none(message.get("model")), state.to_usage()


def _openai_line(line: bytes) -> tuple[str | None, Usage] | None:
    response = nested(line, ("response",))
    if not isinstance(response, dict) or as_int(response.get("status_code")) >= 400:
        return None
    body = response.get("body")
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    model = str_or_none(body.get("model"))
    if "prompt_tokens" in usage:  # chat completions, legacy completions, embeddings
        return model, chat_usage(usage)
    if "input_tokens" in usage:  # responses
        return model, responses_usage(usage)
    return None


def _gemini_line(line: bytes) -> tuple[str | None, Usage] | None:
    response = nested(line, ("response",))
    meta = response.get("usageMetadata") if isinstance(response, dict) else None
    if not isinstance(meta, dict):
        return None
    return str_or_none(response.get("modelVersion")), gemini_usage(meta)


_LINE_READERS = {"anthropic": _anthropic_line, "openai": _openai_line, "gemini": _gemini_line}


class BatchResultsParser(StreamParser):
    """JSONL results, line by line: usage summed per model. Never raises."""

    def __init__(self, provider: str, key: str):
        self._read = _LINE_READERS[provider]
        self._key = key
        self._pending = bytearray()
        self._skipping = False  # inside a line over MAX_LINE_BYTES
        self._per_model: dict[str | None, Usage] = {}
        self._chars = 0
        self._lines = 0
        self._garbled = False
        self._closed = False

    def feed(self, data: bytes) -> None:
        try:
            start = 0
            while True:
                nl = data.find(b"\n", start)
                if nl < 0:
                    if not self._skipping:
                        self._pending += data[start:]
                        if len(self._pending) > MAX_LINE_BYTES:
                            self._pending.clear()
                            self._skipping = self._garbled = True
                    return
                if self._skipping:
                    self._skipping = False
                else:
                    self._pending += data[start:nl]
                    self._line(bytes(self._pending))
                self._pending.clear()
                start = nl + 1
        except Exception:
            self._garbled = True

    def _line(self, line: bytes) -> None:
        line = line.strip()
        if not line:
            return
        self._lines += 1
        got = self._read(line)
        if got is None:
            if load_json(line) is None:
                self._garbled = True
            return
        model, usage = got
        if model not in self._per_model and len(self._per_model) >= MAX_MODELS:
            model = next(reversed(self._per_model))
        self._per_model[model] = add_usage(self._per_model.get(model, Usage()), usage)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pending and not self._skipping:
            self._line(bytes(self._pending))
            self._pending.clear()

    def result(self) -> ResponseResult:
        parts = tuple((m, Usage(**u.as_dict())) for m, u in self._per_model.items())
        if not parts:  # nothing billable in it (not batch output, or every request failed)
            return ResponseResult(free=self._closed or not self._lines, events=self._lines,
                                  garbled=self._garbled, note="no billed batch results in this file",
                                  complete=self._closed)
        model, usage = parts[0]
        return ResponseResult(model=model, usage=usage, usage_final=self._closed, complete=self._closed,
                              service_tier=BATCH_TIER, events=self._lines, garbled=self._garbled,
                              parts=parts if len(parts) > 1 else (), results_key=self._key)


class BatchResultsAdapter(Adapter):
    """A results download: never refused, charged per model at batch rates when recorded."""

    endpoint = "batch.results"

    def __init__(self, provider: str, dialect: str):
        self.provider = provider
        self.dialect = dialect

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        return RequestInfo(stream=True, results=True, modifiers={"service_tier": BATCH_TIER})

    def parse_response(self, body: bytes) -> ResponseResult:
        parser = self.stream_parser("")
        parser.feed(body)
        parser.close()
        return parser.result()

    def stream_parser(self, path: str) -> StreamParser:
        return BatchResultsParser(self.provider, f"{self.provider}:{path.split('?', 1)[0]}")

    def is_stream_response(self, content_type: str, request: RequestInfo) -> bool:
        return True  # JSONL of any size, read as it passes (application/binary, jsonl, octet-stream)


class GeminiBatchOperationAdapter(BatchResultsAdapter):
    """``GET /v1beta/batches/{id}``: the batch operation, polled until done. An inline batch's
    results come back inside it (``response.inlinedResponses.inlinedResponses[].response``, or
    ``metadata.output.inlinedResponses``): charged once, when the done operation carries them;
    every other poll bills nothing."""

    def __init__(self) -> None:
        super().__init__("gemini", "gemini")

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        info = super().parse_request(path, body)
        info.stream = False
        return info

    def is_stream_response(self, content_type: str, request: RequestInfo) -> bool:
        return False  # one JSON operation, parsed whole on the meter worker

    def parse_response(self, body: bytes) -> ResponseResult:
        obj = load_json(body)
        if not isinstance(obj, dict):
            return ResponseResult(garbled=bool(body))
        if obj.get("error") is not None and not obj.get("done"):
            return ResponseResult(error=error_type(obj))
        inlined = None
        for holder in (obj.get("response"), (obj.get("metadata") or {}).get("output")
                       if isinstance(obj.get("metadata"), dict) else None):
            box = holder.get("inlinedResponses") if isinstance(holder, dict) else None
            items = box.get("inlinedResponses") if isinstance(box, dict) else box
            if isinstance(items, list):
                inlined = items
                break
        name = obj.get("name") if isinstance(obj.get("name"), str) else ""
        if not obj.get("done") or inlined is None:  # pending, or results in a file (metered when downloaded)
            return ResponseResult(free=True, note="batch status: nothing billed until its results are read")
        parser = BatchResultsParser("gemini", f"gemini:operation:{name[:200]}")
        for item in inlined[:100_000]:
            if isinstance(item, dict):
                parser._line(json.dumps({"response": item.get("response")}).encode())
        parser.close()
        return parser.result()


ANTHROPIC_SUBMIT = BatchSubmitAdapter("anthropic", "anthropic")
ANTHROPIC_RESULTS = BatchResultsAdapter("anthropic", "anthropic")
OPENAI_SUBMIT = BatchSubmitAdapter("openai", "openai")
OPENAI_UPLOAD = BatchUploadAdapter()
OPENAI_RESULTS = BatchResultsAdapter("openai", "openai")
GEMINI_SUBMIT = BatchSubmitAdapter("gemini", "gemini")
GEMINI_RESULTS = BatchResultsAdapter("gemini", "gemini")
GEMINI_OPERATION = GeminiBatchOperationAdapter()

ANTHROPIC_RESULTS_PATH = re.compile(r"^/v1/messages/batches/[^/]+/results$")
OPENAI_FILE_CONTENT_PATH = re.compile(r"^/v1/files/[^/]+/content$")
GEMINI_DOWNLOAD_PATH = re.compile(r"^/download/v1(beta|alpha)?/files/[^/:]+:download$")
GEMINI_OPERATION_PATH = re.compile(r"^/v1(beta|alpha)?/batches/[^/:]+$")
GEMINI_SUBMIT_PATH = re.compile(r"^/v1(beta|alpha)?/models/[^/:]+:batchgeneratecontent$", re.IGNORECASE)
