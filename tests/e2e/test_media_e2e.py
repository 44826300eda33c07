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


# -- generated video and images, billed per second and per image (pricing/overrides.yaml) ------------
# sora-2 $0.10/s; sora-2-pro $0.30/s, $0.50/s above 720p; imagen-4.0-generate $0.04 an image,
# imagen-4.0-fast $0.02; veo-3.0-generate $0.40/s, veo-3.0-fast-generate $0.15/s.


def test_sora_videos_are_billed_per_second_and_polls_are_free(gateway_factory, tmp_path):
    """The official SDK's videos.create (multipart), remix (JSON) and extend, then its polls and
    download: each generation is charged its seconds at its model's rate, the rest $0."""
    policy = tmp_path / "policy.yaml"  # room for a remix's reservation: the dearest clip, $6
    policy.write_text("version: 1\ntimezone: UTC\norganization: {name: acme}\ndefaults: {user: {day: 100}}\n")
    gateway = gateway_factory("gw", policy=policy).start()
    client = sdk(gateway)
    a = client.videos.create(model="sora-2", prompt="a cat on a skateboard", seconds="8", size="1280x720")
    b = client.videos.create(model="sora-2-pro", prompt="the same, wide", seconds="12", size="1792x1024")
    c = client.videos.create(prompt="defaults: sora-2, 4 seconds, 720x1280")
    assert (a.status, b.seconds, c.model, c.seconds) == ("queued", "12", "sora-2", "4")
    remix = client.videos.remix(b.id, prompt="at night")  # the source's model, length and size
    clip = ("clip.mp4", io.BytesIO(b"\x00\x00\x00\x18ftypmp42" + bytes(64)), "video/mp4")
    ext = client.videos.extend(video=clip, prompt="keep going", seconds="4")
    assert client.videos.retrieve(a.id).status == "completed"  # a poll
    assert client.videos.download_content(a.id).read()[:8] == b"\x00\x00\x00\x18ftyp"
    assert {v.id for v in client.videos.list()} >= {a.id, b.id, c.id}  # a list

    rows = by_endpoint(gateway.ledger(wait_for=8))
    created = {r["model"] + ":" + str(r["output_video_seconds"]): r for r in rows["videos.create"]}
    assert set(created) == {"sora-2:8", "sora-2-pro:12", "sora-2:4"}
    assert D(created["sora-2:8"]["cost_usd"]) == Decimal("0.80")
    assert created["sora-2-pro:12"]["output_video_high_res_seconds"] == 12
    assert D(created["sora-2-pro:12"]["cost_usd"]) == Decimal("6.00")  # 1792x1024: $0.50 a second
    assert D(created["sora-2:4"]["cost_usd"]) == Decimal("0.40")
    (rx,) = rows["videos.remix"]
    assert (rx["model"], rx["output_video_seconds"], D(rx["cost_usd"])) == ("sora-2-pro", 12, Decimal("6.00"))
    (ex,) = rows["videos.extend"]  # the new 4 seconds, not the stitched 12 the answer shows
    assert ex["output_video_seconds"] == 4 and ex["outcome"] == "ok"
    assert all(r["outcome"] == "ok" and not r["estimated"] for r in rows["videos.create"] + rows["videos.remix"])
    text = gateway.cli("explain", created["sora-2-pro:12"]["request_id"], check=True).stdout
    assert "billed per unit: video seconds 12, of them above 720p 12" in text
    assert "12 s x $0.5/s" in text and "video_second_high_res" in text and "platform.openai.com/docs/pricing" in text
    free = rows["unmetered"]
    assert len(free) == 3 and all(D(r["cost_usd"] or 0) == 0 for r in free)  # poll, download, list


def test_sora_at_the_cap_is_refused_before_it_runs(gateway_factory, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\ntimezone: UTC\norganization: {name: acme}\ndefaults: {user: {day: 5}}\n")
    gw = gateway_factory("gw", policy=policy).start()
    client = openai.OpenAI(api_key=KEY, http_client=gw.http_client(), max_retries=0)
    client.videos.create(model="sora-2-pro", prompt="one", seconds="8", size="720x1280")  # $2.40
    gw.ledger(wait_for=1)
    # 12 s of sora-2-pro at 720x1280 (the default size) is $3.60 > $2.60 left
    with pytest.raises(openai.RateLimitError) as refused:
        client.videos.create(model="sora-2-pro", prompt="two", seconds="12")
    assert refused.value.response.headers["x-should-retry"] == "false"
    client.videos.create(model="sora-2", prompt="three", seconds="8")  # $0.80 fits
    rows = sorted(gw.ledger(wait_for=3), key=lambda r: r["ts"])
    assert [(r["model"], r["outcome"]) for r in rows] == [("sora-2-pro", "ok"), ("sora-2-pro", "blocked"),
                                                          ("sora-2", "ok")]


def test_imagen_per_image_and_veo_per_second(gateway):
    base = "https://generativelanguage.googleapis.com/v1beta/models"
    key = {"x-goog-api-key": "AIza-fake-media-SECRET"}
    with gateway.http_client() as http:
        r1 = http.post(f"{base}/imagen-4.0-generate-001:predict", headers=key,
                       json={"instances": [{"prompt": "a robot"}], "parameters": {"sampleCount": 3}})
        assert r1.status_code == 200 and len(r1.json()["predictions"]) == 3
        r2 = http.post(f"{base}/imagen-4.0-fast-generate-001:predict", headers=key,  # default: 4, one filtered
                       json={"instances": [{"prompt": "filtered robot"}]})
        assert r2.status_code == 200
        r3 = http.post(f"{base}/veo-3.0-generate-001:predictLongRunning", headers=key,
                       json={"instances": [{"prompt": "a drone shot"}], "parameters": {"aspectRatio": "16:9"}})
        op = r3.json()["name"]
        r4 = http.post(f"{base}/veo-3.0-fast-generate-001:predictLongRunning", headers=key,
                       json={"instances": [{"prompt": "short"}], "parameters": {"durationSeconds": 4}})
        assert r4.status_code == 200
        poll = http.get(f"https://generativelanguage.googleapis.com/v1beta/{op}", headers=key)
        assert poll.json()["done"] is True
    rows = by_endpoint(gateway.ledger(wait_for=5))
    imagen = {r["model"]: r for r in rows["predict"]}
    assert imagen["imagen-4.0-generate-001"]["output_images"] == 3
    assert D(imagen["imagen-4.0-generate-001"]["cost_usd"]) == Decimal("0.12")
    assert imagen["imagen-4.0-fast-generate-001"]["output_images"] == 3  # the filtered one is not billed
    assert D(imagen["imagen-4.0-fast-generate-001"]["cost_usd"]) == Decimal("0.06")
    veo = {r["model"]: r for r in rows["predictLongRunning"]}
    assert veo["veo-3.0-generate-001"]["output_video_seconds"] == 8  # durationSeconds left out: 8
    assert D(veo["veo-3.0-generate-001"]["cost_usd"]) == Decimal("3.20")
    assert D(veo["veo-3.0-fast-generate-001"]["cost_usd"]) == Decimal("0.60")
    assert all(r["outcome"] == "ok" for r in rows["predict"] + rows["predictLongRunning"])
    (polled,) = rows["unmetered"]
    assert D(polled["cost_usd"] or 0) == 0
