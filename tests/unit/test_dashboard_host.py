"""The dashboard's virtual host addon: its own threads, bounded, never the pool admission runs on.

Driven through mitmproxy's own test helpers (taddons, tflow) with a stand-in gateway whose web app
records the thread it runs on or waits on an event.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

from mitmproxy.test import taddons, tflow, tutils

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "addons"))

import dashboard_host  # noqa: E402  (addons/ is a script directory, as mitmdump loads it)

from spendgate.identity import Identity  # noqa: E402
from spendgate.web.app import WebResponse  # noqa: E402


def _host(handle):
    web = SimpleNamespace(handle=handle)
    gateway = SimpleNamespace(web=web, identify=lambda *a, **kw: Identity(user="alice@acme.com", source="proxy_auth"))
    return dashboard_host.DashboardHost(SimpleNamespace(gateway=gateway))


def _flow():
    return tflow.tflow(req=tutils.treq(host="spendgate.local", port=80, path=b"/api/whoami"))


def test_dashboard_requests_run_on_their_own_threads_not_admissions():
    seen: list[str] = []

    def handle(req):
        seen.append(threading.current_thread().name)
        return WebResponse(200, b"{}")

    addon = _host(handle)
    with taddons.context(addon):
        flow = _flow()
        asyncio.run(addon.request(flow))
    addon.done()
    assert flow.response.status_code == 200
    assert seen and seen[0].startswith("spendgate-web")  # asyncio.to_thread's would be "asyncio_N"


def test_a_flood_of_slow_dashboard_requests_is_bounded():
    release = threading.Event()
    running = []

    def handle(req):
        running.append(1)
        release.wait(30)
        return WebResponse(200, b"{}")

    addon = _host(handle)
    n = dashboard_host.MAX_WAITING + 6

    async def flood():
        flows = [_flow() for _ in range(n)]
        tasks = [asyncio.ensure_future(addon.request(f)) for f in flows]
        for _ in range(50):  # let every request reach the addon
            await asyncio.sleep(0.01)
        busy = [f for f in flows if f.response is not None]
        # while they wait, the default pool (admission's) is free: a job there runs at once
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "admitted"), 5) == "admitted"
        release.set()
        await asyncio.gather(*tasks)
        return flows, busy

    with taddons.context(addon):
        flows, busy = asyncio.run(flood())
    addon.done()
    assert len(busy) == 6 and {f.response.status_code for f in busy} == {503}
    assert len(running) == dashboard_host.MAX_WAITING  # the rest waited for a thread, then ran
    assert sorted(f.response.status_code for f in flows).count(200) == dashboard_host.MAX_WAITING
