"""Certificates made by the tests for their own TLS servers (Redis and RabbitMQ).

``Certificates.make(directory)`` writes PEM files: a test authority (``ca``) and an
unrelated one (``other_ca``, for "wrong CA"), a server certificate the test authority
signs for ``localhost`` and 127.0.0.1, the same server key with an expired certificate,
and a client certificate for mutual TLS. EC P-256 keys: made in milliseconds.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Certificates:
    ca: Path  # signed every certificate below
    other_ca: Path  # signed none of them: trusting only it must fail
    server_cert: Path
    server_key: Path
    expired_cert: Path  # the server key's certificate, expired an hour ago
    client_cert: Path
    client_key: Path

    @classmethod
    def make(cls, directory: Path) -> Certificates:
        directory.mkdir(parents=True, exist_ok=True)
        ca_key, ca = _authority("celeriac test CA")
        _, other = _authority("celeriac other CA")
        now = datetime.datetime.now(datetime.UTC)
        server_key = ec.generate_private_key(ec.SECP256R1())
        client_key = ec.generate_private_key(ec.SECP256R1())
        day = datetime.timedelta(days=1)
        files = cls(*(directory / name for name in (
            "ca.pem", "other-ca.pem", "server.pem", "server-key.pem", "expired.pem",
            "client.pem", "client-key.pem")))
        _write_cert(files.ca, ca)
        _write_cert(files.other_ca, other)
        _write_cert(files.server_cert, _leaf(ca_key, ca, server_key, "localhost",
                                             now - day, now + day, server=True))
        _write_cert(files.expired_cert, _leaf(ca_key, ca, server_key, "localhost",
                                              now - 2 * day, now - day / 24, server=True))
        _write_cert(files.client_cert, _leaf(ca_key, ca, client_key, "celeriac-worker",
                                             now - day, now + day, server=False))
        _write_key(files.server_key, server_key)
        _write_key(files.client_key, client_key)
        return files


def _authority(name: str) -> tuple[Key, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=3))
        .not_valid_after(now + datetime.timedelta(days=3))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256()))
    return key, certificate


def _leaf(ca_key: Key, ca: x509.Certificate, key: Key, name: str,
          not_before: datetime.datetime, not_after: datetime.datetime, *,
          server: bool) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _write_cert(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: Key) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o644)  # readable by a worker that dropped to nobody
