"""Shared helpers for the provider tests (imported by the other test_providers_* modules), plus
tests of the invariants every stream parser shares: arbitrary read boundaries, line endings and
content-encodings must not change what we learn from a stream."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import brotli
import pytest

from spendgate.metering.providers import (
    anthropic,
    gemini,
    openai_chat,
    openai_responses,
)
from spendgate.metering.providers.base import ResponseResult, StreamParser
from tests.support.wire import wire_bytes  # noqa: F401  (the replay tests import it from here)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "provider"

ParserFactory = Callable[[], StreamParser]

STREAMS: dict[str, tuple[ParserFactory, str]] = {
    "anthropic": (lambda: anthropic.MESSAGES.stream_parser("/v1/messages?beta=true"), "anthropic_stream.sse"),
    "anthropic_error": (lambda: anthropic.MESSAGES.stream_parser("/v1/messages"), "anthropic_stream_error.sse"),
    "openai_chat": (lambda: openai_chat.CHAT.stream_parser("/v1/chat/completions"), "openai_chat_stream.sse"),
    "openai_responses": (
        lambda: openai_responses.RESPONSES.stream_parser("/v1/responses"),
        "openai_responses_stream.sse",
    ),
    "gemini_sse": (
        lambda: gemini.STREAM_GENERATE_CONTENT.stream_parser(
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
        ),
        "gemini_stream.sse",
    ),
    "gemini_array": (
        lambda: gemini.STREAM_GENERATE_CONTENT.stream_parser("/v1beta/models/gemini-2.5-pro:streamGenerateContent"),
        "gemini_stream.json",
    ),
}


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def reframe_chunks(name: str, named: bool, done: bool = False) -> bytes:
    """Turn a ``*.chunks.jsonl`` recording back into an SSE body."""
    out = bytearray()
    for line in wire_bytes(name).decode("utf-8").splitlines():
        if not line.strip():
            continue
        if named:
            out += b"event: " + str(json.loads(line).get("type", "")).encode() + b"\n"
        out += b"data: " + line.encode("utf-8") + b"\n\n"
    if done:
        out += b"data: [DONE]\n\n"
    return bytes(out)


def run_stream(factory: ParserFactory, pieces: Iterable[bytes]) -> ResponseResult:
    parser = factory()
    for piece in pieces:
        parser.feed(piece)
    parser.close()
    return parser.result()


def run_whole(factory: ParserFactory, data: bytes) -> ResponseResult:
    return run_stream(factory, [data])


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def assert_split_invariant(factory: ParserFactory, data: bytes, step: int = 1) -> ResponseResult:
    """Every two-piece split and one-byte-at-a-time feeding give the whole-body result."""
    expected = run_whole(factory, data)
    for i in range(0, len(data) + 1, step):
        got = run_stream(factory, [data[:i], data[i:]])
        assert got == expected, f"split at byte {i}"
    assert run_stream(factory, bytewise(data)) == expected
    return expected


def decoded_pieces(data: bytes, codec: str, read_size: int) -> list[bytes]:
    """Compress ``data``, then decompress it incrementally read by read (arbitrary boundaries)."""
    if codec == "gzip":
        comp = zlib.compressobj(9, zlib.DEFLATED, 31)
        encoded = comp.compress(data) + comp.flush()
        dec = zlib.decompressobj(31)
        pieces = [dec.decompress(encoded[i : i + read_size]) for i in range(0, len(encoded), read_size)]
        pieces.append(dec.flush())
    else:
        encoded = brotli.compress(data)
        bdec = brotli.Decompressor()
        pieces = [bdec.process(encoded[i : i + read_size]) for i in range(0, len(encoded), read_size)]
    assert b"".join(pieces) == data
    return pieces


def with_line_endings(data: bytes, eol: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", eol)


# -- the shared invariants, over every adapter's stream ------------------------------------------


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_every_split_gives_the_same_result(name: str) -> None:
    factory, fixture = STREAMS[name]
    result = assert_split_invariant(factory, fixture_bytes(fixture))
    assert not result.garbled and result.events > 0


@pytest.mark.parametrize("name", sorted(STREAMS))
@pytest.mark.parametrize("codec", ["gzip", "br"])
@pytest.mark.parametrize("read_size", [1, 7, 100])
def test_compressed_streams_decoded_incrementally(name: str, codec: str, read_size: int) -> None:
    factory, fixture = STREAMS[name]
    data = fixture_bytes(fixture)
    assert run_stream(factory, decoded_pieces(data, codec, read_size)) == run_whole(factory, data)


@pytest.mark.parametrize("name", sorted(STREAMS))
@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_endings_do_not_matter(name: str, eol: bytes) -> None:
    factory, fixture = STREAMS[name]
    data = fixture_bytes(fixture)
    variant = with_line_endings(data, eol)
    assert run_stream(factory, bytewise(variant)) == run_whole(factory, data)


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_result_is_a_snapshot(name: str) -> None:
    factory, fixture = STREAMS[name]
    parser = factory()
    parser.feed(fixture_bytes(fixture))
    first = parser.result()
    if first.usage is not None:
        first.usage.input_tokens = -1
    first.output_chars = -1
    assert parser.result() != first


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_first_event_seen(name: str) -> None:
    factory, fixture = STREAMS[name]
    parser = factory()
    assert not parser.first_event_seen()
    parser.feed(fixture_bytes(fixture))
    assert parser.first_event_seen()
