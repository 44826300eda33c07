"""addons/dispatch.py: mitmproxy's hook dispatch without its per-addon overhead must make exactly
the calls mitmproxy's own makes: same hooks, same arguments, same order, same errors logged, the
same stop at AddonHalt, OptionsError let through, and addons that change mid-event seen at once."""

import asyncio
import logging
import sys
import types
from pathlib import Path

import pytest
from mitmproxy import addonmanager, exceptions
from mitmproxy.proxy.layers import http as lhttp
from mitmproxy.test import tflow

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "addons"))
import dispatch  # noqa: E402


class Rec:
    def __init__(self, name: str, calls: list, **hooks) -> None:
        self.name, self.calls = name, calls
        for hook, fn in hooks.items():
            setattr(self, hook, types.MethodType(fn, self))

    def __repr__(self) -> str:
        return f"Rec({self.name})"


def record(self, f):
    self.calls.append((self.name, "sync", f.id))


async def record_async(self, f):
    await asyncio.sleep(0)
    self.calls.append((self.name, "async", f.id))


def fail(self, f):
    self.calls.append((self.name, "fail"))
    raise ValueError(f"boom from {self.name}")


def halt(self, f):
    self.calls.append((self.name, "halt"))
    raise exceptions.AddonHalt


def scenario(manager: addonmanager.AddonManager, calls: list, *, halting: bool) -> None:
    """Addons of every shape mitmproxy's dispatch handles, added to `manager`'s chain."""
    parent = Rec("parent", calls, request=record)
    parent.addons = [Rec("child-async", calls, request=record_async), Rec("child-fail", calls, request=fail),
                     Rec("child-after-fail", calls, request=record)]

    def grow(self, f):  # an addon added while the event runs: mitmproxy's traversal is lazy
        self.calls.append((self.name, "grow"))
        if len(parent.addons) < 4:
            parent.addons.insert(0, Rec("grown", calls, request=record))

    chain = [Rec("first", calls, request=grow), parent, Rec("after-parent", calls, request=record),
             Rec("not-callable", calls), Rec("module", calls), Rec("no-hook", calls),
             Rec("coroutine-fn", calls, request=record_async)]
    chain[3].request = 5  # an attribute of the hook's name that is not a function: an error, logged
    chain[4].request = types  # a module of the hook's name ("from mitmproxy import request"): skipped
    if halting:
        chain += [Rec("halt", calls, request=halt), Rec("never", calls, request=record)]
    for a in chain:
        manager.chain.append(a)


def bare_manager() -> addonmanager.AddonManager:
    """An AddonManager with an empty chain and no master: dispatch reads only the chain."""
    manager = object.__new__(addonmanager.AddonManager)
    manager.chain = []
    return manager


def run(trigger, *, halting: bool, caplog) -> tuple[list, list]:
    calls: list = []
    caplog.clear()

    manager = bare_manager()
    scenario(manager, calls, halting=halting)
    f = tflow.tflow(resp=True)
    f.id = "flow-1"

    async def go() -> None:
        for hook in (lhttp.HttpRequestHook(f), lhttp.HttpRequestHook(f), lhttp.HttpResponseHook(f)):
            await trigger(manager, hook)

    with caplog.at_level(logging.ERROR):
        asyncio.run(go())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    return calls, errors


@pytest.mark.parametrize("halting", [False, True])
def test_the_same_calls_and_errors_as_mitmproxys_dispatch(halting, caplog):
    assert dispatch.install() and dispatch.install()  # once per process, however often loaded
    theirs = run(dispatch.stock, halting=halting, caplog=caplog)
    ours = run(dispatch.trigger_event, halting=halting, caplog=caplog)
    assert ours == theirs
    calls, errors = ours
    # the scenario reached every case, so the comparison above means something
    names = [c[0] for c in calls]
    assert {"grown", "child-async", "coroutine-fn", "after-parent"} <= set(names)
    assert "child-after-fail" not in names  # an error ends that top-level addon's subtree, as mitmproxy does
    assert ("never" in names) is False
    assert ("halt" in names) is halting
    assert errors.count("Addon error: boom from child-fail") == 2
    assert any("not callable" in e for e in errors)


def test_options_errors_go_through_as_with_mitmproxy(caplog):
    def bad_option(self, f):
        raise exceptions.OptionsError("no such option")

    assert dispatch.install()
    for trigger in (dispatch.stock, dispatch.trigger_event):
        manager = bare_manager()
        manager.chain.append(Rec("opts", [], request=bad_option))
        with pytest.raises(exceptions.OptionsError):
            asyncio.run(trigger(manager, lhttp.HttpRequestHook(tflow.tflow())))


def test_another_mitmproxy_is_left_as_it_is(monkeypatch, caplog):
    """Dispatch code other than what was checked: no patch, a warning, mitmproxy's own dispatch."""
    monkeypatch.setattr(dispatch, "VERIFIED", frozenset({"0" * 64}))
    monkeypatch.setattr(addonmanager.AddonManager, "trigger_event", dispatch.stock)
    with caplog.at_level(logging.WARNING, "spendgate"):
        assert dispatch.install() is False
    assert addonmanager.AddonManager.trigger_event is dispatch.stock
    assert "dispatches hooks differently" in caplog.text
