"""A policy of nested aliases ("billion laughs"), end to end: `spendgate policy check` names the
anchor's FILE:LINE:COL and exits 1, and a real mitmdump refuses to start on it (fails closed) at
once, instead of building 10^9 values."""

from __future__ import annotations

import subprocess

from tests.e2e.test_identity_e2e import _cli, write
from tests.support.gateway import _clean_env
from tests.unit.test_yaml_aliases import laughs


def test_nested_aliases_are_refused_by_the_check_and_by_the_gateway(tmp_path, gateway_factory) -> None:
    path = write(tmp_path, "version: 1\ndefaults: {user: {day: 20}}\nx:\n" + laughs(9, "  "), "laughs.yaml")
    cp = subprocess.run(_cli("policy", "check", str(path)), capture_output=True, text=True, timeout=60,
                        env=_clean_env())
    assert cp.returncode == 1, (cp.stdout, cp.stderr)
    assert f"{path}:11:7: YAML: aliases repeat 1,234,567,880 values" in cp.stdout + cp.stderr
    gw = gateway_factory("laughs", policy=path)
    assert gw.refused_start(60) not in (None, 0) and "billion laughs" in gw.log_text()
