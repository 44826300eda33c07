"""Issue 14 field reports, end to end: a real mitmdump with our addon, the fake provider upstream."""

from __future__ import annotations

import json
import os
import subprocess

from tests.support import ANTHROPIC_KEY
from tests.support.gateway import _clean_env


def test_cli_reaches_the_gateway_admin_api_directly_despite_http_proxy(gateway, anthropic_client):
    """Managed machines set HTTP_PROXY beside HTTPS_PROXY, here pointing at the gateway itself."""
    anthropic_client().messages.create(model="claude-sonnet-4-5", max_tokens=50,
                                       messages=[{"role": "user", "content": "hi"}])
    gateway.ledger(wait_for=1)  # the gateway holds the file: the CLI must ask its admin API
    env = _clean_env({"HTTP_PROXY": gateway.proxy_url, "http_proxy": gateway.proxy_url,
                      "HTTPS_PROXY": gateway.proxy_url, "https_proxy": gateway.proxy_url})
    cp = subprocess.run(gateway.cli_command("ledger", "--json"), capture_output=True, text=True, timeout=60,
                        env=env, cwd=str(gateway.tmp), stdin=subprocess.DEVNULL)
    assert cp.returncode == 0, cp.stderr
    rows = json.loads(cp.stdout)
    assert len(rows) == 1 and rows[0]["model"] == "claude-sonnet-4-5"
    assert ANTHROPIC_KEY not in cp.stdout
