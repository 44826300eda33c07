"""Found by the attacker review: a gzip body of two members (RFC 1952 §2.2: "a gzip file consists
of a series of members") or a zstd body of two frames. Servers read every member; the gateway's
decoder stopped after the first, so it read a different body (no model: rules bypassed). It now
reads them all, like the provider.
"""

from __future__ import annotations

import gzip
import json

import pytest

from spendgate.metering.meter import request_body

pytestmark = [pytest.mark.e2e]

WHOLE = json.dumps({"model": "gpt-5-pro", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}).encode()


def two_members(data: bytes, cut: int) -> bytes:
    return gzip.compress(data[:cut]) + gzip.compress(data[cut:])


def test_the_gateway_reads_every_gzip_member_and_zstd_frame():
    from mitmproxy.net import encoding

    for cut in (1, 10, len(WHOLE) - 1):
        body = two_members(WHOLE, cut)
        assert gzip.decompress(body) == WHOLE  # what the provider reads
        assert request_body(body, "gzip") == WHOLE  # and what the gateway reads
        frames = encoding.encode(WHOLE[:cut], "zstd") + encoding.encode(WHOLE[cut:], "zstd")
        assert request_body(frames, "zstd") == WHOLE
    assert request_body(gzip.compress(WHOLE) + b"trailing garbage", "gzip") is None  # unreadable: 415


def test_a_denied_model_in_a_two_member_gzip_body_is_refused(tmp_path, gateway_factory):
    pol = tmp_path / "p.yaml"
    pol.write_text('version: 1\nmodels:\n  - {scope: defaults, deny: ["gpt-5-pro*"]}\ndefaults: {user: {day: 5}}\n')
    gw = gateway_factory(policy=pol).start()
    url = "https://api.openai.com/v1/chat/completions"
    hdrs = {"authorization": "Bearer sk-enc-SECRET-0001", "content-type": "application/json"}
    with gw.http_client() as c:
        plain = c.post(url, content=gzip.compress(WHOLE), headers={**hdrs, "content-encoding": "gzip"})
        assert plain.status_code == 403, plain.text  # one member: read, refused
        split = c.post(url, content=two_members(WHOLE, len(WHOLE) - 1), headers={**hdrs, "content-encoding": "gzip"})
    rows = gw.ledger(wait_for=2)
    print(split.status_code, split.text[:200], [(r["model"], r["outcome"], r["charged_usd"]) for r in rows])
    assert split.status_code == 403


def test_a_large_compressed_body_is_decoded_off_the_event_loop_and_still_read(tmp_path, gateway_factory):
    """Over addons.gateway.DECODE_ON_LOOP_BYTES compressed, the body is decoded on a worker thread:
    the model rule still refuses what it must, and an allowed model still reaches the provider."""
    import os

    pol = tmp_path / "p.yaml"
    pol.write_text('version: 1\nmodels:\n  - {scope: defaults, deny: ["gpt-5-pro*"]}\ndefaults: {user: {day: 50}}\n')
    gw = gateway_factory(policy=pol).start()
    url = "https://api.openai.com/v1/chat/completions"
    hdrs = {"authorization": "Bearer sk-enc-SECRET-0002", "content-type": "application/json", "content-encoding": "gzip"}
    text = os.urandom(150_000).hex()  # incompressible enough: ~170 KB gzipped

    def body(model: str) -> bytes:
        return gzip.compress(json.dumps({"model": model, "max_tokens": 50,
                                         "messages": [{"role": "user", "content": text}]}).encode())

    assert len(body("gpt-5-pro")) > 64 * 1024
    with gw.http_client() as c:
        denied = c.post(url, content=body("gpt-5-pro"), headers=hdrs)
        allowed = c.post(url, content=body("gpt-5"), headers=hdrs)
    assert denied.status_code == 403, denied.text
    assert allowed.status_code == 200, allowed.text
    rows = sorted(gw.ledger(wait_for=2), key=lambda r: r["ts"])
    assert [(r["model"], r["outcome"]) for r in rows] == [("gpt-5-pro", "blocked"), ("gpt-5", "ok")]
