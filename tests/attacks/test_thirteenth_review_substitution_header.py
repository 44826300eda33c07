"""Thirteenth review (transparency), finding 3: a step-down writes the client's model string,
unescaped, into a response header (`x-spendgate-model-substituted: {requested} -> {target}`,
budgets/admission.py Admission.response_headers).

A JSON string may hold CR, LF and any character. The model is matched by the step-down's glob
(`claude-opus-*` matches "claude-opus-4-1\\r\\nx-injected: yes"), rewritten to the target (so the
provider serves it), and the header then carries the raw CR LF: the client reads a header line
spendgate never meant to send (with "\\r\\n\\r\\n" in the name, a whole second response: HTTP
response splitting on the client's connection); non-ASCII names go out as raw UTF-8 bytes.
Plain mitmdump adds no header at all. Expected: header values spendgate writes hold visible
ASCII only (escape or drop the rest), so the framing of the client's response is never the
request's to decide.
"""

from __future__ import annotations

from tests.attacks.thirteenth_review_support import Gateway, Recorder, exchange, policy_file

HOST = "api.anthropic.com"
POLICY = ('defaults: {user: {day: 0.05}}\n'
          'step_down:\n  - {scope: defaults, at: 1, window: day, models: {"claude-opus-*": claude-sonnet-4-5}}\n')


def _messages(model_json: str) -> bytes:
    body = ('{"model":"%s","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}' % model_json).encode()
    return (f"POST /v1/messages HTTP/1.1\r\nHost: {HOST}\r\nx-api-key: sk-ant-test-SECRET123\r\n"
            f"anthropic-version: 2023-06-01\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


def test_substitution_header_cannot_inject_header_lines(tmp_path):
    rec = Recorder(tmp_path / "rec")
    gw = Gateway(tmp_path / "gw", rec, policy=policy_file(tmp_path, POLICY)).start()
    try:
        exchange(gw.port, gw.ca_file, HOST, _messages("claude-opus-4-1"))  # spend past 1% of the day
        heads = []
        for _ in range(4):
            rec.reset()
            head, _body = exchange(gw.port, gw.ca_file, HOST, _messages("claude-opus-4-1\\r\\nx-injected: yes"))
            heads.append(head)
            if rec.requests and b'"model":"claude-sonnet-4-5"' in rec.requests[-1].body:
                break
        else:
            raise AssertionError(f"no request was stepped down; heads: {heads!r}")
        head = heads[-1]
        assert b"x-spendgate-model-substituted" in head  # the deliberate header is there
        names = [line.split(b":", 1)[0].strip().lower() for line in head.split(b"\r\n")[1:] if line]
        assert b"x-injected" not in names, head
        for line in head.split(b"\r\n")[1:]:
            if line.lower().startswith(b"x-spendgate-"):
                assert all(0x20 <= c < 0x7F for c in line), line
    finally:
        gw.stop()
        rec.stop()


def test_every_answer_header_is_header_safe():
    """The same rule for the refusals: a budget's scope names a user or workspace, which may come
    from what a client sent (a proxy login, an asserted header behind a trusted proxy)."""
    from spendgate.budgets.refusal import Answer, header_value

    assert header_value("user:alice -> claude-sonnet-4-5") == "user:alice -> claude-sonnet-4-5"
    assert header_value("user:jos\u00e9") == "user:jos%C3%A9"
    assert header_value("claude-opus-4-1\r\nx-injected: yes") == "claude-opus-4-1%0D%0Ax-injected: yes"
    assert header_value("a\tb\x00c\x7f") == "a%09b%00c%7F"
    answer = Answer(429, {"x-spendgate-scope": "user:a\r\n\r\nHTTP/1.1 200 OK"}, b"")
    assert answer.headers["x-spendgate-scope"] == "user:a%0D%0A%0D%0AHTTP/1.1 200 OK"
