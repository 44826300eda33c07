"""The request path's parts in process, with warm caches and with caches churned between requests.

A tight loop over the same request keeps spendgate's code and data in the CPU's caches; inside
mitmdump, ~2 ms of mitmproxy's own work runs between two requests and evicts them. So a part's
CPU measured in a tight loop understates what it costs in the proxy, and by how much differs per
part: the body's read (mostly msgspec's pass, one C loop) costs about the same either way, while code
that touches many Python objects (identity, the estimate, the reservation) costs 2-3x more.
With ``churn`` on, the loop writes over an 8 MB buffer and serialises a few thousand small
objects between requests; the figures it gives are close to what thread CPU around the same calls
measures in the running proxy (docs/architecture.md, "Issue 18, eighth part").

    scripts/bench --hooks [--requests N] [--smoke] [--out FILE]

Each part is timed with the thread's CPU clock (µs per request, mean over N requests). The meter
worker's parts (response parse, pricing, row, settlement, telemetry, ledger append) are timed on
its own thread, per ledger row, in a second table; the ledger's writer runs as in the proxy but
is not counted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench
import bench_upstream

log = logging.getLogger("bench")

# the parts timed: (label, object path from the gateway, attribute); nested parts are included in their callers
PARTS = (
    ("meter.begin", "meter", "begin"),
    ("  request facts (body read)", "meter", "_parse"),  # the adapter's read (100 KB: whole, under MIN_BODY_BYTES)
    ("  identity", "meter", "identify"),
    ("admission.admit", "admission", "admit"),
    ("  estimate", "admission", "estimate"),
    ("  reservation", "admission", "_reserve"),
    ("  journal line", "journal", "reserve"),
    ("response headers", "admission", "response_headers"),
)
# the meter worker's parts, per ledger row (its own thread; spendgate.metering.meter.Meter._record):
# (label, owner, attribute); owner "listener" swaps the bound method in Meter.listeners, None patches
# the class (Body.parse is called on each response's Body)
WORKER_PARTS = (
    ("meter worker, per row", "meter", "_record"),
    ("  response parse", None, "parse"),
    ("  row build", "meter", "build_row"),
    ("    pricing", "meter", "price"),
    ("  budget settlement and alerts", "listener", "admission.settle"),
    ("  telemetry", "listener", "telemetry.on_row"),
    ("  ledger append", "meter.ledger", "append"),
)
CHURN_BYTES = 8 << 20  # larger than the machine's last-level cache share
CHURN_DOCS = [{f"k{i}": [i, str(i), {"x": i}] for i in range(200)} for _ in range(50)]


class Churn:
    """Evicts the caches between requests, as mitmproxy's work between two hooks does."""

    def __init__(self) -> None:
        self.buf = bytearray(CHURN_BYTES)
        self.zeros = bytes(len(self.buf[::64]))

    def __call__(self) -> None:
        self.buf[::64] = self.zeros  # one write per cache line
        for doc in CHURN_DOCS:
            json.dumps(doc)


def _timed(acc: Counter, label: str, fn: Callable) -> Callable:
    clock = time.thread_time_ns

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[label] += clock() - t
    return timed


def clock_cost_ns() -> float:
    """What one thread CPU clock read costs here: every timed part pays two (~0.3-2 µs on a VM)."""
    clock, n = time.thread_time_ns, 20_000
    t = clock()
    for _ in range(n):
        clock()
    return (clock() - t) / n


def _time_worker(gw: Any, acc: Counter) -> Callable[[], None]:
    """Wrap the meter worker's parts (WORKER_PARTS); returns what undoes it. A part that cannot be
    wrapped undoes those already wrapped before raising (Body.parse is the class's, for the process)."""
    from spendgate.metering.meter import Body

    undo: list[Callable[[], None]] = []
    listeners = gw.meter.listeners
    try:
        for label, owner, attr in WORKER_PARTS:
            if owner == "listener":
                holder, name = attr.split(".")
                bound = getattr(getattr(gw, holder), name)
                i = listeners.index(bound)
                listeners[i] = _timed(acc, label, bound)
                undo.append(lambda i=i, bound=bound: listeners.__setitem__(i, bound))
            elif owner is None:
                original = getattr(Body, attr)
                setattr(Body, attr, _timed(acc, label, original))
                undo.append(lambda attr=attr, original=original: setattr(Body, attr, original))
            else:
                obj = gw
                for part in owner.split("."):
                    obj = getattr(obj, part)
                setattr(obj, attr, _timed(acc, label, getattr(obj, attr)))
                undo.append(lambda obj=obj, attr=attr: delattr(obj, attr))
    except BaseException:
        for u in reversed(undo):
            u()
        raise
    return lambda: [u() for u in reversed(undo)]


def run(requests: int, work: Path) -> dict[str, Any]:
    from spendgate.budgets.journal import Journal
    from spendgate.gateway import Gateway, Settings
    from spendgate.metering.meter import Body

    policy = bench.generous_policy(bench.ROOT / "policies" / "example.yaml", work / "policy.yaml")
    gw = Gateway(Settings(db=work / "ledger.duckdb", policy=policy, user="bench", admin_port=-1, reload_interval=0))
    headers = bench.AGENT_HEADERS
    body = bench.agent_body(False)
    answer = bench_upstream.JSON_BODY
    answer = answer if isinstance(answer, bytes) else answer.encode()
    acc: Counter = Counter()
    worker: Counter = Counter()  # updated on the meter's thread only
    untime_worker: Callable[[], None] = lambda: None
    try:
        untime_worker = _time_worker(gw, worker)
        for label, owner, attr in PARTS:
            obj = getattr(gw, owner)
            setattr(obj, attr, _timed(acc, label, getattr(obj, attr)))

        def one() -> None:
            ex = gw.meter.begin(bench.HOST, bench.PATH, headers, body, client_ip="127.0.0.1", method="POST")
            refused = gw.admission.admit(ex, bench.PATH, body)
            if refused is not None:
                raise RuntimeError(f"the bench policy refused a request: {refused.status}")
            ex.status, ex.headers_at = 200, gw.meter.clock()
            gw.admission.response_headers(ex)
            gw.meter.finish(ex, Body(answer, ""), bytes_out=len(answer))

        out: dict[str, Any] = {}
        sent = 0
        for mode, between in (("warm", None), ("churned", Churn())):
            warm_up = max(requests // 10, 5)
            for _ in range(warm_up):
                one()
            sent += warm_up + requests
            gw.meter.flush(30)
            acc.clear()
            worker.clear()
            for i in range(requests):
                if between is not None:
                    between()
                one()
                if i % 30 == 29:
                    time.sleep(0.002)  # the meter worker batches as it does behind a proxy
            gw.meter.flush(30)
            out[mode] = {label: bench.r3(acc[label] / requests / 1000) for label, _, _ in PARTS}
            out[f"worker {mode}"] = {label: bench.r3(worker[label] / requests / 1000) for label, _, _ in WORKER_PARTS}
        out["clock_read_ns"] = bench.r3(clock_cost_ns())
        rows = gw.cursor().execute("SELECT count(*) FROM requests").fetchone()[0]
        out["ledger"] = {"requests_sent": sent, "rows": rows}  # every request metered, as in the proxy
        return out
    finally:
        untime_worker()
        gw.close()
        Journal.reset(gw.journal_path)


def print_table(figures: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="request path in process, µs of CPU per 100 KB request (mean)")
    t.add_column("part")
    for col in ("warm caches", "churned caches", "churned / warm"):
        t.add_column(col, justify="right")
    for label, _, _ in PARTS:
        warm, cold = figures["warm"][label], figures["churned"][label]
        t.add_row(label, f"{warm:.1f}", f"{cold:.1f}", f"{cold / warm:.2f}" if warm else "-")
    Console(width=120).print(t)
    w = Table(title=f"meter worker in process, µs of its thread's CPU per ledger row (mean; each part "
                    f"includes two clock reads of {figures['clock_read_ns'] / 1000:.2f} µs)")
    w.add_column("part")
    w.add_column("with warm request path", justify="right")
    w.add_column("with churned request path", justify="right")
    for label, _, _ in WORKER_PARTS:
        w.add_row(label, f"{figures['worker warm'][label]:.1f}", f"{figures['worker churned'][label]:.1f}")
    Console(width=120).print(w)
    print(f"ledger: {figures['ledger']['rows']} rows for {figures['ledger']['requests_sent']} requests")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench --hooks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--hooks", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--requests", type=int, default=3000, help="requests per mode")
    ap.add_argument("--smoke", action="store_true", help="50 requests per mode: the structure, not figures")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/hooks-<time>.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s")
    requests = 50 if args.smoke else args.requests
    work = Path(tempfile.mkdtemp(prefix="spendgate-hooks-"))
    try:
        figures = run(requests, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(figures)
    out = args.out or bench.ROOT / "bench-results" / f"hooks-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"requests": requests, "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
            "started": datetime.now(UTC).isoformat(timespec="seconds")}
    out.write_text(json.dumps({"meta": meta, "figures": figures}, indent=2) + "\n")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
