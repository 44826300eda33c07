"""Instructions per unit of work of each mitmdump, counted by callgrind: noise-free figures.

On the 2-core VM the CPU time of one round swings by ±30% (one 16 MB bulk stream read 7,100 to
13,200 µs per MB in one run of one code), so a change worth a few percent never shows in
`--cpu`. Callgrind counts executed instructions, which the same code on the same input repeats
within ~1% whatever else the machine does. Each proxy runs under
``valgrind --tool=callgrind --instr-atstart=no``; collection is switched on
(``callgrind_control -i on``) only around a window of work, and the window is dumped after it.
Each figure is the difference between a large and a small window of the same work divided by the
units between them, so start-up, warm-up, the connection's own cost and the fixed settle pause
cancel out. Every thread counts (the meter's worker and the ledger's writer included), and the
settle pause after each window (and until the process is idle) lets the batched work of that window
finish inside it; the same wait before each window keeps what came before out of it. A second plain
mitmdump (the control) is counted like plain: two runs of the same code differ by 0-4% here.
Callgrind writes each thread's counts apart (``--separate-threads=yes``), so the event loop's
(valgrind's thread 1, the main thread) are shown too: they are what limits a saturated proxy's
throughput. They are not free of the background threads: CPython's collector runs its passes in
whichever thread's allocation sets one off, over every thread's young objects, and an object is
freed in the thread that drops its last reference, so work moves between the threads' counts.

It counts work, not time: what instructions cost (cache misses, the GIL handed between threads,
the second core) is what the wall-clock rows measure. Under valgrind a proxy runs ~50x slower,
so the units are few.

    scripts/bench --instructions [--against DIR]   # plain, plain-stream, spendgate (and before)
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_cpu import cpu_seconds  # scripts/ is on the path (scripts/bench.py puts it there)

QUIET_CPU_S = 0.02  # ... and until the process used at most this much CPU in half a second (two ticks)
QUIET_MAX_S = 90.0  # (a ledger commit of 30 ms takes over a second under valgrind)


@dataclass(frozen=True)
class InstrPlan:
    """Units of work in the small and the large window of each scenario."""

    c1: tuple[int, int] = (5, 25)  # 100 KB requests, one at a time
    stream: tuple[int, int] = (500, 2500)  # events of one SSE stream (180-byte deltas)
    bulk_mb: tuple[int, int] = (2, 10)  # MB of one bulk stream (16 KB deltas)
    settle_s: float = 2.5  # before and after each window at least: the meter's batch (50 ms), a ledger commit (2 s)


INSTR_SMOKE = InstrPlan(c1=(1, 3), stream=(20, 60), bulk_mb=(1, 2), settle_s=0.5)


@dataclass(frozen=True)
class Work:
    """One scenario: the request for `n` units, the unit's name, and the proxies that do it."""

    request: Any  # n -> raw HTTP request bytes
    unit: str
    sizes: tuple[int, int]
    streamed: bool  # measured against plain-stream (plain buffers SSE) rather than plain


def scenarios(bench_mod: Any, plan: InstrPlan) -> dict[str, Work]:
    b = bench_mod
    body = b.http_request(b.agent_body(False))
    return {
        "c1": Work(lambda n: [body] * n, "request", plan.c1, False),
        "stream": Work(lambda n: [b.http_request(b.agent_body(True, 2000), f"sse:{n}:0")], "event", plan.stream, True),
        "bulk": Work(lambda n: [b.http_request(b.agent_body(True, 2000), f"bulk:{n * 1024 * 1024}")], "MB",
                     plan.bulk_mb, True),
    }


def available() -> str | None:
    """Why the figures cannot be taken here, or None."""
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    return f"{', '.join(missing)} not found (Debian's package valgrind)" if missing else None


def under_callgrind(cmd: list[str], out_dir: Path) -> list[str]:
    """`cmd` run under callgrind with collection off until switched on; dumps go to `out_dir`."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
            f"--callgrind-out-file={out_dir}/callgrind.%p", *cmd]


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, check=True, timeout=60)


MAIN_THREAD = 1  # valgrind numbers the main thread 1 (callgrind's post_clo_init: run_thread(1))
# an intermediate dump's file per thread: <out>.<dump>-<thread, "%02d">; the base file callgrind.<pid>
# (created empty at start for the dump at exit) and the exit dump's <out>-<thread> are not
DUMP_FILE = re.compile(r"callgrind\.\d+\.\d+-(\d+)")


def _totals(f: Path) -> int | None:
    """The instructions on a dump file's ``totals:`` line, or None while the file is not written to
    its end (callgrind writes that line last, through a buffer, and may flush it in two parts)."""
    text = f.read_text(errors="replace")
    for line in text.split("\n")[:-1]:  # lines a newline ended: the last part may still be growing
        if line.startswith("totals:"):
            return int(line.split()[1])
    return None


def _dumped(out_dir: Path, before: set[Path], timeout_s: float = 30.0, poll_s: float = 0.2) -> tuple[int, int]:
    """(every thread's, the main thread's) instructions in the dump written since `before`: one
    file per thread (``--separate-threads=yes``), each with its own ``totals:`` line. Callgrind
    writes the threads' files one after another (thread 1 first), so a dump counts as complete
    only when the main thread's file is there, every file has its totals, and two looks in a row
    saw the same files: a first file complete with the others not yet created is not a dump."""
    deadline = time.monotonic() + timeout_s
    last: dict[Path, int | None] | None = None  # (callgrind_control -d returns on vgdb's reply, after the dump)
    while time.monotonic() < deadline:
        new = {f: int(m.group(1)) for f in set(out_dir.glob("callgrind.*")) - before
               if (m := DUMP_FILE.fullmatch(f.name))}
        totals = {f: _totals(f) for f in new}
        if MAIN_THREAD in new.values() and None not in totals.values():
            if totals == last:  # (every value an int here)
                return sum(totals.values()), sum(n for f, n in totals.items() if new[f] == MAIN_THREAD)
            last = totals
        else:
            last = None
        time.sleep(poll_s)
    raise RuntimeError(f"callgrind wrote no complete dump in {out_dir} within {timeout_s:g} s")


def _quiet(pid: int, settle_s: float) -> None:
    """Wait `settle_s`, then until the process is idle (its batched work done), at most QUIET_MAX_S."""
    time.sleep(settle_s)
    deadline = time.monotonic() + QUIET_MAX_S
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - last <= QUIET_CPU_S + 1e-9:
            return
        last = now


def window(bench_mod: Any, proxy: Any, ctx: Any, requests: list[bytes], out_dir: Path,
           settle_s: float) -> tuple[int, int]:
    """Instructions the proxy executed for `requests` (sent one after another on one connection),
    with the settle pause after them, in every thread and in its main thread (the event loop);
    collection is on for that window only."""
    pid = proxy.proc.pid

    async def send() -> None:
        c = await bench_mod.Conn.open(proxy.port, ctx)
        try:
            for req in requests:
                await c.exchange(req, lambda data, now: None)
        finally:
            c.close()

    _quiet(pid, settle_s)  # what came before is not this window's
    _control(pid, "-z")
    _control(pid, "-i", "on")
    asyncio.run(asyncio.wait_for(send(), bench_mod.STEP_TIMEOUT * 20))
    _quiet(pid, settle_s)
    _control(pid, "-i", "off")
    before = set(out_dir.glob("callgrind.*"))
    _control(pid, "-d")
    return _dumped(out_dir, before)


def run_instructions(bench_mod: Any, plan: InstrPlan, ctx: Any, proxies: dict[str, Any]) -> dict[str, Any]:
    """name -> instructions per unit for each scenario; `proxies` maps plain, plain-stream, their
    controls (control, control-stream: the same plain mitmdump again), spendgate (and before) to
    started bench.Proxy objects whose command ran `under_callgrind` into their own work directory."""
    out: dict[str, Any] = {"plan": plan.__dict__}
    for name, work in scenarios(bench_mod, plan).items():
        floor = "plain-stream" if work.streamed else "plain"
        control = "control-stream" if work.streamed else "control"
        taking = [p for p in proxies if p in (floor, control, "spendgate", "before")]
        small, large = work.sizes
        per: dict[str, float] = {}
        loop: dict[str, float] = {}
        for p in taking:
            proxy = proxies[p]
            window(bench_mod, proxy, ctx, work.request(small), proxy.work, plan.settle_s)  # warm: caches, sessions
            counts = [window(bench_mod, proxy, ctx, work.request(n), proxy.work, plan.settle_s) for n in (small, large)]
            per[p] = round((counts[1][0] - counts[0][0]) / (large - small))
            loop[p] = round((counts[1][1] - counts[0][1]) / (large - small))
        fig: dict[str, Any] = {"unit": work.unit, "floor": floor, "per_unit": per,
                               "ratio": round(per["spendgate"] / per[floor], 3),
                               "added": per["spendgate"] - per[floor],
                               # the main thread only: mitmdump's event loop
                               "event_loop_per_unit": loop,
                               "event_loop_ratio": round(loop["spendgate"] / loop[floor], 3) if loop[floor] else None}
        if control in per:  # a second plain: how far two runs of the same code differ here
            fig["control_ratio"] = round(per[control] / per[floor], 3)
        if control in loop and loop[floor]:
            fig["event_loop_control_ratio"] = round(loop[control] / loop[floor], 3)
        if "before" in per:
            fig["before_ratio"] = round(per["before"] / per[floor], 3)
            fig["before_added"] = per["before"] - per[floor]
        out[name] = fig
    return out


def print_instructions(fig: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    before = any("before_ratio" in v for v in fig.values() if isinstance(v, dict))
    t = Table(title="Instructions per unit (callgrind; every thread, and the event loop's (main) thread alone; "
                    "large window minus small)", header_style="bold")
    cols = ["scenario", "floor", "control", "control ratio", "spendgate", "added", "ratio",
            "event loop: floor / spendgate", "its ratio (control)"] + (
        ["before", "added before", "ratio before"] if before else [])
    for col in cols:
        t.add_column(col, justify="left" if col == "scenario" else "right")
    labels = {"c1": "100 KB request, 1 in flight (per request; floor: plain)",
              "stream": "SSE stream, 180-byte deltas (per event; floor: plain-stream)",
              "bulk": "bulk stream, 16 KB deltas (per MB; floor: plain-stream)"}
    for s, label in labels.items():
        f = fig.get(s)
        if not f:
            continue
        per = f["per_unit"]
        control = next((per[k] for k in ("control", "control-stream") if k in per), None)
        cells = [label, f"{per[f['floor']]:,}", f"{control:,}" if control is not None else "-",
                 f"{f.get('control_ratio', '-')}", f"{per['spendgate']:,}", f"{f['added']:+,}", f"{f['ratio']}"]
        loop = f.get("event_loop_per_unit") or {}
        cells += [f"{loop.get(f['floor'], 0):,} / {loop.get('spendgate', 0):,}",
                  f"{f.get('event_loop_ratio') or '-'} ({f.get('event_loop_control_ratio') or '-'})"]
        if before:
            cells += [f"{per.get('before', 0):,}", f"{f.get('before_added', 0):+,}", f"{f.get('before_ratio', '-')}"]
        t.add_row(*cells)
    console.print(t)
