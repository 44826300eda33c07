"""A fresh review of the gateway's script pin (`_pin_script`) and unload guard (`SpendGate.done`).

Its findings M1 (an unload while a run-time rebuild had left no gateway) and L2 (an unload whose
close failed) failed on the code it reviewed and are fixed; L1 (the file missing for a moment
while mitmproxy starts, before the addon exists to pin anything) is mitmproxy's and left, as an
expected failure; the rest are what it checked and found holding.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.e2e.test_script_file_e2e import _gateway_from_a_copy, _status

BREAK_THEN_UNLOAD = """
import asyncio
from mitmproxy import ctx

class Operator:
    def running(self):
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, self.move_ledger)
        loop.call_later(2.5, self.unload)

    def move_ledger(self):  # a run-time option change the new gateway cannot open: gateway None, 503s
        ctx.options.update(spendgate_db=%(bad_db)r)

    def unload(self):  # then the scripts option loses the gateway, as in the commit's own test
        ctx.options.update(scripts=[s for s in ctx.options.scripts if not s.endswith("gateway.py")])

addons = [Operator()]
"""


def _wait_exit(gw, seconds: float) -> int | None:
    deadline = time.monotonic() + seconds
    while gw.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return gw.proc.poll()


def test_sigterm_still_exits_0_and_keeps_rows(tmp_path, gateway_factory, fake_provider):
    """HELD: a normal stop is not taken for an unload."""
    _, gw = _gateway_from_a_copy(tmp_path, gateway_factory)
    gw.start()
    assert _status(gw) == 200
    assert gw.stop() == 0
    assert "stopping the proxy" not in gw.log_text()
    assert [r["status"] for r in gw.ledger(wait_for=1)] == [200]


def test_unload_while_the_gateway_is_down_after_a_runtime_option_change_stops_the_proxy(
        tmp_path, gateway_factory, fake_provider):
    """M1, fixed: the guard only fired when self.gateway is not None. A run-time spendgate_ option
    change whose new gateway fails to open (GatewayError in running(): gateway None, provider
    requests answered 503) followed by the same unload the commit's test uses leaves a plain proxy:
    provider requests are forwarded unchecked."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file, so no ledger can be created under it\n")
    op = tmp_path / "operator.py"
    op.write_text(BREAK_THEN_UNLOAD % {"bad_db": str(blocker / "ledger.duckdb")})
    _, gw = _gateway_from_a_copy(tmp_path, gateway_factory, extra_args=["-s", str(op)])
    gw.start()
    assert _status(gw) == 200  # the day's $0.005 is spent
    time.sleep(1.5)
    assert _status(gw) == 503  # the gateway could not reopen: refused, fail closed (held)
    code = _wait_exit(gw, 5)
    status = None if code is not None else _status(gw)
    assert "cannot open the ledger" in gw.log_text()
    assert len(fake_provider.requests) == 1, f"forwarded unchecked (status {status}); exit code {code}"
    assert code == 1, f"the proxy kept running without the gateway addon (exit code {code}, status {status})"


def test_the_same_file_given_twice_loads_once_and_enforces(tmp_path, gateway_factory, fake_provider):
    """HELD (checked): a second -s entry for the same file through a symlink; the first load pins
    both watchers, so the second never loads (before the change: "An addon called 'access' already
    exists", exit 1). The proxy enforces and survives the file moving away."""
    addons = tmp_path / "addons"
    link = tmp_path / "link-gateway.py"
    script, gw = _gateway_from_a_copy(tmp_path, gateway_factory, extra_args=["-s", str(link)])
    os.symlink(script, link)
    gw.start()
    assert _status(gw) == 200
    script.rename(script.with_name("gateway.py.old"))
    time.sleep(2.5)
    script.with_name("gateway.py.old").rename(script)
    assert _status(gw) == 429
    assert gw.running()
    log = gw.log_text()
    assert log.count("Loading script") == 1, log
    assert "already exists" not in log and "Removing script" not in log
    assert gw.stop() == 0


SLOW_SCRIPT = """
import pathlib, time
pathlib.Path(%(started)r).write_text("importing")
time.sleep(2.0)  # an operator's script with a slow import (or any start-up stall on the loop)
pathlib.Path(%(done)r).write_text("imported")

class Slow:
    pass

addons = [Slow()]
"""


@pytest.mark.xfail(strict=True, reason="L1, left: mitmproxy drops a script missing at its watcher's first poll "
                   "before the addon loads (docs/security.md, Fail closed when not in charge)")
def test_the_gateway_file_missing_for_a_moment_during_start_up_leaves_a_plain_proxy(
        tmp_path, gateway_factory, fake_provider):
    """L1 (older than the pin, which cannot cover it): the pin is set in load(), so it does not cover
    the gap between mitmproxy's Script() (file exists) and its watcher's first poll. A file missing
    at that poll is 'Removing script' at INFO, not an error: errorcheck lets the start-up pass and
    mitmdump runs with no spendgate addon at all (not even the 503 'not ready'). Widened here
    deterministically by a slow operator script listed first; in production the gap is a few ms of
    a (re)start overlapping an upgrade."""
    import subprocess

    from tests.support.gateway import _clean_env

    started, done = tmp_path / "slow.started", tmp_path / "slow.done"
    slow = tmp_path / "slow.py"
    slow.write_text(SLOW_SCRIPT % {"started": str(started), "done": str(done)})
    script, gw = _gateway_from_a_copy(tmp_path, gateway_factory)
    gw.launcher = [gw.mitmdump, "-s", str(slow)]
    gw._log_fh = open(gw.log_file, "ab")
    gw.proc = subprocess.Popen(gw.command(), stdout=gw._log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=_clean_env(), cwd=str(gw.tmp))
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    moved = script.with_name("gateway.py.old")
    script.rename(moved)  # an upgrade replacing the file while the service (re)starts
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    moved.rename(script)
    while not gw._port_open() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    statuses = [_status(gw) for _ in range(3)]
    log = gw.log_text()
    assert gw.proc.poll() is not None or set(statuses) <= {503}, \
        f"running without spendgate: statuses {statuses}, provider saw {len(fake_provider.requests)}; " \
        f"'Removing script' logged: {'Removing script' in log}"


UNLOAD_ON_FLAG = """
import asyncio, os
from mitmproxy import ctx

class UnloadOnFlag:
    def running(self):
        asyncio.get_running_loop().call_later(0.05, self.poll)

    def poll(self):
        if os.path.exists(%(flag)r):
            ctx.options.update(scripts=[s for s in ctx.options.scripts if not s.endswith("gateway.py")])
        else:
            asyncio.get_running_loop().call_later(0.05, self.poll)

addons = [UnloadOnFlag()]
"""


def _in_flight_rows(tmp_path, gateway_factory, fake_provider, how: str):
    import threading

    import httpx2

    tmp_path.mkdir(parents=True, exist_ok=True)
    flag = tmp_path / "unload.flag"
    op = tmp_path / "unload_on_flag.py"
    op.write_text(UNLOAD_ON_FLAG % {"flag": str(flag)})
    limits = tmp_path / "policy.yaml"
    limits.write_text("version: 1\ndefaults: {user: {day: 100}}\n")
    gw = gateway_factory(how, policy=limits, extra_args=["-s", str(op)])
    gw.start()
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    result = {}

    def call():
        with gw.http_client() as hc:
            try:
                result["status"] = hc.post("https://api.anthropic.com/v1/messages", json=body,
                                           headers={"x-api-key": "sk-ant-inflight", "anthropic-version": "2023-06-01",
                                                    "x-fake-scenario": "think"}).status_code
            except httpx2.HTTPError as e:
                result["error"] = repr(e)

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 10
    while not fake_provider.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the provider is thinking (1.5 s): the request is in flight
    if how == "unload":
        flag.write_text("go")
    else:
        gw.proc.send_signal(__import__("signal").SIGTERM)
    code = _wait_exit(gw, 20)
    t.join(20)
    return code, result, gw.ledger()


def test_an_in_flight_request_at_unload_is_recorded_as_at_sigterm(tmp_path, gateway_factory, fake_provider):
    """Compare what the ledger keeps of a request in flight when the proxy stops by SIGTERM and by
    the unload guard's SystemExit."""
    code_term, res_term, rows_term = _in_flight_rows(tmp_path / "a", gateway_factory, fake_provider, "sigterm")
    fake_provider.reset()
    code_unl, res_unl, rows_unl = _in_flight_rows(tmp_path / "b", gateway_factory, fake_provider, "unload")
    print("SIGTERM", code_term, res_term, [(r["status"], r["outcome"], r.get("note")) for r in rows_term])
    print("UNLOAD", code_unl, res_unl, [(r["status"], r["outcome"], r.get("note")) for r in rows_unl])
    assert code_term == 0 and code_unl == 1
    assert [r["outcome"] for r in rows_unl] == [r["outcome"] for r in rows_term]


UNLOAD_THEN_SLOW_DONE = """
import asyncio, os
from mitmproxy import ctx

class UnloadThenSlowDone:
    def running(self):
        asyncio.get_running_loop().call_later(1.0, self.unload)

    def unload(self):
        ctx.options.update(scripts=[s for s in ctx.options.scripts if not s.endswith("gateway.py")])

    async def done(self):  # keeps the loop turning during asyncio.run's shutdown of the tasks
        open(%(mark)r, "w").write("in done")
        await asyncio.sleep(4)

addons = [UnloadThenSlowDone()]
"""


def test_no_provider_request_passes_while_the_proxy_winds_down_after_an_unload(tmp_path, gateway_factory,
                                                                             fake_provider):
    """HELD (checked): between the SystemExit and the process's end asyncio.run cancels the tasks and
    mitmproxy runs every addon's done; the listeners still accept. The gateway's Script stays in the
    script loader (the SystemExit interrupted ScriptLoader.configure before it dropped it), so its
    hooks still run, with no gateway: 503."""
    mark = tmp_path / "in-done"
    op = tmp_path / "op.py"
    op.write_text(UNLOAD_THEN_SLOW_DONE % {"mark": str(mark)})
    _, gw = _gateway_from_a_copy(tmp_path, gateway_factory, extra_args=["-s", str(op)])
    gw.start()
    assert _status(gw) == 200
    deadline = time.monotonic() + 10
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mark.exists()
    statuses = []
    for _ in range(3):
        try:
            statuses.append(_status(gw))
        except Exception as e:  # noqa: BLE001
            statuses.append(type(e).__name__)
    print("statuses while winding down:", statuses)
    assert _wait_exit(gw, 15) == 1
    assert len(fake_provider.requests) == 1, statuses


def test_pin_holds_for_a_quoted_tilde_path(tmp_path, gateway_factory, fake_provider):
    """HELD (checked): -s "'~/addons/gateway.py'" (Script.fullpath strips quotes and expands ~;
    the module's __file__ is that fullpath, so the realpath comparison matches)."""
    from tests.support.gateway import _clean_env

    script, gw = _gateway_from_a_copy(tmp_path, gateway_factory, env=_clean_env({"HOME": str(tmp_path)}))
    gw.addon = "'~/addons/gateway.py'"
    gw.start()
    assert _status(gw) == 200
    moved = script.with_name("gateway.py.old")
    script.rename(moved)
    time.sleep(2.5)
    moved.rename(script)
    assert _status(gw) == 429
    assert gw.running() and "Removing script" not in gw.log_text()
    assert gw.stop() == 0


def test_options_dump_with_the_gateway_still_exits_0(tmp_path):
    """HELD (checked): `mitmdump --options -s addons/gateway.py` loads the script outside its
    watcher (tools/main.py); _pin_script cancels a task that never ran; exit 0, no warnings."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.support.gateway import ADDON, _clean_env

    cp = subprocess.run([str(Path(sys.executable).parent / "mitmdump"), "--options", "-s", str(ADDON),
                         "--set", f"confdir={tmp_path / 'conf'}"], capture_output=True, text=True, timeout=60,
                        env=_clean_env(), cwd=str(tmp_path), stdin=subprocess.DEVNULL)
    assert cp.returncode == 0, cp.stderr[-2000:]
    assert "spendgate_db" in cp.stdout
    assert "Task was destroyed" not in cp.stderr and "Traceback" not in cp.stderr, cp.stderr[-2000:]


CLOSE_RAISES_THEN_UNLOAD = """
import asyncio, sys
from mitmproxy import ctx

class CloseRaises:
    def running(self):
        asyncio.get_running_loop().call_later(1.0, self.unload)

    def unload(self):
        gate = ctx.master.addons.get("spendgate")
        real = gate.gateway.close

        def close():  # Gateway.close fails at its last step (say the disk filled as DuckDB checkpointed)
            real()
            raise OSError(28, "No space left on device")

        gate.gateway.close = close
        ctx.options.update(scripts=[s for s in ctx.options.scripts if not s.endswith("gateway.py")])

addons = [CloseRaises()]
"""


def test_an_unload_whose_close_fails_still_stops_the_proxy(tmp_path, gateway_factory,
                                                                           fake_provider):
    """L2, fixed: done() raised SystemExit only after self.gateway.close() returned. If close raises,
    the exception goes back through AddonManager.remove into ScriptLoader.configure, where
    mitmproxy's safecall logs it as an addon error: the proxy keeps running with the half-closed
    gateway still in the chain (the Script stays in the loader), every provider request is refused
    (503) and no supervisor is told: an outage until someone restarts it by hand."""
    op = tmp_path / "close_raises.py"
    op.write_text(CLOSE_RAISES_THEN_UNLOAD)
    limits = tmp_path / "policy.yaml"
    limits.write_text("version: 1\ndefaults: {user: {day: 100}}\n")
    gw = gateway_factory(policy=limits, extra_args=["-s", str(op)])
    gw.start()
    assert _status(gw) == 200
    code = _wait_exit(gw, 4)
    statuses = [] if code is not None else [_status(gw) for _ in range(3)]
    gw.stop()
    rows = gw.ledger()
    print("exit", code, "statuses", statuses, "provider saw", len(fake_provider.requests), "rows", len(rows))
    assert len(rows) == len(fake_provider.requests), "provider requests forwarded with no ledger row"
    assert code == 1, f"the proxy kept running after the unload: statuses {statuses}"


def test_a_failing_start_exits_1_without_the_unload_message(tmp_path, gateway_factory, fake_provider):
    """HELD (checked): errorcheck's start-up exit (bad policy; ledger locked by another gateway) is
    not taken for an unload."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ndefaults: {user: {day: -5}}\n")
    gw = gateway_factory("bad", policy=bad)
    assert gw.refused_start(30) == 1
    assert "stopping the proxy" not in gw.log_text()
    first = gateway_factory("first").start()
    second = gateway_factory("second")
    second.db = first.db
    assert second.refused_start(30) == 1
    assert "in use by another gateway" in second.log_text()
    assert "stopping the proxy" not in second.log_text()
    assert first.stop() == 0
