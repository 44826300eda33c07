"""CPU time per request of each mitmdump process: robust on a shared, loaded machine.

Wall-clock ratios swing with whatever else runs on the box; the CPU time a process spends per
request does not (much). It is read from every thread's nanosecond counter
(``/proc/PID/task/*/schedstat``), so spendgate's meter and ledger threads count too, or, when a
thread took its time away, from ``/proc/PID/stat`` (10 ms ticks: 250 µs per request over 40).
Each round of a scenario is one window in which every proxy takes CHUNKS turns, the order
reversed each turn, so a machine that slows down for a second does so for all of them; the window
ends with a settle pause long enough for spendgate's batched background work (meter worker 50 ms,
ledger commits every COMMIT_INTERVAL, 2 s) to be done and counted, and idle time is counted alike for every
proxy; rows spendgate's writer holds for a later commit (ledger.HOLD_ROWS) are committed before
each pause (`commit_held`), so each window pays for its own. Figures are medians of rounds, with
`paired` (the median of each round's own difference) beside them, and a second plain mitmdump is
measured as a control: the plain-vs-control difference is the noise floor of the figure.

    scripts/bench --cpu             # only these figures, about a minute
    scripts/bench --cpu --profile   # and a cProfile of spendgate's event-loop thread (top functions)

Scenarios: 100 KB agent bodies at 1 and 10 in flight, a 5 MB body (added cost must not grow
with the body), a 2,000-event SSE stream (CPU per event) and bulk streams of 16 KB deltas (CPU per MB);
`--only laptop`: 100 KB bodies one a second, every proxy at once (a laptop's pace, where timers
and per-commit costs weigh on each request). The 100 KB and 5 MB scenarios also run a window a
quarter the size each round: the difference is what one more request costs (`marginal`), free of
what a window costs whatever it holds, which weighs ten times more on each of the 5 MB window's
40 requests than on the 100 KB window's 400.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pstats
import ssl
import statistics
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spendgate import threadnames
from spendgate.store.ledger import COMMIT_INTERVAL

log = logging.getLogger("bench")

CLK_TCK = os.sysconf("SC_CLK_TCK")
CHUNKS = 8  # turns each proxy takes in a window, alternating (ABBA) with the others
# > meter batch (0.05 s) + ledger commit interval + a commit: the window's last commit is counted in it
SETTLE_S = COMMIT_INTERVAL + 0.5


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid`, living and exited, in seconds (resolution 1 / CLK_TCK:
    10 ms, so 250 µs per request over 40 requests)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()  # after "(comm) ": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """thread id -> nanoseconds it has run on a CPU (``/proc/PID/task/TID/schedstat``, field 1):
    exact to the nanosecond, but a thread that exits takes its time with it."""
    out: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # the thread ended while we read
    return out


def loop_switches(pid: int) -> int:
    """Voluntary context switches of `pid`'s main thread (mitmdump's event loop) so far
    (``/proc/PID/task/PID/status``): each is a time it blocked, on `select` with nothing to do, or
    on the GIL or a lock another thread held. Plain mitmdump has no other thread; spendgate's count
    less plain's is its loop's waits for its own threads, net of the `select` waits a busier loop
    skips (it finds the next request already there), so it can read below zero."""
    for line in Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise ValueError(f"no voluntary_ctxt_switches for {pid}")


def thread_names(pid: int, tids: Any) -> dict[int, str]:
    """thread id -> the group its CPU is shown under: "event loop" for the main thread (mitmdump's
    asyncio loop), else the name the OS shows (spendgate.threadnames: sg-meter, sg-ledger, ...),
    "other" for threads left unnamed (mitmproxy's, DuckDB's, ended ones)."""
    out: dict[int, str] = {}
    for tid in tids:
        if tid == pid:
            out[tid] = "event loop"
            continue
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            comm = ""
        out[tid] = comm if comm.startswith(threadnames.OS_PREFIX) else "other"
    return out


class CpuClock:
    """CPU seconds a process spent between its creation and `stop()`: the sum of the nanosecond
    per-thread counters, unless a thread took its time away (one seen at the start is gone, or the
    process's tick counter, which keeps exited threads' time, ran more than two ticks ahead: a
    thread both started and ended in between); then the tick counter."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ticks0 = cpu_seconds(pid)
        self.ns0 = thread_cpu_ns(pid)
        self.ns1: dict[int, int] = {}

    def stop(self) -> tuple[float, str]:
        """(CPU seconds, "ns" or "ticks": which counter measured them)."""
        ns1, ticks = thread_cpu_ns(self.pid), cpu_seconds(self.pid) - self.ticks0
        self.ns1 = ns1
        exact = (sum(ns1.values()) - sum(self.ns0.values())) / 1e9
        if self.ns0 and set(self.ns0) <= set(ns1) and ticks - exact <= 2 / CLK_TCK:
            return exact, "ns"
        return ticks, "ticks"

    def by_thread(self) -> dict[str, float]:
        """After `stop()`: CPU seconds per thread group (thread_names) from the nanosecond counters
        of the threads alive at both ends (a thread that ended took its time with it)."""
        groups = thread_names(self.pid, self.ns1)
        out: dict[str, float] = {}
        for tid, ns in self.ns1.items():
            if tid in self.ns0:
                out[groups[tid]] = out.get(groups[tid], 0.0) + (ns - self.ns0[tid]) / 1e9
        return out


THREADS_OF = ("spendgate", "before")  # proxies whose CPU is also shown per thread (spendgate.threadnames)
STREAMED = ("stream", "bulk")  # measured against the streaming floor (plain-stream), not plain


@dataclass(frozen=True)
class CpuPlan:
    rounds: int = 5
    c1_requests: int = 400
    c10_per_conn: int = 60
    big_requests: int = 40  # 5 MB bodies
    big_bytes: int = 5 * 1024 * 1024
    stream_events: int = 2000
    streams: int = 2
    bulk_bytes: int = 16 * 1024 * 1024  # per bulk stream: 16 KB text deltas, as many as bench's bulk row
    bulk_streams: int = 2
    # a laptop's pace: 100 KB requests one every laptop_gap_s seconds (only when named: --only laptop,
    # a window takes ~laptop_requests * laptop_gap_s seconds per proxy); idle timers count per request
    laptop_requests: int = 16
    laptop_gap_s: float = 1.0
    only: tuple[str, ...] = ()  # scenario names to run (empty: all but OPT_IN); scripts/bench --cpu --only c1,stream
    opt_in: bool = False  # with no `only`: the OPT_IN scenarios too (the smoke run: every scenario, briefly)


CPU_SMOKE = CpuPlan(rounds=1, c1_requests=20, c10_per_conn=3, big_requests=4, big_bytes=512 * 1024,
                    stream_events=50, streams=1, bulk_bytes=512 * 1024, bulk_streams=1, laptop_requests=3,
                    laptop_gap_s=0.2, opt_in=True)  # fmt: skip
OPT_IN = ("laptop",)  # scenarios run only when --only names them (minutes long)


def scenarios(bench_mod: Any, plan: CpuPlan, ctx: ssl.SSLContext) -> dict[str, Scenario]:
    """name -> its Scenario (a runner(port, n) doing n units of work on one proxy, and its count)."""
    b = bench_mod
    req = b.http_request(b.agent_body(False))
    sessions: dict[tuple[int, bool], Any] = {}  # per proxy port: a resent conversation, new sessions
    sreq = b.http_request(b.agent_body(True, 2000), f"sse:{plan.stream_events}:0")
    breq = b.http_request(b.agent_body(True, 2000), f"bulk:{plan.bulk_bytes}")

    async def c1(port: int, n: int) -> int:
        c = await b.Conn.open(port, ctx)
        try:
            for _ in range(n):
                await c.exchange(req)
        finally:
            c.close()
        return n

    async def laptop(port: int, n: int) -> int:
        c = await b.Conn.open(port, ctx)
        try:
            for _ in range(n):
                await c.exchange(req)
                await asyncio.sleep(plan.laptop_gap_s)
        finally:
            c.close()
        return n

    async def c10(port: int, n: int) -> int:
        conns = [await b.Conn.open(port, ctx) for _ in range(10)]

        async def worker(c) -> None:
            for _ in range(n):
                await c.exchange(req)

        try:
            await asyncio.gather(*(worker(c) for c in conns))
        finally:
            for c in conns:
                c.close()
        return 10 * n

    def body5m(fresh: bool) -> Any:
        async def run(port: int, n: int) -> int:
            if (port, fresh) not in sessions:
                sessions[port, fresh] = b.Conversation(plan.big_bytes, fresh)
            conversation = sessions[port, fresh]
            c = await b.Conn.open(port, ctx)
            try:
                for _ in range(n):
                    await c.exchange(conversation())
            finally:
                c.close()
            return n

        return run

    async def stream(port: int, n: int) -> int:
        c = await b.Conn.open(port, ctx)
        try:
            for _ in range(n):
                await c.exchange(sreq, lambda data, now: None)
        finally:
            c.close()
        return n * plan.stream_events

    async def bulk(port: int, n: int) -> float:
        """n bulk streams; units are MB received (the bench's bulk row, as CPU rather than MB/s)."""
        got = [0]

        def count(data: bytes, now: int) -> None:
            got[0] += len(data)

        c = await b.Conn.open(port, ctx)
        try:
            for _ in range(n):
                await c.exchange(breq, count)
        finally:
            c.close()
        return got[0] / 1e6

    return {"c1": Scenario(c1, "request", plan.c1_requests), "c10": Scenario(c10, "request", plan.c10_per_conn),
            "body_5mb": Scenario(body5m(False), "request", plan.big_requests),
            "body_5mb_fresh": Scenario(body5m(True), "request", plan.big_requests),
            "stream": Scenario(stream, "event", plan.streams),
            "bulk": Scenario(bulk, "MB", plan.bulk_streams),
            "laptop": Scenario(laptop, "request", plan.laptop_requests, together=True)}  # fmt: skip


@dataclass(frozen=True)
class Scenario:
    runner: Any  # async (port, n) -> units of work done: requests (c10: n per connection, 10 n in all), events or MB
    unit: str  # what one unit is: "request", "event" or "MB"
    count: int  # n per proxy and round, run in up to CHUNKS turns
    together: bool = False  # every proxy at once (`side_by_side`), not in turns: paced work that idles between units


def takes_part(scenario: str, name: str, names: Any) -> bool:
    """Whether proxy `name` is measured in `scenario`: the stream against the streaming floor
    (plain-stream, as plain buffers SSE) and only for it and spendgate; the rest without plain-stream."""
    if scenario in STREAMED:
        return name not in ("control", "dispatch") and (name != "plain" or "plain-stream" not in names)
    return name != "plain-stream"


Window = dict[str, tuple[float, int, str, dict[str, float], int]]


async def interleaved(proxies: dict[str, Any], runner: Any, count: int) -> Window:
    """name -> (CPU seconds, units of work, the counter that measured them: CpuClock.stop, CPU
    seconds per thread group: CpuClock.by_thread, how often its event loop blocked: loop_switches)
    of each proxy over one window in which every proxy did `count` in up to CHUNKS turns, the order
    reversed each turn (ABBA), then a settle pause: a machine that slows down or speeds up during
    the window does so for all of them alike. The blocks are counted over each proxy's own turns
    only: while the others take theirs (or in the settle pauses) a loop sleeps, and an idle loop's
    timers (mitmproxy's script watcher wakes a proxy started with -s once a second) are not waits."""

    async def turns() -> tuple[dict[str, int], dict[str, int]]:
        units = dict.fromkeys(proxies, 0)
        blocked = dict.fromkeys(proxies, 0)
        n_turns = max(1, min(CHUNKS, count))
        names = list(proxies)
        for turn in range(n_turns):
            n = count // n_turns + (1 if turn < count % n_turns else 0)
            for name in names if turn % 2 == 0 else reversed(names):
                pid = proxies[name].proc.pid
                before = loop_switches(pid)
                units[name] += await runner(proxies[name].port, n)
                blocked[name] += loop_switches(pid) - before
        return units, blocked

    return await _window(proxies, turns)


async def side_by_side(proxies: dict[str, Any], runner: Any, count: int) -> Window:
    """`interleaved`'s figures for work paced by the client (a request a second): every proxy at
    once, as the load is light, so each one's idle timers are counted over its own pace only (in
    turns a proxy would idle through the others' turns too). The loop's blocks are counted over
    the whole work: for paced work they are mostly its idle waits, so not the waits for its threads."""

    async def together() -> tuple[dict[str, int], dict[str, int]]:
        before = {name: loop_switches(p.proc.pid) for name, p in proxies.items()}
        done = await asyncio.gather(*(runner(p.port, count) for p in proxies.values()))
        return (dict(zip(proxies, done, strict=True)),
                {name: loop_switches(p.proc.pid) - before[name] for name, p in proxies.items()})

    return await _window(proxies, together)


async def _window(proxies: dict[str, Any], work: Any) -> Window:
    """Each proxy's CPU over `work()` (which returns each one's units and loop blocks) and a settle
    pause after it. What earlier work left behind is committed and settled first, not counted; this
    window's held rows are committed inside it (`commit_held`)."""
    commit_held(proxies.values())
    await asyncio.sleep(SETTLE_S)
    clocks = {name: CpuClock(p.proc.pid) for name, p in proxies.items()}
    units, blocked = await work()
    commit_held(proxies.values())
    await asyncio.sleep(SETTLE_S)
    out = {}
    for name, clock in clocks.items():
        seconds, counter = clock.stop()
        out[name] = seconds, units[name], counter, clock.by_thread(), blocked[name]
    return out


HELD_COMMIT_FAILURES = [0]  # commit_held calls that failed this run (in the figures: the smoke test wants 0)


def commit_held(proxies: Any) -> None:
    """Have each spendgate commit the rows its ledger writer holds (ledger.HOLD_ROWS: a few rows
    wait up to MAX_HOLD seconds for a commit), as any admin API read does: an authenticated
    `GET /api/ledger?limit=1` on the gateway's own loopback port, found in its discovery file.
    So a window pays for the commit of its own rows, not for the last window's. Costs spendgate's
    admin thread one small query per window, counted against it."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    for p in proxies:
        if not getattr(p, "addon", False) or p.ledger is None:
            continue
        try:
            found = json.loads(Path(str(p.ledger) + ".gateway.json").read_text())
            req = urllib.request.Request(found["url"] + "/api/ledger?limit=1",
                                         headers={"Authorization": f"Bearer {found['token']}"})
            with opener.open(req, timeout=10) as answer:
                answer.read()
        except (OSError, ValueError, KeyError) as e:
            HELD_COMMIT_FAILURES[0] += 1
            log.warning("%s: could not have its held rows committed (%s); its window may count another's commit",
                        p.name, e)


async def _warm(bench_mod: Any, port: int, ctx: ssl.SSLContext) -> None:
    c = await bench_mod.Conn.open(port, ctx)
    try:
        for _ in range(20):
            await c.exchange(bench_mod.http_request(bench_mod.agent_body(False)))
    finally:
        c.close()


def run_cpu(bench_mod: Any, plan: CpuPlan, ctx: ssl.SSLContext, proxies: dict[str, Any]) -> dict[str, Any]:
    """CPU µs per unit for each proxy and scenario; `proxies` maps plain / control / spendgate (and
    optionally plain-stream, the streaming floor) to started bench.Proxy objects. Each round is one
    interleaved window per scenario (interleaved). Figures are medians over rounds; `paired_us` is
    the median of each round's own difference, in which the drift between rounds cancels."""
    scen = {k: v for k, v in scenarios(bench_mod, plan, ctx).items()
            if k in plan.only or (not plan.only and (plan.opt_in or k not in OPT_IN))}
    for p in {id(p): p for p in proxies.values()}.values():
        asyncio.run(_warm(bench_mod, p.port, ctx))
    samples: dict[str, dict[str, list[float]]] = {s: {n: [] for n in proxies} for s in scen}
    # a smaller window beside the full one (MARGINAL): (CPU seconds, units) of each, per proxy and round
    sizes: dict[str, dict[str, list[tuple[tuple[float, int], tuple[float, int]]]]] = {
        s: {n: [] for n in proxies} for s in scen if s in MARGINAL and small_count(scen[s].count)}
    threads: dict[str, dict[str, list[dict[str, float]]]] = {s: {n: [] for n in THREADS_OF} for s in scen}
    blocked: dict[str, dict[str, list[float]]] = {s: {n: [] for n in proxies} for s in scen}
    counters = {"ns": 0, "ticks": 0}  # how many measurements each counter made (printed with the table)
    for r in range(plan.rounds):
        for s, sc in scen.items():
            taking = {n: p for n, p in proxies.items() if takes_part(s, n, proxies)}
            small = _measure(bench_mod, sc, taking, small_count(sc.count)) if s in sizes and r % 2 else None
            window = _measure(bench_mod, sc, taking, sc.count)  # (the small window first every other round)
            if s in sizes:
                small = small or _measure(bench_mod, sc, taking, small_count(sc.count))
                for name in window:
                    sizes[s][name].append((small[name][:2], window[name][:2]))
                    counters[small[name][2]] += 1
            for name, (cpu, units, counter, groups, blocks) in window.items():
                samples[s][name].append(cpu / units * 1e6)
                blocked[s][name].append(blocks / units)
                counters[counter] += 1
                if name in threads[s]:
                    threads[s][name].append({g: sec / units * 1e6 for g, sec in groups.items()})
    out: dict[str, Any] = {"plan": plan.__dict__, "clk_tck": CLK_TCK, "counters": counters,
                           "held_commit_failures": HELD_COMMIT_FAILURES[0]}
    for s, per in samples.items():
        med = {n: round(statistics.median(v), 2) for n, v in per.items() if v}
        floor = "plain-stream" if s in STREAMED and "plain-stream" in med else "plain"
        fig: dict[str, Any] = {"unit": scen[s].unit, "us": med,
                               "rounds": {n: [round(x, 1) for x in v] for n, v in per.items() if v}}
        if floor in med and "spendgate" in med:
            fig["added_us"] = round(med["spendgate"] - med[floor], 2)
            fig["paired_us"] = paired(per["spendgate"], per[floor])
            fig["ratio"] = round(med["spendgate"] / med[floor], 3) if med[floor] else float("nan")
            fig["added_share"] = round(fig["added_us"] / med[floor], 3) if med[floor] else float("nan")
        if "dispatch" in med and "spendgate" in med and s not in STREAMED:  # spendgate's own hooks, like for like
            fig["like_added_us"] = round(med["spendgate"] - med["dispatch"], 2)
        fig["threads_us"] = {n: thread_medians(rounds) for n, rounds in threads[s].items() if rounds}
        # how often each event loop blocked per unit: spendgate's less the floor's is, net of the
        # select waits a busier loop skips, its waits for its own threads (loop_switches;
        # docs/architecture.md, issue 18, twenty-fourth part)
        fig["loop_blocked"] = {n: round(statistics.median(v), 3) for n, v in blocked[s].items() if v}
        if floor in med and "before" in med:
            fig["before_added_us"] = round(med["before"] - med[floor], 2)
        if "control" in med and "plain" in med and s not in STREAMED:
            fig["control_added_us"] = round(med["control"] - med["plain"], 2)
            fig["control_paired_us"] = paired(per["control"], per["plain"])
            fig["control_ratio"] = round(med["control"] / med["plain"], 3) if med["plain"] else float("nan")
        if s in sizes:
            fig.update(marginal(sizes[s]))
        out[s] = fig
    if "c1" in out and "body_5mb" in out and "added_us" in out["c1"] and "added_us" in out["body_5mb"]:
        out["added_5mb_minus_100kb_us"] = round(out["body_5mb"]["added_us"] - out["c1"]["added_us"], 1)
        # (a floor of 1 us keeps the quotient finite when a tiny run measures no added cost at all)
        out["size_ratio"] = round(out["body_5mb"]["added_us"] / max(out["c1"]["added_us"], 1.0), 3)
    if "marginal_added_us" in out.get("c1", {}) and "marginal_added_us" in out.get("body_5mb", {}):
        out.update(size_judgement(out["c1"], out["body_5mb"]))
    return out


SIZE_LIMIT = 1.5  # the target: one more 5 MB request adds at most this times what one more 100 KB one adds


def size_judgement(small: dict[str, Any], big: dict[str, Any]) -> dict[str, Any]:
    """The quotient of the added CPU of one more 5 MB request over one more 100 KB request, and
    whether this run can tell it: the control's own 5 MB slope (plain against plain) must have
    moved by less than the margin the target leaves, (SIZE_LIMIT - 1) x the 100 KB figure, and both
    figures must be above zero. Otherwise `marginal_size_judged` is NaN, a miss: a reading inside
    the noise, a negative one included, is not a pass."""
    base, added = small["marginal_added_us"], big["marginal_added_us"]
    ratio = round(added / max(base, 1.0), 3)
    noise = abs(big.get("marginal_control_us", float("inf")))
    precise = base > 0 and added > 0 and noise <= (SIZE_LIMIT - 1) * base
    return {"marginal_size_ratio": ratio, "marginal_size_precise": precise,
            "marginal_size_judged": ratio if precise else float("nan")}


def _measure(bench_mod: Any, sc: Scenario, taking: dict[str, Any], count: int) -> Window:
    """One window of `count` units of scenario `sc` on the proxies `taking`."""
    return asyncio.run(asyncio.wait_for((side_by_side if sc.together else interleaved)(
        taking, sc.runner, count), bench_mod.STEP_TIMEOUT * len(taking)))


MARGINAL = ("c1", "body_5mb")  # scenarios also measured in a window a quarter the size (`marginal`)


def small_count(count: int) -> int:
    """The smaller window's count for `marginal`: a quarter (0: too few units to take a slope)."""
    return count // 4 if count >= 4 else 0  # (both windows take CHUNKS turns from 32 units up, as in
    # the full plan; in the smoke plan's few units the small one takes fewer, each with its connection)


def marginal(per: dict[str, list[tuple[tuple[float, int], tuple[float, int]]]]) -> dict[str, Any]:
    """What one more unit costs each proxy: per round, (CPU of the full window - CPU of the small
    one) / (their difference in units), in µs; medians over rounds. Whatever a window costs however
    many units it holds (its settle pauses' timers, the commit `commit_held` forces, a read of the
    admin API) cancels out, so a 5 MB window's 40 requests and a 100 KB window's 400 carry none of
    it. `marginal_added_us`: the median of each round's spendgate - plain (`control`: control - plain)."""
    slopes = {name: [(big[0] - small[0]) / (big[1] - small[1]) * 1e6 for small, big in rounds]
              for name, rounds in per.items() if rounds}
    fig: dict[str, Any] = {"marginal_us": {n: round(statistics.median(v), 2) for n, v in slopes.items()}}
    if "plain" in slopes:
        for who, key in (("spendgate", "marginal_added_us"), ("control", "marginal_control_us")):
            if who in slopes:
                fig[key] = paired(slopes[who], slopes["plain"])
    return fig


def thread_medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Per thread group, the median over rounds of its CPU µs per unit (0 in a round it did not run)."""
    groups = sorted({g for r in rounds for g in r})
    return {g: round(statistics.median(r.get(g, 0.0) for r in rounds), 1) for g in groups}


def paired(a: list[float], b: list[float]) -> float:
    """Median over rounds of a - b, each round's two values measured in the same window."""
    return round(statistics.median(x - y for x, y in zip(a, b, strict=True)), 2)


def print_cpu(cpu: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    console.width = max(console.width, 150)

    t = Table(title="CPU time per unit of work (all threads of each mitmdump; median of rounds)", header_style="bold")
    before = any("before" in (cpu.get(s) or {}).get("us", {}) for s in cpu if isinstance(cpu.get(s), dict))
    cols = ["scenario", "plain", "plain (control)", "spendgate", "added", "added / plain", "control - plain",
            "added, paired", "control, paired"]
    same = any("dispatch" in (cpu.get(s) or {}).get("us", {}) for s in ("c1", "c10", "body_5mb"))
    if same:
        cols += ["plain, spendgate's dispatch", "added over it"]
    if before:
        cols += ["before (--against)", "added before"]
    for col in cols:
        t.add_column(col, justify="left" if col == "scenario" else "right")
    labels = {"c1": "100 KB, 1 in flight (µs/req)", "c10": "100 KB, 10 in flight (µs/req)",
              "body_5mb": "5 MB body, next turn (µs/req)", "body_5mb_fresh": "5 MB body, new session (µs/req)",
              "stream": "SSE stream (µs/event; floor: plain-stream)",
              "bulk": "bulk stream, 16 KB deltas (µs/MB; floor: plain-stream)",
              "laptop": "100 KB, one a second (µs/req)"}  # fmt: skip
    for s, label in labels.items():
        f = cpu.get(s)
        if not f:
            continue
        us = f["us"]
        plain = us.get("plain-stream") if s in STREAMED else us.get("plain")
        cells = [label, f"{plain}", f"{us.get('control', '-')}", f"{us.get('spendgate')}", f"{f.get('added_us')}",
                 f"{f.get('added_share')}", f"{f.get('control_added_us', '-')}", f"{f.get('paired_us', '-')}",
                 f"{f.get('control_paired_us', '-')}"]
        if same:
            cells += [f"{us.get('dispatch', '-')}", f"{f.get('like_added_us', '-')}"]
        if before:
            cells += [f"{us.get('before', '-')}", f"{f.get('before_added_us', '-')}"]
        t.add_row(*cells)
    console.print(t)
    print_threads(cpu, labels, console)
    counters = cpu.get("counters") or {}
    if counters.get("ticks"):
        console.print(f"{counters['ticks']} of {sum(counters.values())} measurements fell back to 10 ms ticks "
                      "(a thread ended while they ran)")
    if "added_5mb_minus_100kb_us" in cpu:
        console.print(f"added CPU at 5 MB minus added CPU at 100 KB: {cpu['added_5mb_minus_100kb_us']} µs "
                      f"(per window; quotient {cpu['size_ratio']})")
    for s, label in (("c1", "100 KB"), ("body_5mb", "5 MB")):
        f = cpu.get(s) or {}
        if "marginal_added_us" in f:
            console.print(f"one more {label} request: spendgate {f['marginal_added_us']:+} µs over plain "
                          f"(control {f.get('marginal_control_us', '-')}; plain {f['marginal_us'].get('plain')} µs)")
    if "marginal_size_ratio" in cpu:
        judged = "" if cpu["marginal_size_precise"] else (
            "; not judged: a figure at or below zero, or the control's own 5 MB slope moved by more than the "
            "margin the target leaves, so the run cannot tell")
        console.print(f"added CPU of one more 5 MB request / of one more 100 KB request: {cpu['marginal_size_ratio']} "
                      f"(target <= {SIZE_LIMIT}{judged})")


def print_threads(cpu: dict[str, Any], labels: dict[str, str], console: Any) -> None:
    """spendgate's CPU per unit split by thread: the event loop's share is what limits throughput
    (the other threads run beside it on another core, save for the GIL they hold), and how often
    the loop blocked per unit beside the floor's count (loop_switches: the difference is, net, its
    waits for its own threads)."""
    from rich.table import Table

    rows = [(s, name, f["threads_us"][name]) for s in labels if (f := cpu.get(s))
            for name in THREADS_OF if name in f.get("threads_us", {})]
    if not rows:
        return
    groups = ["event loop", *sorted({g for *_, per in rows for g in per} - {"event loop", "other"}), "other"]
    t = Table(title="spendgate's CPU time per unit by thread (threads alive through the window; median of rounds)",
              header_style="bold")
    for col in ("scenario", "proxy", *groups, "loop blocked / unit (floor)"):
        t.add_column(col, justify="left" if col in ("scenario", "proxy") else "right")
    for s, name, per in rows:
        counts = cpu[s].get("loop_blocked", {})
        floor = "plain-stream" if s in STREAMED and "plain-stream" in counts else "plain"
        blocked = f"{counts[name]} ({counts.get(floor, '-')})" if name in counts else "-"
        t.add_row(labels[s], name, *(f"{per[g]}" if g in per else "-" for g in groups), blocked)
    console.print(t)


# ---------------------------------------------------------------------------------------------
# --profile: cProfile over spendgate's event-loop thread


PROFILE_BOOT = """\
import cProfile, signal, sys
from mitmproxy.tools.main import mitmdump
prof = cProfile.Profile()
out = sys.argv.pop(1)
sys.argv[0] = "mitmdump"
prof.enable()
try:
    mitmdump()
except SystemExit:
    pass
finally:
    prof.disable()
    prof.dump_stats(out)
"""


def profile_command(cmd: list[str], out: Path) -> list[str]:
    """The mitmdump command `cmd` run under cProfile (main thread: the event loop) into `out`."""
    import sys

    return [sys.executable, "-c", PROFILE_BOOT, str(out), *cmd[1:]]


def print_profile(path: Path, console: Any, top: int = 40) -> None:
    import io

    buf = io.StringIO()
    st = pstats.Stats(str(path), stream=buf)
    st.sort_stats("tottime").print_stats(top)
    print(buf.getvalue())
    buf = io.StringIO()
    st = pstats.Stats(str(path), stream=buf)
    st.sort_stats("cumulative").print_stats(r"spendgate|addons", top)
    print(buf.getvalue())


def wait_file(path: Path, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return True
        time.sleep(0.05)
    return False
