"""mitmproxy entry point: `mitmdump -s addons/gateway.py`.

Thin by design: options are parsed in `configure`, each hook hands facts to the mitmproxy-free
core (`spendgate.gateway`), and per-flow state travels in `flow.metadata["spendgate"]`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.net import encoding as mitm_encoding

from spendgate import access as access_rules
from spendgate import bounds, fsutil, heap, resources
from spendgate.budgets import refusal
from spendgate.budgets.admission import too_large
from spendgate.cli.source import default_db
from spendgate.central.options import central_settings
from spendgate.gateway import Gateway, GatewayError, Settings
from spendgate.metering import providers
from spendgate.metering.meter import Body, Exchange, request_body
from spendgate.metering.providers import openai_chat
from spendgate.metering.providers.base import RequestInfo
from spendgate.metering.streams import DecodedTooLarge, EventFilter, StreamTap, is_identity
from spendgate.telemetry.config import TelemetryError
from spendgate.telemetry.config import settings_from as telemetry_settings

from spendgate.metering import websocket as ws

from dashboard_host import DashboardHost  # addons/ is on sys.path when mitmdump loads this script
from opaque import OpaqueCounter  # addons/opaque.py: counts undecrypted connections to opaque AI hosts
from access import Access, target_of  # addons/access.py: client networks, providers-only, real target, identity echo
from proxy_tokens import ProxyTokens  # addons/proxy_tokens.py: spendgate tokens as proxy credentials
import h2_data  # addons/h2_data.py: an empty HTTP/2 DATA frame is not the end of a streamed body
import dispatch  # addons/dispatch.py: mitmproxy's hook dispatch without its per-addon overhead

log = logging.getLogger("spendgate")

META = "spendgate"
TOO_LARGE = "spendgate.too_large"  # flow.metadata: answered 413 before the body was read
RELEASE_DELAY = 0.5  # seconds after an oversized request's connection closed before memory is released
CEILING_FACTOR = 4  # providers-only: mitmproxy stops reading bodies past this many times the limit
WS = META + ".websocket"  # the SocketSession of a provider WebSocket
ROUTE = META + ".route"  # (host, path, method, hosts generation, Route) as routed at requestheaders
HEADERS = "response_headers"  # Exchange.extra: x-spendgate-* values prepared while the provider works
DECODE_ON_LOOP_BYTES = 64 * 1024  # a compressed request body larger than this is decoded on a worker thread
DECODED_ON_LOOP_BYTES = 256 * 1024  # ... and so is one that decodes past this (decoded and read on the worker)
# A Codex socket lives for hours and carries thousands of events; mitmproxy appends each to
# flow.websocket.messages for the socket's life. We keep the recent ones only (metering has read
# them already) so memory stays flat; a flow saved with -w then holds the socket's tail.
WS_KEEP_MESSAGES = 256
SWITCH_INTERVAL = 0.0005  # seconds; see SpendGate.load


def _path_opt(value: str, default: Path | None) -> Path | None:
    return Path(value).expanduser() if value else default


# mitmproxy's error messages when the client, not the provider, ended an exchange (mitmproxy 12:
# proxy/layers/http/_http1.py "Client disconnected.", _http2.py "stream reset by client (...)")
CLIENT_LEFT = ("Client disconnected", "stream reset by client")


def _headers(h: http.Headers) -> dict[str, str]:
    """Lower-cased names, repeated headers folded with ", " (what ``h.items()`` gives).

    Read from the raw fields in one pass: ``Headers.items()`` rescans every field for each name.
    """
    folded: dict[bytes, tuple[bytes, list[bytes]]] = {}
    for name, value in h.fields:
        entry = folded.get(name.lower())
        if entry is None:
            folded[name.lower()] = (name, [value])
        else:
            entry[1].append(value)
    return {
        name.decode("utf-8", "surrogateescape").lower(): ", ".join(v.decode("utf-8", "surrogateescape") for v in values)
        for name, values in folded.values()
    }


class SpendGate:
    def __init__(self) -> None:
        self.gateway: Gateway | None = None
        self.settings: Settings | None = None
        self._allow_hosts: list[str] = []  # what we last set, to tell it from the operator's
        self.proxy_verified = True  # set by ProxyTokens: False while proxyauth=any accepts any password
        self._ceiling: str | None = None  # body_size_limit we last set (same reason)
        self._duplicates: str | None = None
        self._oversized: set[str] = set()  # client connections that sent a body over the limit
        self._release_pending = False
        self._released_at = 0.0  # time.monotonic() of the last bounds.release_memory()
        # (settings, (policy, pricing) file stamps, Gateway.check result) of the last configure
        self._checked: tuple[Settings, tuple, tuple | None] | None = None
        self._loaded = False  # load() ran: mitmproxy registered this addon (done() outside a proxy: tests)
        self._exiting = False  # done() raised SystemExit for an unload already

    def load(self, loader) -> None:
        # The meter and ledger threads share the GIL with mitmproxy's event loop. CPython makes a
        # waiting thread wait 5 ms before it asks for the GIL; 0.5 ms bounds what a burst of
        # background work can add to a proxied request or stream event.
        sys.setswitchinterval(SWITCH_INTERVAL)
        h2_data.install()  # before any connection: b"" is a streamed body's end on HTTP/2 too
        dispatch.install()  # every event of every flow goes through it: ~700 µs of CPU less per request
        # spendgate's hooks run even when an error in a script before it cuts an event short
        # (eighteenth review): a provider request is never forwarded unchecked that way
        dispatch.guard(addons)
        self._loaded = True
        _pin_script()  # a file replaced or gone while we run must not reload or unload the gateway
        # Everything this process creates from now on (ledger, its WAL that DuckDB makes itself,
        # journal, discovery file) is owner-only. mitmproxy made its CA files before scripts load.
        os.umask(fsutil.PRIVATE_UMASK)
        loader.add_option("spendgate_db", str, "", "DuckDB ledger file (default data/spendgate.duckdb)")
        loader.add_option("spendgate_policy", str, "", "YAML budget policy (default policies/example.yaml)")
        loader.add_option("spendgate_pricing", str, "", "price overrides YAML (default pricing/overrides.yaml)")
        loader.add_option("spendgate_user", str, "", "user to charge in developer-machine mode (default: OS user)")
        loader.add_option(
            "spendgate_intercept_chatgpt", bool, True, "decrypt chatgpt.com to meter Codex's ChatGPT login"
        )
        loader.add_option("spendgate_admin_port", int, 0, "loopback port of the admin API (0: any, -1: off)")
        loader.add_option("spendgate_max_request_bytes", int, bounds.DEFAULT_MAX_REQUEST_BYTES,
                          "largest provider request body in bytes; larger ones get a 413 (0: no limit)")
        loader.add_option("spendgate_mode", str, "auto",
                          "central, laptop or auto (central unless listening on loopback only, without "
                          "proxyauth, providers_only or non-loopback allow_clients); see docs/security.md")
        self._duplicates = _take_duplicate_options()
        # telemetry (docs/telemetry.md): off by default; OTEL_EXPORTER_OTLP_* variables apply when these are empty
        loader.add_option("spendgate_otel", bool, False,
                          "export one OpenTelemetry GenAI span per provider call (and GenAI metrics) over OTLP/HTTP")
        loader.add_option("spendgate_otel_endpoint", str, "",
                          "OTLP/HTTP base URL, e.g. http://collector:4318 (default: OTEL_EXPORTER_OTLP_ENDPOINT)")
        loader.add_option("spendgate_otel_headers", str, "",
                          "OTLP headers k=v,k=v (default: OTEL_EXPORTER_OTLP_HEADERS; prefer the variable for keys)")
        loader.add_option("spendgate_otel_timeout_ms", int, 10000, "milliseconds per OTLP export request")
        loader.add_option("spendgate_otel_queue", int, 2048, "spans queued for the collector before drops")
        loader.add_option("spendgate_trace_url", str, "",
                          "trace link template, e.g. http://jaeger:16686/trace/{trace_id} (default: $SPENDGATE_TRACE_URL)")
        loader.add_option("spendgate_metrics_port", int, -1,
                          "also serve Prometheus /metrics, unauthenticated, on this port (-1: off, 0: any)")
        loader.add_option("spendgate_metrics_host", str, "127.0.0.1", "address of spendgate_metrics_port")
        loader.add_option("spendgate_metrics_per_user", int, 0,
                          "per-user and per-key cost series, at most this many each (0: none; max 1000)")
        loader.add_option(
            "spendgate_extra_providers", Sequence[str], [],
            "more provider hosts to meter: HOST=PROVIDER:ADAPTER[:PRICE_AS][@/BASE] (see README)",
        )
        loader.add_option("spendgate_store", str, "",
                          "postgresql:// URL of the store shared by gateway replicas (default: this process only)")
        loader.add_option("spendgate_store_lease", int, 30,
                          "seconds a reservation lives in the shared store unless its replica renews it")
        # a laptop reporting to a central gateway (docs/scale-out.md, "Laptops")
        loader.add_option("spendgate_central", str, "",
                          "URL of the central gateway's API this laptop pushes its rows to and leases budget from")
        loader.add_option("spendgate_central_token_file", str, "",
                          "file holding this user's spendgate token issued by the centre (0600)")
        loader.add_option("spendgate_central_id", str, "",
                          "this gateway's name in the centre's ledger (default: host name and user)")
        loader.add_option("spendgate_central_proxy", str, "", "reach spendgate_central through this HTTP proxy")
        loader.add_option("spendgate_central_interval", str, "2",
                          "seconds between pushes and lease renewals while the centre answers")
        loader.add_option("spendgate_central_lease", str, "10",
                          "USD of the centre's room one lease may hand this laptop (the centre caps it too)")

    def configure(self, updated: set[str]) -> None:
        """Check settings now (a bad policy stops start-up); open the ledger once running.

        Opening the DuckDB file here would be undone badly: when a later option fails,
        mitmproxy rolls back and calls configure again with the previous values.
        """
        opts = ctx.options
        if self._duplicates:  # fail closed: never guess which of two values the operator meant
            raise exceptions.OptionsError(self._duplicates)
        if "spendgate_extra_providers" in updated:
            try:
                providers.configure_extra(providers.parse_extra(spec) for spec in opts.spendgate_extra_providers)
            except ValueError as e:
                raise exceptions.OptionsError(f"spendgate_extra_providers: {e}") from None
            updated = updated | {"allow_hosts"}  # the new hosts must be decrypted too
        if "spendgate_intercept_chatgpt" in updated or "allow_hosts" in updated or "ignore_hosts" in updated:
            self._only_provider_hosts()
        if updated & {"spendgate_max_request_bytes", "spendgate_providers_only", "body_size_limit"}:
            self._body_ceiling()
        if not any(name.startswith("spendgate_") or name in _MODE_OPTIONS for name in updated):
            return
        if opts.spendgate_mode not in ("auto", "central", "laptop"):
            raise exceptions.OptionsError(f"spendgate_mode must be auto, central or laptop, not {opts.spendgate_mode!r}")
        if opts.spendgate_max_request_bytes < 0:
            raise exceptions.OptionsError("spendgate_max_request_bytes must be >= 0")
        settings = Settings(
            db=_path_opt(opts.spendgate_db, default_db()),
            policy=_path_opt(opts.spendgate_policy, None) or resources.example_policy(),
            pricing=_path_opt(opts.spendgate_pricing, _existing(resources.pricing_dir() / "overrides.yaml")),
            user=opts.spendgate_user or None,
            admin_port=opts.spendgate_admin_port,
            central=_central(),
            store=opts.spendgate_store or None,
            store_lease=float(max(1, opts.spendgate_store_lease)),
        )
        try:
            settings.report_to = central_settings(opts)
        except ValueError as e:
            raise exceptions.OptionsError(str(e)) from None
        try:
            settings.telemetry = telemetry_settings(
                otlp=opts.spendgate_otel, endpoint=opts.spendgate_otel_endpoint, headers=opts.spendgate_otel_headers,
                timeout=opts.spendgate_otel_timeout_ms / 1000, queue=opts.spendgate_otel_queue, trace_url=opts.spendgate_trace_url,
                metrics_port=opts.spendgate_metrics_port, metrics_host=opts.spendgate_metrics_host,
                per_user_series=opts.spendgate_metrics_per_user,
            )
            files = (_stamp(settings.policy), _stamp(settings.pricing))
            if self._checked is not None and self._checked[0] == settings and self._checked[1] == files:
                checked = self._checked[2]  # mitmproxy calls configure several times at start-up
            else:
                with heap.paused():  # a big policy's objects: no collector passes while they are built
                    checked = Gateway.check(settings)
        except (GatewayError, TelemetryError) as e:
            raise exceptions.OptionsError(str(e)) from None
        self.settings = settings
        self._checked = (settings, files, checked)  # running() starts from it instead of reading the policy again
        if self.gateway and self.gateway.settings != settings:  # changed at run time
            self.gateway.close()
            self.gateway = None
            self.running()

    def running(self) -> None:
        if self.gateway is not None or self.settings is None:
            return
        checked = self._checked[2] if self._checked and self._checked[0] is self.settings else None
        try:
            with heap.paused():
                self.gateway = Gateway(self.settings, checked)
        except GatewayError as e:
            log.error("spendgate: %s", e)  # an error logged during start-up makes mitmdump exit 1
            return
        self.gateway.proxy_verified = self.proxy_verified
        loop = _running_loop()  # mitmproxy's: rows are recorded there, cheaper than on a thread
        on_loop = loop is not None and self.gateway.record_on(loop)
        if self._checked is not None:  # the start-up policy is the gateway's now: not kept past a reload
            self._checked = (*self._checked[:2], None)
        heap.settle(1)  # what start-up built lives as long as the process: out of the collector's walks
        log.info("spendgate: ledger %s, admin API %s%s%s", self.settings.db, self.gateway.admin and self.gateway.admin.url,
                 ", shared store" if self.settings.store else "", ", rows recorded on the event loop" if on_loop else "")

    def _body_ceiling(self) -> None:
        """On a providers-only gateway, cap what mitmproxy reads at all (body_size_limit).

        Between spendgate_max_request_bytes and this ceiling a body is read, answered with the
        provider-shaped 413 and dropped; past it mitmproxy stops reading and answers its own 413,
        so memory never grows with the body. Not in laptop mode: body_size_limit also applies to
        plain-HTTP downloads that pass through a system proxy. The operator's value wins.
        """
        opts = ctx.options
        if opts.body_size_limit and opts.body_size_limit != self._ceiling:
            return
        limit = opts.spendgate_max_request_bytes
        wanted = str(limit * CEILING_FACTOR) if opts.spendgate_providers_only and limit else None
        if wanted != opts.body_size_limit:
            self._ceiling = wanted
            opts.update(body_size_limit=wanted)

    def _only_provider_hosts(self) -> None:
        """Decrypt provider hosts only; everything else stays a raw TLS tunnel (origin's cert)."""
        opts = ctx.options
        current = list(opts.allow_hosts)
        if opts.ignore_hosts or (current and current != self._allow_hosts):
            log.warning("spendgate: the operator set allow_hosts/ignore_hosts; using theirs")
            return
        wanted = providers.allow_hosts_regexes(include_chatgpt=opts.spendgate_intercept_chatgpt)
        if current != wanted:
            self._allow_hosts = wanted
            opts.update(allow_hosts=wanted)

    # -- traffic hooks --
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Refuse before the body is read: not in charge (503), or a body over the limit (413)."""
        if flow.response or flow.error:
            return
        host, req = target_of(flow).host, flow.request
        found = providers.route(host, req.path, req.method)
        if found is None:
            return
        # the meter's route, unless the request or the site's provider hosts change meanwhile
        flow.metadata[ROUTE] = (host, req.path, req.method, providers.hosts_generation(), found)
        provider = found.dialect  # whose error shape the client reads
        if self.gateway is None:  # not started (or failed): never let provider traffic pass unmetered
            self._answer(flow, refusal.unavailable(provider, "the gateway is not ready (not metering)"))
            return
        limit = ctx.options.spendgate_max_request_bytes
        size = _declared_size(flow.request.headers)
        if limit and size is not None and size > limit:
            # mitmproxy still reads the body (HTTP/1 framing) before it sends our answer; the
            # request hook drops it at once. A hard ceiling on reading: see _body_ceiling.
            flow.metadata[TOO_LARGE] = True
            self._oversized.add(flow.client_conn.id)
            self._answer(flow, too_large(provider, size, limit))

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Meter and admit; any failure here refuses a provider request (503), never forwards it."""
        try:
            return self._request(flow)
        except Exception:
            log.exception("spendgate: checking a request failed; refusing it (fail closed)")
            self._refuse_unchecked(flow)
            return None

    def _refuse_unchecked(self, flow: http.HTTPFlow) -> None:
        try:
            found = providers.route(target_of(flow).host, flow.request.path)
        except Exception:
            found = None
        dialect = found.dialect if found is not None else "openai"
        if found is not None or flow.metadata.get(META) is not None:
            self._answer(flow, refusal.unavailable(dialect, "the gateway could not check this request"))

    def _request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.metadata.get(TOO_LARGE):  # answered 413 already: let go of the body now, not at the next GC
            flow.request.raw_content = b""
        if flow.response or flow.error:
            return None
        req = flow.request
        host = target_of(flow).host
        route = _routed(flow, host) or providers.route(host, req.path, req.method)
        if route is None:  # not a provider host: nothing to meter or admit
            return None
        if self.gateway is None:  # not started (or failed): never let provider traffic pass unmetered
            self._answer(flow, refusal.unavailable(route.dialect, "the gateway is not ready (not metering)"))
            return None
        limit = ctx.options.spendgate_max_request_bytes
        raw = req.raw_content or b""
        if limit and len(raw) > limit:  # chunked bodies, known only once read
            self._answer(flow, too_large(route.dialect, len(raw), limit))
            req.raw_content = b""
            self._oversized.add(flow.client_conn.id)
            return None
        auth = flow.metadata.get("proxyauth")
        headers = _headers(req.headers)
        if ws.is_handshake(req.method, headers, raw):  # its turns are metered one by one, not the handshake
            sroute = ws.socket_route(route)
            if sroute is not None:
                flow.metadata[WS] = ws.SocketSession(
                    self.gateway.meter, sroute, host, req.path, headers, proxy_user=auth[0] if auth else None,
                    client_ip=flow.client_conn.peername[0] if flow.client_conn.peername else None)
                return None
        encoding = headers.get("content-encoding", "")
        body: bytes | None = raw
        if not is_identity(encoding):
            cap = min(limit, bounds.MAX_DECODED_BYTES) if limit else bounds.MAX_DECODED_BYTES
            try:
                body = _decoded_on_loop(raw, encoding, cap)
            except DecodedTooLarge:  # decoding (and reading) megabytes takes milliseconds: a worker's job
                return self._decode_off_loop(flow, route, host, headers, auth, raw, encoding, cap)
        return self._meter(flow, route, host, headers, auth, raw, body)

    async def _decode_off_loop(self, flow: http.HTTPFlow, route: providers.Route, host: str, headers: dict[str, str],
                               auth: Any, raw: bytes, encoding: str, cap: int) -> None:
        """Decode a compressed body and read it on a worker thread, then meter and admit it here.
        Past `cap` decoded bytes (spendgate_max_request_bytes, at most MAX_DECODED_BYTES) it gets
        the 413 a body that size on the wire gets, whatever it was compressed to."""
        try:
            caller = (auth[0] if auth else None, flow.client_conn.peername[0] if flow.client_conn.peername else None, host)
            try:
                body, read = await asyncio.to_thread(_decode_and_read, self.gateway.meter, route, flow.request.path,
                                                     headers, raw, encoding, cap, caller)
            except DecodedTooLarge:
                self._answer(flow, too_large(route.dialect, len(raw), cap, encoding))
                return
            pending = self._meter(flow, route, host, headers, auth, raw, body, read)
            if pending is not None:
                await pending
        except Exception:
            log.exception("spendgate: checking a request failed; refusing it (fail closed)")
            self._refuse_unchecked(flow)

    def _meter(self, flow: http.HTTPFlow, route: providers.Route, host: str, headers: dict[str, str], auth: Any,
               raw: bytes, body: bytes | None, read: RequestInfo | None = None) -> Awaitable[None] | None:
        """Meter and admit a provider request whose body is read (`body`: decoded; None: undecodable;
        `read`: what the adapter read of it already, on a worker thread)."""
        req = flow.request
        ex = self.gateway.meter.begin(
            host,
            req.path,
            headers,
            raw if body is None else body,
            proxy_user=auth[0] if auth else None,
            client_ip=flow.client_conn.peername[0] if flow.client_conn.peername else None,
            method=req.method,
            unreadable=body is None,
            route=route,
            read=read,
        )
        if ex is None:
            return None
        flow.metadata[META] = ex
        gw = self.gateway
        path, body = req.path, raw if body is None else body
        # a shared store: mitmproxy awaits this, the round trip on a worker thread; so does a large body
        # admission may rewrite (a step-down reads it whole again, a compressed one is compressed again)
        if gw.admit_blocks or (len(body) > DECODED_ON_LOOP_BYTES
                               and (ex.request.rewritten_body is not None or bool(gw.policy.runway.step_down))):
            return self._admit_off_loop(flow, gw, ex, path, body)
        self._admitted(flow, gw, ex, gw.admission.admit(ex, path, body))  # in-memory counters: a direct call
        return None

    async def _admit_off_loop(self, flow: http.HTTPFlow, gw: Gateway, ex: Exchange, path: str, body: bytes) -> None:
        try:
            encoding = flow.request.headers.get("content-encoding", "")
            self._admitted(flow, gw, ex, *await asyncio.to_thread(_admit_and_encode, gw, ex, path, body, encoding))
        except Exception:
            log.exception("spendgate: checking a request failed; refusing it (fail closed)")
            self._refuse_unchecked(flow)

    @staticmethod
    def _admitted(flow: http.HTTPFlow, gw: Gateway, ex: Exchange, answer: refusal.Answer | None,
                  encoded: bytes | None = None) -> None:
        """`encoded`: the rewritten body as it goes on the wire (content-encoded on a worker thread)."""
        req = flow.request
        if answer is not None:  # over budget (or refused by policy): never forwarded
            flow.response = http.Response.make(answer.status, answer.body, answer.headers)
            gw.meter.finish(ex, None)
            return
        if encoded is not None:  # as mitmproxy's content setter leaves it, without encoding here
            req.raw_content = encoded
            if "transfer-encoding" not in req.headers:
                req.headers["content-length"] = str(len(encoded))
        elif ex.request.rewritten_body is not None:
            req.content = ex.request.rewritten_body
        if ex.request.rewritten_path is not None:  # a step-down on an API that names the model in the path
            req.path = ex.request.rewritten_path
        if ex.request.drop_usage_chunk:
            req.headers["accept-encoding"] = "identity"  # so the event we add can be taken out again
        loop = _running_loop()  # none outside mitmproxy's event loop: responseheaders computes them then
        if loop is not None:  # the response's x-spendgate-* values, computed while the provider works
            loop.call_soon(_prepare_headers, gw, ex)

    def client_disconnected(self, client) -> None:
        """A connection that sent an oversized body is gone: hand its buffers back (rate-limited)."""
        if client.id not in self._oversized:
            return
        self._oversized.discard(client.id)
        if self._release_pending:
            return
        self._release_pending = True
        # a moment after the disconnect: mitmproxy tears the connection's layers down after this hook
        wait = max(RELEASE_DELAY, self._released_at + bounds.RELEASE_INTERVAL - time.monotonic())
        asyncio.get_running_loop().call_later(wait, self._release)

    def _release(self) -> None:
        self._release_pending = False
        self._released_at = time.monotonic()
        bounds.release_memory()

    @staticmethod
    def _answer(flow: http.HTTPFlow, answer: refusal.Answer) -> None:
        flow.response = http.Response.make(answer.status, answer.body, answer.headers)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        ex: Exchange | None = flow.metadata.get(META)
        if ex is None or flow.response is None:
            return
        resp = flow.response
        if ex.extra.get("blocked"):
            return
        ex.status = resp.status_code
        ex.headers_at = self.gateway.meter.clock()
        self.gateway.meter.saw_headers(ex, resp.headers)  # e.g. the tier Gemini served it at
        prepared = ex.extra.pop(HEADERS, None)
        resp.headers.update(prepared if prepared is not None else self.gateway.admission.response_headers(ex))
        loop = _running_loop()
        parser = self.gateway.meter.stream_parser(ex, flow.request.path, resp.headers.get("content-type", ""),
                                                  loop.call_later if loop is not None else None)
        if parser is not None:
            # only OpenAI chat asks for this: what include_usage adds that the client did not request
            hiding = EventFilter(openai_chat.hide_added_usage) if ex.request.drop_usage_chunk else None
            tap = StreamTap(parser, resp.headers.get("content-encoding", ""), hiding, self.gateway.meter.clock)
            if hiding and tap.decoder:  # we asked for identity; if encoded anyway, hand on decoded
                resp.headers.pop("content-encoding", None)
                resp.headers.pop("content-length", None)
            flow.metadata[META + ".tap"] = tap
            resp.stream = tap

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response is not None and flow.response.status_code == 101:
            _refuse_unmetered_switch(flow)
        ex: Exchange | None = flow.metadata.get(META)
        if ex is None or flow.response is None or ex.extra.get("blocked"):
            return None
        if ex.request.upload is not None:  # a batch input file: estimated on a worker before the client hears back
            return self._upload_answered(flow, ex)
        return self._finish(flow, ex)

    async def _upload_answered(self, flow: http.HTTPFlow, ex: Exchange) -> None:
        ex.status = flow.response.status_code
        body = Body(flow.response.raw_content or b"", flow.response.headers.get("content-encoding", ""))
        await asyncio.to_thread(self.gateway.meter.learn_upload, ex, body)
        self._finish(flow, ex)

    def _finish(self, flow: http.HTTPFlow, ex: Exchange) -> None:
        ex.status = flow.response.status_code
        tap: StreamTap | None = flow.metadata.get(META + ".tap")
        if tap is not None:
            ex.first_byte_at = tap.first_byte_at
            self.gateway.meter.finish(ex, tap.finish(), bytes_out=tap.bytes_seen)
            return
        raw = flow.response.raw_content or b""
        body = Body(raw, flow.response.headers.get("content-encoding", ""))  # parsed on the meter worker
        self.gateway.meter.finish(ex, body, bytes_out=len(raw))

    # -- WebSocket hooks: per-turn admission and metering (spendgate.metering.websocket) --
    def websocket_message(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A client turn is admitted before it is forwarded; with a shared store the round trip runs on a
        worker thread, and mitmproxy awaits this hook before it handles the socket's next message, so
        frames keep their order."""
        session: ws.SocketSession | None = flow.metadata.get(WS)
        if session is None or flow.websocket is None or not flow.websocket.messages:
            return None
        messages = flow.websocket.messages
        msg = messages[-1]
        if len(messages) > WS_KEEP_MESSAGES:  # mitmproxy keeps every message of a socket's life
            del messages[: -(WS_KEEP_MESSAGES // 2)]
        if msg.injected:
            return None
        if not msg.from_client:
            started = session.server_message(msg.content) if msg.is_text else None
            if started is not None and self.gateway is not None:  # a voice turn the server began itself
                return self._admit_started(flow, self.gateway, session, started)
            return None
        if len(msg.content) > ws.MAX_MESSAGE_BYTES:  # too large to read on the event loop: never forwarded unread
            answer = too_large(session.route.dialect or session.route.provider, len(msg.content), ws.MAX_MESSAGE_BYTES)
            self._turn_refused(flow, msg, answer)
            return None
        if session.withheld(msg.content):  # at the cap: the server hears no more audio
            msg.drop()
            return None
        turn = session.client_message(msg.content)  # binary frames too: a server may read them as JSON
        if turn is None:
            return None
        gw = self.gateway
        if gw is not None and gw.admit_blocks:
            return self._admit_turn_off_loop(flow, gw, session, turn, msg)
        try:
            answer = gw.admission.admit(turn.exchange) if gw else refusal.unavailable(
                session.route.provider, "the gateway is not ready")
        except Exception:  # mitmproxy would forward the message after a hook's exception: refuse it here
            answer = _unchecked_turn(session)
        self._turn_admitted(flow, session, turn, msg, answer)
        return None

    def _admit_started(self, flow: http.HTTPFlow, gw: Gateway, session: ws.SocketSession, turn
                       ) -> Awaitable[None] | None:
        """Admit a response the provider started on its own; at the cap, cancel it upstream."""
        if gw.admit_blocks:
            return self._admit_started_off_loop(flow, gw, session, turn)
        try:
            answer = gw.admission.admit(turn.exchange)
        except Exception:
            answer = _unchecked_turn(session)
        self._started_admitted(flow, session, turn, answer)
        return None

    async def _admit_started_off_loop(self, flow: http.HTTPFlow, gw: Gateway, session: ws.SocketSession,
                                      turn) -> None:
        try:
            answer = await asyncio.to_thread(gw.admission.admit, turn.exchange)
        except Exception:
            answer = _unchecked_turn(session)
        self._started_admitted(flow, session, turn, answer)

    @staticmethod
    def _started_admitted(flow: http.HTTPFlow, session: ws.SocketSession, turn, answer: refusal.Answer | None
                          ) -> None:
        if answer is None:
            turn.admitted = True
            return
        ctx.master.commands.call("inject.websocket", flow, False, session.over_cap(turn))
        SpendGate._tell_client(flow, answer)

    async def _admit_turn_off_loop(self, flow: http.HTTPFlow, gw: Gateway, session: ws.SocketSession, turn,
                                   msg) -> None:
        try:
            answer = await asyncio.to_thread(gw.admission.admit, turn.exchange)
        except Exception:
            answer = _unchecked_turn(session)
        self._turn_admitted(flow, session, turn, msg, answer)

    @staticmethod
    def _turn_admitted(flow: http.HTTPFlow, session: ws.SocketSession, turn, msg,
                       answer: refusal.Answer | None) -> None:
        if answer is None:
            session.capped = False  # an admitted turn: the budget has room again
            return
        session.refused(turn)
        SpendGate._turn_refused(flow, msg, answer)

    @staticmethod
    def _turn_refused(flow: http.HTTPFlow, msg, answer: refusal.Answer) -> None:
        msg.drop()  # never forwarded: the provider sees nothing of a refused turn
        SpendGate._tell_client(flow, answer)

    @staticmethod
    def _tell_client(flow: http.HTTPFlow, answer: refusal.Answer) -> None:
        """The refusal as the error event a client of the socket reads (SocketSession.refusal_event)."""
        event = ws.SocketSession.refusal_event(answer.status, answer.body, answer.headers)
        ctx.master.commands.call("inject.websocket", flow, True, event)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        session: ws.SocketSession | None = flow.metadata.get(WS)
        if session is not None:
            session.close()

    def error(self, flow: http.HTTPFlow) -> None:
        session: ws.SocketSession | None = flow.metadata.get(WS)
        if session is not None:
            session.close("connection error")
        ex: Exchange | None = flow.metadata.get(META)
        if ex is None or ex.extra.get("blocked") or self.gateway is None:
            return  # (no gateway: it closed, and recorded what was in flight as interrupted)
        tap: StreamTap | None = flow.metadata.get(META + ".tap")
        result = tap.parser.result() if tap else None
        if tap:
            ex.first_byte_at = tap.first_byte_at
        msg = flow.error.msg if flow.error else "connection error"
        if flow.response is None and msg.startswith(CLIENT_LEFT) and flow.server_conn.timestamp_start is not None:
            # the request went upstream and the client left before the answer: the provider ran
            # (and bills) it all the same, so it is not free (tenth review, T5)
            ex.extra["abandoned"] = True
        elif ex.status is None and flow.response is None:
            ex.status = 502  # what mitmproxy answers the client when upstream fails
        self.gateway.meter.finish(ex, result, ended=msg, bytes_out=tap.bytes_seen if tap else 0)

    def done(self) -> None:
        # whether or not a gateway is open (a run-time rebuild that failed leaves none, and the 503s
        # it answers stop with the addon); once: the second done (mitmproxy's own, while asyncio
        # winds down after our SystemExit) must not raise again
        unloaded = self._loaded and not self._exiting and _unloaded(self)
        self._exiting = self._exiting or unloaded
        try:
            dispatch.unguard(addons)
            gw, self.gateway = self.gateway, None
            if gw:
                gw.close()
        finally:
            if unloaded:  # fail closed even when close() failed
                log.error("spendgate: the gateway addon was unloaded while the proxy runs (its script taken out "
                          "of the scripts option); stopping the proxy so no provider request passes unchecked")
                # through mitmproxy's hook call and the event loop: mitmdump exits 1. It also cuts
                # ScriptLoader.configure short before the script leaves the loader, so while asyncio
                # winds down our hooks still answer, with no gateway: 503 (mitmproxy 12's order)
                raise SystemExit(1)


def _pin_script() -> None:
    """Stop mitmproxy's watcher of this script (mitmproxy/addons/script.py, `Script.watcher`).

    It reloads a `-s` script whenever the file's mtime changes and unloads it for good once the file
    is missing at one of its 1 s polls: an upgrade or a `git checkout` that replaced
    addons/gateway.py left the proxy running with no budget, metering or access control (provider
    requests forwarded unchecked), and a touch rebuilt the gateway on new module code over the old
    package, with a new admin API port. The code loaded at start runs until a restart, like any
    daemon's; the unload guard in `SpendGate.done` covers any other way out of the chain. Also
    one event-loop wake-up a second less at rest. Called from `load`, which mitmproxy runs inside
    that watcher's task: the task ends at its next sleep."""
    loader = ctx.master.addons.get("scriptloader")
    here = os.path.realpath(__file__)
    for script in getattr(loader, "addons", ()):
        task = getattr(script, "reloadtask", None)
        if task is not None and os.path.realpath(getattr(script, "fullpath", "")) == here:
            task.cancel()
            script.reloadtask = None


def _unloaded(addon: object) -> bool:
    """Whether mitmproxy took `addon` out while the proxy runs: `AddonManager.remove` drops it from
    the lookup before calling `done`, where a shutdown leaves it in."""
    try:
        return ctx.master.addons.get(type(addon).__name__.lower()) is not addon
    except AttributeError:  # no master at all
        return False


def _decoded_on_loop(raw: bytes, encoding: str, cap: int) -> bytes | None:
    """A compressed request body decoded on the event loop, when it is small on the wire and once
    decoded (its read then costs what a plain body that size costs). Raises DecodedTooLarge
    otherwise, for a worker thread to decode and read: a 132-byte brotli body that decodes to
    60 MiB stalled every flow for ~0.2 s here (forty-second review)."""
    if len(raw) > DECODE_ON_LOOP_BYTES:
        raise DecodedTooLarge(f"{len(raw)} bytes on the wire")
    return request_body(raw, encoding, min(cap, DECODED_ON_LOOP_BYTES))


def _decode_and_read(meter: Any, route: providers.Route, path: str, headers: dict[str, str], raw: bytes,
                     encoding: str, cap: int, caller: tuple[str | None, ...]) -> tuple[bytes | None, RequestInfo | None]:
    """Worker thread: the decoded body (None: undecodable) and the adapter's reading of it (None
    with it). Raises DecodedTooLarge past `cap` decoded bytes."""
    body = request_body(raw, encoding, cap)
    return body, (None if body is None else meter.read_request(route, path, headers, body, *caller))


def _admit_and_encode(gw: Gateway, ex: Exchange, path: str, body: bytes, encoding: str
                      ) -> tuple[refusal.Answer | None, bytes | None]:
    """Worker thread: admission, then the body it rewrote content-encoded as the request came (None:
    nothing to encode). mitmproxy's content setter would encode it on the event loop: a 29 MiB
    body sent as 89 KB of gzip took 45 ms there (forty-second review)."""
    answer = gw.admission.admit(ex, path, body)
    rewritten = ex.request.rewritten_body
    if answer is not None or rewritten is None or is_identity(encoding):
        return answer, None
    try:
        return answer, mitm_encoding.encode(rewritten, encoding)
    except ValueError:  # decoded, so never: the content setter then drops the header, as it would
        return answer, None


def _refuse_unmetered_switch(flow: http.HTTPFlow) -> None:
    """A provider switched protocols: let it through only onto a socket whose turns are metered.

    mitmproxy has decided by now (``flow.websocket`` is set before the response hook, for a 101
    that upgrades to websocket at version 13). A handshake carried on as a WebSocket keeps its
    SocketSession; any other 101 on a provider host (on a call metered as one request, or one
    mitmproxy would pipe as raw TCP) would carry traffic nothing meters, so the client gets a
    provider-shaped 502 instead and the switch is never passed on (forty-second review). The
    call's reservation is settled as an upstream error."""
    routed, session = flow.metadata.get(ROUTE), flow.metadata.get(WS)
    if routed is None and session is None and flow.metadata.get(META) is None:
        return  # not a provider host: not ours to judge
    if session is not None and flow.websocket is not None:
        return
    req = flow.request
    log.warning("spendgate: %s answered %s %s with 101 Switching Protocols (upgrade %r); refused: not a metered socket",
                target_of(flow).host, req.method, bounds.clip(req.path, 200), flow.response.headers.get("upgrade", ""))
    answer = refusal.refused(routed[4].dialect if routed is not None else "openai", 502,
                             "spendgate: the provider switched protocols on a request the gateway meters as one "
                             "call; only WebSocket handshakes (GET, no body, version 13) may upgrade",
                             "unexpected_protocol_switch")
    # the upstream connection has switched (mitmproxy pipes it now): the client's must close with it
    flow.response = http.Response.make(answer.status, answer.body, {**answer.headers, "connection": "close"})
    flow.websocket = None  # mitmproxy would otherwise wait on a socket that never opens


def _routed(flow: http.HTTPFlow, host: str) -> providers.Route | None:
    """The route requestheaders found, while the request still has that host, path and method and
    the site's provider hosts are unchanged (None: route it again)."""
    routed, req = flow.metadata.get(ROUTE), flow.request
    if routed is not None and routed[:4] == (host, req.path, req.method, providers.hosts_generation()):
        return routed[4]
    return None


def _unchecked_turn(session: ws.SocketSession) -> refusal.Answer:
    """The answer to a WebSocket turn whose admission raised: refused (or cancelled), fail closed."""
    log.exception("spendgate: checking a WebSocket turn failed; refusing it (fail closed)")
    return refusal.unavailable(session.route.provider, "the gateway could not check this request")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """mitmproxy's event loop; None outside one (hooks called directly)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _prepare_headers(gw: Gateway, ex: Exchange) -> None:
    """Event loop, right after an admitted request went upstream: its response headers' values.

    They depend only on the admission decision, so they are ready before the provider answers
    and the response is not held up computing them. Never raises (responseheaders computes them
    itself when they are missing)."""
    if HEADERS in ex.extra or ex.status is not None:
        return
    try:
        ex.extra[HEADERS] = gw.admission.response_headers(ex)
    except Exception:
        log.exception("spendgate: preparing response headers failed")


def _stamp(p: Path | None) -> tuple[int, int] | None:
    """(mtime ns, size) of a file, to tell whether a checked file changed since (None: absent)."""
    try:
        st = p.stat() if p else None
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size) if st else None


def _existing(p: Path) -> Path | None:
    return p if p.exists() else None


_MODE_OPTIONS = frozenset({"listen_host", "mode", "proxyauth", "spendgate_allow_clients", "spendgate_providers_only"})


def _central() -> bool:
    """Central or laptop mode, from the options (see spendgate.access.is_central)."""
    from mitmproxy.proxy import mode_specs

    opts = ctx.options
    hosts = []
    for spec in opts.mode:
        try:
            hosts.append(mode_specs.ProxyMode.parse(spec).listen_host(opts.listen_host))
        except ValueError:
            hosts.append("")
    try:
        nets = access_rules.parse_networks(opts.spendgate_allow_clients)
    except ValueError:
        nets = ()
    return access_rules.is_central(mode=opts.spendgate_mode, listen_hosts=hosts or [opts.listen_host],
                                   allow_clients=nets, providers_only=opts.spendgate_providers_only,
                                   proxyauth=opts.proxyauth or "")


def _declared_size(headers: http.Headers) -> int | None:
    """Content-Length as a number (None when absent or unreadable: chunked or HTTP/2 streams)."""
    try:
        return int(headers.get("content-length", ""))
    except ValueError:
        return None


def _take_duplicate_options() -> str | None:
    """Find our options given more than once (`--set spendgate_db=a --set spendgate_db=b`).

    mitmproxy keeps them deferred until our load() has declared them, then fails to apply the
    pair and drops the whole script without a word: the proxy would run with nothing metering.
    We take the pair out (so this addon does load) and report it from configure, which makes
    mitmdump exit 1 at start-up; until then every provider request gets a 503.
    """
    deferred = getattr(ctx.options, "deferred", {})
    found = []
    for name in [n for n in deferred if n.startswith("spendgate_")]:
        values = getattr(deferred[name], "val", None)
        if isinstance(values, list) and len(values) > 1:
            found.append(f"{name} given {len(values)} times ({', '.join(map(repr, values))})")
            del deferred[name]
    if not found:
        return None
    return "spendgate: options given more than once, refusing to guess which one applies: " + "; ".join(found)


_gate = SpendGate()
# the dashboard's virtual host runs first, so its requests never reach the metering hooks
# the opaque counter's done() runs before the gateway closes, so open tunnels are recorded too
# access control first: refused clients and hosts never reach the other hooks
# proxy tokens next: a revoked token is refused before the dashboard or the meter sees the request
addons = [Access(lambda: _gate.gateway), ProxyTokens(_gate), DashboardHost(_gate), OpaqueCounter(lambda: _gate.gateway),
          _gate]
