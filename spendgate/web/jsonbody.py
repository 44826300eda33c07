"""JSON bodies of the web API: msgspec, a slice at a time for long lists.

Every API answer is encoded in the gateway's process while the proxy's event loop waits for the
interpreter lock. `json.dumps` of the 2 MB budget list (`spendgate budgets`: 10,000 budgets) took
~21 ms, one C call holding the lock throughout; msgspec encodes it in ~3 ms (issue 22: every
route <= 50 ms, and a dashboard that never slows the proxy). Lists longer than SLICE are encoded
SLICE items at a time with `time.sleep(0)` in between, which hands the lock to a waiting thread
at once instead of after the switch interval.

Output is compact JSON (no spaces after separators). What the routes return (str, int, float,
bool, None, lists, dicts with str keys, Decimal as a string) means what `json.dumps(...,
default=str)` said; NaN and infinities become null (valid JSON). Types msgspec knows encode its
way (datetime and date as RFC 3339 text, sets as arrays, dataclasses as objects), and anything
else as `str(value)`. Text msgspec cannot encode as UTF-8 (a lone surrogate, which a JSON request
body may carry and an error message may echo) falls back to `json.dumps`, which escapes it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec

SLICE = 2000  # list items encoded per step (~0.3 ms of holding the interpreter lock)
_ENCODER = msgspec.json.Encoder(enc_hook=str)


def dumps(payload: Any) -> bytes:
    """`payload` as JSON bytes, long lists (up to 4 levels of dicts down) a slice at a time.
    Raises what json.dumps raises for what neither can encode (a cycle)."""
    try:
        return _sliced(payload)
    except UnicodeEncodeError:  # a lone surrogate: json.dumps writes it as an escape
        return json.dumps(payload, default=str).encode()


def _sliced(payload: Any, depth: int = 0) -> bytes:
    if isinstance(payload, dict) and depth < 4 and payload and all(isinstance(k, str) for k in payload):
        return b"{" + b",".join(_ENCODER.encode(k) + b":" + _sliced(v, depth + 1) for k, v in payload.items()) + b"}"
    if isinstance(payload, list) and len(payload) > SLICE:
        parts = []
        for i in range(0, len(payload), SLICE):
            parts.append(_ENCODER.encode(payload[i : i + SLICE])[1:-1])
            time.sleep(0)
        return b"[" + b",".join(parts) + b"]"
    return _ENCODER.encode(payload)
