"""Size bounds on what traffic can make the gateway hold or store (docs/security.md).

Every string a client or provider chooses (`model`, user names, `session_id`, client label) is
cut to a documented length before it reaches memory that lives beyond the request (budget
counters, the journal) or the ledger: a 100,000-character model name must not become a
100,000-character ledger cell. Byte limits bound request and decoded response bodies.
Small and dependency-free: used by metering, store and the mitmproxy edge.
"""

from __future__ import annotations

import dataclasses
from typing import Any

MiB = 1024 * 1024

# characters kept of traffic-supplied strings (longer values are cut, never rejected)
MODEL = 200  # longest real model ids are ~60 characters
USER = 256  # e-mail addresses are at most 254
SESSION_ID = 128  # UUIDs are 36
CLIENT = 64  # our own labels are short; this is only a backstop
NOTE = 2000  # free-text notes (refusal reasons, upstream error types)

DEFAULT_MAX_REQUEST_BYTES = 32 * MiB  # spendgate_max_request_bytes: larger bodies get a 413
MAX_DECODED_BYTES = 64 * MiB  # decoded response body, whole or streamed: past this we stop parsing
MAX_PENDING_ROWS = 10_000  # ledger rows held in memory while the store fails; the rest spill to disk


def clip(value: Any, limit: int) -> Any:
    """`value` cut to `limit` characters when it is a longer string, lone surrogates (valid in JSON
    escapes, not storable as UTF-8) replaced; anything else unchanged."""
    if isinstance(value, str):
        value = value[:limit] if len(value) > limit else value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def clip_identity(identity: Any) -> Any:
    """An Identity whose traffic-supplied fields fit the bounds (the same object when they do)."""
    changes = {}
    for name, limit in (("user", USER), ("session_id", SESSION_ID), ("client", CLIENT)):
        value = getattr(identity, name, None)
        if isinstance(value, str) and len(value) > limit:
            changes[name] = value[:limit]
    return dataclasses.replace(identity, **changes) if changes else identity


def clip_request(req: Any) -> None:
    """Cut RequestInfo.model and metadata_user in place."""
    req.model = clip(req.model, MODEL)
    if getattr(req, "metadata_user", None) is not None:
        req.metadata_user = clip(req.metadata_user, USER)


ROW_LIMITS = {"model": MODEL, "user": USER, "session_id": SESSION_ID, "client": CLIENT, "note": NOTE}


def clip_row(row: Any) -> None:
    """Cut a ledger row's traffic-supplied strings in place (the store's last line of defence)."""
    for name, limit in ROW_LIMITS.items():
        value = getattr(row, name, None)
        if isinstance(value, str) and len(value) > limit:
            setattr(row, name, value[:limit])


def release_memory() -> None:
    """Give memory held by a huge refused body back to the OS now.

    What mitmproxy buffered for it sits in reference cycles of the closed connection's layers
    (freed only by a full collection) and in freed malloc arenas glibc keeps. Costs a full GC
    (milliseconds): the edge calls it at most once per RELEASE_INTERVAL seconds.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)  # glibc only; elsewhere the attribute lookup fails and we skip it
    except (OSError, AttributeError):
        pass


RELEASE_INTERVAL = 10.0  # seconds between two release_memory() calls at most
