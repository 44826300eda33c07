"""Eleventh review (F7): `spendgate doctor` blamed the proxy credentials when the gateway could not
reach the provider. mitmproxy connects upstream when it gets the CONNECT, so a gateway without
network or DNS answers the CONNECT with a 502; doctor said "check the proxy credentials", and the
CA variable checks then said "the gateway is not reachable" right after "proxy reachable"."""

from __future__ import annotations

from spendgate.deploy import doctor


def test_a_502_at_connect_is_named_as_the_gateway_not_reaching_the_provider(monkeypatch):
    def refused(proxy, host):
        raise ConnectionError("the proxy answered 'HTTP/1.1 502 Bad Gateway'")

    monkeypatch.setattr(doctor, "gateway_ca", refused)
    check, gw = doctor.check_gateway_ca(doctor.Proxy("127.0.0.1", 1, None, None), "api.anthropic.com")
    assert gw is None and check.status == "fail"
    assert "could not reach api.anthropic.com" in check.detail and "DNS" in check.fix
    assert "credentials" not in check.fix
    (var, *_) = doctor.check_ca_vars({"NODE_EXTRA_CA_CERTS": "/x.pem"}, [], None, "api.anthropic.com", None, kit=False)
    assert "presented no CA" in var.detail and "not reachable" not in var.detail
