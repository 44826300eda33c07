"""OpenAI batch input files: estimated at upload, priced at batch rates when a batch names them
(spendgate.metering.providers.batch_input, spendgate.budgets.batch_estimate). The multipart bodies
are built by httpx2, the library the openai SDK uploads with."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from decimal import Decimal

import httpx2

from spendgate.budgets.admission import fallback_cost
from spendgate.budgets.batch_estimate import batch_input_cost
from spendgate.metering.providers import batches, route
from spendgate.metering.providers.batch_input import (
    BatchInputBook,
    estimate_jsonl,
    estimate_upload,
    uploaded_id,
)
from spendgate.policy.model import parse
from spendgate.pricing.rates import Pricer

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def line(i: int, model: str, **body) -> str:
    return json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": model, "messages": [{"role": "user", "content": "hi"}], **body}})


def upload(content: bytes, purpose: str = "batch") -> bytes:
    req = httpx2.Request("POST", "https://api.openai.com/v1/files", data={"purpose": purpose},
                        files={"file": ("in.jsonl", content, "application/jsonl")})
    return req.read()


def test_an_upload_is_counted_per_model_with_its_declared_output():
    lines = [line(0, "gpt-4o", max_tokens=4000), line(1, "gpt-4o", max_completion_tokens=100),
             line(2, "gpt-4o-mini"), "not json at all", ""]
    content = "\n".join(lines).encode()
    est = estimate_upload(upload(content))
    assert est is not None and est.lines == 4 and est.unreadable == 1
    parts = {p.model: p for p in est.parts}
    assert (parts["gpt-4o"].lines, parts["gpt-4o"].declared_output, parts["gpt-4o"].undeclared) == (2, 4100, 0)
    assert parts["gpt-4o"].input_bytes == len(lines[0]) + len(lines[1])
    assert (parts["gpt-4o-mini"].lines, parts["gpt-4o-mini"].undeclared) == (1, 1)
    assert (parts[None].lines, parts[None].input_bytes) == (1, len("not json at all"))
    assert estimate_upload(upload(content, purpose="fine-tune")) is None  # only batch input files
    assert estimate_upload(b"garbage") is None


def test_a_batch_is_priced_at_batch_rates_output_capped_at_the_typical_per_request():
    pol = parse("version: 1\ntypical_output_tokens: {'*': 1000}\n")
    content = "\n".join([line(0, "gpt-4o", max_tokens=4000), line(1, "gpt-4o", max_tokens=200),
                         line(2, "gpt-4o")]).encode()
    est = estimate_jsonl(content)
    got = batch_input_cost(Pricer(), pol, "openai", est, NOW, fallback_cost)
    (part,) = est.parts
    # gpt-4o at batch rates: $1.25 in, $5 out per MTok; output min(4200 declared, 2 x 1000) + 1 x 1000 undeclared
    expected = (Decimal(math.ceil(part.input_bytes / 4)) * Decimal("1.25") + 3000 * Decimal(5)) / Decimal(10**6)
    assert got == expected and got > Decimal("0.015")
    unknown = estimate_jsonl(line(0, "corp-model-x", max_tokens=10).encode())
    blocking = parse("version: 1\nunpriced: block\n")
    assert batch_input_cost(Pricer(), blocking, "openai", unknown, NOW, fallback_cost) is None


def test_the_upload_route_bills_nothing_and_reads_the_answered_id():
    r = route("api.openai.com", "/v1/files", "POST")
    assert r.adapter is batches.OPENAI_UPLOAD
    info = r.adapter.parse_request("/v1/files", b"body")
    assert info.free and info.upload == b"body"
    ok = json.dumps({"id": "file-abc", "object": "file", "purpose": "batch"}).encode()
    res = r.adapter.parse_response(ok)
    assert res.free and res.response_id == "file-abc" and uploaded_id(ok) == "file-abc"
    assert r.adapter.parse_response(b'{"error": {"type": "invalid_request_error"}}').response_id is None
    sub = route("api.openai.com", "/v1/batches", "POST").adapter.parse_request(
        "/v1/batches", json.dumps({"input_file_id": "file-abc", "endpoint": "/v1/chat/completions"}).encode())
    assert sub.batch_file == "file-abc"


def test_the_book_is_bounded_least_recently_used_first():
    book = BatchInputBook(maxsize=2)
    est = estimate_jsonl(line(0, "gpt-4o").encode())
    for fid in ("file-1", "file-2", "file-3"):
        book.remember(fid, est)
    assert book.get("file-1") is None and book.get("file-3") is est
    book.remember("x" * 200, est)  # not a file id
    assert book.get("x" * 200) is None
