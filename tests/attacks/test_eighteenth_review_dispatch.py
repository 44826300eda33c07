"""Eighteenth review: addons/dispatch.py (commit 51de18d), mitmproxy's hook dispatch replaced.

Each test failed on 51de18d for the reason in its docstring (severity, root cause and the
suggested fix there too); all are fixed in addons/dispatch.py, D6 by `dispatch.guard`, which
addons/gateway.py gives its addons (docs/security.md, "Eighteenth attacker review").

D1 (Medium) the version guard is fooled by a run-time wrapper: install() drops it silently.
D2 (Low)    every addon error's traceback now starts in spendgate's dispatch.py.
D3 (Low)    a hook raising StopIteration is logged as "Addon error: " (mitmproxy: "coroutine raised
            StopIteration", with the chained cause).
D4 (Low)    a top-level addon that gains sub-addons during its own hook: mitmproxy calls them in the
            same event, the patch does not.
D5 (Low)    event.args() is read once up front: an event no addon handles can now raise out of
            trigger_event.
D6 (High, NOT a regression of 51de18d: mitmproxy's own dispatch does the same, and the patch keeps
    it on purpose) an operator's own `-s` script listed before gateway.py whose `request` hook
    raises (on something the client controls) makes mitmproxy skip the whole script subtree,
    spendgate included: the provider request is forwarded and never metered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import sys
import traceback
import types
from pathlib import Path

import pytest
from mitmproxy import addonmanager, hooks
from mitmproxy.proxy.layers import http as lhttp
from mitmproxy.test import tflow

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "addons"))
sys.path.insert(0, str(REPO))
import dispatch  # noqa: E402

MITMPROXY_TRIGGER_EVENT = dispatch.stock or addonmanager.AddonManager.trigger_event


@pytest.fixture(autouse=True)
def no_guarded_addons(monkeypatch):
    """These tests compare dispatches over a chain of their own: an addon an earlier test in the
    process guarded (a gateway it loaded and never unloaded) would run in their events too."""
    monkeypatch.setattr(dispatch, "_guarded", {})


def _manager(*chain) -> addonmanager.AddonManager:
    m = object.__new__(addonmanager.AddonManager)
    m.chain = list(chain)
    return m


def _installed() -> None:
    assert dispatch.install()
    assert dispatch.stock is not None


def _errors(trigger, chain, event, caplog) -> list[logging.LogRecord]:
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        asyncio.run(trigger(_manager(*chain), event))
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


# --------------------------------------------------------------------------------------------- D1
@pytest.mark.parametrize("method", ["trigger_event", "invoke_addon", "_iter_hooks"])
def test_d1_a_wrapped_dispatch_is_not_silently_replaced_or_bypassed(method, monkeypatch):
    """Medium. Root cause: `_fingerprint` hashes `inspect.getsource(...)`, and getsource *unwraps*
    (`inspect.unwrap` follows `__wrapped__`), so a functools.wraps wrapper that another addon, a
    tracing/profiling tool or an operator's guard put around AddonManager.trigger_event /
    invoke_addon / _iter_hooks hashes as mitmproxy's plain code. install() then replaces the
    trigger_event wrapper (it is lost: `stock` is the wrapper, never called again) or bypasses
    the invoke_addon/_iter_hooks one, silently: no warning, install() says True.
    Fix: refuse to patch unless each of the six attributes *is* the original function object
    (`fn.__wrapped__` absent, `fn.__code__` co_filename inside mitmproxy's addonmanager/hooks
    module, `AddonManager.__dict__[name]` unchanged); compare `__code__` attributes (co_code,
    co_consts, co_names) rather than source text, which also covers a .py edited after import."""
    am = addonmanager.AddonManager
    # start from mitmproxy's own dispatch; both are put back as they were after the test
    monkeypatch.setattr(dispatch, "stock", dispatch.stock)
    monkeypatch.setattr(am, "trigger_event", MITMPROXY_TRIGGER_EVENT)
    original = getattr(am, method)
    seen: list[str] = []

    if method == "_iter_hooks":
        @functools.wraps(original)
        def wrapper(self, *a, **kw):
            seen.append("wrapper")
            return original(self, *a, **kw)
    else:
        @functools.wraps(original)
        async def wrapper(self, *a, **kw):
            seen.append("wrapper")
            return await original(self, *a, **kw)

    monkeypatch.setattr(am, method, wrapper)

    class Addon:
        def request(self, f):
            seen.append("hook")

    patched = dispatch.install()
    asyncio.run(am.trigger_event(_manager(Addon()), lhttp.HttpRequestHook(tflow.tflow())))
    assert seen == ["wrapper", "hook"], (
        f"install() returned {patched} over a wrapped {method}; the wrapper was "
        f"{'never called' if 'wrapper' not in seen else 'called'}: calls {seen}")


# --------------------------------------------------------------------------------------------- D2
def _frames(record: logging.LogRecord) -> list[str]:
    return [f"{Path(fs.filename).name}:{fs.name}" for fs in traceback.extract_tb(record.exc_info[2])]


def test_d2_an_addon_error_traceback_shows_the_addon_not_spendgate(caplog):
    """Low (operator-facing). mitmproxy's safecall cuts the traceback at `invoke_addon`, so the
    operator sees only the failing addon's own frames. The patch has no `invoke_addon` frame and
    re-raises inside `with safecall(): raise`, so nothing is cut: every addon error in the process
    (mitmproxy's built-ins, the operator's scripts) is logged starting with addonmanager.py's
    safecall and spendgate's addons/dispatch.py trigger_event, pointing the reader at spendgate.
    Fix: log it yourself with the same message and the exception's own traceback minus this
    frame, e.g. `tb = e.__traceback__.tb_next` then `addonmanager.logger.error(f"Addon error: {e}",
    exc_info=(type(e), e, tb))`, or name the inner loop function `invoke_addon` so mitmproxy's
    cut_traceback finds it."""
    _installed()

    class Broken:
        def request(self, f):
            raise ValueError("broken addon")

    event = lhttp.HttpRequestHook(tflow.tflow())
    theirs = [_frames(r) for r in _errors(dispatch.stock, [Broken()], event, caplog)]
    ours = [_frames(r) for r in _errors(dispatch.trigger_event, [Broken()], event, caplog)]
    assert theirs == [["test_eighteenth_review_dispatch.py:request"]]
    assert ours == theirs


# --------------------------------------------------------------------------------------------- D3
def test_d3_stopiteration_from_a_hook_is_reported_as_mitmproxy_does(caplog):
    """Low. In mitmproxy the hook runs inside the `invoke_addon` coroutine, so a StopIteration
    escaping it becomes RuntimeError("coroutine raised StopIteration") (PEP 479): logged as
    "Addon error: coroutine raised StopIteration" with the StopIteration as its cause. The patch
    catches the bare StopIteration first and logs "Addon error: " (empty).
    Fix: `except StopIteration as e: raise RuntimeError("coroutine raised StopIteration") from e`
    inside the try, or accept and document."""
    _installed()

    class Stopper:
        def request(self, f):
            raise StopIteration

    event = lhttp.HttpRequestHook(tflow.tflow())
    theirs = [r.getMessage() for r in _errors(dispatch.stock, [Stopper()], event, caplog)]
    ours = [r.getMessage() for r in _errors(dispatch.trigger_event, [Stopper()], event, caplog)]
    assert theirs == ["Addon error: coroutine raised StopIteration"]
    assert ours == theirs


# --------------------------------------------------------------------------------------------- D4
def test_d4_sub_addons_a_top_level_addon_gains_during_its_hook_get_the_event():
    """Low. mitmproxy's traverse checks `hasattr(a, "addons")` lazily, after `a`'s own hook ran;
    the patch decides `hasattr(top, "addons")` *before* calling top's hook and then iterates
    `(top,)`, so a top-level addon that creates its `addons` in the hook (lazy set-up in
    `running`, say) has its new children skipped for that event. (The module docstring says
    "addons added ... are seen at once".)
    Fix: always `traverse((top,))` (the saving is in the other parts), or re-check
    `hasattr(top, "addons")` after top's hook."""
    _installed()

    def scenario(calls):
        class Child:
            def running(self):
                calls.append("child")

        class Lazy:
            def running(self):
                calls.append("lazy")
                self.addons = [Child()]
        return [Lazy()]

    results = []
    for trigger in (dispatch.stock, dispatch.trigger_event):
        calls: list[str] = []
        asyncio.run(trigger(_manager(*scenario(calls)), hooks.RunningHook()))
        results.append(calls)
    assert results[0] == ["lazy", "child"]
    assert results[1] == results[0]


# --------------------------------------------------------------------------------------------- D5
def test_d5_an_event_no_addon_handles_does_not_read_its_arguments():
    """Low. mitmproxy calls `event.args()` per hook it calls, inside safecall; the patch calls it
    once before the loop, outside the try. An event whose args() fails (a third-party Hook
    subclass, a field never set) that no addon handles is a no-op in mitmproxy and an exception
    out of trigger_event (into the proxy server's connection handler) with the patch. Fix: compute
    `args` lazily on the first hook found, inside the try."""
    _installed()

    @dataclasses.dataclass
    class OddHook(hooks.Hook):
        name = "eighteenth_review_odd"
        thing: object = dataclasses.field(init=False)  # never set: args() raises AttributeError

    class Uninterested:
        def request(self, f):
            pass

    outcomes = []
    for trigger in (dispatch.stock, dispatch.trigger_event):
        try:
            asyncio.run(trigger(_manager(Uninterested()), OddHook()))
            outcomes.append("ok")
        except Exception as e:  # noqa: BLE001
            outcomes.append(type(e).__name__)
    assert outcomes[0] == "ok"
    assert outcomes[1] == outcomes[0]


# --------------------------------------------------------------------------------------------- D6
USER_SCRIPTS = {  # an operator's own addon, listed before spendgate, that fails on what the client sent
    "raises in request": '''
def request(flow):  # tags requests with a numeric priority
    flow.metadata["priority"] = int(flow.request.headers.get("x-priority", "0"))
''',
    "halts in request": '''
from mitmproxy import exceptions
def request(flow):
    if flow.request.headers.get("x-priority") == "high":
        raise exceptions.AddonHalt
''',
    "raises in response": '''
def response(flow):
    flow.metadata["priority"] = int(flow.request.headers.get("x-priority", "0"))
''',
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("script", sorted(USER_SCRIPTS))
def test_d6_an_erroring_script_before_spendgate_lets_provider_traffic_through_unmetered(tmp_path, script):
    """High for the guarantee, but pre-existing: mitmproxy's own dispatch behaves the same and the
    patch keeps it deliberately ("the next top-level addon runs, as before"). All `-s` scripts sit
    under ONE top-level addon (ScriptLoader); an exception in any script's hook aborts the rest of
    that subtree for the event. With `-s mine.py -s addons/gateway.py`, a client that makes the
    operator's script raise in `request` (here: `x-priority: high`) skips SpendGate.request: no
    admission, no Exchange, the request goes to the provider and is billed, the ledger has nothing.
    (AddonHalt from an earlier script does the same.)
    Fix: since spendgate now owns the dispatch loop anyway, fail closed there: when a hook of an
    addon that is not spendgate's raises (or halts) during a provider flow's requestheaders/
    request event, answer it 503 (refusal.unavailable) instead of continuing; or have
    SpendGate refuse at `server_connect`/`request`-time any routed provider flow (ROUTE set in
    requestheaders) that reached upstream without an Exchange in flow.metadata; at the least
    refuse to start unless gateway.py is the first script (check ctx.options.scripts)."""
    from tests.support import OPENAI_KEY
    from tests.support.fake_provider import FakeProvider
    from tests.support.gateway import Gateway

    mine = tmp_path / "mine.py"
    mine.write_text(USER_SCRIPTS[script])

    class MineFirst(Gateway):
        def command(self) -> list[str]:
            cmd = super().command()
            i = cmd.index("-s")
            return cmd[:i] + ["-s", str(mine)] + cmd[i:]

    with FakeProvider(tmp_path / "fake") as fake:
        gw = MineFirst(tmp_path / "gw", fake)
        gw.start()
        try:
            with gw.http_client() as client:
                r = client.post("https://api.openai.com/v1/chat/completions",
                                headers={"authorization": f"Bearer {OPENAI_KEY}", "x-priority": "high"},
                                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
            forwarded = fake.requests_to("api.openai.com")
            rows = gw.ledger(wait_for=1) if forwarded else []  # raises when no row comes
            log_text = gw.log_text()
        finally:
            gw.stop()
    if "raises" in script:
        assert "Addon error: invalid literal for int()" in log_text  # the operator's script did raise
    assert "cut the %s event short" % script.split()[-1] in log_text
    # fail closed: the provider saw it only once it was admitted, and it is metered in full
    assert r.status_code == 200 and len(forwarded) == 1
    (row,) = rows
    assert (row["model"], row["outcome"]) == ("gpt-4o-mini", "ok") and row["cost_usd"] > 0, row
