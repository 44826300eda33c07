"""OpenAI images and audio end to end: the official openai SDK -> real mitmdump + spendgate -> fake.

Prices (USD, pinned catalogue, genai-prices data):
* gpt-image-1: text input $5/MTok, image input $10/MTok, output (image tokens) $40/MTok (it lists
  no separate output-image rate: the output rate applies, and the row says so).
* gpt-image-1.5: text input $5, image input $8, output image $32 /MTok.
* whisper-1: $0.36 per hour of audio ($0.0001 a second).
* gpt-4o-transcribe: text input $2.50, audio input $6, output $10 /MTok.
* tts-1: $15 per million input characters.
* gpt-4o-mini-tts: input $0.60, output $12 /MTok (audio output at the output rate).
* dall-e-3: billed per image; the catalogue lists no price, so the row is unpriced (never $0).
"""

from __future__ import annotations

import io
from decimal import Decimal

import openai
import pytest

from tests.support.fake_provider import TRANSCRIPT, WHISPER_SECONDS

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

M = Decimal(1_000_000)
KEY = "sk-media-SECRET-0001"
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64)  # a small audio upload; its bytes never matter


def D(v) -> Decimal:
    return Decimal(str(v))


def sdk(gateway) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY, http_client=gateway.http_client(), max_retries=0)


def by_endpoint(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["endpoint"], []).append(r)
    return out


def test_images_generate_and_edit_json_and_streamed(gateway):
    client = sdk(gateway)
    img = client.images.generate(model="gpt-image-1", prompt="a cat", size="1024x1024", quality="low")
    assert img.usage is not None and img.usage.output_tokens == 4160 and img.data[0].b64_json
    events = list(client.images.generate(model="gpt-image-1", prompt="a cat", stream=True, partial_images=1))
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
    edit = client.images.edit(model="gpt-image-1.5", image=("cat.png", io.BytesIO(b"\x89PNG\r\n\x1a\n" + bytes(64)),
                                                            "image/png"), prompt="add a hat")
    assert edit.usage is not None
    edits = list(client.images.edit(model="gpt-image-1.5", image=("cat.png", io.BytesIO(b"\x89PNG" + bytes(8)),
                                                                  "image/png"), prompt="add a hat", stream=True))
    assert edits[-1].type == "image_edit.completed"

    rows = by_endpoint(gateway.ledger(wait_for=4))
    gen = sorted(rows["images.generations"], key=lambda r: r["stream"])
    assert [r["stream"] for r in gen] == [False, True]
    for row in gen:
        assert (row["provider"], row["model"], row["outcome"], row["estimated"]) == ("openai", "gpt-image-1", "ok", False)
        assert (row["input_tokens"], row["input_image_tokens"], row["output_tokens"], row["output_image_tokens"]) \
            == (50, 10, 4160, 4160)
        # 40 text x $5 + 10 image x $10 + 4160 output x $40 (no output-image rate listed: the output rate)
        assert D(row["cost_usd"]) == (40 * 5 + 10 * 10 + 4160 * 40) / M == Decimal("0.1667")
    ed = rows["images.edits"]
    assert len(ed) == 2 and {r["stream"] for r in ed} == {False, True}
    for row in ed:
        assert (row["model"], row["outcome"]) == ("gpt-image-1.5", "ok")
        assert D(row["cost_usd"]) == (40 * 5 + 10 * 8 + 4160 * 32) / M == Decimal("0.13340")
    text = gateway.cli("explain", gen[0]["request_id"], check=True).stdout
    assert "output image (no output_image rate: output rate)" in text  # the fallback is said, not silent
    # the multipart upload reached the provider whole
    got = [r for r in gateway.fake.requests_to(route="/v1/images/edits")]
    assert all(b"\x89PNG" in r.body for r in got)


def test_dall_e_is_unpriced_never_zero(gateway):
    img = sdk(gateway).images.generate(model="dall-e-3", prompt="a cat")
    assert img.data[0].url
    (row,) = gateway.ledger(wait_for=1)
    assert (row["endpoint"], row["model"], row["outcome"]) == ("images.generations", "dall-e-3", "unpriced")
    assert row["cost_usd"] is None


def test_transcriptions_whisper_per_second_and_gpt_4o_transcribe_tokens_streamed(gateway):
    client = sdk(gateway)
    t = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV, "audio/wav"))
    assert t.text == TRANSCRIPT
    tr = client.audio.translations.create(model="whisper-1", file=("a.wav", WAV, "audio/wav"))
    assert tr.text == TRANSCRIPT
    t2 = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", WAV, "audio/wav"))
    assert t2.text == TRANSCRIPT
    events = list(client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", WAV, "audio/wav"),
                                                     stream=True))
    assert events[-1].type == "transcript.text.done" and events[-1].usage.output_tokens == 45

    rows = by_endpoint(gateway.ledger(wait_for=4))
    (whisper,) = rows["audio.translations"]
    for row in [whisper, *[r for r in rows["audio.transcriptions"] if r["model"] == "whisper-1"]]:
        assert (row["model"], row["outcome"], row["audio_seconds"], row["input_tokens"]) == \
            ("whisper-1", "ok", WHISPER_SECONDS, 0)
        assert D(row["cost_usd"]) == WHISPER_SECONDS * Decimal("0.36") / 3600 == Decimal("0.0009")
    tok = sorted((r for r in rows["audio.transcriptions"] if r["model"] == "gpt-4o-transcribe"),
                 key=lambda r: r["stream"])
    assert [r["stream"] for r in tok] == [False, True]
    for row in tok:
        assert (row["outcome"], row["input_tokens"], row["input_audio_tokens"], row["output_tokens"]) == \
            ("ok", 14, 14, 45)
        assert D(row["cost_usd"]) == (14 * 6 + 45 * 10) / M == Decimal("0.000534")
    text = gateway.cli("explain", whisper["request_id"], check=True).stdout
    assert "audio seconds" in text and "$0.36/hour" in text


def test_speech_per_character_and_sse_tokens(gateway):
    client = sdk(gateway)
    said = "Hello there, world!"
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input=said)
    assert audio.content.startswith(b"ID3")
    sse = client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input=said, stream_format="sse")
    assert b"speech.audio.done" in sse.content
    plain = client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input=said)
    assert plain.content.startswith(b"ID3")

    rows = gateway.ledger(wait_for=3)
    assert {r["endpoint"] for r in rows} == {"audio.speech"}
    (tts1,) = [r for r in rows if r["model"] == "tts-1"]
    assert (tts1["outcome"], tts1["input_characters"], tts1["estimated"]) == ("ok", len(said), False)
    assert D(tts1["cost_usd"]) == len(said) * Decimal(15) / M == Decimal("0.000285")
    (streamed,) = [r for r in rows if r["model"] == "gpt-4o-mini-tts" and r["stream"]]
    assert (streamed["outcome"], streamed["input_tokens"], streamed["output_tokens"],
            streamed["output_audio_tokens"]) == ("ok", 20, 300, 300)
    assert D(streamed["cost_usd"]) == (20 * Decimal("0.6") + 300 * 12) / M == Decimal("0.003612")
    # plain audio from a token-billed model says nothing about usage: estimated from the input, said so
    (guess,) = [r for r in rows if r["model"] == "gpt-4o-mini-tts" and not r["stream"]]
    assert guess["outcome"] == "estimated" and guess["estimated"] and D(guess["cost_usd"]) > 0


def test_per_unit_models_are_admitted_with_a_per_unit_estimate_even_when_unpriced_is_blocked(tmp_path, gateway_factory):
    pol = tmp_path / "p.yaml"
    pol.write_text("version: 1\nunpriced: block\ndefaults: {user: {day: 5}}\n")
    gw = gateway_factory(policy=pol).start()
    client = sdk(gw)
    assert client.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV, "audio/wav")).text == TRANSCRIPT
    assert client.audio.speech.create(model="tts-1", voice="alloy", input="hi").content.startswith(b"ID3")
    with pytest.raises(openai.APIStatusError) as e:  # per image, no price known: blocked, never $0
        client.images.generate(model="dall-e-3", prompt="a cat")
    assert e.value.status_code == 503 and "no known price" in str(e.value)
    rows = {r["model"]: r for r in gw.ledger(wait_for=3)}
    assert rows["whisper-1"]["outcome"] == rows["tts-1"]["outcome"] == "ok"
    assert rows["dall-e-3"]["outcome"] == "blocked"
