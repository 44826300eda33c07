"""Read the small fields of an event too big to keep: from its head and tail only.

A framer hands an oversized event on as `Oversized(head, tail, size)`. Providers put what we
meter at the two ends: event type, ids and model first; usage, finish reason and model version
last (Gemini's ``usageMetadata`` follows the candidates, OpenAI's ``usage`` follows the output).
These helpers find ``"key":`` and decode the JSON value after it, so a 6 MiB image chunk still
yields its 200-byte usage. Pure; never raise.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from spendgate.metering.framing import Oversized

_DECODER = json.JSONDecoder()


@lru_cache(maxsize=64)
def _key_re(key: str) -> re.Pattern[str]:
    # a key, not text: the quote is not escaped (text inside a JSON string has \" quotes)
    return re.compile(r'(?<!\\)"' + re.escape(key) + r'"\s*:\s*')


def _value_at(text: str, pos: int) -> tuple[bool, Any]:
    try:
        return True, _DECODER.raw_decode(text, pos)[0]
    except (ValueError, RecursionError):
        return False, None


def first(text: str, key: str) -> Any:
    """The value of the first ``"key":`` in `text` whose value decodes whole, else None."""
    for m in _key_re(key).finditer(text):
        ok, value = _value_at(text, m.end())
        if ok:
            return value
    return None


def last(text: str, key: str) -> Any:
    """The value of the last ``"key":`` in `text` whose value decodes whole, else None."""
    for m in reversed(list(_key_re(key).finditer(text))):
        ok, value = _value_at(text, m.end())
        if ok:
            return value
    return None


def head_field(over: Oversized, key: str) -> Any:
    """A field that comes early (type, id, model): first in the head, else first in the tail."""
    value = first(over.head, key)
    return value if value is not None else first(over.tail, key)


def tail_field(over: Oversized, key: str) -> Any:
    """A field that comes late (usage, finishReason, modelVersion): last in the tail, else in the head."""
    value = last(over.tail, key)
    return value if value is not None else last(over.head, key)
