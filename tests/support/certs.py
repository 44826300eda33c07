"""A throw-away test CA and leaf certificates for given hostnames (loopback tests only).

    ca = TestCA(tmp_dir)                 # writes ca.pem / ca-key.pem
    cert, key = ca.leaf("api.anthropic.com")   # writes api.anthropic.com.pem / .key, cached
    ctx = ca.server_context("api.anthropic.com")  # ssl.SSLContext for a server, ALPN http/1.1
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import re
import ssl
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_COMMON_NAME = "spendgate test CA"


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class TestCA:
    __test__ = False  # not a pytest test class

    def __init__(self, directory: str | Path, common_name: str = CA_COMMON_NAME):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.common_name = common_name
        self._lock = threading.Lock()
        self._leaves: dict[str, tuple[Path, Path]] = {}
        self._contexts: dict[str, ssl.SSLContext] = {}
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "spendgate tests"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - _dt.timedelta(days=1))
            .not_valid_after(_now() + _dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = self.dir / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        (self.dir / "ca-key.pem").write_bytes(_pem_key(self.key))

    def leaf(self, hostname: str) -> tuple[Path, Path]:
        """(cert_file, key_file) for hostname (a DNS name or an IP literal), signed by this CA."""
        with self._lock:
            if hostname in self._leaves:
                return self._leaves[hostname]
            key = ec.generate_private_key(ec.SECP256R1())
            try:
                san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(hostname))
            except ValueError:
                san = x509.DNSName(hostname)
            cert = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])]))
                .issuer_name(self.cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(_now() - _dt.timedelta(days=1))
                .not_valid_after(_now() + _dt.timedelta(days=7))
                .add_extension(x509.SubjectAlternativeName([san]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                    critical=False,
                )
                .sign(self.key, hashes.SHA256())
            )
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", hostname)
            cert_file = self.dir / f"{safe}.pem"
            key_file = self.dir / f"{safe}.key"
            # chain: leaf then CA
            cert_file.write_bytes(
                cert.public_bytes(serialization.Encoding.PEM)
                + self.cert.public_bytes(serialization.Encoding.PEM)
            )
            key_file.write_bytes(_pem_key(key))
            self._leaves[hostname] = (cert_file, key_file)
            return cert_file, key_file

    def server_context(self, hostname: str) -> ssl.SSLContext:
        """A server-side SSLContext presenting a leaf for hostname; ALPN offers http/1.1 only."""
        cert_file, key_file = self.leaf(hostname)
        with self._lock:
            ctx = self._contexts.get(hostname)
            if ctx is None:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(str(cert_file), str(key_file))
                ctx.set_alpn_protocols(["http/1.1"])
                self._contexts[hostname] = ctx
            return ctx

    def client_context(self) -> ssl.SSLContext:
        """A client SSLContext trusting only this CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_ca(directory: str | Path) -> TestCA:
    return TestCA(directory)
