"""End-to-end fixtures: a fake provider (mitmproxy's upstream), a real mitmdump running the
spendgate addon, and official SDK clients pointed at it.

    def test_x(gateway, fake_provider, anthropic_client):
        client = anthropic_client()                # anthropic.Anthropic through the gateway
        client.messages.create(...)
        row, = gateway.ledger(wait_for=1)

Clients get an explicit ``httpx2.Client(proxy=<gateway>, verify=<mitmproxy CA>)``: HTTPS_PROXY /
SSL_CERT_FILE are process-global and read when a client is built, so setting them in-process
would leak between tests. (The env-var path is covered by a subprocess test using ``gateway.env()``.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support import ANTHROPIC_KEY, OPENAI_KEY  # noqa: E402
from tests.support.fake_provider import FakeProvider  # noqa: E402
from tests.support.gateway import Gateway  # noqa: E402


@pytest.fixture(scope="session")
def _fake_provider_session(tmp_path_factory):
    with FakeProvider(tmp_path_factory.mktemp("fake-provider")) as fp:
        yield fp


@pytest.fixture
def fake_provider(_fake_provider_session):
    _fake_provider_session.reset()
    yield _fake_provider_session
    assert not _fake_provider_session.errors, _fake_provider_session.errors


@pytest.fixture
def gateway_factory(tmp_path, fake_provider):
    """Build (not start) extra gateways: gateway_factory(policy=..., extra_args=[...])."""
    made: list[Gateway] = []

    def make(name: str = "gw", **kw) -> Gateway:
        gw = Gateway(tmp_path / name, fake_provider, **kw)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()
        # shown by pytest only when the test failed
        print(f"----- {gw.log_file} (tail) -----\n{gw.log_text()[-6000:]}")


@pytest.fixture
def gateway(gateway_factory) -> Gateway:
    return gateway_factory("gw").start()


@pytest.fixture
def http_client(gateway):
    """Factory for raw httpx2 clients through the gateway (trusting mitmproxy's CA)."""
    clients = []

    def make(**kw):
        c = gateway.http_client(**kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def _sdk_factory(gateway, sdk_class, default_key: str):
    """A factory fixture body: SDK clients through the gateway, closed at teardown."""
    clients = []

    def make(api_key: str = default_key, max_retries: int = 0, **kw):
        c = sdk_class(api_key=api_key, http_client=gateway.http_client(), max_retries=max_retries, **kw)
        clients.append(c)
        return c

    return make, clients


@pytest.fixture
def anthropic_client(gateway):
    import anthropic

    make, clients = _sdk_factory(gateway, anthropic.Anthropic, ANTHROPIC_KEY)
    yield make
    for c in clients:
        c.close()


@pytest.fixture
def openai_client(gateway):
    import openai

    make, clients = _sdk_factory(gateway, openai.OpenAI, OPENAI_KEY)
    yield make
    for c in clients:
        c.close()
