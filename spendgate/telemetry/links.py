"""Trace links and W3C trace context, without any dependency (reports and the CLI use it).

A trace URL template is an http(s) URL with placeholders, filled per ledger row:

* ``{trace_id}``   32 lower-case hex digits (Jaeger, Tempo, Honeycomb, ...)
* ``{trace_uuid}`` the same 128 bits as a UUID, 8-4-4-4-12 (LangSmith shows OTLP traces as UUIDs)
* ``{span_id}``    16 hex digits, our span (empty when spans are not exported)

Everything that reaches a template is validated hex, so a link can only point where the
operator's template points.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from typing import Any

PLACEHOLDERS = frozenset({"trace_id", "trace_uuid", "span_id"})
ENV = "SPENDGATE_TRACE_URL"  # the template, for the CLI and the gateway alike

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")


class TemplateError(ValueError):
    """A trace URL template we cannot use; the message says why."""


def check_template(template: str) -> str:
    """The template if usable; TemplateError otherwise (unknown placeholder, not http(s))."""
    if not template.startswith(("http://", "https://")):
        raise TemplateError(f"trace URL template must start with http:// or https://: {template!r}")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise TemplateError(f"trace URL template {template!r}: {e}") from None
    unknown = fields - PLACEHOLDERS
    if unknown:
        raise TemplateError(
            f"trace URL template {template!r} uses {', '.join(sorted(unknown))}; "
            f"known placeholders: {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}"
        )
    if "trace_id" not in fields and "trace_uuid" not in fields:
        raise TemplateError(f"trace URL template {template!r} needs {{trace_id}} or {{trace_uuid}}")
    return template


def trace_url(template: str | None, trace_id: str | None, span_id: str | None = None) -> str | None:
    """The link for one row, or None (no template, no trace, or a template we refuse)."""
    if not template or not trace_id or not _HEX32.match(trace_id):
        return None
    try:
        check_template(template)
    except TemplateError:
        return None
    uuid = f"{trace_id[:8]}-{trace_id[8:12]}-{trace_id[12:16]}-{trace_id[16:20]}-{trace_id[20:]}"
    span = span_id if span_id and _HEX16.match(span_id) else ""
    return template.format(trace_id=trace_id, trace_uuid=uuid, span_id=span)


def add_links(rows: Iterable[dict[str, Any]], template: str | None) -> None:
    """Set ``trace_url`` on each row dict that has a trace (in place)."""
    if not template:
        return
    for row in rows:
        url = trace_url(template, row.get("trace_id"), row.get("span_id"))
        if url:
            row["trace_url"] = url


def parse_traceparent(value: str | None) -> tuple[str, str, bool] | None:
    """(trace_id, parent span id, sampled) from a W3C ``traceparent`` header; None when invalid.

    The header is client-sent: anything not exactly version-traceid-spanid-flags in lower-case
    hex, or with an all-zero id, or version ff, is ignored (W3C Trace Context, section 3.2).
    """
    if not value or len(value) > 512:
        return None
    m = _TRACEPARENT.match(value.strip())
    if not m:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or set(trace_id) == {"0"} or set(span_id) == {"0"}:
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)


def template_from(options: Mapping[str, str | None]) -> str | None:
    """The first non-empty template of the given sources (in order), checked."""
    for value in options.values():
        if value:
            return check_template(value)
    return None
