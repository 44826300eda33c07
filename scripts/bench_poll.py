"""Does the dashboard slow the proxy? (issue 22) Proxy p99 with and without dashboard tabs polling.

    scripts/bench --poll [--rows 1000000] [--tabs 2] [--seconds 20] [--rounds 2] [--ledger FILE]

A real mitmdump with the spendgate addon sits in front of the bench's fake provider
(scripts/bench_upstream.py) over a synthetic ledger (scripts/ledger_gen.py, copied: the gateway
writes to it). Metered requests go through it one at a time for `--seconds`, alternately without
and with `--tabs` headless dashboard tabs polling: each tab is its own process doing what
spendgate/web/app.js does every REFRESH_MS (5 s): overview, budgets?top=8 and runway together,
then pending requests and seat plans, over the gateway's admin API, signed in with the admin
token as the page is (a session cookie). Rounds
alternate (ABAB) so drift on a shared machine hits both sides; p50/p99 come from all samples of
a side. The JSON also has each polled route's latency as the tabs saw it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

INTERVAL_S = 5.0  # spendgate/web/app.js REFRESH_MS
PARALLEL = ["/api/overview?window=month", "/api/budgets?top=8", "/api/runway"]  # Promise.all in refresh()
THEN = ["/api/requests?status=pending", "/api/reconcile/plans?by=plan"]  # awaited one after the other


def login(url: str, token: str) -> str:
    """Sign in as the page does (POST /login): the session cookie it then polls with."""
    req = urllib.request.Request(url + "/login", data=json.dumps({"token": token}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.headers["Set-Cookie"].split(";")[0]


def _get(url: str, cookie: str) -> tuple[float, int]:
    req = urllib.request.Request(url, headers={"Cookie": cookie})
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    return time.perf_counter() - t, status


def poller(url: str, token: str, interval: float) -> int:
    """One headless tab: poll like app.js until stdin closes; print {route: [seconds...]} at the end."""
    seen: dict[str, list[float]] = {}
    cookie = login(url, token)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        started = time.perf_counter()
        results: dict[str, tuple[float, int]] = {}
        threads = [threading.Thread(target=lambda p=p: results.__setitem__(p, _get(url + p, cookie))) for p in PARALLEL]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in THEN:
            results[p] = _get(url + p, cookie)
        for p, (secs, _status) in results.items():
            seen.setdefault(p, []).append(secs)
        stop.wait(max(0.0, interval - (time.perf_counter() - started)))
    print(json.dumps(seen))
    return 0


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def timed_requests(port: int, ctx: Any, request: bytes, seconds: float) -> list[float]:
    from bench import Conn

    c = await Conn.open(port, ctx)
    out: list[float] = []
    try:
        for _ in range(20):  # warm
            await c.exchange(request)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            await c.exchange(request)
            out.append(time.perf_counter() - t)
    finally:
        c.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--ledger", type=Path, help="a ledger_gen.py ledger to copy (default: build one)")
    ap.add_argument("--tabs", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0, help="per side per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--poller", nargs=3, metavar=("URL", "TOKEN", "INTERVAL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.poller:
        return poller(args.poller[0], args.poller[1], float(args.poller[2]))

    from bench import Bench, Plan, agent_body, http_request
    from ledger_gen import make_ledger

    from spendgate.web.server import discovery_path

    work = Path(tempfile.mkdtemp(prefix="spendgate-bench-poll-"))
    db = work / "ledger.duckdb"
    if args.ledger:
        shutil.copy(args.ledger, db)
    else:
        print(f"building {args.rows:,} rows ...", flush=True)
        make_ledger(db, args.rows)
    bench = Bench(Plan(), work)
    result: dict[str, Any] = {"rows": args.rows, "tabs": args.tabs, "when": datetime.now(UTC).isoformat(timespec="seconds"),
                              "load_start": os.getloadavg()[0]}
    try:
        gw = bench.proxy("spendgate", True, db)
        info = json.loads(discovery_path(db).read_text())
        req = http_request(agent_body(False))
        samples: dict[str, list[float]] = {"without": [], "with": []}
        polls: dict[str, list[float]] = {}
        for rnd in range(args.rounds):
            for side in (("without", "with") if rnd % 2 == 0 else ("with", "without")):
                tabs = []
                if side == "with":
                    tabs = [subprocess.Popen([sys.executable, __file__, "--poller", info["url"], info["token"],
                                              str(INTERVAL_S)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
                            for _ in range(args.tabs)]
                    time.sleep(0.5)  # the first poll is under way
                lat = asyncio.run(timed_requests(gw.port, bench.ctx, req, args.seconds))
                samples[side] += lat
                for t in tabs:
                    out, _ = t.communicate("", timeout=120)
                    for route, secs in json.loads(out.strip().splitlines()[-1]).items():
                        polls.setdefault(route, []).extend(secs)
                print(f"  round {rnd + 1} {side:8s}: {len(lat):,} requests, p50 {pct(lat, .5) * 1000:.2f} ms, "
                      f"p99 {pct(lat, .99) * 1000:.2f} ms", flush=True)
        for side, lat in samples.items():
            result[side] = {"requests": len(lat), "p50_ms": round(pct(lat, .5) * 1000, 2),
                            "p99_ms": round(pct(lat, .99) * 1000, 2), "max_ms": round(max(lat) * 1000, 1)}
        result["p99_ratio"] = round(result["with"]["p99_ms"] / result["without"]["p99_ms"], 2)
        result["p50_ratio"] = round(result["with"]["p50_ms"] / result["without"]["p50_ms"], 2)
        result["poll_ms"] = {r: {"median": round(statistics.median(v) * 1000, 1), "max": round(max(v) * 1000, 1),
                                 "polls": len(v)} for r, v in polls.items()}
        result["load_end"] = os.getloadavg()[0]
        print(json.dumps(result, indent=2))
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    out = args.out or ROOT / "bench-results" / f"bench-poll-{args.rows}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
