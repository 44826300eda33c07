"""OpenAI batch input files: estimated when uploaded, reserved when a batch names them.

An OpenAI batch submission (``POST /v1/batches``) names only ``input_file_id``: the requests are in
a JSONL file uploaded earlier (``POST /v1/files``, multipart, ``purpose=batch``; OpenAI API
reference, "Batch" and "Files"). Estimated from its own body, a submission reserves nothing, so
any number of batches of any size would be admitted at the cap. So the upload is read (on the
meter's worker thread, never on the proxy's event loop): per model, the requests, the bytes of
their bodies (the input estimate, as for any call) and their ``max_tokens`` /
``max_completion_tokens`` / ``max_output_tokens`` (the output estimate); the estimate is kept
under the file id the provider answered (`BatchInputBook`, bounded, least recently used first,
like metering/context.py). A submission naming that file is then admitted against the budgets
with it (budgets/admission.py prices each model at its batch rates) and refused at the cap like
an Anthropic batch.

A file this process never saw uploaded (uploaded before a restart, through another replica, or
not through the gateway) has no estimate: its batch reserves the one micro-dollar every call
reserves, i.e. it is refused only once the budget is at its cap (docs/pricing.md, "Batch APIs").
"""

from __future__ import annotations

import heapq
import re
import threading
from dataclasses import dataclass

from spendgate.metering.providers.base import as_int, load_json, str_or_none
from spendgate.metering.providers.openai_media import multipart_fields

MAX_FILES = 10_000  # input files remembered (a few hundred bytes each)
MAX_ID_CHARS = 128
MAX_MODELS = 32  # distinct models per file; more are folded into the last one kept
MAX_LINE_BYTES = 4 * 1024 * 1024  # a batch request line bigger than this is counted by its size only
MAX_TOKENS_PER_LINE = 1_000_000  # a line's declared output cap, bounded (the body is untrusted)
# the part's Content-Disposition names it `file` and gives a filename, its parameters in any order
# (RFC 7578; `filename` first used to hide the file from the estimate: third attacker review A3)
_FILE_DISPOSITION = re.compile(rb'content-disposition:(?=[^\r\n]*?\bname="?file"?(?:[;\s]|$))'
                               rb'(?=[^\r\n]*?\bfilename\*?=)[^\r\n]*', re.IGNORECASE | re.MULTILINE)
_OUTPUT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


@dataclass(frozen=True, slots=True)
class ModelLines:
    """The requests of one model in an input file."""

    model: str | None
    lines: int  # requests
    input_bytes: int  # bytes of their bodies (the input estimate: CHARS_PER_TOKEN per token)
    declared_output: int  # the sum of their declared output caps (tokens)
    undeclared: int  # requests that declare no output cap (admission assumes the typical output)


@dataclass(frozen=True, slots=True)
class InputEstimate:
    """What one uploaded batch input file asks for, per model."""

    parts: tuple[ModelLines, ...]
    lines: int
    unreadable: int = 0  # lines that were not a JSON request (counted by their size under model None)


def file_part(body: bytes) -> bytes | None:
    """The content of the multipart part named ``file`` (the one with a filename); None if absent."""
    m = _FILE_DISPOSITION.search(body, 0, 64 * 1024)
    if m is None:
        return None
    line_start = body.rfind(b"\r\n--", 0, m.start())
    delim = body[line_start: body.find(b"\r\n", line_start + 2)] if line_start >= 0 else None
    if not delim and body.startswith(b"--"):  # the part opens the body (no CRLF before its delimiter)
        delim = b"\r\n" + body[: body.find(b"\r\n")]
    head_end = body.find(b"\r\n\r\n", m.end())
    if not delim or head_end < 0:
        return None
    end = body.find(delim, head_end + 4)
    return body[head_end + 4: end if end >= 0 else len(body)]


def estimate_upload(body: bytes) -> InputEstimate | None:
    """The estimate of a ``purpose=batch`` upload; None for any other upload. Never raises."""
    try:
        if multipart_fields(body, frozenset({"purpose"})).get("purpose") != "batch":
            return None
        content = file_part(body)
        return None if content is None else estimate_jsonl(content)
    except Exception:
        return None


def estimate_jsonl(content: bytes) -> InputEstimate:
    """Per model: requests, body bytes, declared output caps of a batch input file (JSONL)."""
    per: dict[str | None, list[int]] = {}  # model -> [lines, input bytes, declared output, undeclared]
    total = unreadable = 0
    for line in content.splitlines():
        if not line.strip():
            continue
        total += 1
        model, out = None, None
        obj = load_json(line) if len(line) <= MAX_LINE_BYTES else None
        body = obj.get("body") if isinstance(obj, dict) else None
        if isinstance(body, dict):
            model = str_or_none(body.get("model"))
            for k in _OUTPUT_KEYS:
                if body.get(k) is not None:
                    out = min(max(as_int(body.get(k)), 0), MAX_TOKENS_PER_LINE)
                    break
        else:
            unreadable += 1
        if model not in per and len(per) >= MAX_MODELS:
            model = next(reversed(per))  # folded into the last model kept
        acc = per.setdefault(model, [0, 0, 0, 0])
        acc[0] += 1
        acc[1] += len(line)
        if out is None:
            acc[3] += 1
        else:
            acc[2] += out
    return InputEstimate(tuple(ModelLines(m, *v) for m, v in per.items()), total, unreadable)


def uploaded_id(response_body: bytes) -> str | None:
    """The file id of an upload's answer (``{"id": "file-...", "object": "file", ...}``)."""
    obj = load_json(response_body)
    if not isinstance(obj, dict) or obj.get("object", "file") != "file":
        return None
    fid = str_or_none(obj.get("id"))
    return fid if fid and len(fid) <= MAX_ID_CHARS else None


def weight(estimate: InputEstimate) -> int:
    """How much a file's batch may cost, in rough tokens (input bytes / 4 + declared output + lines):
    what decides which estimate the book gives up first when full."""
    return sum(p.input_bytes // 4 + p.declared_output + p.lines for p in estimate.parts)


class BatchInputBook:
    """file id -> InputEstimate; written by the meter's worker, read on the event loop.

    Bounded at `maxsize` files; when full, the *lightest* estimate goes first (not the oldest), so
    a flood of small uploads (free at the provider) cannot push out the estimate of a big file and
    get its batch admitted at the unknown-file reservation (attacker review A4): evicting a file's
    estimate takes `maxsize` files each heavier than it."""

    def __init__(self, maxsize: int = MAX_FILES) -> None:
        self.maxsize = maxsize
        self._files: dict[str, tuple[int, InputEstimate]] = {}  # file id -> (entry number, estimate)
        self._heap: list[tuple[int, int, str]] = []  # (weight, entry number, file id); stale entries skipped
        self._seq = 0
        self._lock = threading.Lock()

    def remember(self, file_id: str | None, estimate: InputEstimate | None) -> None:
        if not file_id or estimate is None or len(file_id) > MAX_ID_CHARS:
            return
        with self._lock:
            self._seq += 1
            self._files[file_id] = (self._seq, estimate)
            heapq.heappush(self._heap, (weight(estimate), self._seq, file_id))
            while len(self._files) > self.maxsize:
                _, seq, gone = heapq.heappop(self._heap)
                if self._files.get(gone, (None,))[0] == seq:  # not a stale entry of a re-remembered id
                    del self._files[gone]
            if len(self._heap) > 2 * self.maxsize:  # re-remembered ids left stale entries: drop them
                self._heap = [(weight(e), n, f) for f, (n, e) in self._files.items()]
                heapq.heapify(self._heap)

    def get(self, file_id: str | None) -> InputEstimate | None:
        if not file_id:
            return None
        with self._lock:
            got = self._files.get(file_id)
        return got[1] if got else None
