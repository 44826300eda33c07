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


# -- generated video and images (Sora, Imagen, Veo) ----------------------------------------------------


def test_sora_routes_by_method_and_reads_the_job():
    from spendgate.metering.providers.openai_media import video_usage
    from spendgate.usage import Usage

    create = route("api.openai.com", "/v1/videos", "POST")
    assert create.endpoint == "videos.create" and not create.adapter.output
    assert route("api.openai.com", "/v1/videos/video_1/REMIX", "POST").endpoint == "videos.remix"
    for method, path in (("GET", "/v1/videos"), ("GET", "/v1/videos/video_1"), ("GET", "/v1/videos/video_1/content"),
                         ("DELETE", "/v1/videos/video_1")):
        r = route("api.openai.com", path, method)
        assert r.adapter is None and r.extra.get("free"), (method, path)
    multipart = (b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nsora-2-pro\r\n"
                 b"--b\r\nContent-Disposition: form-data; name=\"seconds\"\r\n\r\n12\r\n--b--\r\n")
    info = create.adapter.parse_request("/v1/videos", multipart)
    assert info.model == "sora-2-pro" and info.estimate == video_usage(12, "720x1280")  # the default size
    assert create.adapter.parse_request("/v1/videos", b"").model == "sora-2"  # the API's default model
    remix = route("api.openai.com", "/v1/videos/v/remix", "POST").adapter.parse_request("/", b'{"prompt": "x"}')
    assert remix.model is None and remix.estimate == Usage(output_video_seconds=12, output_video_high_res_seconds=12)
    job = {"id": "video_1", "object": "video", "model": "sora-2-pro", "status": "queued", "seconds": "8",
           "size": "1024x1792"}
    res = create.adapter.parse_response(json.dumps(job).encode())
    assert res.usage == Usage(output_video_seconds=8, output_video_high_res_seconds=8) and res.usage_final
    for bad in ({**job, "status": "failed"}, {**job, "seconds": "NaN"}, {**job, "seconds": "-1"}, {**job, "object": "x"},
                {"error": {"type": "invalid_request_error", "message": "no"}}):
        assert create.adapter.parse_response(json.dumps(bad).encode()).usage is None, bad
    assert create.adapter.parse_response(b"\xff").garbled
    ext = route("api.openai.com", "/v1/videos/extensions", "POST").adapter
    info = ext.parse_request("/", b'{"seconds": "4", "prompt": "x"}')
    assert info.request_usage == info.estimate and info.request_usage.output_video_seconds == 4
    assert ext.parse_response(json.dumps({**job, "seconds": "12"}).encode()).usage is None  # the stitched total
    assert video_usage(8, "1280x720") == Usage(output_video_seconds=8)
    assert video_usage(8, "garbage") == Usage(output_video_seconds=8)


def test_imagen_and_veo_count_what_they_bill():
    from spendgate.usage import Usage

    base = "/v1beta/models/{}"
    imagen = route("generativelanguage.googleapis.com", base.format("imagen-4.0-generate-001:predict"), "POST")
    assert imagen.endpoint == "predict" and not imagen.adapter.output
    p = imagen.adapter.parse_request
    assert p("/v1beta/models/imagen-4.0-generate-001:predict", b'{"instances": [{"prompt": "x"}]}').estimate == \
        Usage(output_images=4)  # sampleCount left out: four
    assert p("/", b'{"instances": [{}, {}], "parameters": {"sampleCount": 2}}').estimate == Usage(output_images=4)
    assert p("/", b'{"instances": [{}], "parameters": {"sampleCount": 1e9}}').estimate == Usage(output_images=4)
    assert p("/", b"[1]").malformed
    resp = {"predictions": [{"bytesBase64Encoded": "AA==", "mimeType": "image/png"}, {"raiFilteredReason": "x"}]}
    res = imagen.adapter.parse_response(json.dumps(resp).encode())
    assert res.usage == Usage(output_images=1) and res.usage_final
    assert imagen.adapter.parse_response(b'{"error": {"code": 400, "status": "INVALID_ARGUMENT"}}').usage is None
    veo = route("generativelanguage.googleapis.com", base.format("veo-3.0-generate-001:predictLongRunning"), "POST")
    v = veo.adapter.parse_request
    assert v("/", b'{"instances": [{"prompt": "x"}]}').request_usage == Usage(output_video_seconds=8)
    assert v("/", b'{"instances": [{}], "parameters": {"durationSeconds": 4, "sampleCount": 2}}').request_usage == \
        Usage(output_video_seconds=8)
    assert v("/", b'{"instances": [{}], "parameters": {"durationSeconds": true}}').request_usage == \
        Usage(output_video_seconds=8)  # not a number: the default
    assert veo.adapter.parse_response(b'{"name": "models/veo-3.0-generate-001/operations/x"}').usage is None
    op = route("generativelanguage.googleapis.com", "/v1beta/models/veo-3.0-generate-001/operations/x", "GET")
    assert op.adapter is None and op.extra.get("free")


def test_media_units_are_priced_and_an_unknown_rate_is_unpriced():
    from datetime import UTC, datetime
    from decimal import Decimal

    from spendgate.pricing.rates import Pricer
    from spendgate.usage import Usage

    from pathlib import Path

    pricer = Pricer(Path(__file__).resolve().parents[2] / "pricing" / "overrides.yaml")  # as the gateway ships
    at = datetime(2026, 11, 30, 12, tzinfo=UTC)
    pro = pricer.price("openai", "sora-2-pro", Usage(output_video_seconds=12, output_video_high_res_seconds=12), at)
    assert pro.cost == Decimal("6.00") and [ln.rate_name for ln in pro.lines] == ["video_second_high_res"]
    # sora-2 has one rate at every size: a high-resolution second costs the standard one
    assert pricer.price("openai", "sora-2", Usage(output_video_seconds=4, output_video_high_res_seconds=4),
                        at).cost == Decimal("0.40")
    assert pricer.price("gemini", "imagen-4.0-ultra-generate-001", Usage(output_images=2), at).cost == Decimal("0.12")
    assert pricer.price("gemini", "veo-3.1-fast-generate-preview", Usage(output_video_seconds=8), at).cost == \
        Decimal("1.20")
    unknown = pricer.price("openai", "sora-9", Usage(output_video_seconds=4), at)
    assert unknown.cost is None  # unpriced, never $0
    no_rate = pricer.price("openai", "gpt-5", Usage(output_images=1), at)
    assert no_rate.cost is None and any("images generated" in n for n in no_rate.notes)


def test_a_decoy_part_before_the_real_boundary_is_never_read():
    """Tenth review (T3): the meter reads a multipart body from the Content-Type's own boundary,
    as the server does; a part in the preamble (another boundary) is skipped."""
    from spendgate.metering.providers.openai_media import from_boundary, multipart_fields

    body = (b'--FAKE\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--FAKE--\r\n'
            b'--REAL\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o-transcribe\r\n--REAL--\r\n')
    assert multipart_fields(body, frozenset({"model"})) == {"model": "whisper-1"}  # the body alone: fooled
    real = from_boundary(body, 'multipart/form-data; boundary="REAL"')
    assert multipart_fields(real, frozenset({"model"})) == {"model": "gpt-4o-transcribe"}
    assert from_boundary(body, "multipart/form-data; boundary=NOWHERE") == body  # not found: as is
    assert from_boundary(body, "application/json") == body


def test_an_estimated_row_keeps_what_the_request_fixed_or_asked_for():
    """Tenth review (T4): a cut answer keeps the request's images, video seconds and characters;
    a transcription's guessed audio length stays a reservation (gpt-4o-transcribe has no
    per-second rate, so carrying it would leave the row unpriced)."""
    from spendgate.metering.meter import estimate_usage
    from spendgate.metering.providers.base import RequestInfo, ResponseResult
    from spendgate.usage import Usage

    cut = ResponseResult(garbled=True)
    imagen = RequestInfo(model="imagen-4.0-generate-001", input_bytes=200, estimate=Usage(output_images=4))
    assert estimate_usage(imagen, cut) == Usage(output_images=4)
    veo = Usage(output_video_seconds=8)
    assert estimate_usage(RequestInfo(input_bytes=90, request_usage=veo, estimate=veo), cut) == veo
    tts = Usage(input_characters=19)
    assert estimate_usage(RequestInfo(input_bytes=19, request_usage=tts, estimate=tts), cut) == tts
    guess = Usage(input_tokens=1024, audio_seconds=120)
    heard = estimate_usage(RequestInfo(input_bytes=4096, estimate=guess), cut)
    assert (heard.input_tokens, heard.audio_seconds) == (1024, 0)
