"""Where spendgate's added time goes: the same mitmdump with one part switched off at a time.

Each variant is spendgate plus a small extra addon script (written to the work directory) that
turns one part into a no-op once the gateway runs. Plain mitmdump, a plain control and every
variant are measured in rounds of 100 KB requests (or --body) at 1 in flight (or --in-flight),
each round one window in which they take turns (bench_cpu.interleaved): CPU per request of the
whole process (``/proc``, all threads) and the client's p50 and p95 latency. The figures are
differences from plain mitmdump; a variant's distance from full spendgate is what the part it
switches off costs. These variants meter wrongly on purpose: they exist only here.

    scripts/bench --ablate [--rounds N] [--requests N] [--body 100kb|5mb-next|5mb-fresh] [--in-flight N] [--smoke] [--out FILE]

docs/architecture.md ("Issue 18, fifth part") reads a run of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench
import bench_cpu

log = logging.getLogger("bench")

# variant -> the parts its switch script turns off (see SWITCH); "spendgate" turns off nothing
VARIANTS: dict[str, tuple[str, ...]] = {
    "spendgate": (),
    "hooks off": ("hooks",),  # every hook of the five addon objects: what loading spendgate costs
    "no background": ("finish",),  # meter.finish: no metering, pricing, settling or ledger work
    "no background, no admission": ("finish", "admit"),
    "no background, no response headers": ("finish", "responseheaders"),
    "no ledger writes": ("ledger",),  # the meter worker still parses, prices and settles; nothing is written
    # the response's parse and the row's pricing done once, then the row copied: what rating the rows
    # in a process of its own could give the proxy at most (a copy of the row stands for its decoding)
    "rows prebuilt": ("rating",),
    "identity resolved once": ("identity",),  # every request gets the first's Identity: an identity cache's ceiling
}
HOOKS = ("client_connected", "http_connect", "next_layer", "requestheaders", "request", "responseheaders",
         "response", "client_disconnected")  # fmt: skip
ADDONS = ("access", "proxytokens", "dashboardhost", "opaquecounter", "spendgate")

SWITCH = '''"""bench_ablate: switch parts of spendgate off ({parts})."""
from mitmproxy import ctx
PARTS = {parts!r}
HOOKS = {hooks!r}
ADDONS = {addons!r}


def _noop(*args, **kwargs):
    return None


class _NoLedger:
    """The ledger with append() a no-op (flush and the rest still answer)."""

    def __init__(self, ledger):
        self._ledger = ledger

    def append(self, row):
        return None

    def __getattr__(self, name):
        return getattr(self._ledger, name)


def _once(identify):
    first = []

    def identify_once(*args, **kwargs):
        if not first:
            first.append(identify(*args, **kwargs))
        return first[0]
    return identify_once


def _prebuild(meter):
    import dataclasses
    from spendgate.metering import meter as module
    rows, results = [], []
    build, parse = meter.build_row, module.Body.parse

    def build_once(ex, result, ended, bytes_out, done_at):
        if not rows:
            rows.append(build(ex, result, ended, bytes_out, done_at))
        return dataclasses.replace(rows[0], request_id=ex.request_id)

    def parse_once(body, adapter):
        if not results:
            results.append(parse(body, adapter))
        return results[0]
    meter.build_row = build_once
    module.Body.parse = parse_once


class AblationSwitch:
    switched = False

    def requestheaders(self, flow):  # the first request after start-up: the gateway runs by then
        gate = ctx.master.addons.get("spendgate")
        if self.switched or gate is None or gate.gateway is None:
            return
        self.switched = True
        if "finish" in PARTS:
            gate.gateway.meter.finish = _noop
        if "ledger" in PARTS:
            gate.gateway.meter.ledger = _NoLedger(gate.gateway.meter.ledger)
        if "rating" in PARTS:
            _prebuild(gate.gateway.meter)
        if "identity" in PARTS:
            gate.gateway.meter.identify = _once(gate.gateway.meter.identify)
        if "admit" in PARTS:
            gate.gateway.admission.admit = _noop
        if "responseheaders" in PARTS:
            gate.responseheaders = _noop
        if "hooks" in PARTS:
            for name in ADDONS:
                addon = ctx.master.addons.get(name)
                for hook in HOOKS:
                    if hasattr(addon, hook):
                        setattr(addon, hook, _noop)


addons = [AblationSwitch()]
'''


def switch_script(work: Path, name: str, parts: tuple[str, ...]) -> Path:
    path = work / f"switch-{name.replace(' ', '-').replace(',', '')}.py"
    path.write_text(SWITCH.format(parts=parts, hooks=HOOKS, addons=ADDONS))
    return path


BODIES = ("100kb", "5mb-next", "5mb-fresh")  # --body: the bench's agent body, or 5 MB as bench.Conversation sends it


def requests_of(body: str) -> Any:
    """A zero-argument callable giving the next request's bytes for `body` (one of BODIES)."""
    if body == "100kb":
        req = bench.http_request(bench.agent_body(False))
        return lambda: req
    return bench.Conversation(5 * 1024 * 1024, fresh=body == "5mb-fresh")


def run(rounds: int, requests: int, work: Path, body: str = "100kb", in_flight: int = 1) -> dict[str, Any]:
    b = bench.Bench(bench.Plan(), work)
    try:
        proxies = {"plain": b.proxy("plain", False), "control": b.proxy("control", False)}
        for name, parts in VARIANTS.items():
            extra = ["-s", str(switch_script(work, name, parts))] if parts else []
            proxies[name] = b.proxy(name.replace(" ", "-").replace(",", ""), True, work / f"{len(proxies)}.duckdb",
                                    extra=extra)
        sources = {n: requests_of(body) for n in proxies}  # a conversation of its own per proxy
        latencies: dict[str, list[float]] = {n: [] for n in proxies}
        cpu: dict[str, list[float]] = {n: [] for n in proxies}

        by_port = {p.port: name for name, p in proxies.items()}

        async def conn(port: int, n: int) -> None:
            name = by_port[port]
            c = await bench.Conn.open(port, b.ctx)
            try:
                for _ in range(n):
                    t = time.perf_counter()
                    await c.exchange(sources[name]())
                    latencies[name].append(time.perf_counter() - t)
            finally:
                c.close()

        async def requests_on(port: int, n: int) -> int:  # n requests over `in_flight` connections
            await asyncio.gather(*(conn(port, n // in_flight + (i < n % in_flight)) for i in range(in_flight)))
            return n

        for p in proxies.values():
            asyncio.run(bench_cpu._warm(bench, p.port, b.ctx))  # also flips each switch
        for rnd in range(rounds):  # each round one window, every variant in turns (bench_cpu.interleaved)
            window = asyncio.run(asyncio.wait_for(bench_cpu.interleaved(proxies, requests_on, requests),
                                                  bench.STEP_TIMEOUT * len(proxies)))
            for name, (seconds, units, _counter, _threads, _blocked) in window.items():
                cpu[name].append(seconds / units * 1e6)
            log.info("round %d/%d done", rnd + 1, rounds)
        ledgers = {}
        for name in VARIANTS:
            proxies[name].stop()
            ledgers[name] = bench.metered(proxies[name])
    finally:
        b.close()
    plain_cpu, plain_p50 = statistics.median(cpu["plain"]), statistics.median(latencies["plain"]) * 1e6
    plain_p95 = bench.pct(latencies["plain"], .95) * 1e6
    out: dict[str, Any] = {}
    for name in proxies:
        c, p50 = statistics.median(cpu[name]), statistics.median(latencies[name]) * 1e6
        p95 = bench.pct(latencies[name], .95) * 1e6
        out[name] = {"cpu_us": bench.r3(c), "p50_us": bench.r3(p50), "added_cpu_us": bench.r3(c - plain_cpu),
                     "added_p50_us": bench.r3(p50 - plain_p50), "p50_ratio": bench.r3(p50 / plain_p50),
                     "p95_us": bench.r3(p95), "p95_ratio": bench.r3(p95 / plain_p95),
                     "rounds_cpu_us": [round(x, 1) for x in cpu[name]], **({"ledger": ledgers[name]}
                                                                            if name in ledgers else {})}
    return out


def print_table(figures: dict[str, Any], body: str = "100kb", in_flight: int = 1) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"spendgate with one part switched off ({body}, {in_flight} in flight; medians of rounds; vs plain)")
    for col in ("variant", "CPU µs/req", "added CPU", "p50 µs", "added p50", "p50 ratio", "p95 ratio", "ledger rows"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for name, f in figures.items():
        rows = f.get("ledger", {}).get("rows", "-")
        t.add_row(name, f"{f['cpu_us']:.0f}", f"{f['added_cpu_us']:+.0f}", f"{f['p50_us']:.0f}",
                  f"{f['added_p50_us']:+.0f}", f"{f['p50_ratio']:.3f}", f"{f['p95_ratio']:.3f}", f"{rows}")
    Console(width=140).print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench --ablate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ablate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=600, help="requests per proxy and round")
    ap.add_argument("--in-flight", type=int, default=1, help="requests in flight at once (connections)")
    ap.add_argument("--body", choices=BODIES, default="100kb",
                    help="request bodies: the 100 KB agent body, or 5 MB as an agent's next turn or a new session")
    ap.add_argument("--smoke", action="store_true", help="one round of 15 requests: the structure, not figures")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/ablate-<time>.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s")
    rounds, requests = (1, 15) if args.smoke else (args.rounds, args.requests)
    work = Path(tempfile.mkdtemp(prefix="spendgate-ablate-"))
    load_start = os.getloadavg()
    try:
        figures = run(rounds, requests, work, args.body, max(1, args.in_flight))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(figures, args.body, max(1, args.in_flight))
    out = args.out or bench.ROOT / "bench-results" / f"ablate-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"body": args.body, "in_flight": max(1, args.in_flight), "rounds": rounds, "requests": requests, "cpus": os.cpu_count(), "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(), "started": datetime.now(UTC).isoformat(timespec="seconds")}
    out.write_text(json.dumps({"meta": meta, "figures": figures}, indent=2) + "\n")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
