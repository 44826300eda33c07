"""Reviewer's reproductions (branch review): multipart parsing the provider accepts but we do not."""

from __future__ import annotations

from decimal import Decimal

import pytest

pytestmark = [pytest.mark.e2e]

BOUNDARY = b"XyZzy0123"


def _body(preamble: bytes = b"", quoted: bool = True) -> bytes:
    """A transcription upload as RFC 7578 allows it: an optional preamble before the first
    boundary (RFC 2046 5.1.1) and a token (unquoted) `name` parameter (RFC 2183 / RFC 2045 token)."""
    name = b'"model"' if quoted else b"model"
    return (preamble + b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=" + name + b"\r\n\r\n"
            b"gpt-4o-transcribe\r\n--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n' + bytes(4000) + b"\r\n--" + BOUNDARY + b"--\r\n")


@pytest.mark.parametrize("variant", ["preamble", "unquoted"])
def test_r4_a_transcription_the_provider_accepts_is_priced(tmp_path, gateway_factory, variant):
    pol = tmp_path / "p.yaml"
    pol.write_text("version: 1\ndefaults: {user: {day: 5}}\n")
    gw = gateway_factory(policy=pol).start()
    body = _body(b"\r\n" if variant == "preamble" else b"", quoted=variant != "unquoted")
    with gw.http_client() as c:
        r = c.post("https://api.openai.com/v1/audio/transcriptions", content=body,
                   headers={"authorization": "Bearer sk-media-SECRET-0001",
                            "content-type": f"multipart/form-data; boundary={BOUNDARY.decode()}"})
    assert r.status_code == 200, r.text
    (row,) = gw.ledger(wait_for=1)
    print({k: row[k] for k in ("endpoint", "model", "outcome", "cost_usd", "charged_usd", "input_tokens")})
    # today: model None, outcome unpriced, cost_usd None, charged the fallback ($0.003585 vs $0.000534 list)
    assert row["model"] == "gpt-4o-transcribe" and row["cost_usd"] is not None and Decimal(str(row["charged_usd"])) > 0


def test_r4b_unpriced_block_holds_for_a_preamble_upload(tmp_path, gateway_factory):
    pol = tmp_path / "p.yaml"
    pol.write_text("version: 1\nunpriced: block\n")
    gw = gateway_factory(policy=pol).start()
    headers = {"authorization": "Bearer sk-media-SECRET-0001",
               "content-type": f"multipart/form-data; boundary={BOUNDARY.decode()}"}
    plain = _body().replace(b"gpt-4o-transcribe", b"gpt-9-transcribe")  # a model with no known price
    with gw.http_client() as c:
        assert c.post("https://api.openai.com/v1/audio/transcriptions", content=plain,
                      headers=headers).status_code == 503  # blocked: no known price
        hidden = c.post("https://api.openai.com/v1/audio/transcriptions", content=b"\r\n" + plain, headers=headers)
    assert hidden.status_code == 503, f"admitted: {hidden.status_code}"
