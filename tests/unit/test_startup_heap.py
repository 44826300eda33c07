"""Start-up and policy reloads build with the collector paused (spendgate.heap, issue 18).

A 10,000-user policy's objects set off collector passes over the whole heap while they were built
(~0.45 s of a start's CPU); the gateway now pauses the collector while it builds and settles once.
These tests hold the contract: paused around the building, restored whatever happens, and the
garbage made meanwhile freed by the settle.
"""

from __future__ import annotations

import gc
import weakref

import pytest

from spendgate import heap
from spendgate.gateway import Gateway, GatewayError
from tests.unit.test_hotpath import _addon_module
from tests.unit.test_poll_impact import POLICY, Node


@pytest.fixture
def collector_on():
    gc.enable()
    yield
    gc.enable()
    gc.unfreeze()


def test_paused_restores_the_collector_whatever_is_raised(collector_on) -> None:
    with heap.paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), heap.paused():
        raise RuntimeError("a start that fails")
    assert gc.isenabled()
    gc.disable()  # whoever turned it off before keeps it off
    with heap.paused():
        pass
    assert not gc.isenabled()


def test_a_young_settle_frees_the_garbage_made_while_paused(collector_on, monkeypatch) -> None:
    monkeypatch.setattr(heap, "_settled", False)
    with heap.paused():
        kept, dropped = Node(), Node()
        kept_ref, dropped_ref = weakref.ref(kept), weakref.ref(dropped)
        del dropped
    heap.settle(1)
    assert dropped_ref() is None and kept_ref() is kept
    assert gc.get_freeze_count() > 0


def _gate(tmp_path, monkeypatch, seen: list, fail: bool = False):
    mod = _addon_module()
    real_check, real_init = Gateway.check, Gateway.__init__

    def check(settings):
        seen.append(("check", gc.isenabled()))
        return real_check(settings)

    def init(self, settings, checked=None):
        seen.append(("init", gc.isenabled()))
        if fail:
            raise GatewayError("the ledger is in use by another gateway")
        real_init(self, settings, checked)

    monkeypatch.setattr(Gateway, "check", staticmethod(check))
    monkeypatch.setattr(Gateway, "__init__", init)
    monkeypatch.setattr(heap, "_settled", False)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return mod, {"spendgate_db": str(tmp_path / "l.duckdb"), "spendgate_policy": str(policy),
                             "spendgate_admin_port": -1}


def test_the_proxy_builds_its_gateway_with_the_collector_paused_then_settles(tmp_path, monkeypatch, collector_on):
    from mitmproxy.addons.proxyauth import ProxyAuth
    from mitmproxy.test import taddons

    seen: list = []
    mod, opts = _gate(tmp_path, monkeypatch, seen)
    gate = mod._gate
    with taddons.context(ProxyAuth(), *mod.addons) as tctx:
        tctx.configure(gate, **opts)
        gate.running()
        try:
            assert gate.gateway is not None
            assert ("check", False) in seen and ("init", False) in seen
            assert all(not on for _, on in seen)
            assert gc.isenabled() and gc.get_freeze_count() > 0  # settled: start-up's objects frozen
        finally:
            gate.done()


def test_a_start_that_fails_leaves_the_collector_on(tmp_path, monkeypatch, collector_on):
    from mitmproxy.addons.proxyauth import ProxyAuth
    from mitmproxy.test import taddons

    seen: list = []
    mod, opts = _gate(tmp_path, monkeypatch, seen, fail=True)
    gate = mod._gate
    with taddons.context(ProxyAuth(), *mod.addons) as tctx:
        tctx.configure(gate, **opts)
        gate.running()
        assert gate.gateway is None and ("init", False) in seen
        assert gc.isenabled()


def test_a_policy_reload_parses_with_the_collector_paused(tmp_path, monkeypatch, collector_on):
    import spendgate.gateway as gateway_module
    from tests.unit.test_gateway_core import make

    gw = make(tmp_path, POLICY.removeprefix("version: 1\n"))
    seen: list = []
    real = gateway_module.load
    monkeypatch.setattr(gateway_module, "load", lambda path: seen.append(gc.isenabled()) or real(path))
    try:
        gw.settings.policy.write_text(POLICY.replace("month: 1000", "month: 2000"))
        assert gw.reload_policy()
        gw.settings.policy.write_text("version: [broken")
        assert not gw.reload_policy()  # rejected: the last good policy kept, the collector back on
        assert seen == [False, False] and gc.isenabled()
    finally:
        gw.close()
