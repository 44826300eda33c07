"""spendgate installed from its wheel, outside the checkout, works on its own shipped files.

The wheel is built from this checkout and installed (without dependencies) into a fresh venv
whose dependencies come from the test venv through a .pth line, so the test needs no download
beyond the build backend. Everything then runs with the working directory outside the checkout
and no PYTHONPATH, so only the installed copy can answer: `policy check` on the bundled example
policy, `mdm render` of the bundled example site, `prices show` from the bundled catalogue, and a
real mitmdump loading the installed addon (`spendgate addon`) that meters one request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support import ANTHROPIC_KEY
from tests.support.gateway import Gateway

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A venv with only the wheel installed; returns its paths and a clean environment."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPENDGATE_POLICY", "SPENDGATE_DB",
                                                              "SPENDGATE_PRICING_DIR")}
    wheels = root / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
                   check=True, capture_output=True, timeout=600, env=env)
    (wheel,) = wheels.glob("spendgate-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                    "--force-reinstall", str(wheel)], check=True, capture_output=True, timeout=600, env=env)
    # the dependencies: the test venv's, appended after the venv's own site-packages (so after the wheel)
    (site / "zz_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = root / "elsewhere"
    work.mkdir()
    return {"py": py, "spendgate": venv / "bin" / "spendgate", "env": env, "work": work}


def run(inst: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(inst["spendgate"]), *args], capture_output=True, text=True, timeout=120,
                          env=inst["env"], cwd=inst["work"], stdin=subprocess.DEVNULL)


def test_the_installed_copy_is_the_one_answering(installed):
    where = subprocess.run([str(installed["py"]), "-c", "import spendgate, spendgate.resources as r; "
                            "print(spendgate.__file__); print(r.CHECKOUT); print(r.addon())"],
                           capture_output=True, text=True, env=installed["env"], cwd=installed["work"], check=True)
    module, checkout, addon = where.stdout.split()
    assert not module.startswith(str(REPO)) and checkout == "None"
    assert addon.endswith("spendgate/_data/addons/gateway.py") and Path(addon).is_file()


def test_policy_check_mdm_render_and_prices_from_package_data(installed):
    addon = Path(run(installed, "addon").stdout.strip())
    shipped = addon.parents[1]  # spendgate/_data in the venv
    cp = run(installed, "policy", "check", str(shipped / "policies" / "example.yaml"))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    broken = installed["work"] / "broken.yaml"
    broken.write_text("version: 1\nbudgets: {users: {day: -5}}\n")
    cp = run(installed, "policy", "check", str(broken))
    assert cp.returncode == 1 and "broken.yaml:" in cp.stdout + cp.stderr  # the shipped schema answers

    cp = run(installed, "prices", "show", "claude-sonnet-4-5", "--json")
    assert cp.returncode == 0, cp.stderr
    assert "genai-prices" in cp.stdout

    confdir = installed["work"] / "ca"
    cp = run(installed, "ca", "init", "--confdir", str(confdir))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    site = installed["work"] / "site.yaml"
    example = (shipped / "mdm" / "site.example.yaml").read_text()
    site.write_text(example.replace("ca/spendgate-ca-cert.pem", str(confdir / "mitmproxy-ca-cert.pem"))
                    .replace("../policies/example.yaml", str(shipped / "policies" / "example.yaml")))
    cp = run(installed, "mdm", "render", "--config", str(site), "--out", str(installed["work"] / "kit"))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert (installed["work"] / "kit").is_dir() and any((installed["work"] / "kit").rglob("*.pac"))


def test_a_gateway_from_the_installed_addon_meters_a_request(installed, tmp_path, fake_provider):
    import anthropic
    import httpx2

    addon = Path(run(installed, "addon").stdout.strip())
    launcher = [str(installed["py"]), "-c", "import sys; from mitmproxy.tools.main import mitmdump; "
                "sys.argv[0] = 'mitmdump'; sys.exit(mitmdump())"]
    env = {k: v for k, v in installed["env"].items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy",
                                                                            "no_proxy", "ssl_cert_file")}
    # no spendgate_policy: the gateway must find the bundled example policy itself
    gw = Gateway(tmp_path / "gw", fake_provider, policy="", launcher=launcher, addon=addon, env=env)
    with gw:
        assert "_data/addons/gateway.py" in gw.log_text()
        hc = httpx2.Client(proxy=gw.proxy_url, verify=gw.client_ssl_context(), trust_env=False, timeout=30)
        client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=hc, max_retries=0)
        msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=100,
                                     messages=[{"role": "user", "content": "hi"}])
        assert msg.usage.input_tokens == 1200
        rows = gw.ledger(wait_for=1)
        hc.close()
    assert [(r["provider"], r["model"], r["outcome"]) for r in rows] == [("anthropic", "claude-sonnet-4-5", "ok")]
    assert rows[0]["cost_usd"] > 0
    assert json.dumps(rows).find(ANTHROPIC_KEY) == -1
