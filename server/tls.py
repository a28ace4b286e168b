"""The server's TLS identity: a self-signed certificate made at first start, or the operator's.

Clients pin the certificate by the SHA-256 of its DER encoding, printed at start and served
at `/api/v1/info`, so a self-signed certificate is as safe as a CA-issued one once pinned.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from blockstore.fsutil import write_private
from server.private import private_dir

CERT_VALID_DAYS = 3650


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the certificate and key are, and the certificate's pin."""

    cert: Path
    key: Path
    fingerprint: str


def fingerprint_of(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER, as uppercase hex pairs joined by colons."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _generate(cert_path: Path, key_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"drive server on {host}")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName(host),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_dir(cert_path.parent)
    write_private(key_path, key_pem)
    tmp = cert_path.with_suffix(".tmp")
    write_private(tmp, cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, cert_path)


def ensure_tls(data_dir: Path, cert: Path | None = None, key: Path | None = None) -> TlsFiles:
    """Use the given certificate and key, else the self-signed pair in DATA/tls (made once)."""
    if cert is not None and key is not None:
        return TlsFiles(cert, key, fingerprint_of(cert.read_bytes()))
    cert_path = data_dir / "tls" / "cert.pem"
    key_path = data_dir / "tls" / "key.pem"
    if not (cert_path.exists() and key_path.exists()):
        _generate(cert_path, key_path)
    return TlsFiles(cert_path, key_path, fingerprint_of(cert_path.read_bytes()))
