"""Gemini through Code Assist (``cloudcode-pa.googleapis.com``): Gemini CLI signed in with a
Google account, and Gemini Code Assist.

``POST /v1internal:generateContent`` and ``/v1internal:streamGenerateContent?alt=sse``. The model
is in the body, not the path: ``{"model": ..., "project": ..., "request": {contents,
generationConfig, ...}}``. Each response (or stream chunk) wraps a Gemini API response in
``{"response": {...}}``; usage rules are the Gemini API's (`gemini.GeminiChunkFolder` unwraps it).
Other ``v1internal`` methods (loadCodeAssist, onboardUser, countTokens, ...) are not model calls.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from spendgate.metering.providers.base import RequestInfo, StreamParser, as_int, dig, parse_json_request
from spendgate.metering.providers.gemini import GeminiAdapter, GeminiStreamParser

HOST = "cloudcode-pa.googleapis.com"
SESSION_ID_CHARS = 128  # client-sent: cut like the session headers
PATH_RE = re.compile(r"^/v1internal:(generateContent|streamGenerateContent)$")


def method_of(path: str) -> tuple[str, bool] | None:
    """(method, alt=sse) of a Code Assist model call, or None."""
    try:
        parts = urlsplit(path or "")
    except ValueError:
        return None
    m = PATH_RE.match(parts.path)
    if m is None:
        return None
    return m.group(1), "sse" in parse_qs(parts.query).get("alt", [])


class CodeAssistAdapter(GeminiAdapter):
    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        try:
            obj, info = parse_json_request(body, (), ("request",))
            if info.malformed:
                return info
            method = method_of(path)
            info.stream = method is not None and method[0] == "streamGenerateContent"
            config = dig(obj, "request", "generationConfig")
            cap = dig(config, "maxOutputTokens")
            info.max_output_tokens = as_int(cap) if cap is not None else None
            session = dig(obj, "request", "session_id")
            info.session_id = session[:SESSION_ID_CHARS] if isinstance(session, str) and session else None
            return info
        except Exception:
            return RequestInfo(malformed=True)

    def stream_parser(self, path: str) -> StreamParser:
        method = method_of(path)
        return GeminiStreamParser(json_array=not (method and method[1]))


GENERATE_CONTENT = CodeAssistAdapter("generateContent")
STREAM_GENERATE_CONTENT = CodeAssistAdapter("streamGenerateContent")
ADAPTERS = {"generateContent": GENERATE_CONTENT, "streamGenerateContent": STREAM_GENERATE_CONTENT}
