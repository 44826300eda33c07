"""OpenAI images and audio adapters: units read from each wire format, bad input never raises."""

from __future__ import annotations

import json

import pytest

from spendgate.metering.providers import route
from spendgate.metering.providers.openai_media import (
    SPEECH,
    TRANSCRIPTIONS,
    multipart_fields,
)

FORM = (b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b'Content-Type: audio/wav\r\n\r\nRIFF name="model"\r\n\r\nnot-this\r\n'
        b'--b0undary\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o-transcribe\r\n'
        b'--b0undary\r\nContent-Disposition: form-data; name="stream"\r\n\r\ntrue\r\n--b0undary--\r\n')


def test_multipart_fields_skip_files_and_find_text_fields():
    assert multipart_fields(FORM, frozenset({"model", "stream"})) == {"model": "gpt-4o-transcribe", "stream": "true"}
    info = TRANSCRIPTIONS.parse_request("/v1/audio/transcriptions", FORM)
    assert (info.model, info.stream, info.malformed) == ("gpt-4o-transcribe", True, False)


@pytest.mark.parametrize("body", [b"", b"--", b"--x\r\n", b"\xff" * 100, b"--a\r\n" + b"A" * 10000, FORM[:60]])
def test_bad_multipart_never_raises(body):
    assert isinstance(multipart_fields(body, frozenset({"model"})), dict)
    TRANSCRIPTIONS.parse_request("/v1/audio/transcriptions", body)


@pytest.mark.parametrize(("path", "endpoint"), [
    ("/v1/images/generations", "images.generations"), ("/v1/images/edits", "images.edits"),
    ("/v1/audio/transcriptions", "audio.transcriptions"), ("/v1/audio/translations", "audio.translations"),
    ("/v1/audio/speech", "audio.speech"),
])
def test_routes(path, endpoint):
    r = route("api.openai.com", path, "POST")
    assert r is not None and r.endpoint == endpoint and r.provider == "openai"


def test_whisper_duration_rounds_up_to_whole_seconds_and_garbage_is_no_usage():
    res = TRANSCRIPTIONS.parse_response(json.dumps({"text": "x", "usage": {"type": "duration", "seconds": 2.1}}).encode())
    assert res.usage.audio_seconds == 3 and res.usage_final
    for bad in ({"type": "duration", "seconds": "lots"}, {"type": "duration", "seconds": True}, "x"):
        res = TRANSCRIPTIONS.parse_response(json.dumps({"text": "x", "usage": bad}).encode())
        assert res.usage is None and not res.usage_final
    assert TRANSCRIPTIONS.parse_response(b"1\n00:00:00,000 --> srt text").usage is None


def test_speech_bills_tts_1_by_characters_from_the_request():
    info = SPEECH.parse_request("/v1/audio/speech", json.dumps({"model": "tts-1-hd", "input": "héllo", "voice": "a"}).encode())
    assert info.request_usage is not None and info.request_usage.input_characters == 5
    info = SPEECH.parse_request("/v1/audio/speech", json.dumps({"model": "gpt-4o-mini-tts", "input": "hi"}).encode())
    assert info.request_usage is None
    assert SPEECH.parse_request("/v1/audio/speech", b"[1]").malformed
    assert SPEECH.parse_response(b"ID3\x00\x00").usage is None


def test_an_encoded_request_is_read_decoded_and_an_undecodable_one_is_marked():
    """The edge decodes (meter.request_body) and hands the decoded body on: rules and estimates
    read what the provider reads; a rewrite is encoded again at the edge (mitmproxy's setter)."""
    import gzip

    from spendgate.identity import Identity
    from spendgate.metering.meter import Meter, request_body

    meter = Meter(pricer=None, ledger=None, identify=lambda *a, **k: Identity(user="u", source="test"))  # type: ignore[arg-type]
    body = json.dumps({"model": "gpt-4o", "stream": True, "messages": []}).encode()
    packed = request_body(gzip.compress(body), "gzip")
    assert packed == body
    ex = meter.begin("api.openai.com", "/v1/chat/completions", {"content-encoding": "gzip"}, packed)
    assert (ex.request.model, ex.request.stream) == ("gpt-4o", True)
    assert ex.request.rewritten_body is not None  # include_usage added, like for a plain body
    assert request_body(b"not zstd", "zstd") is None
    junk = meter.begin("api.openai.com", "/v1/chat/completions", {"content-encoding": "zstd"}, b"not zstd",
                       unreadable=True)
    assert junk.request.unreadable and junk.request.malformed
