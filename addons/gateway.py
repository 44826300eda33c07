"""mitmproxy entry point: `mitmdump -s addons/gateway.py`.

Thin by design: options are parsed in `configure`, each hook hands facts to the mitmproxy-free
core (`spendgate.gateway`), and per-flow state travels in `flow.metadata["spendgate"]`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable
from pathlib import Path

from access import (
    Access,  # addons/access.py: client networks, providers-only, identity echo
)
from dashboard_host import (
    DashboardHost,  # addons/ is on sys.path when mitmdump loads this script
)
from mitmproxy import ctx, exceptions, http
from opaque import (
    OpaqueCounter,  # addons/opaque.py: counts undecrypted connections to opaque AI hosts
)

from spendgate import resources
from spendgate.budgets import refusal
from spendgate.cli.source import default_db
from spendgate.gateway import Gateway, GatewayError, Settings
from spendgate.metering import providers
from spendgate.metering.meter import Body, Exchange
from spendgate.metering.providers import openai_chat
from spendgate.metering.streams import EventDropper, StreamTap

log = logging.getLogger("spendgate")

META = "spendgate"
SWITCH_INTERVAL = 0.0005  # seconds; see SpendGate.load


def _path_opt(value: str, default: Path | None) -> Path | None:
    return Path(value).expanduser() if value else default


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

    def load(self, loader) -> None:
        # The meter and ledger threads share the GIL with mitmproxy's event loop. CPython makes a
        # waiting thread wait 5 ms before it asks for the GIL; 0.5 ms bounds what a burst of
        # background work can add to a proxied request or stream event.
        sys.setswitchinterval(SWITCH_INTERVAL)
        loader.add_option("spendgate_db", str, "", "DuckDB ledger file (default data/spendgate.duckdb)")
        loader.add_option("spendgate_policy", str, "", "YAML budget policy (default policies/example.yaml)")
        loader.add_option("spendgate_pricing", str, "", "price overrides YAML (default pricing/overrides.yaml)")
        loader.add_option("spendgate_user", str, "", "user to charge in developer-machine mode (default: OS user)")
        loader.add_option(
            "spendgate_intercept_chatgpt", bool, True, "decrypt chatgpt.com to meter Codex's ChatGPT login"
        )
        loader.add_option("spendgate_admin_port", int, 0, "loopback port of the admin API (0: any, -1: off)")
        loader.add_option("spendgate_store", str, "",
                          "postgresql:// URL of the store shared by gateway replicas (default: this process only)")
        loader.add_option("spendgate_store_lease", int, 30,
                          "seconds a reservation lives in the shared store unless its replica renews it")

    def configure(self, updated: set[str]) -> None:
        """Check settings now (a bad policy stops start-up); open the ledger once running.

        Opening the DuckDB file here would be undone badly: when a later option fails,
        mitmproxy rolls back and calls configure again with the previous values.
        """
        opts = ctx.options
        if "spendgate_intercept_chatgpt" in updated or "allow_hosts" in updated or "ignore_hosts" in updated:
            self._only_provider_hosts()
        if not any(name.startswith("spendgate_") for name in updated):
            return
        settings = Settings(
            db=_path_opt(opts.spendgate_db, default_db()),
            policy=_path_opt(opts.spendgate_policy, None) or resources.example_policy(),
            pricing=_path_opt(opts.spendgate_pricing, _existing(resources.pricing_dir() / "overrides.yaml")),
            user=opts.spendgate_user or None,
            admin_port=opts.spendgate_admin_port,
            store=opts.spendgate_store or None,
            store_lease=float(max(1, opts.spendgate_store_lease)),
        )
        try:
            Gateway.check(settings)
        except GatewayError as e:
            raise exceptions.OptionsError(str(e)) from None
        self.settings = settings
        if self.gateway and self.gateway.settings != settings:  # changed at run time
            self.gateway.close()
            self.gateway = None
            self.running()

    def running(self) -> None:
        if self.gateway is not None or self.settings is None:
            return
        try:
            self.gateway = Gateway(self.settings)
        except GatewayError as e:
            log.error("spendgate: %s", e)  # an error logged during start-up makes mitmdump exit 1
            return
        log.info("spendgate: ledger %s, admin API %s%s", self.settings.db, self.gateway.admin and self.gateway.admin.url,
                 ", shared store" if self.settings.store else "")

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
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response or flow.error:
            return None
        req = flow.request
        if self.gateway is None:  # not started (or failed): never let provider traffic pass unmetered
            if providers.route(req.host, req.path) is not None:
                answer = refusal.unavailable(providers.PROVIDER_HOSTS.get(req.host, ""), "the gateway is not ready")
                flow.response = http.Response.make(answer.status, answer.body, answer.headers)
            return None
        auth = flow.metadata.get("proxyauth")
        ex = self.gateway.meter.begin(
            req.host,
            req.path,
            _headers(req.headers),
            req.raw_content or b"",
            proxy_user=auth[0] if auth else None,
            client_ip=flow.client_conn.peername[0] if flow.client_conn.peername else None,
        )
        if ex is None:
            return None
        flow.metadata[META] = ex
        gw = self.gateway
        if gw.admit_blocks:  # a shared store: mitmproxy awaits this; the round trip runs on a worker thread
            return self._admit_off_loop(flow, gw, ex)
        self._admitted(flow, gw, ex, gw.admission.admit(ex))  # in-memory counters: a direct call, no coroutine
        return None

    async def _admit_off_loop(self, flow: http.HTTPFlow, gw: Gateway, ex: Exchange) -> None:
        self._admitted(flow, gw, ex, await asyncio.to_thread(gw.admission.admit, ex))

    @staticmethod
    def _admitted(flow: http.HTTPFlow, gw: Gateway, ex: Exchange, answer: refusal.Answer | None) -> None:
        req = flow.request
        if answer is not None:  # over budget (or refused by policy): never forwarded
            flow.response = http.Response.make(answer.status, answer.body, answer.headers)
            gw.meter.finish(ex, None)
            return
        if ex.request.rewritten_body is not None:
            req.content = ex.request.rewritten_body
        if ex.request.drop_usage_chunk:
            req.headers["accept-encoding"] = "identity"  # so the event we add can be taken out again

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        ex: Exchange | None = flow.metadata.get(META)
        if ex is None or flow.response is None:
            return
        resp = flow.response
        if ex.extra.get("blocked"):
            return
        ex.status = resp.status_code
        ex.headers_at = self.gateway.meter.clock()
        resp.headers.update(self.gateway.admission.response_headers(ex))
        parser = self.gateway.meter.stream_parser(ex, flow.request.path, resp.headers.get("content-type", ""))
        if parser is not None:
            # only OpenAI chat asks for this: the include_usage chunk the client did not request
            dropper = EventDropper(openai_chat.filter_usage_chunk) if ex.request.drop_usage_chunk else None
            tap = StreamTap(parser, resp.headers.get("content-encoding", ""), dropper, self.gateway.meter.clock)
            if dropper and tap.decoder:  # we asked for identity; if encoded anyway, hand on decoded
                resp.headers.pop("content-encoding", None)
                resp.headers.pop("content-length", None)
            flow.metadata[META + ".tap"] = tap
            resp.stream = tap

    def response(self, flow: http.HTTPFlow) -> None:
        ex: Exchange | None = flow.metadata.get(META)
        if ex is None or flow.response is None or ex.extra.get("blocked"):
            return
        ex.status = flow.response.status_code
        tap: StreamTap | None = flow.metadata.get(META + ".tap")
        if tap is not None:
            ex.first_byte_at = tap.first_byte_at
            self.gateway.meter.finish(ex, tap.parser.result(), bytes_out=tap.bytes_seen)
            return
        raw = flow.response.raw_content or b""
        body = Body(raw, flow.response.headers.get("content-encoding", ""))  # parsed on the meter worker
        self.gateway.meter.finish(ex, body, bytes_out=len(raw))

    def error(self, flow: http.HTTPFlow) -> None:
        ex: Exchange | None = flow.metadata.get(META)
        if ex is None or ex.extra.get("blocked"):
            return
        tap: StreamTap | None = flow.metadata.get(META + ".tap")
        result = tap.parser.result() if tap else None
        if tap:
            ex.first_byte_at = tap.first_byte_at
        if ex.status is None and flow.response is None:
            ex.status = 502  # what mitmproxy answers the client when upstream fails
        msg = flow.error.msg if flow.error else "connection error"
        self.gateway.meter.finish(ex, result, ended=msg, bytes_out=tap.bytes_seen if tap else 0)

    def done(self) -> None:
        if self.gateway:
            self.gateway.close()
            self.gateway = None


def _existing(p: Path) -> Path | None:
    return p if p.exists() else None


_gate = SpendGate()
# the dashboard's virtual host runs first, so its requests never reach the metering hooks
# the opaque counter's done() runs before the gateway closes, so open tunnels are recorded too
# access control first: refused clients and hosts never reach the other hooks
addons = [Access(lambda: _gate.gateway), DashboardHost(_gate), OpaqueCounter(lambda: _gate.gateway), _gate]
