"""spendgate next to plain mitmdump, in one run: latency, throughput, streams, admission, ledger, memory.

    scripts/bench                 # the full run (about 3-5 minutes on 2 cores)
    scripts/bench --smoke         # seconds: every figure, tiny sizes (what CI runs)
    scripts/bench --out FILE      # JSON destination (default bench-results/bench-<time>.json)
    scripts/bench --cpu           # CPU time per request only (see scripts/bench_cpu.py)
    scripts/bench --cpu --against ../other-checkout   # before/after in one run
    scripts/bench --startup [--against DIR] [--rounds N]   # start-up only: plain mitmdump and each start
                                  # (empty ledger, largest ledger, big policy first start / restart), alternating
    scripts/bench --instructions [--against DIR]   # instructions per unit under callgrind: noise-free
                                  # (see scripts/bench_instructions.py; needs valgrind)

Both proxies are the same mitmdump binary with the same mode and options; spendgate adds only
``-s addons/gateway.py``. They sit in front of the same fake provider (scripts/bench_upstream.py,
its own process) through the e2e tests' upstream trick, so the load generator speaks HTTPS to
the real provider hostname through each proxy. Scenarios alternate between the proxies round by
round, so drift on a shared machine hits both. Plain mitmdump buffers SSE unless told to stream
(mitmproxy#4469), so the streaming and memory floors use a second plain instance that streams
bodies (``stream_large_bodies=1``): the floor is then a proxy that passes events on as they come.

Only 127.0.0.1 is used; every wait is bounded; all processes started here are stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import compileall
import functools
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import yaml  # noqa: E402

from spendgate.budgets.journal import Journal  # noqa: E402
from spendgate.gateway import Gateway, Settings  # noqa: E402
from spendgate.policy.model import WINDOWS  # noqa: E402
from spendgate.store import rollups  # noqa: E402
from spendgate.store.ledger import COLUMNS, DuckDBLedger, LedgerRow, migrate  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cpu  # noqa: E402
import bench_instructions  # noqa: E402

log = logging.getLogger("bench")

BIN = Path(sys.executable).parent
ADDON = ROOT / "addons" / "gateway.py"
# plain mitmdump with the hook dispatch spendgate installs (addons/dispatch.py): the like-for-like
# floor, so a reader sees what spendgate's own hooks add apart from mitmproxy's dispatch getting cheaper
DISPATCH = ["-s", str(ROOT / "addons" / "dispatch.py")]
HOST = "api.anthropic.com"
PATH = "/v1/messages?beta=true"
BENCH_KEY = "sk-ant-bench-not-a-real-key-000000"  # fingerprinted by spendgate, never stored raw
STEP_TIMEOUT = 120.0  # no single scenario may take longer than this
TURN_WARMUP = 3  # untimed requests on a turn's new connection after a round's first turn
SETTLE_S = 0.05  # pause between a stream's warm-up request and the timed stream


# ---------------------------------------------------------------------------------------------
# Sizes


@dataclass(frozen=True)
class Plan:
    """How much of everything to do; --smoke shrinks it to seconds."""

    rounds: int = 3
    c1_requests: int = 300  # per proxy per round
    c10_requests: int = 60  # per connection per proxy per round
    streams: int = 3  # 2,000-event streams per proxy per round
    stream_events: int = 2000
    event_gap_us: int = 300
    first_events: int = 4  # more time-to-first-event samples per stream, from 20-event streams (a p50 of 9 was noise)
    bulk_bytes: int = 100 * 1024 * 1024
    ledger_sizes: tuple[int, ...] = (0, 1_000_000, 10_000_000)
    admit_calls: int = 5000
    e2e_ledger_requests: int = 200
    writer_rows: int = 200_000
    warmup: int = 30
    turns: int = 6  # the 1- and 10-in-flight requests of a round are sent in this many turns per proxy
    big_requests: int = 10  # 5 MB bodies per proxy per round (added cost must not grow with the body)
    big_bytes: int = 5 * 1024 * 1024
    policy_users: int = 10_000  # start-up with a policy naming this many users
    cpu: bench_cpu.CpuPlan = bench_cpu.CpuPlan()
    instructions: bench_instructions.InstrPlan = bench_instructions.InstrPlan()


SMOKE = Plan(rounds=1, c1_requests=15, c10_requests=3, streams=1, stream_events=50, event_gap_us=0, first_events=1,
             bulk_bytes=2 * 1024 * 1024, ledger_sizes=(0, 10_000, 50_000), admit_calls=200,
             e2e_ledger_requests=10, writer_rows=5_000, warmup=3, big_requests=2, big_bytes=512 * 1024,
             policy_users=200, cpu=bench_cpu.CPU_SMOKE, instructions=bench_instructions.INSTR_SMOKE)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Statistics


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; NaN for no values (reported, never hidden)."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def r3(x: float) -> float:
    return round(x, 3)


# ---------------------------------------------------------------------------------------------
# Request bodies


@functools.cache  # a 5 MB body takes seconds to build (each step measures the whole)
def agent_body(stream: bool, target: int = 100_000) -> bytes:
    """A Claude Code-like /v1/messages body of about `target` bytes: system, tools, a long chat."""
    tools = [{
        "name": f"tool_{i}", "description": f"Tool number {i}: reads, edits or searches files in the workspace. " * 4,
        "input_schema": {"type": "object", "properties": {
            "path": {"type": "string", "description": "absolute path of the file"},
            "pattern": {"type": "string", "description": "a regular expression"},
            "limit": {"type": "integer", "description": "how many lines"}}, "required": ["path"]},
    } for i in range(16)]  # fmt: skip
    # non-ASCII as agents send it (JSON.stringify leaves it as UTF-8; a recorded Codex request has
    # → — ’ …): one such character sends the body through the UTF-8 check's slow path
    system = [{"type": "text", "text": "You are an interactive CLI tool that helps users with software engineering "
                                       "tasks — read → edit → test. " * 60, "cache_control": {"type": "ephemeral"}}]
    body: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 32000, "system": system, "tools": tools,
                            "metadata": {"user_id": "user_bench_account__session_0000"}, "messages": []}
    i, size = 0, len(json.dumps(body))  # what json.dumps(body) measures, kept up to date per message
    while size < target:
        tid = f"toolu_{i:024d}"
        for message in (
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tid,
                                          "content": "def handler(event):\n    return process(event)\n" * 12}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look at the next file to understand the flow."},
                {"type": "tool_use", "id": tid, "name": "tool_3", "input": {"path": f"/src/app/module_{i}.py"}}]},
        ):  # fmt: skip
            size += len(json.dumps(message)) + (2 if body["messages"] else 0)  # ", " before all but the first
            body["messages"].append(message)
        i += 1
    body["messages"].append({"role": "user", "content": "Now fix the failing test."})
    if stream:
        body["stream"] = True
    return json.dumps(body, ensure_ascii=False).encode()


# the headers of every bench request, as Claude Code sends them (lower-cased, as spendgate reads them)
AGENT_HEADERS = {"host": HOST, "content-type": "application/json", "x-api-key": BENCH_KEY,
                 "anthropic-version": "2023-06-01", "user-agent": "claude-cli/2.0.14 (external, cli)",
                 "x-claude-code-session-id": "5e1f0c1e-bench-4c3b-9d4e-000000000000"}  # fmt: skip


def http_request(body: bytes, mode: str = "") -> bytes:
    head = [f"POST {PATH} HTTP/1.1", *(f"{k}: {v}" for k, v in AGENT_HEADERS.items()), f"content-length: {len(body)}"]
    if mode:
        head.append(f"x-bench: {mode}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Conversation:
    """Large requests as an agent sends them: each one resends the session's conversation with one
    more turn (~2 KB), so the bytes before it are the last request's. `fresh`: every request starts
    a new session (its metadata names another one), a body no proxy has seen a prefix of; spendgate
    then reads all of it (metering/providers/prefixes.py)."""

    def __init__(self, size: int, fresh: bool = False) -> None:
        self.base = agent_body(False, size)
        assert self.base.endswith(b"]}"), "messages is the last member of a non-streaming agent body"
        self.fresh, self.sent, self.turns = fresh, 0, b""

    def __call__(self) -> bytes:
        self.sent += 1
        if self.fresh:
            body = self.base.replace(b"session_0000", b"session_%04d" % (self.sent % 10_000), 1)
        else:
            turn = [{"role": "assistant", "content": [{"type": "text", "text": f"Turn {self.sent}: reading — ok."}]},
                    {"role": "user", "content": "def step(state):\n    return advance(state)\n" * 40}]
            self.turns += b"," + json.dumps(turn, ensure_ascii=False).encode()[1:-1]  # its two elements
            body = self.base[:-2] + self.turns + b"]}"
        return http_request(body)


# ---------------------------------------------------------------------------------------------
# A lean HTTPS-through-proxy client (asyncio, keep-alive), so the load generator stays cheap


class ProxyError(RuntimeError):
    pass


_STAMP = re.compile(rb"@(\d+)@")


class Conn:
    """One client connection: CONNECT through the proxy, TLS to the provider name, HTTP/1.1."""

    sent: collections.Counter = collections.Counter()  # proxy port -> requests answered 200

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        self.r, self.w, self.port = reader, writer, port

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext) -> Conn:
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        w.write(f"CONNECT {HOST}:443 HTTP/1.1\r\nhost: {HOST}:443\r\n\r\n".encode())
        head = await r.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise ProxyError(f"CONNECT refused: {head[:80]!r}")
        await w.start_tls(ctx, server_hostname=HOST)
        return cls(r, w, port)

    async def exchange(self, request: bytes, on_chunk: Callable[[bytes, int], None] | None = None) -> int:
        """Send one request, read the whole answer; `on_chunk(data, monotonic_ns)` sees the body."""
        self.w.write(request)
        head = await self.r.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await self.r.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await self.r.readexactly(size + 2)
                if size == 0:
                    break
                if on_chunk:
                    on_chunk(data, time.monotonic_ns())
        else:
            m = re.search(rb"content-length: *(\d+)", lower)
            data = await self.r.readexactly(int(m.group(1))) if m else b""
            if on_chunk and data:
                on_chunk(data, time.monotonic_ns())
        if status != 200:
            raise ProxyError(f"HTTP {status}: {head[:200]!r}")
        Conn.sent[self.port] += 1
        return status

    def close(self) -> None:
        self.w.close()


def client_context(ca_file: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def run_requests(port: int, ctx: ssl.SSLContext, request: bytes | Conversation, conns: int, per_conn: int,
                       warmup: int) -> dict[str, float]:
    """`conns` keep-alive connections, each sending `per_conn` requests back to back (the same
    bytes, or a Conversation's next request each time)."""
    def nxt() -> bytes:
        return request if isinstance(request, bytes) else request()

    clients = [await Conn.open(port, ctx) for _ in range(conns)]
    try:
        await asyncio.gather(*(c.exchange(nxt()) for c in clients for _ in range(1)))
        for _ in range(warmup):
            await clients[0].exchange(nxt())
        latencies: list[float] = []

        async def worker(c: Conn) -> None:
            for _ in range(per_conn):
                req = nxt()
                t = time.perf_counter()
                await c.exchange(req)
                latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        wall = time.perf_counter() - t0
    finally:
        for c in clients:
            c.close()
    return {"latencies": latencies, "wall": wall}


async def run_stream(port: int, ctx: ssl.SSLContext, request: bytes) -> dict[str, Any]:
    """One SSE stream: time to first event and each timed event's transit through the proxy."""
    c = await Conn.open(port, ctx)
    try:
        await c.exchange(http_request(agent_body(False, 200)))  # warm the tunnel to upstream
        # let the warm-up's metering finish first: agents do not send a request the instant the
        # previous answer ends, and the timed stream should not queue behind that bookkeeping
        await asyncio.sleep(SETTLE_S)
        first: list[int] = []
        transits: list[int] = []
        carry = bytearray()

        def on_chunk(data: bytes, now: int) -> None:
            if not first:
                first.append(now)
            buf = bytes(carry) + data
            end = 0
            for m in _STAMP.finditer(buf):
                transits.append(now - int(m.group(1)))
                end = m.end()
            carry[:] = buf[end:][-64:]

        sent = time.monotonic_ns()
        await c.exchange(request, on_chunk)
        done = time.monotonic_ns()
    finally:
        c.close()
    return {"ttfe_ns": first[0] - sent, "transits_ns": transits, "total_ns": done - sent}


async def run_bulk(port: int, ctx: ssl.SSLContext, pid: int, nbytes: int) -> dict[str, float]:
    """Stream ~nbytes of SSE through the proxy, sampling its resident memory meanwhile."""
    c = await Conn.open(port, ctx)
    try:
        await c.exchange(http_request(agent_body(False, 200)))
        before = rss_mb(pid)
        peak = [before]
        got = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                peak[0] = max(peak[0], rss_mb(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def count(data: bytes, now: int) -> None:
            got[0] += len(data)

        t = time.perf_counter()
        try:
            await c.exchange(http_request(agent_body(True, 2000), f"bulk:{nbytes}"), count)
        finally:
            stop.set()
            sampler.join(2)
        wall = time.perf_counter() - t
        peak[0] = max(peak[0], rss_mb(pid))
    finally:
        c.close()
    return {"rss_before_mb": r3(before), "rss_peak_mb": r3(peak[0]), "growth_mb": r3(peak[0] - before),
            "bytes": got[0], "mb_per_s": r3(got[0] / 1e6 / wall)}


def bulk_summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    """One proxy's bulk streams over the rounds: the median throughput, the largest memory growth."""
    return {"mb_per_s": r3(statistics.median(r["mb_per_s"] for r in runs)), "rss_before_mb": runs[0]["rss_before_mb"],
            "growth_mb": max(r["growth_mb"] for r in runs), "rss_peak_mb": max(r["rss_peak_mb"] for r in runs),
            "bytes": min(r["bytes"] for r in runs), "runs_mb_per_s": [r["mb_per_s"] for r in runs]}  # fmt: skip


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ---------------------------------------------------------------------------------------------
# Processes: the fake upstream and the proxies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Upstream:
    proc: subprocess.Popen
    port: int
    ca: Path

    @classmethod
    def start(cls, directory: Path) -> Upstream:
        proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench_upstream.py"), str(directory)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(ROOT))
        line = proc.stdout.readline()  # the upstream prints its port first thing
        if not line:
            proc.kill()
            raise ProxyError("bench upstream did not start")
        info = json.loads(line)
        return cls(proc, info["port"], Path(info["ca"]))

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Proxy:
    """One mitmdump, plain or with the spendgate addon, in front of the bench upstream."""

    name: str
    work: Path
    upstream: Upstream
    confdir: Path
    addon: bool
    ledger: Path | None = None
    policy: Path | None = None
    extra: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen | None = None
    ready_s: float = float("nan")
    profile: Path | None = None  # run under cProfile, stats written here at stop (--profile)
    tree: Path | None = None  # another checkout's addon and code (--against: before/after in one run)
    env: dict[str, str] = field(default_factory=dict)  # added to the environment (SPENDGATE_CACHE_DIR)
    callgrind: bool = False  # run under callgrind, collection off until switched on (--instructions)

    def command(self) -> list[str]:
        cmd = [str(BIN / "mitmdump"), "--listen-host", "127.0.0.1", "-p", str(self.port),
               "--set", f"confdir={self.confdir}", "--mode", f"upstream:http://127.0.0.1:{self.upstream.port}",
               "--set", f"ssl_verify_upstream_trusted_ca={self.upstream.ca}", "--set", "flow_detail=0",
               *self.extra]  # fmt: skip
        if self.addon:
            addon = self.tree / "addons" / "gateway.py" if self.tree else ADDON
            cmd += ["-s", str(addon), "--set", f"spendgate_db={self.ledger}", "--set", f"spendgate_policy={self.policy}",
                    "--set", "spendgate_user=bench"]  # fmt: skip
        if self.callgrind:
            return bench_instructions.under_callgrind(cmd, self.work)
        return bench_cpu.profile_command(cmd, self.profile) if self.profile else cmd

    def start(self, ctx: ssl.SSLContext, timeout: float = 60.0) -> Proxy:
        """Start and wait until a provider request goes through; `ready_s` is the time that took."""
        self.port = free_port()
        self.work.mkdir(parents=True, exist_ok=True)
        logf = open(self.work / f"{self.name}.log", "ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=str(self.work), env={**_clean_env(self.tree), **self.env})
        logf.close()
        probe = http_request(agent_body(False, 300))
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise ProxyError(f"{self.name}: mitmdump exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                asyncio.run(asyncio.wait_for(_probe(self.port, ctx, probe), 5))
                self.ready_s = time.perf_counter() - t0
                return self
            except (OSError, ProxyError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
                time.sleep(0.01)
        self.stop()
        raise ProxyError(f"{self.name}: not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)

    def log_tail(self) -> str:
        try:
            return (self.work / f"{self.name}.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""


async def _probe(port: int, ctx: ssl.SSLContext, request: bytes) -> None:
    c = await Conn.open(port, ctx)
    try:
        await c.exchange(request)
    finally:
        c.close()


def _clean_env(tree: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def make_ca(confdir: Path) -> Path:
    """Create mitmproxy's CA once, before any proxy starts, so parallel starts do not race on it."""
    from mitmproxy.certs import CertStore

    CertStore.from_store(confdir, "mitmproxy", 2048)
    return confdir / "mitmproxy-ca-cert.pem"


def generous_policy(src: Path, dst: Path) -> Path:
    """The example policy with every budget raised to $1e9: nothing is refused mid-bench, yet
    every request still runs the full budget check over the same set of budgets."""
    data = yaml.safe_load(src.read_text())

    def lift(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in WINDOWS and isinstance(v, int | float):
                    node[k] = 1_000_000_000
                else:
                    lift(v)
        elif isinstance(node, list):
            for v in node:
                lift(v)

    for section in ("organization", "defaults", "workspaces", "users", "keys"):
        lift(data.get(section))
    dst.write_text(yaml.safe_dump(data, sort_keys=False))
    return dst


def users_policy(src: Path, dst: Path, users: int) -> Path:
    """`src` with `users` named users, each with their own day budget and every tenth in a workspace."""
    data = yaml.safe_load(src.read_text())
    data["workspaces"] = {f"team{w}": {"members": [f"dev{i}@bench.example" for i in range(w, users, 100)],
                                       "budgets": {"month": 1_000_000_000}} for w in range(0, 100, 10)}  # fmt: skip
    data["users"] = {f"dev{i}@bench.example": {"budgets": {"day": 1_000_000_000}} for i in range(users)}
    dst.write_text(yaml.safe_dump(data, sort_keys=False))
    return dst


# ---------------------------------------------------------------------------------------------
# Ledgers


def make_ledger(path: Path, rows: int, days: int = 60, users: int = 500) -> float:
    """A ledger with `rows` requests spread evenly over the last `days`, in time order (as the
    gateway appends them), built by DuckDB itself in seconds. Returns the seconds it took."""
    t = time.perf_counter()
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    try:
        migrate(con)
        if rows:
            step_us = days * 86400 * 1_000_000 // rows
            cols = ", ".join(f'"{c}"' for c in COLUMNS[:31])  # the first schema's columns; later ones keep defaults
            con.execute(f"""
                INSERT INTO requests ({cols}) SELECT
                  now() - to_microseconds(({rows} - 1 - i) * {step_us}), 'bench' || i,
                  'anthropic', 'messages', 'claude-sonnet-4-5', 'user' || (i % {users}),
                  'sha256:' || lpad(CAST(i % {users + 200} AS VARCHAR), 12, '0'), 'claude-code',
                  'sess' || (i // 50), true, 200, 'ok', false,
                  24000, 3000, 1000, 0, 450, 0, 0, 0.0123, 'genai-prices', 1234.5, 345.6, 'local_user',
                  CASE WHEN i % 3 = 0 THEN 'platform' END, NULL, NULL, 100000, 2000, 0.0123
                FROM range({rows}) t(i)""")  # fmt: skip
            rollups.rebuild(con)  # loaded behind the writer's back: sum it up once
    finally:
        con.close()
    return time.perf_counter() - t


def sample_row(i: int = 0) -> LedgerRow:
    return LedgerRow(
        ts=datetime.now(UTC), request_id=f"bench{i:012d}", provider="anthropic", endpoint="messages",
        model="claude-sonnet-4-5", user="bench", key_fingerprint="sha256:0123456789ab", client="claude-code",
        session_id="5e1f0c1e-bench", stream=True, status=200, outcome="ok", estimated=False, input_tokens=24000,
        cache_read_tokens=3000, cache_write_tokens=1000, cache_write_1h_tokens=0, output_tokens=450,
        reasoning_tokens=0, web_search_requests=0, cost_usd=Decimal("0.0123"), price_source="genai-prices",
        latency_ms=1234.5, ttft_ms=345.6, price_detail='{"lines": []}', bytes_in=100000, bytes_out=2000,
        charged_usd=Decimal("0.0123"),
    )  # fmt: skip


def bench_writer(path: Path, rows: int) -> dict[str, float]:
    """Rows per second DuckDBLedger's writer thread commits (append from this thread, then flush)."""
    batch = [replace(sample_row(), request_id=f"w{i}") for i in range(rows)]
    ledger = DuckDBLedger(path)
    try:
        t = time.perf_counter()
        for row in batch:
            ledger.append(row)
        if not ledger.flush(STEP_TIMEOUT):
            raise ProxyError("ledger writer did not drain")
        wall = time.perf_counter() - t
    finally:
        ledger.close()
    return {"rows": rows, "seconds": r3(wall), "rows_per_s": round(rows / wall)}


def bench_admission(db: Path, policy: Path, calls: int) -> dict[str, float]:
    """In process: the Gateway's start over this ledger, then the per-request costs.

    begin = identity + parsing the 100 KB body; admit = Gateway.admit (estimate, budget check,
    reservation journal); book = BudgetBook.admit alone (the in-memory counters)."""
    t = time.perf_counter()
    gw = Gateway(Settings(db=db, policy=policy, user="bench", admin_port=-1, reload_interval=0))
    init = time.perf_counter() - t
    headers = {"x-api-key": BENCH_KEY, "user-agent": "claude-cli/2.0.14 (external, cli)",
               "content-type": "application/json"}  # fmt: skip
    body = agent_body(False)
    begins, admits, books = [], [], []
    try:
        exs = []
        for _ in range(calls):
            t = time.perf_counter_ns()
            ex = gw.meter.begin(HOST, PATH, headers, body)
            begins.append(time.perf_counter_ns() - t)
            exs.append(ex)
        for ex in exs:
            t = time.perf_counter_ns()
            answer = gw.admission.admit(ex)
            admits.append(time.perf_counter_ns() - t)
            if answer is not None:
                raise ProxyError(f"bench request refused: {answer.body[:200]!r}")
        ident = exs[0].identity
        for _ in range(calls):
            t = time.perf_counter_ns()
            d = gw.book.admit(ident, Decimal("0.01"))
            books.append(time.perf_counter_ns() - t)
            gw.book.settle(d.reservation, Decimal("0.01"))
        for ex in exs:
            gw.meter.finish(ex, None)
        gw.meter.flush(STEP_TIMEOUT)
    finally:
        gw.close()
        Journal.reset(gw.journal_path)  # everything was settled; leave nothing for the next start
    us = 1000.0
    return {"init_s": r3(init), "counters": len(gw.book.store.items()),
            "begin_us_p50": r3(pct(begins, .5) / us), "admit_us_p50": r3(pct(admits, .5) / us),
            "admit_us_p95": r3(pct(admits, .95) / us), "book_admit_us_p50": r3(pct(books, .5) / us),
            "book_admit_us_p95": r3(pct(books, .95) / us)}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The run


class Bench:
    def __init__(self, plan: Plan, work: Path) -> None:
        self.plan = plan
        self.work = work
        self.confdir = work / "mitm"
        self.ca = make_ca(self.confdir)
        self.ctx = client_context(self.ca)
        self.policy = generous_policy(ROOT / "policies" / "example.yaml", work / "bench-policy.yaml")
        self.upstream = Upstream.start(work / "upstream")
        self.proxies: list[Proxy] = []

    def proxy(self, name: str, addon: bool, ledger: Path | None = None, extra: list[str] | None = None,
              policy: Path | None = None, profile: Path | None = None, tree: Path | None = None,
              cache: Path | None = None, callgrind: bool = False) -> Proxy:
        """Start one mitmdump; `cache`: its spendgate cache (policy parses), by default one of this run's
        own, so no figure depends on what an earlier run left in ~/.cache."""
        p = Proxy(name, self.work / name, self.upstream, self.confdir, addon, ledger, policy or self.policy,
                  extra or [], profile=profile, tree=tree,
                  env={"SPENDGATE_CACHE_DIR": str(cache or self.work / "cache" / name)}, callgrind=callgrind)
        self.proxies.append(p)
        return p.start(self.ctx, timeout=600.0 if callgrind else 60.0)  # ~50x slower under valgrind

    def close(self) -> None:
        for p in self.proxies:
            p.stop()
        self.upstream.stop()

    def arun(self, coro: Awaitable) -> Any:
        return asyncio.run(asyncio.wait_for(coro, STEP_TIMEOUT))

    # -- scenarios --
    def ledgers(self) -> dict[str, Any]:
        """Admission and start-up over ledgers of growing size; ledger writer throughput."""
        out: dict[str, Any] = {"sizes": {}}
        for rows in self.plan.ledger_sizes:
            db = self.work / f"ledger-{rows}.duckdb"
            built = make_ledger(db, rows)
            log.info("ledger of %s rows built in %.1fs", f"{rows:,}", built)
            fig = bench_admission(db, self.policy, self.plan.admit_calls)
            gw = self.proxy(f"spendgate-{rows}", True, db)
            fig["ready_s"] = r3(gw.ready_s)
            res = self.arun(run_requests(gw.port, self.ctx, http_request(agent_body(False)), 1,
                                         self.plan.e2e_ledger_requests, self.plan.warmup))
            fig["e2e_p50_ms"] = r3(pct(res["latencies"], .5) * 1000)
            gw.stop()
            out["sizes"][str(rows)] = fig
        out["writer"] = bench_writer(self.work / "writer.duckdb", self.plan.writer_rows)
        return out

    def big_policy(self) -> dict[str, Any]:
        """Start-up with a policy naming `policy_users` users (each with own budgets), empty ledger:
        the first start after the policy changed (its YAML parsed), then a restart (the parse read
        back from the gateway's cache, spendgate.policy.parse_cache); median of each over the rounds,
        each round with a cache of its own (one start is one sample, and single starts swung from
        1.7 to 4.6 s in runs of the same code)."""
        n = self.plan.policy_users
        policy = users_policy(self.policy, self.work / f"policy-{n}-users.yaml", n)
        with mock.patch.dict(os.environ, SPENDGATE_CACHE_DIR="off"):  # the parse itself, not one an earlier run cached
            t = time.perf_counter()
            Gateway.check(Settings(db=self.work / "unused.duckdb", policy=policy))
            check_s = time.perf_counter() - t
        ready: dict[str, list[float]] = {"first": [], "restart": []}
        for rnd in range(self.plan.rounds):
            cache = self.work / "cache" / f"{n}-users-{rnd}"
            for start in ("first", "restart"):
                gw = self.proxy(f"spendgate-{n}-users-{start}-{rnd}", True,
                                self.work / f"users-{n}-{start}-{rnd}.duckdb", policy=policy, cache=cache)
                ready[start].append(gw.ready_s)
                gw.stop()
            if not any((cache / "policy-parsed").iterdir()):
                raise ProxyError(f"the {n}-user policy's parse was not cached in {cache}")
        first, restart = (r3(statistics.median(ready[k])) for k in ("first", "restart"))
        return {"users": n, "check_s": r3(check_s), "ready_s": max(first, restart), "first_s": first,
                "restart_s": restart, "runs_s": {k: [r3(x) for x in v] for k, v in ready.items()}}

    def side_by_side(self) -> dict[str, Any]:
        plan = self.plan
        plain = self.proxy("plain", False)
        control = self.proxy("control", False)  # a second plain mitmdump: plain vs plain is the noise
        plain_stream = self.proxy("plain-stream", False, extra=["--set", "stream_large_bodies=1"])
        # the stream figures' noise: a second plain-stream, measured like the first
        control_stream = self.proxy("control-stream", False, extra=["--set", "stream_large_bodies=1"])
        same = self.proxy("dispatch", False, extra=DISPATCH)  # like for like: plain with spendgate's dispatch
        gw = self.proxy("spendgate", True, self.work / "side-by-side.duckdb")
        out: dict[str, Any] = {"ready_s": {"plain": r3(plain.ready_s), "spendgate": r3(gw.ready_s)}}
        req = http_request(agent_body(False))
        # each proxy its own sessions (spendgate keeps one prefix per caller): resent and new
        big = {name: (Conversation(plan.big_bytes), Conversation(plan.big_bytes, fresh=True))
               for name in ("plain", "spendgate")}
        sreq = http_request(agent_body(True), f"sse:{plan.stream_events}:{plan.event_gap_us}")
        # the same stream asked for with a 2 KB body: plain-stream forwards a body while it still
        # arrives, spendgate must hold all of it for admission; this tells the two costs apart
        small = http_request(agent_body(True, 2000), f"sse:{plan.stream_events}:{plan.event_gap_us}")
        # the first event does not depend on how many follow: short streams give more samples of it
        short = {size: http_request(agent_body(True, size), f"sse:20:{plan.event_gap_us}") for size in (100_000, 2000)}
        samples: dict[str, dict[str, list]] = {k: {"c1": [], "c1_wall": [], "c1_turns": [], "c10": [], "c10_wall": [],
                                                   "c10_turns": [], "ttfe": [],
                                                   "transit": [], "stream_total": [], "ttfe_small": [],
                                                   "big": [], "big_fresh": [], "bulk": []}
                                               for k in ("plain", "control", "dispatch", "spendgate")}  # fmt: skip
        for rnd in range(plan.rounds):
            order = [("plain", plain, plain_stream), ("control", control, control_stream), ("spendgate", gw, gw)]
            if rnd % 2:
                order.reverse()  # ABBA: neither proxy always runs first
            requests = [*order[:2], ("dispatch", same, None), *order[2:]]  # the non-stream rows only
            for conc, conns, per_conn in (("c1", 1, plan.c1_requests), ("c10", 10, plan.c10_requests)):
                # in turns, the order reversed each turn: a machine that slows down for a second
                # slows every proxy alike (one proxy's whole share at a time put 11% between two plains)
                turns = max(1, min(plan.turns, per_conn))
                for turn in range(turns):
                    n = per_conn // turns + (1 if turn < per_conn % turns else 0)
                    for name, p, _ in requests if turn % 2 == 0 else reversed(requests):
                        r = self.arun(run_requests(p.port, self.ctx, req, conns, n,
                                                   plan.warmup if turn == 0 else TURN_WARMUP))
                        samples[name][conc] += r["latencies"]
                        samples[name][f"{conc}_turns"].append(pct(r["latencies"], .5))
                        samples[name][f"{conc}_wall"].append((len(r["latencies"]), r["wall"]))
            for name, p, _ in order:
                if name != "control":
                    for key, conversation in zip(("big", "big_fresh"), big[name]):
                        samples[name][key] += self.arun(run_requests(p.port, self.ctx, conversation, 1,
                                                                     plan.big_requests, 1))["latencies"]
            for _ in range(plan.streams):
                for name, p, ps in order:
                    st = self.arun(run_stream(ps.port, self.ctx, sreq))
                    if len(st["transits_ns"]) != plan.stream_events:
                        raise ProxyError(f"{name}: {len(st['transits_ns'])} of {plan.stream_events} events arrived")
                    samples[name]["ttfe"].append(st["ttfe_ns"])
                    samples[name]["transit"] += st["transits_ns"]
                    samples[name]["stream_total"].append(st["total_ns"])
                    samples[name]["ttfe_small"].append(self.arun(run_stream(ps.port, self.ctx, small))["ttfe_ns"])
                    for _ in range(plan.first_events):
                        for key, size in (("ttfe", 100_000), ("ttfe_small", 2000)):
                            samples[name][key].append(self.arun(run_stream(ps.port, self.ctx, short[size]))["ttfe_ns"])
            for name, _, ps in order:  # one bulk stream each per round: a single one swung 0.7-1.4 between runs
                samples[name]["bulk"].append(self.arun(run_bulk(ps.port, self.ctx, ps.proc.pid, plan.bulk_bytes)))
            log.info("round %d/%d done", rnd + 1, plan.rounds)
        memory = {name: bulk_summary(samples[name]["bulk"]) for name in ("plain", "control", "spendgate")}
        # no ratio of growth: plain's is ~0 MB, a quotient of it says nothing; throughput has one
        memory["ratio"] = {"mb_per_s": r3(ratio(memory["spendgate"]["mb_per_s"], memory["plain"]["mb_per_s"]))}
        memory["control_ratio"] = {"mb_per_s": r3(ratio(memory["control"]["mb_per_s"], memory["plain"]["mb_per_s"]))}
        log.info("CPU per request rounds")
        out["cpu"] = bench_cpu.run_cpu(sys.modules[__name__], plan.cpu, self.ctx,
                                       {"plain": plain, "control": control, "plain-stream": plain_stream,
                                        "dispatch": same, "spendgate": gw})  # fmt: skip
        for p in (plain, control, plain_stream, control_stream, same, gw):
            p.stop()
        out["metering"] = metered(gw)
        out.update(summarize(samples))
        out["memory"] = memory
        return out

    def cpu_only(self, profile: Path | None, against: Path | None = None) -> dict[str, Any]:
        """--cpu: only the CPU-per-request figures (and, with --profile, spendgate under cProfile;
        with --against DIR, spendgate from that checkout as a "before" column)."""
        proxies = {"plain": self.proxy("plain", False), "control": self.proxy("control", False),
                   "plain-stream": self.proxy("plain-stream", False, extra=["--set", "stream_large_bodies=1"]),
                   "dispatch": self.proxy("dispatch", False, extra=DISPATCH),
                   "spendgate": self.proxy("spendgate", True, self.work / "cpu.duckdb", profile=profile)}  # fmt: skip
        if against is not None:
            proxies["before"] = self.proxy("before", True, self.work / "before.duckdb", tree=against)
        try:
            return bench_cpu.run_cpu(sys.modules[__name__], self.plan.cpu, self.ctx, proxies)
        finally:
            for p in proxies.values():
                p.stop()

    def instructions_only(self, against: Path | None = None) -> dict[str, Any]:
        """--instructions: instructions per unit of each proxy under callgrind (bench_instructions)."""
        stream = ["--set", "stream_large_bodies=1"]
        proxies = {"plain": self.proxy("plain", False, callgrind=True),
                   "control": self.proxy("control", False, callgrind=True),
                   "plain-stream": self.proxy("plain-stream", False, extra=stream, callgrind=True),
                   "control-stream": self.proxy("control-stream", False, extra=stream, callgrind=True),
                   "spendgate": self.proxy("spendgate", True, self.work / "instr.duckdb", callgrind=True)}  # fmt: skip
        if against is not None:
            proxies["before"] = self.proxy("before", True, self.work / "before.duckdb", tree=against, callgrind=True)
        try:
            return bench_instructions.run_instructions(sys.modules[__name__], self.plan.instructions, self.ctx, proxies)
        finally:
            for p in proxies.values():
                p.stop()

    def startup_only(self, rounds: int, against: Path | None = None) -> dict[str, Any]:
        """--startup: seconds until a provider request goes through, in alternating rounds, for plain
        mitmdump, spendgate on an empty and on the largest ledger, and with the big policy on its
        first start after an edit (cold cache) and on a restart; with --against DIR the same for
        that checkout. The CPU time of the same start varies through the day on a shared VM, so
        only figures taken side by side in one run compare (issue 18)."""
        plan = self.plan
        large = max(plan.ledger_sizes)
        ledger = self.work / f"ledger-{large}.duckdb"
        log.info("ledger of %s rows built in %.1fs", f"{large:,}", make_ledger(ledger, large))
        policy = users_policy(self.policy, self.work / f"policy-{plan.policy_users}-users.yaml", plan.policy_users)
        trees = {"spendgate": None, **({"before": against} if against is not None else {})}
        ready: dict[str, list[float]] = collections.defaultdict(list)
        for rnd in range(rounds):
            order = list(trees.items())
            if rnd % 2:
                order.reverse()
            p = self.proxy(f"plain-{rnd}", False)
            ready["plain"].append(p.ready_s)
            p.stop()
            for name, tree in order:
                copy = self.work / f"{name}-{rnd}-{large}.duckdb"
                shutil.copyfile(ledger, copy)  # each start its own copy: a start may compact or migrate it
                cache = self.work / "cache" / f"{name}-{rnd}"
                starts = (("empty", self.work / f"{name}-{rnd}-empty.duckdb", self.policy),
                          (f"{large}-rows", copy, self.policy),
                          ("users-first", self.work / f"{name}-{rnd}-users1.duckdb", policy),
                          ("users-restart", self.work / f"{name}-{rnd}-users2.duckdb", policy))  # fmt: skip
                for label, db, pol in starts:
                    gw = self.proxy(f"{name}-{rnd}-{label}", True, db, policy=pol, tree=tree, cache=cache)
                    ready[f"{name} {label}"].append(gw.ready_s)
                    gw.stop()
            log.info("round %d/%d done", rnd + 1, rounds)
        paired = {f"{label} - plain": [a - b for a, b in zip(ready[f"spendgate {label}"], ready["plain"])]
                  for label in (k.removeprefix("spendgate ") for k in ready if k.startswith("spendgate "))}
        if against is not None:  # the same start, this checkout less the other, round by round
            paired |= {f"{label} - before": [a - b for a, b in zip(ready[f"spendgate {label}"], ready[f"before {label}"])]
                       for label in (k.removeprefix("before ") for k in ready if k.startswith("before "))}
        return {"rounds": rounds, "ready_s": {k: {"median": r3(statistics.median(v)), "all": [r3(x) for x in v]}
                                              for k, v in ready.items()},
                "paired_s": {k: {"median": r3(statistics.median(v)), "all": [r3(x) for x in v]}
                             for k, v in paired.items()}}  # fmt: skip


def metered(gw: Proxy) -> dict[str, int]:
    """Did spendgate meter every request it forwarded? (its ledger, read after it stopped)"""
    con = duckdb.connect(str(gw.ledger), read_only=True)
    try:
        rows, ok = con.execute("SELECT count(*), count(*) FILTER (WHERE outcome = 'ok') FROM requests").fetchone()
    finally:
        con.close()
    return {"requests_sent": Conn.sent[gw.port], "rows": rows, "ok_rows": ok}


def turn_ratios(mine: list[float], plain: list[float]) -> dict[str, Any] | None:
    """Per-turn p50 ratios (mine / plain, turn by turn): their median, lowest, highest and count;
    None without turns."""
    ratios = sorted(ratio(a, b) for a, b in zip(mine, plain, strict=True))
    if not ratios:
        return None
    return {"median": r3(statistics.median(ratios)), "min": r3(ratios[0]), "max": r3(ratios[-1]),
            "turns": len(ratios)}


def summarize(samples: dict[str, dict[str, list]]) -> dict[str, Any]:
    """Percentiles per proxy and the spendgate / plain ratios."""
    out: dict[str, Any] = {}
    for conc in ("c1", "c10"):
        fig = {}
        for name, s in samples.items():
            if not s[conc]:
                continue
            n = sum(k for k, _ in s[f"{conc}_wall"])
            wall = sum(w for _, w in s[f"{conc}_wall"])
            fig[name] = {"p50_ms": r3(pct(s[conc], .5) * 1000), "p95_ms": r3(pct(s[conc], .95) * 1000),
                         "rps": round(n / wall, 1) if wall else float("nan"), "requests": n}  # fmt: skip
        fig["ratio"] = {k: r3(ratio(fig["spendgate"][k], fig["plain"][k])) for k in ("p50_ms", "p95_ms", "rps")}
        if "control" in fig:  # plain vs plain: how far apart two identical proxies measure in this run
            fig["control_ratio"] = {k: r3(ratio(fig["control"][k], fig["plain"][k])) for k in ("p50_ms", "p95_ms", "rps")}
        # each turn's p50 against plain's in the same turn (minutes apart at most): whether a ratio
        # is one steady gap or a few slow turns (the p50 at 10 in flight read 1.00-1.26 in runs of one code)
        for who, key in (("spendgate", "turn_p50_ratio"), ("control", "control_turn_p50_ratio")):
            turns = turn_ratios(samples[who][f"{conc}_turns"], samples["plain"][f"{conc}_turns"])
            if turns:
                fig[key] = turns
        if "dispatch" in fig:  # spendgate's own addition: against plain with the same hook dispatch
            fig["like_ratio"] = {k: r3(ratio(fig["spendgate"][k], fig["dispatch"][k])) for k in ("p50_ms", "p95_ms", "rps")}
        out[f"nonstream_{conc}"] = fig
    big = {name: r3(pct(s["big"], .5) * 1000) for name, s in samples.items() if s["big"]}
    fresh = {name: r3(pct(s["big_fresh"], .5) * 1000) for name, s in samples.items() if s["big_fresh"]}
    if "plain" in big and "spendgate" in big:
        c1 = out["nonstream_c1"]
        out["body_5mb"] = {"p50_ms": big, "added_ms": r3(big["spendgate"] - big["plain"]),
                           "added_100kb_ms": r3(c1["spendgate"]["p50_ms"] - c1["plain"]["p50_ms"]),
                           "fresh_p50_ms": fresh, "fresh_added_ms": r3(fresh["spendgate"] - fresh["plain"])}  # fmt: skip
    st: dict[str, Any] = {}
    for name, s in samples.items():
        if not s["ttfe"]:
            continue
        st[name] = {"ttfe_p50_ms": r3(pct(s["ttfe"], .5) / 1e6), "ttfe_p95_ms": r3(pct(s["ttfe"], .95) / 1e6),
                    "ttfe_small_body_p50_ms": r3(pct(s["ttfe_small"], .5) / 1e6),
                    "event_transit_p50_us": r3(pct(s["transit"], .5) / 1e3),
                    "event_transit_p95_us": r3(pct(s["transit"], .95) / 1e3),
                    "stream_total_p50_ms": r3(pct(s["stream_total"], .5) / 1e6),
                    "streams": len(s["stream_total"]), "events": len(s["transit"]),
                    "first_event_samples": len(s["ttfe"])}  # fmt: skip
    st["ratio"] = {k: r3(ratio(st["spendgate"][k], st["plain"][k]))
                   for k in ("ttfe_p50_ms", "ttfe_small_body_p50_ms", "event_transit_p50_us", "event_transit_p95_us")}
    whose = {"": "spendgate", "control_": "control"}  # control: plain-stream's twin, measured alike
    for prefix, who in whose.items():
        for q in ("p50", "p95"):
            st[f"{prefix}added_event_delay_{q}_us"] = r3(st[who][f"event_transit_{q}_us"]
                                                        - st["plain"][f"event_transit_{q}_us"])
    st["control_ratio"] = {k: r3(ratio(st["control"][k], st["plain"][k])) for k in st["ratio"]}
    out["stream"] = st
    return out


# ---------------------------------------------------------------------------------------------
# Targets and output


@dataclass(frozen=True)
class Target:
    name: str
    path: tuple[str, ...]
    op: str  # "<=" or ">="
    limit: float


TARGETS = (  # issue 18's targets; ratios are spendgate / plain mitmdump in the same run
    Target("latency p50 ratio, c=1", ("nonstream_c1", "ratio", "p50_ms"), "<=", 1.10),
    Target("latency p50 ratio, c=10", ("nonstream_c10", "ratio", "p50_ms"), "<=", 1.10),
    Target("throughput ratio, c=1", ("nonstream_c1", "ratio", "rps"), ">=", 0.90),
    Target("throughput ratio, c=10", ("nonstream_c10", "ratio", "rps"), ">=", 0.90),
    Target("time to first event ratio", ("stream", "ratio", "ttfe_p50_ms"), "<=", 1.05),
    Target("bulk stream throughput ratio", ("memory", "ratio", "mb_per_s"), ">=", 0.90),
    Target("added delay per event p50 (us)", ("stream", "added_event_delay_p50_us"), "<=", 15.0),
    # "a 5 MB body costs what a 100 KB one does, within noise": the added CPU of one more 5 MB request
    # over that of one more 100 KB request (bench_cpu.marginal: what a window costs whatever it holds,
    # the settle pauses' timers and the commit it ends with, is not a body's cost; the per-window quotient
    # `size_ratio` spread it over 40 requests at 5 MB and 400 at 100 KB); NaN, a miss, when the run
    # cannot tell (bench_cpu.size_judgement: the control's own slope moved by more than the margin)
    Target("added CPU 5 MB / 100 KB body", ("cpu", "marginal_size_judged"), "<=", bench_cpu.SIZE_LIMIT),
    Target("added CPU / plain CPU, c=1", ("cpu", "c1", "added_share"), "<=", 0.10),
    Target("budget check 10M / 0 rows (flat)", ("admission", "flat_ratio"), "<=", 1.25),
    Target("ready with the largest ledger (s)", ("admission", "ready_largest_s"), "<=", 2.0),
    Target("ready with the big policy (s)", ("policy", "ready_s"), "<=", 2.0),
    Target("RSS growth, 100 MB stream (MB)", ("memory", "spendgate", "growth_mb"), "<=", 20.0),
)


def dig(d: dict, path: tuple[str, ...]) -> Any:
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def check_targets(fig: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for t in TARGETS:
        v = dig(fig, t.path)
        ok = isinstance(v, int | float) and v == v and (v <= t.limit if t.op == "<=" else v >= t.limit)
        out.append({"name": t.name, "value": v, "op": t.op, "limit": t.limit, "holds": bool(ok)})
    return out


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    f = result["figures"]
    meta = result["meta"]
    load = ", ".join(f"{x:.2f}" for x in meta.get("loadavg_start", ())) or "?"
    t = Table(title=f"spendgate vs plain mitmdump ({meta['mode']} run, {meta['cpus']} cores, load at start {load})",
              header_style="bold")
    for col in ("figure", "plain", "plain (control)", "spendgate", "spendgate/plain", "control/plain", "target"):
        t.add_column(col, justify="left" if col == "figure" else "right")
    goal = {tg["name"]: tg for tg in result["targets"]}

    def mark(name: str | None) -> str:
        tg = goal.get(name or "")
        if tg is None:
            return ""
        return f"{tg['op']} {tg['limit']} {'(holds)' if tg['holds'] else '(MISSED)'}"

    def row(label: str, section: str, key: str, target: str | None = None) -> None:
        s = f.get(section) or {}
        rv = s.get("ratio", {}).get(key)
        cv = s.get("control_ratio", {}).get(key)
        ctl = s.get("control", {}).get(key)
        t.add_row(label, f"{s['plain'][key]:,}", "" if ctl is None else f"{ctl:,}", f"{s['spendgate'][key]:,}",
                  "-" if rv is None else f"{rv:.3f}", "" if cv is None else f"{cv:.3f}", mark(target))

    def turns(section: str) -> None:  # the p50 row above, turn by turn: median (lowest-highest) of the turns' ratios
        s = f.get(section) or {}
        cells = {k: f"{v['median']:.3f} ({v['min']:.2f}-{v['max']:.2f})" if (v := s.get(k)) else ""
                 for k in ("turn_p50_ratio", "control_turn_p50_ratio")}
        if cells["turn_p50_ratio"]:
            n = s["turn_p50_ratio"]["turns"]
            t.add_row(f"  p50 ratio per turn, median (range) of {n}", "", "", "", cells["turn_p50_ratio"],
                      cells["control_turn_p50_ratio"], "")

    def like(section: str, key: str) -> None:  # the row above, against plain with spendgate's hook dispatch
        s = f.get(section) or {}
        if "dispatch" in s:
            t.add_row("  same: plain with spendgate's dispatch", f"{s['dispatch'][key]:,}", "",
                      f"{s['spendgate'][key]:,}", f"{s['like_ratio'][key]:.3f}", "", "(like for like)")

    row("latency p50, c=1 (ms)", "nonstream_c1", "p50_ms", "latency p50 ratio, c=1")
    turns("nonstream_c1")
    like("nonstream_c1", "p50_ms")
    row("latency p95, c=1 (ms)", "nonstream_c1", "p95_ms")
    row("requests/s, c=1", "nonstream_c1", "rps", "throughput ratio, c=1")
    like("nonstream_c1", "rps")
    row("latency p50, c=10 (ms)", "nonstream_c10", "p50_ms", "latency p50 ratio, c=10")
    turns("nonstream_c10")
    like("nonstream_c10", "p50_ms")
    row("latency p95, c=10 (ms)", "nonstream_c10", "p95_ms")
    row("requests/s, c=10", "nonstream_c10", "rps", "throughput ratio, c=10")
    like("nonstream_c10", "rps")
    row("time to first event p50 (ms)", "stream", "ttfe_p50_ms", "time to first event ratio")
    row("  same, 2 KB request body (ms)", "stream", "ttfe_small_body_p50_ms")
    row("event transit p50 (us)", "stream", "event_transit_p50_us")
    row("event transit p95 (us)", "stream", "event_transit_p95_us")
    st = f["stream"]
    ctl = f"{st['control_added_event_delay_p50_us']:+} / {st['control_added_event_delay_p95_us']:+}"
    t.add_row("added delay per event p50 / p95 (us)", "", ctl, f"{st['added_event_delay_p50_us']:+} / "
              f"{st['added_event_delay_p95_us']:+}", "", "", mark("added delay per event p50 (us)"))
    row("bulk stream MB/s", "memory", "mb_per_s", "bulk stream throughput ratio")
    row("RSS growth, bulk stream (MB)", "memory", "growth_mb", "RSS growth, 100 MB stream (MB)")
    if "body_5mb" in f:
        b = f["body_5mb"]
        size = f"{meta['plan']['big_bytes'] / 1048576:g} MB"
        t.add_row(f"latency p50, {size} body, next turn (ms)", f"{b['p50_ms']['plain']:,}", "",
                  f"{b['p50_ms']['spendgate']:,}", f"{b['added_ms']:+} ms", "", f"({b['added_100kb_ms']:+} ms at 100 KB)")
        t.add_row(f"  same, a new session's body (ms)", f"{b['fresh_p50_ms']['plain']:,}", "",
                  f"{b['fresh_p50_ms']['spendgate']:,}", f"{b['fresh_added_ms']:+} ms", "", "")
    cpu = f.get("cpu", {})
    for key, label in (("c1", "CPU per request, c=1 (us)"), ("c10", "CPU per request, c=10 (us)"),
                       ("body_5mb", "CPU per request, 5 MB body, next turn (us)"),
                       ("body_5mb_fresh", "  same, a new session's body (us)")):  # fmt: skip
        c = cpu.get(key)
        if c:
            t.add_row(label, f"{c['us'].get('plain')}", f"{c['us'].get('control', '')}", f"{c['us'].get('spendgate')}",
                      f"+{c.get('added_us')} ({c.get('added_share')})", f"{c.get('control_ratio', '')}",
                      mark("added CPU / plain CPU, c=1") if key == "c1" else
                      mark("added CPU 5 MB / 100 KB body") if key == "body_5mb" else "")  # fmt: skip
    if cpu.get("stream"):
        c = cpu["stream"]
        t.add_row("CPU per SSE event (us; plain = streaming floor)", f"{c['us'].get('plain-stream')}", "",
                  f"{c['us'].get('spendgate')}", f"+{c.get('added_us')}", "", "")
    t.add_row("ready, empty ledger (s)", f"{f['ready_s']['plain']}", "", f"{f['ready_s']['spendgate']}", "", "", "")
    adm = f["admission"]
    t.add_row(f"ready, {int(max(adm['sizes'], key=int)):,}-row ledger (s)", "", "", f"{adm['ready_largest_s']}", "",
              "", mark("ready with the largest ledger (s)"))
    if "policy" in f:
        pol = f["policy"]
        t.add_row(f"ready, policy with {pol['users']:,} users: first start / restart (s)", "", "",
                  f"{pol['first_s']} / {pol['restart_s']}", "", "", mark("ready with the big policy (s)"))
        t.add_row(f"  policy load + check, {pol['users']:,} users (s)", "", "", f"{pol['check_s']}", "", "", "")
    console = Console(width=170)
    console.print(t)

    a = Table(title="admission and ledger (spendgate only)", header_style="bold")
    for col in ("ledger rows", "start (s)", "ready (s)", "admit p50 (us)", "budget book p50 (us)",
                "begin p50 (us)", "e2e p50 (ms)"):
        a.add_column(col, justify="right", no_wrap=True)
    for rows, s in f["admission"]["sizes"].items():
        a.add_row(f"{int(rows):,}", f"{s['init_s']}", f"{s['ready_s']}", f"{s['admit_us_p50']}",
                  f"{s['book_admit_us_p50']}", f"{s['begin_us_p50']}", f"{s['e2e_p50_ms']}")
    console.print(a)
    w = f["admission"]["writer"]
    console.print(f"ledger writer: {w['rows_per_s']:,} rows/s ({w['rows']:,} rows in {w['seconds']} s)")
    if cpu:
        bench_cpu.print_cpu(cpu, console)

    g = Table(title="targets", header_style="bold")
    for col in ("target", "value", "limit", "holds"):
        g.add_column(col)
    for tg in result["targets"]:
        g.add_row(tg["name"], f"{tg['value']}", f"{tg['op']} {tg['limit']}", "yes" if tg["holds"] else "NO")
    console.print(g)


def print_startup(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    st = result["figures"]["startup"]
    t = Table(title=f"ready (s): median of {st['rounds']} alternating rounds", header_style="bold")
    for col in ("start", "median", "every round"):
        t.add_column(col)
    for name, fig in st["ready_s"].items():
        t.add_row(name, f"{fig['median']}", " ".join(f"{x}" for x in fig["all"]))
    Console().print(t)
    # this VM's speed for the same start swings 2x within minutes: differences taken within each
    # round (the starts alternate, seconds apart) say what a change did where medians cannot
    p = Table(title="paired (s): median of the per-round differences", header_style="bold")
    for col in ("difference", "median", "every round"):
        p.add_column(col)
    for name, fig in st.get("paired_s", {}).items():
        p.add_row(name, f"{fig['median']:+}", " ".join(f"{x:+}" for x in fig["all"]))
    Console().print(p)


def run(plan: Plan, mode: str, out: Path, keep: bool, profile: Path | None = None,
        against: Path | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")  # meta "started": this, not the end
    load_start = os.getloadavg()
    if against is not None:  # its bytecode, as scripts/lib.sh's compile_sources writes this checkout's
        for part in ("spendgate", "addons"):
            compileall.compile_dir(str(against / part), quiet=2)
    work = Path(tempfile.mkdtemp(prefix="spendgate-bench-"))
    bench = Bench(plan, work)
    try:
        if mode == "cpu":
            figures = {"cpu": bench.cpu_only(profile, against)}
        elif mode == "instructions":
            figures = {"instructions": bench.instructions_only(against)}
        elif mode == "startup":
            figures = {"startup": bench.startup_only(plan.cpu.rounds, against)}
        else:
            admission = bench.ledgers()
            sizes = admission["sizes"]
            small, large = str(min(plan.ledger_sizes)), str(max(plan.ledger_sizes))
            admission["flat_ratio"] = r3(ratio(sizes[large]["admit_us_p50"], sizes[small]["admit_us_p50"]))
            admission["ready_largest_s"] = sizes[large]["ready_s"]
            figures = bench.side_by_side()
            figures["admission"] = admission
            figures["policy"] = bench.big_policy()
    finally:
        bench.close()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    import mitmproxy.version

    result = {
        "meta": {"mode": mode, "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                 "mitmproxy": mitmproxy.version.VERSION, "started": started_at,
                 "seconds": r3(time.perf_counter() - started), "plan": plan.__dict__,
                 "loadavg_start": load_start, "loadavg_end": os.getloadavg()},  # fmt: skip
        "figures": figures,
    }
    result["targets"] = check_targets(figures)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    if "--store" in (sys.argv[1:] if argv is None else argv):  # admission on PostgreSQL vs memory
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_store

        return bench_store.main(argv)
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: every figure in seconds (not for comparing)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/bench-<time>.json)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, ledgers)")
    ap.add_argument("--cpu", action="store_true",
                    help="only CPU time per request of each proxy (robust on a loaded machine; ~1-2 minutes)")
    ap.add_argument("--profile", action="store_true",
                    help="with --cpu: run spendgate's mitmdump under cProfile and print its top functions")
    ap.add_argument("--only", default="", help="with --cpu: comma-separated scenarios (c1, c10, body_5mb, body_5mb_fresh, stream, bulk; laptop: a request a second, only when named)")
    ap.add_argument("--rounds", type=int, default=0, help="with --cpu or --startup: rounds (default 5; 1 with --smoke)")
    ap.add_argument("--against", type=Path, default=None,
                    help="with --cpu, --startup or --instructions: also measure spendgate from this checkout "
                         "(before/after in one run)")
    ap.add_argument("--instructions", action="store_true",
                    help="only instructions per request, SSE event and bulk MB of each proxy, counted by callgrind "
                         "(noise-free; needs valgrind; ~5 minutes)")
    ap.add_argument("--startup", action="store_true",
                    help="only start-up: ready with an empty ledger, the largest ledger, the big policy (first start "
                         "and restart), alternating with plain mitmdump (--rounds, default 5)")
    args = ap.parse_args(argv)
    if args.startup and (args.cpu or args.profile or args.only):
        ap.error("--startup measures start-up only; --cpu, --profile and --only are for the CPU run (one at a time)")
    if args.instructions and (args.cpu or args.profile or args.only or args.startup or args.rounds):
        ap.error("--instructions counts instructions only; --cpu, --profile, --only, --startup and --rounds are other runs")
    if args.rounds < 0:
        ap.error(f"--rounds {args.rounds}: at least 1 (0: the default)")
    if args.against is not None and not (args.against / "addons" / "gateway.py").is_file():
        # otherwise this tree's starts are measured first and the run ends in mitmdump's "No such script"
        ap.error(f"--against {args.against}: not a spendgate checkout (no addons/gateway.py in it)")
    if args.instructions and (why := bench_instructions.available()):
        ap.error(f"--instructions: {why}")
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s")
    plan, mode = (SMOKE, "smoke") if args.smoke else (Plan(), "full")
    if args.cpu or args.profile:
        mode = "cpu"
        cpu_plan = replace(plan.cpu, only=tuple(x for x in args.only.split(",") if x))
        if args.rounds:
            cpu_plan = replace(cpu_plan, rounds=args.rounds)
        plan = replace(plan, cpu=cpu_plan)
    stamp = datetime.now().strftime('%Y%m%d-%H%M%S')
    out = args.out or ROOT / "bench-results" / f"bench-{stamp}.json"
    profile = out.with_suffix(".prof") if args.profile else None
    if args.against and not args.startup:
        mode = "cpu"
    if args.startup:
        mode = "startup"
        plan = replace(plan, cpu=replace(plan.cpu, rounds=args.rounds or plan.cpu.rounds))
    if args.instructions:
        mode = "instructions"
    result = run(plan, mode, out, args.keep, profile, args.against.resolve() if args.against else None)
    if mode == "cpu":
        from rich.console import Console

        console = Console()
        load = ", ".join(f"{x:.2f}" for x in result["meta"]["loadavg_start"])
        console.print(f"load average at start: {load}; at end: "
                      f"{', '.join(f'{x:.2f}' for x in result['meta']['loadavg_end'])}")
        bench_cpu.print_cpu(result["figures"]["cpu"], console)
        if profile is not None and bench_cpu.wait_file(profile):
            bench_cpu.print_profile(profile, console)
            print(f"profile: {profile}")
    elif mode == "instructions":
        from rich.console import Console

        bench_instructions.print_instructions(result["figures"]["instructions"], Console(width=150))
    elif mode == "startup":
        print_startup(result)
    else:
        print_report(result)
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
