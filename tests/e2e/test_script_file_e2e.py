"""The gateway's own script file changing under a running proxy (an upgrade, a `git checkout`).

mitmproxy watches every `-s` script: it reloads one whose mtime changed and unloads for good one
whose file is missing at a 1 s poll (mitmproxy/addons/script.py, `Script.watcher`). Before
`_pin_script`, a gateway whose addons/gateway.py was moved away for a few seconds went on as a
plain proxy: the next over-budget request reached the provider. The gateway now keeps the code it
started with until a restart, and a proxy that loses the addon any other way stops (exit 1).
"""

from __future__ import annotations

import shutil
import time

import anthropic

from tests.support import ANTHROPIC_KEY
from tests.support.gateway import REPO

UNLOADER = """
import asyncio
from mitmproxy import ctx

class Unload:
    def running(self):
        asyncio.get_running_loop().call_later(1.0, self.unload)

    def unload(self):  # what mitmweb's options editor or a console `set scripts` would do
        ctx.options.update(scripts=[s for s in ctx.options.scripts if not s.endswith("gateway.py")])

addons = [Unload()]
"""


def _gateway_from_a_copy(tmp_path, gateway_factory, **kw):
    """A gateway run from a copy of addons/ (its file is the test's to move), over a $0.005 day."""
    addons = tmp_path / "addons"
    shutil.copytree(REPO / "addons", addons, ignore=shutil.ignore_patterns("__pycache__"))
    limits = tmp_path / "policy.yaml"
    limits.write_text("version: 1\ndefaults: {user: {day: 0.005}}\n")
    return addons / "gateway.py", gateway_factory(policy=limits, addon=addons / "gateway.py", **kw)


def _status(gw) -> int:
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=0)
    try:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}])
        return 200
    except anthropic.APIStatusError as e:
        return e.status_code
    finally:
        client.close()


def test_a_gateway_keeps_enforcing_when_its_script_file_is_moved_away_and_back(tmp_path, gateway_factory,
                                                                              fake_provider):
    script, gw = _gateway_from_a_copy(tmp_path, gateway_factory)
    gw.start()
    assert _status(gw) == 200  # the day's $0.005 is spent by this one
    moved = script.with_name("gateway.py.old")
    script.rename(moved)
    time.sleep(2.5)  # two of mitmproxy's 1 s polls see no file
    moved.rename(script)
    time.sleep(1.5)
    assert _status(gw) == 429  # was 200: the addon had been unloaded and the request went through unchecked
    assert len(fake_provider.requests) == 1
    assert gw.running()
    log = gw.log_text()
    assert "Removing script" not in log and "Un-loading script" not in log


def test_a_touched_script_file_does_not_rebuild_the_gateway(tmp_path, gateway_factory, fake_provider):
    script, gw = _gateway_from_a_copy(tmp_path, gateway_factory)
    gw.start()
    assert _status(gw) == 200
    time.sleep(1.1)
    script.write_bytes(script.read_bytes())  # an upgrade writing the file in place: a new mtime
    time.sleep(2.5)
    assert _status(gw) == 429
    log = gw.log_text()
    assert log.count("Loading script") == 1, log  # was 2: a new gateway (new admin port) on the old package
    assert log.count("admin API http://") == 1


def test_a_proxy_that_loses_the_gateway_addon_stops_instead_of_forwarding(tmp_path, gateway_factory,
                                                                          fake_provider):
    unloader = tmp_path / "unload_gateway.py"
    unloader.write_text(UNLOADER)
    _, gw = _gateway_from_a_copy(tmp_path, gateway_factory, extra_args=["-s", str(unloader)])
    gw.start()
    assert _status(gw) == 200
    deadline = time.monotonic() + 20
    while gw.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gw.proc.returncode == 1  # a supervisor restarts it (Restart=on-failure, KeepAlive)
    assert "stopping the proxy so no provider request passes unchecked" in gw.log_text()
    assert len(fake_provider.requests) == 1
    rows = gw.ledger(wait_for=1)  # the gateway closed its ledger on the way out: nothing lost
    assert [r["status"] for r in rows] == [200]
