"""Issue 13 parts 3, 4 and 6 in the pure core: real targets, canonical paths, unmetered rules,
decoded-size caps, string bounds."""

from __future__ import annotations

import gzip
import zlib
from decimal import Decimal

import brotli
import pytest

from spendgate import access, bounds
from spendgate.budgets import refusal, unmetered
from spendgate.metering.providers import normalize_path, route
from spendgate.metering.providers.anthropic import MESSAGES
from spendgate.metering.streams import (
    PIECE,
    DecodedTooLarge,
    IncrementalDecoder,
    StreamTap,
)
from spendgate.policy.model import PolicyError, parse

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    from backports import zstd  # type: ignore[no-redef]


@pytest.mark.parametrize("path", ["/v1//messages", "//v1/messages", "/v1/messages;x=1", "/v1;a/messages",
                                  "/v1/%6Dessages", "/v1/%256Dessages", "/V1/MESSAGES", "/v1/./messages/",
                                  "/v1/models/../messages", "/v1\\messages", "/v1/messages?beta=true",
                                  "/v1/messages#frag"])
def test_path_variants_route_to_messages(path):
    r = route("api.anthropic.com", path, "POST")
    assert r is not None and r.adapter is MESSAGES, path


def test_normalize_path_keeps_case_and_drops_the_query():
    assert normalize_path("/v1beta/models/Gemini-X:generateContent?alt=sse") == "/v1beta/models/Gemini-X:generateContent"
    assert normalize_path("") == "/" and normalize_path("/../..") == "/"


def test_gemini_variants_keep_the_model():
    r = route("generativelanguage.googleapis.com", "/v1beta//models/gemini-2.5-pro:STREAMGENERATECONTENT?alt=sse")
    assert r is not None and r.adapter is not None and r.extra == {"model": "gemini-2.5-pro", "sse": True}


@pytest.mark.parametrize(("host", "method", "path", "free"), [
    ("api.openai.com", "GET", "/v1/models", True),
    ("api.openai.com", "POST", "/v1/models", False),
    ("api.openai.com", "POST", "/v1/vector_stores", False),
    ("api.openai.com", "POST", "/v1/fine_tuning/jobs", False),
    ("api.anthropic.com", "GET", "/api/claude_code/settings", True),
    ("api.anthropic.com", "POST", "/v1/skills", False),
    ("api.anthropic.com", "GET", "/v1/messages/batches/msgbatch_1", True),
    ("api.openai.com", "GET", "/v1/batches/batch_1", True),
    ("generativelanguage.googleapis.com", "GET", "/v1beta/batches", True),
    ("api.anthropic.com", "GET", "/v1/files", True),
    ("chatgpt.com", "GET", "/backend-api/codex/models?client_version=1", True),
    ("generativelanguage.googleapis.com", "POST", "/v1beta/models/g:countTokens", True),
    ("generativelanguage.googleapis.com", "POST", "/v1beta/models/g:batchCreate", False),
])
def test_free_metadata_list(host, method, path, free):
    r = route(host, path, method)
    assert r is not None and r.adapter is None and bool(r.extra.get("free")) is free


def test_real_target_ignores_the_host_header_and_uses_sni_for_ip_connections():
    assert access.real_target("127.0.0.1", None, "api.anthropic.com").misdirected
    t = access.real_target("127.0.0.1", "api.anthropic.com", "api.anthropic.com")
    assert t == access.Target("api.anthropic.com")
    assert access.real_target("api.openai.com", "api.openai.com", "api.openai.com:443").misdirected is None
    assert access.real_target("evil.example", "api.anthropic.com", None).misdirected
    assert access.real_target("example.com", None, "example.com").misdirected is None  # not our business
    assert access.real_target("::1", "api.openai.com").host == "api.openai.com"


def test_is_central():
    loop = access.parse_networks("127.0.0.1/32,::1/128")
    assert not access.is_central(listen_hosts=["127.0.0.1"], allow_clients=loop)
    assert access.is_central(listen_hosts=[""])  # all interfaces
    assert access.is_central(listen_hosts=["127.0.0.1"], proxyauth="bob:x")
    assert access.is_central(listen_hosts=["127.0.0.1"], providers_only=True)
    assert access.is_central(listen_hosts=["127.0.0.1"], allow_clients=access.parse_networks("10.0.0.0/8"))
    assert not access.is_central(mode="laptop", listen_hosts=["0.0.0.0"])
    assert access.is_central(mode="central", listen_hosts=["127.0.0.1"])


def test_unmetered_policy_key_and_defaults():
    assert parse("version: 1\n").unmetered is None
    assert unmetered.rule(None, central=True) == "block" and unmetered.rule(None, central=False) == "allow"
    assert parse("version: 1\nunmetered: {charge: 0.25}\n").unmetered == Decimal("0.25")
    with pytest.raises(PolicyError, match=r":2:\d+: unmetered.charge must be more than 0"):
        parse("version: 1\nunmetered: {charge: 0}\n")
    with pytest.raises(PolicyError, match="must be block, allow or"):
        parse("version: 1\nunmetered: sometimes\n")


@pytest.mark.parametrize("provider", ["anthropic", "openai", "gemini"])
def test_refusals_use_the_provider_shape(provider):
    import json

    a = unmetered.too_large_answer(provider, 10, 5)
    doc = json.loads(a.body)
    assert a.status == 413 and a.headers["x-should-retry"] == "false"
    if provider == "anthropic":
        assert doc["type"] == "error" and doc["error"]["type"] == "request_too_large"
    elif provider == "gemini":
        assert doc["error"]["code"] == 413
    else:
        assert doc["error"]["code"] == "request_too_large"
    assert refusal.refused(provider, 421, "m", "misdirected_request").status == 421


def _bombs(size: int) -> dict[str, bytes]:
    data = b"a" * size
    z = zstd.compress(data)
    return {"gzip": gzip.compress(data), "br": brotli.compress(data, quality=5), "zstd": z,
            "deflate": zlib.compress(data)}


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd", "deflate"])
def test_decoder_pieces_are_bounded_and_the_total_is_capped(enc):
    body = _bombs(8 * PIECE)[enc]
    d = IncrementalDecoder(enc, max_output=3 * PIECE)
    seen = 0
    with pytest.raises(DecodedTooLarge):
        for piece in d.feed_iter(body):
            assert len(piece) <= PIECE
            seen += len(piece)
    assert seen <= 3 * PIECE
    assert IncrementalDecoder(enc).feed(body) == b"a" * (8 * PIECE)  # no cap: all of it, as before


def test_stream_tap_stops_at_the_cap_and_forwards_untouched():
    class Parser:
        fed = 0

        def feed(self, b):
            Parser.fed += len(b)

        def result(self):
            return None

        def close(self):
            pass

    body = _bombs(6 * PIECE)["br"]
    tap = StreamTap(Parser(), "br", max_decoded=2 * PIECE)
    assert tap(body) == body and tap(b"") == b""
    assert tap.broken and "DecodedTooLarge" in tap.broken
    assert Parser.fed <= 2 * PIECE


def test_bounds_cut_strings():
    from spendgate.identity import Identity

    i = bounds.clip_identity(Identity(user="u" * 1000, source="header", session_id="s" * 1000, client="c" * 500))
    assert (len(i.user), len(i.session_id), len(i.client)) == (bounds.USER, bounds.SESSION_ID, bounds.CLIENT)
    assert bounds.clip("short", 10) == "short" and bounds.clip(None, 3) is None


def test_request_bodies_are_read_decoded_and_unknown_encodings_are_unreadable():
    import gzip

    from spendgate.bounds import MAX_DECODED_BYTES
    from spendgate.metering.meter import request_body
    from spendgate.metering.streams import DecodedTooLarge

    doc = b'{"model": "claude-opus-4-1", "max_tokens": 5}'
    assert request_body(doc, "") == doc and request_body(doc, "identity") == doc
    assert request_body(gzip.compress(doc), "gzip") == doc
    assert request_body(gzip.compress(doc), " GZIP ") == doc
    assert request_body(doc, "x-unknown") is None
    assert request_body(doc, "gzip, br") is None  # a chain of encodings: not undone, refused
    assert request_body(b"not gzip at all", "gzip") is None
    bomb = gzip.compress(b"a" * (MAX_DECODED_BYTES + 1), compresslevel=1)
    with pytest.raises(DecodedTooLarge):  # bounded like response bodies: too large (a 413), not unreadable
        request_body(bomb, "gzip")
    with pytest.raises(DecodedTooLarge):  # and by the caller's own limit
        request_body(gzip.compress(doc), "gzip", len(doc) - 1)
    assert request_body(gzip.compress(doc), "gzip", len(doc)) == doc


def test_identity_is_one_rule_for_every_decoder():
    """A client or an upstream writing identity oddly ("Identity ", none at all) gets the body read
    as sent everywhere; any other label is decoded, or refused when it cannot be (no third way)."""
    from spendgate.metering.meter import Body, request_body
    from spendgate.metering.streams import is_identity

    doc = b'{"model": "claude-opus-4-1", "max_tokens": 5}'
    for enc in (None, "", " ", "identity", " Identity ", "IDENTITY"):
        assert is_identity(enc) and IncrementalDecoder(enc or "").identity
        assert request_body(doc, enc or "") is doc and Body(doc, enc or "").decode() == doc
    for enc in ("gzip", " GZIP "):
        assert not is_identity(enc) and not IncrementalDecoder(enc).identity
    assert not is_identity("identity, gzip") and not is_identity("x-identity")
    assert request_body(doc, "identity, gzip") is None  # a chain is not identity: refused, never read as sent
