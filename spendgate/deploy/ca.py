"""The gateway's certificate authority, in mitmproxy's confdir format, without importing mitmproxy.

mitmdump reads ``<confdir>/mitmproxy-ca.pem`` (private key + certificate) and signs a leaf for
each provider host with it; clients trust ``mitmproxy-ca-cert.pem``. Creating (or importing) the
CA ourselves lets IT choose its name and lifetime, see its fingerprint before pushing it through
MDM, and keep the key readable by the gateway's user only.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_FILE = "mitmproxy-ca.pem"  # key + certificate: what mitmdump loads
CERT_FILE = "mitmproxy-ca-cert.pem"  # certificate only: what clients trust
CER_FILE = "mitmproxy-ca-cert.cer"  # the same PEM, for tools that want .cer
DEFAULT_CN = "spendgate gateway CA"
DEFAULT_DAYS = 730


class CAError(RuntimeError):
    """A CA we cannot create, import or read; the message says what to do."""


@dataclass(frozen=True, slots=True)
class CAInfo:
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: str  # AB:CD:... as macOS, Windows and browsers display it
    sha1: str  # Windows certificate-store thumbprint (hex, no colons)
    cert_file: Path | None = None
    key_file: Path | None = None
    key_mode: str | None = None  # e.g. "0600"


def default_confdir() -> Path:
    """Where scripts/run keeps mitmproxy's CA: $SPENDGATE_CONFDIR or ~/.mitmproxy."""
    return Path(os.environ.get("SPENDGATE_CONFDIR") or "~/.mitmproxy").expanduser()


def sha256_fingerprint(cert: x509.Certificate) -> str:
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def sha1_thumbprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - Windows' thumbprint, not security


def generate(common_name: str = DEFAULT_CN, organization: str = "spendgate", days: int = DEFAULT_DAYS,
             now: dt.datetime | None = None) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A fresh root CA. RSA 2048 because mitmproxy reuses the CA key for every leaf it signs."""
    now = now or dt.datetime.now(dt.UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))  # laptops with slightly wrong clocks
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def load_certs(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM blob (public root bundles hold a few old, non-RFC-5280 ones)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return x509.load_pem_x509_certificates(pem)
    except ValueError:
        return []


def load_import(pem: bytes, key_pem: bytes | None = None) -> tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
                                                                     x509.Certificate]:
    """Key and CA certificate from PEM (one file holding both, or two); checked before use."""
    certs = load_certs(pem)
    if not certs:
        raise CAError("no PEM certificate found in the imported file")
    try:
        key = serialization.load_pem_private_key(key_pem or pem, password=None)
    except (ValueError, TypeError) as e:
        raise CAError(f"no unencrypted PEM private key found (pass --key FILE; decrypt it first): {e}") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CAError("the private key must be RSA or EC")
    cert = certs[0]
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise CAError("the private key does not belong to the certificate")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CAError("the certificate is not a CA (basicConstraints CA:TRUE is missing)")
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise CAError(f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    return key, cert


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create with `mode` from the start (no window where the key is world-readable), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)  # umask may have narrowed it; never widened
    os.replace(tmp, path)


def write_confdir(confdir: Path, key, cert: x509.Certificate, *, force: bool = False) -> CAInfo:
    """Write the CA where mitmdump looks; refuse to replace an existing one unless `force`."""
    confdir.mkdir(parents=True, exist_ok=True)
    os.chmod(confdir, 0o700)
    key_file, cert_file = confdir / KEY_FILE, confdir / CERT_FILE
    if key_file.exists() and not force:
        raise CAError(f"{key_file} already exists; `spendgate ca show` prints it, --force replaces it "
                      "(see mdm/README.md, 'Rotating the CA', before you do)")
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    _write(key_file, key_pem + cert_pem, 0o600)
    _write(cert_file, cert_pem, 0o644)
    _write(confdir / CER_FILE, cert_pem, 0o644)
    # mitmproxy's .p12 copies would otherwise describe the previous CA
    for stale in ("mitmproxy-ca.p12", "mitmproxy-ca-cert.p12"):
        (confdir / stale).unlink(missing_ok=True)
    return info(confdir)


def describe(cert: x509.Certificate) -> CAInfo:
    return CAInfo(
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha256=sha256_fingerprint(cert),
        sha1=sha1_thumbprint(cert),
    )


def info(confdir: Path) -> CAInfo:
    """What `ca show` prints: the certificate's identity and the key file's permissions."""
    cert_file, key_file = confdir / CERT_FILE, confdir / KEY_FILE
    source = cert_file if cert_file.exists() else key_file
    try:
        certs = load_certs(source.read_bytes())
    except OSError as e:
        raise CAError(f"no CA in {confdir} ({e.strerror}); create one with `spendgate ca init --confdir {confdir}`") \
            from None
    if not certs:
        raise CAError(f"{source} holds no PEM certificate")
    d = describe(certs[0])
    mode = f"{stat.S_IMODE(key_file.stat().st_mode):04o}" if key_file.exists() else None
    return CAInfo(d.subject, d.not_before, d.not_after, d.sha256, d.sha1, cert_file, key_file if mode else None, mode)


def key_problem(ca: CAInfo) -> str | None:
    """Why the key file is unsafe, if it is: anyone who reads it can impersonate provider hosts."""
    if ca.key_mode and int(ca.key_mode, 8) & 0o077:
        return f"{ca.key_file} is mode {ca.key_mode}; run: chmod 600 {ca.key_file}"
    return None


def pem_sha256(pem: bytes) -> list[str]:
    """Fingerprints of every certificate in a PEM bundle (to ask: does this bundle hold our CA?)."""
    return [sha256_fingerprint(c) for c in load_certs(pem)]


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def bundle_pem(ca_pem: bytes, extra_roots: bytes = b"") -> bytes:
    """Public roots (certifi) + your internal roots + our CA: for SSL_CERT_FILE and friends, which
    REPLACE a client's trust store, so the bundle must still trust every other site."""
    import certifi  # a mitmproxy dependency, so always installed next to spendgate

    parts = [Path(certifi.where()).read_bytes().rstrip(b"\n"), extra_roots.rstrip(b"\n"), ca_pem.rstrip(b"\n")]
    return b"\n".join(p for p in parts if p) + b"\n"
