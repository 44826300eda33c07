"""The context book: what a Responses continuation (previous_response_id) re-reads."""

from __future__ import annotations

from spendgate.metering.context import MAX_ID_CHARS, ContextBook
from spendgate.metering.providers import openai_responses


def test_remembers_the_latest_responses_and_forgets_the_oldest():
    book = ContextBook(maxsize=2)
    book.remember("resp_a", 100)
    book.remember("resp_b", 200)
    assert book.tokens("resp_a") == 100  # a read does not refresh: least recently written goes first
    book.remember("resp_c", 300)
    assert (book.tokens("resp_a"), book.tokens("resp_b"), book.tokens("resp_c")) == (0, 200, 300)
    book.remember("resp_b", 250)  # a later figure for the same response replaces the earlier one
    assert book.tokens("resp_b") == 250


def test_ignores_what_cannot_be_a_continuation():
    book = ContextBook()
    for rid, tokens in ((None, 5), ("", 5), ("resp_x", 0), ("resp_y", -3), ("r" * (MAX_ID_CHARS + 1), 5)):
        book.remember(rid, tokens)
    assert book._tokens == {}
    assert book.tokens(None) == 0 and book.tokens("resp_unknown") == 0


def test_the_responses_adapter_reads_the_continuation_and_the_response_id():
    req = openai_responses.RESPONSES.parse_request(
        "/v1/responses", b'{"model":"gpt-5","input":"x","previous_response_id":"resp_1"}')
    assert req.continues == "resp_1"
    assert openai_responses.RESPONSES.parse_request("/v1/responses", b'{"model":"gpt-5"}').continues is None
    res = openai_responses.RESPONSES.parse_response(
        b'{"id":"resp_2","object":"response","model":"gpt-5","output":[],'
        b'"usage":{"input_tokens":10,"output_tokens":3,"total_tokens":13}}')
    assert res.response_id == "resp_2" and res.usage.input_tokens == 10
