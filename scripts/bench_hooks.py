"""The request path's parts in process, with warm caches and with caches churned between requests.

A tight loop over the same request keeps spendgate's code and data in the CPU's caches; inside
mitmdump, ~2 ms of mitmproxy's own work runs between two requests and evicts them. So a part's
CPU measured in a tight loop understates what it costs in the proxy, and by how much differs per
part: the msgspec pass over the body (one C loop) costs about the same either way, while code
that touches many Python objects (identity, the estimate, the reservation) costs 2-3x more.
With ``churn`` on, the loop writes over an 8 MB buffer and serialises a few thousand small
objects between requests; the figures it gives are close to what thread CPU around the same calls
measures in the running proxy (docs/architecture.md, "Issue 18, eighth part").

    scripts/bench --hooks [--requests N] [--smoke] [--out FILE]

Each part is timed with the thread's CPU clock (µs per request, mean over N requests; the meter
worker and ledger writer run as in the proxy but are not counted here).
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
    ("  request facts (msgspec pass)", None, "top_level"),
    ("  identity", "meter", "identify"),
    ("admission.admit", "admission", "admit"),
    ("  estimate", "admission", "estimate"),
    ("  reservation", "admission", "_reserve"),
    ("  journal line", "journal", "reserve"),
    ("response headers", "admission", "response_headers"),
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


def run(requests: int, work: Path) -> dict[str, Any]:
    from spendgate.budgets.journal import Journal
    from spendgate.gateway import Gateway, Settings
    from spendgate.metering.meter import Body
    from spendgate.metering.providers import base

    policy = bench.generous_policy(bench.ROOT / "policies" / "example.yaml", work / "policy.yaml")
    gw = Gateway(Settings(db=work / "ledger.duckdb", policy=policy, user="bench", admin_port=-1, reload_interval=0))
    headers = bench.AGENT_HEADERS
    body = bench.agent_body(False)
    answer = bench_upstream.JSON_BODY
    answer = answer if isinstance(answer, bytes) else answer.encode()
    acc: Counter = Counter()
    original_top_level = base.top_level
    try:
        for label, owner, attr in PARTS:
            if owner is None:
                base.top_level = _timed(acc, label, base.top_level)
            else:
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
            for i in range(requests):
                if between is not None:
                    between()
                one()
                if i % 30 == 29:
                    time.sleep(0.002)  # the meter worker batches as it does behind a proxy
            out[mode] = {label: bench.r3(acc[label] / requests / 1000) for label, _, _ in PARTS}
        gw.meter.flush(30)
        rows = gw.cursor().execute("SELECT count(*) FROM requests").fetchone()[0]
        out["ledger"] = {"requests_sent": sent, "rows": rows}  # every request metered, as in the proxy
        return out
    finally:
        base.top_level = original_top_level
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
