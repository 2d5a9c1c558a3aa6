"""Errors say what is wrong, at once (issue 10, part 5, on Redis).

Permanent causes fail at once, with the server's or the TLS library's own words, as
BrokerRefused (broker) or BackendRefused (result backend): a refused password, no
password where one is required, an unknown database index, a certificate the client
does not trust. Transient causes (a closed port) are retried within the connection
timeout, and the error that ends the wait, BrokerUnavailable, names the last real cause
and chains it; a server that comes back within the timeout is simply reached.

Each test runs a redis-server of its own: with a password, or with TLS only, on
certificates made here with ``cryptography``.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis_harness import RedisServer, free_port

from celeriac import App
from celeriac.backends import create_backend
from celeriac.brokers import Outgoing, create_broker
from celeriac.errors import BackendRefused, BrokerRefused, BrokerUnavailable

PASSWORD = "s3cret-pw"
AT_ONCE = 1.0  # a refusal comes well within this (no retrying until a timeout)
TIMEOUT = 3.0  # the connection_timeout of these tests


def broker_connect(url: str, **options: object) -> float:
    """Connect a broker; return how long it took (raises what connect raises)."""
    broker = create_broker(url, {"connection_timeout": TIMEOUT, **options})

    async def run() -> float:
        started = time.monotonic()
        try:
            await broker.connect()
            await broker.publish([Outgoing("m", "q", b"body")])
            return time.monotonic() - started
        finally:
            await broker.close()

    return asyncio.run(run())


def backend_connect(url: str) -> None:
    backend = create_backend(url, {"connection_timeout": TIMEOUT})

    async def run() -> None:
        try:
            await backend.connect()
        finally:
            await backend.close()

    asyncio.run(run())


@pytest.fixture
def locked_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server that requires a password (the URL carries the right one)."""
    directory = tmp_path / "locked"
    directory.mkdir()
    server = RedisServer(directory, ("--requirepass", PASSWORD),
                         url=f"redis://:{PASSWORD}@127.0.0.1:{{port}}/0")
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("credentials", "database", "words"), [
    (":wrong-pw@", 0, "invalid username-password pair"),
    ("", 0, "AuthenticationError"),
    (f":{PASSWORD}@", 99, "DB index is out of range"),
])
def test_a_refusal_is_raised_at_once_with_its_cause(
    locked_server: RedisServer, credentials: str, database: int, words: str,
) -> None:
    url = f"redis://{credentials}127.0.0.1:{locked_server.port}/{database}"
    # The right password and database connect (the server is fine)
    broker_connect(f"redis://:{PASSWORD}@127.0.0.1:{locked_server.port}/0")

    # A broker: BrokerRefused at once, with the server's words
    started = time.monotonic()
    with pytest.raises(BrokerRefused, match="Redis refused the connection") as refused:
        broker_connect(url)
    assert words in str(refused.value)
    assert time.monotonic() - started < AT_ONCE
    assert PASSWORD not in str(refused.value)  # never the secret

    # A result backend: BackendRefused, likewise
    started = time.monotonic()
    with pytest.raises(BackendRefused, match=words):
        backend_connect(url)
    assert time.monotonic() - started < AT_ONCE

    # A sync producer (delay() from plain code, on the blocking client): BrokerRefused
    app = App("refused", broker=url, backend="memory://",
              broker_transport_options={"connection_timeout": TIMEOUT})

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    try:
        started = time.monotonic()
        with pytest.raises(BrokerRefused, match=words):
            add.delay(1, 2)
        assert time.monotonic() - started < AT_ONCE
    finally:
        app.close()


@pytest.mark.timeout(30)
def test_a_closed_port_is_retried_within_the_timeout_and_names_its_cause() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as unavailable:
        broker_connect(url)
    elapsed = time.monotonic() - started
    # Retried until the timeout, not given up after the first refusal, nor hung
    assert TIMEOUT - 0.5 < elapsed < TIMEOUT + 1.0, elapsed
    # The message names the real cause, and the chain keeps it
    text = str(unavailable.value)
    assert "Connect call failed" in text or "Connection refused" in text, text
    chain = []
    cause: BaseException | None = unavailable.value
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    assert any(isinstance(c, ConnectionRefusedError | OSError) for c in chain[1:]), chain


@pytest.mark.timeout(30)
def test_a_server_back_within_the_timeout_is_reached(redis_server: RedisServer) -> None:
    # Given a server that is down when the broker connects, and back 1 s later
    redis_server.shutdown()
    restarter = threading.Timer(1.0, redis_server.start)
    restarter.start()
    try:
        # Then connecting (and publishing) succeeds, inside the timeout
        assert broker_connect(redis_server.url) < TIMEOUT + 1.0
    finally:
        restarter.join()


# -- TLS ----------------------------------------------------------------------------------


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signs for 127.0.0.1: (ca, cert, key) files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "celeriac test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[RedisServer, Path]]:
    """A redis-server that speaks TLS only, and the CA file that signed its certificate."""
    directory = tmp_path / "tls"
    directory.mkdir()
    ca, cert, key = make_certificates(directory)
    server = RedisServer(
        directory,
        ("--port", "0", "--tls-port", "{port}", "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no"),
        url="rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none")
    try:
        yield server, ca
    finally:
        server.kill()


@pytest.mark.timeout(30)
def test_an_untrusted_certificate_is_refused_at_once(
    tls_server: tuple[RedisServer, Path],
) -> None:
    server, ca = tls_server
    url = f"rediss://127.0.0.1:{server.port}/0"
    # Trusting the CA that signed the server's certificate works
    broker_connect(url, ssl_ca_certs=str(ca))

    # Not trusting it (the system's CAs only) is refused at once, with the reason
    started = time.monotonic()
    with pytest.raises(BrokerRefused, match="TLS certificate verification failed") as refused:
        broker_connect(url)
    assert "certificate" in str(refused.value)
    assert time.monotonic() - started < AT_ONCE
    with pytest.raises(BackendRefused, match="TLS certificate verification failed"):
        backend_connect(url)

    # And plain text against the TLS port is told to use rediss://, at once
    started = time.monotonic()
    with pytest.raises(BrokerRefused, match="speaks TLS .* use rediss://"):
        broker_connect(f"redis://127.0.0.1:{server.port}/0", connection_timeout=4.0)
    assert time.monotonic() - started < AT_ONCE
