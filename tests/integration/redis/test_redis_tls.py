"""TLS and credentials against redis-servers of the tests' own, with certificates made here.

Three private servers, for the module: TLS with client certificates required (mutual
TLS), TLS presenting an expired certificate, and plain with a password. Each failure
must be a clear error at once: no hang, no retrying until a timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from bus_check import bus_round_trip
from redis_harness import RedisDeployment, RedisServer, unique_prefix, with_prefix
from tls_certs import Certificates
from worker_harness import register, wait_until

from celeriac import App, BrokerAuthenticationError, BrokerRefused
from celeriac.brokers import create_broker

# Seconds: a refusal is raised within this, never after retrying until the connection
# timeout below, so a hang shows as a failure. Alone a refusal takes about 1 s; beside
# the rest of the suite on 2 cores a mutual-TLS refusal (a second handshake to learn
# why) has taken up to 6 s.
AT_ONCE = 10.0
CONNECTION_TIMEOUT = 30.0
PASSWORD = "s3cret-Pa55"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates.make(tmp_path_factory.mktemp("certs"))


def _tls_server(directory: Path, certs: Certificates, cert: Path, auth_clients: str
                ) -> RedisServer:
    query = f"ssl_ca_certs={certs.ca}&ssl_certfile={certs.client_cert}" \
            f"&ssl_keyfile={certs.client_key}&ssl_check_hostname=false"
    if cert == certs.expired_cert:
        query = "ssl_cert_reqs=none"
    return RedisServer(
        directory,
        ("--port", "0", "--tls-port", "{port}", "--tls-cert-file", str(cert),
         "--tls-key-file", str(certs.server_key), "--tls-ca-cert-file", str(certs.ca),
         "--tls-auth-clients", auth_clients, "--appendonly", "no"),
        url="rediss://127.0.0.1:{port}/0?" + query)


@pytest.fixture(scope="module")
def mutual(tmp_path_factory: pytest.TempPathFactory, certs: Certificates
           ) -> Iterator[RedisServer]:
    """TLS only, a client certificate signed by the test CA required."""
    server = _tls_server(tmp_path_factory.mktemp("mtls"), certs, certs.server_cert, "yes")
    yield server
    server.kill()


@pytest.fixture(scope="module")
def expired(tmp_path_factory: pytest.TempPathFactory, certs: Certificates
            ) -> Iterator[RedisServer]:
    server = _tls_server(tmp_path_factory.mktemp("expired"), certs, certs.expired_cert,
                         "no")
    yield server
    server.kill()


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("locked"),
                         ("--requirepass", PASSWORD, "--appendonly", "no"),
                         url=f"redis://:{PASSWORD}@127.0.0.1:{{port}}/0")
    yield server
    server.kill()


def tls_settings(certs: Certificates, *, client: bool = True, ca: Path | None = None
                 ) -> dict[str, str]:
    """Celery's broker_use_ssl mapping (py-amqp's spelling for the client files, to
    show both are read)."""
    settings = {"ssl_cert_reqs": "required", "ssl_ca_certs": str(ca or certs.ca)}
    if client:
        settings |= {"certfile": str(certs.client_cert), "keyfile": str(certs.client_key)}
    return settings


def connect(url: str, **options: Any) -> float:
    """Connect a broker; the seconds it took (to fail)."""
    broker = create_broker(url, {"connection_timeout": CONNECTION_TIMEOUT, **options})
    started = time.monotonic()
    try:
        asyncio.run(broker.connect())
    finally:
        asyncio.run(broker.close())
    return time.monotonic() - started


@pytest.mark.timeout(60)
def test_a_task_round_trip_over_mutual_tls(mutual: RedisServer, certs: Certificates,
                                           tmp_path: Path) -> None:
    url = with_prefix(f"rediss://127.0.0.1:{mutual.port}/0", unique_prefix("tls"))
    tls = tls_settings(certs)
    world = RedisDeployment(tmp_path, url, 2.0)
    try:
        world.start_worker("-c", "1", broker_use_ssl=tls,
                           redis_backend_use_ssl=tls).wait_ready()
        app = world.make_app(broker_use_ssl=tls, redis_backend_use_ssl=tls)
        tasks = register(app)
        # (the producer's blocking clients; the worker's asyncio ones)
        assert tasks.add.delay(2, 3).get(timeout=20) == 5
    finally:
        world.close()


@pytest.mark.timeout(60)
def test_mutual_tls_without_a_client_certificate_is_refused_at_once(
    mutual: RedisServer, certs: Certificates,
) -> None:
    url = f"rediss://127.0.0.1:{mutual.port}/0"
    assert connect(url, ssl=tls_settings(certs)) < AT_ONCE  # with one: connects
    started = time.monotonic()
    with pytest.raises(BrokerRefused, match="certificate required"):
        connect(url, ssl=tls_settings(certs, client=False))
    assert time.monotonic() - started < AT_ONCE


@pytest.mark.timeout(60)
def test_a_wrong_ca_is_refused_at_once_and_verification_is_on_by_default(
    mutual: RedisServer, certs: Certificates,
) -> None:
    url = f"rediss://127.0.0.1:{mutual.port}/0"
    for ssl in (tls_settings(certs, ca=certs.other_ca),  # trusts another CA
                {"certfile": str(certs.client_cert), "keyfile": str(certs.client_key)}):
        started = time.monotonic()
        with pytest.raises(BrokerRefused, match="certificate verification failed"):
            connect(url, ssl=ssl)
        assert time.monotonic() - started < AT_ONCE


@pytest.mark.timeout(60)
def test_an_expired_server_certificate_is_refused_at_once(
    expired: RedisServer, certs: Certificates,
) -> None:
    started = time.monotonic()
    with pytest.raises(BrokerRefused, match="certificate has expired"):
        connect(f"rediss://127.0.0.1:{expired.port}/0", ssl=tls_settings(certs))
    assert time.monotonic() - started < AT_ONCE


@pytest.mark.timeout(60)
def test_a_plain_client_against_the_tls_port_is_told_at_once(mutual: RedisServer) -> None:
    started = time.monotonic()
    with pytest.raises(BrokerRefused, match="speaks TLS .*use rediss://"):
        connect(f"redis://127.0.0.1:{mutual.port}/0")
    assert time.monotonic() - started < AT_ONCE


@pytest.mark.timeout(60)
def test_a_settings_typo_names_the_option() -> None:
    with pytest.raises(Exception, match="unknown TLS option 'ssl_ca_cert'.*ssl_ca_certs"):
        App("typo", broker="rediss://127.0.0.1:1/0", broker_use_ssl={"ssl_ca_cert": "x"})


# -- credentials ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_wrong_password_is_a_clear_authentication_error_for_the_producer(
    locked: RedisServer,
) -> None:
    app = App("producer", broker=f"redis://:wrong-{PASSWORD}x@127.0.0.1:{locked.port}/0",
              backend=f"redis://:{PASSWORD}@127.0.0.1:{locked.port}/0")
    try:
        started = time.monotonic()
        with pytest.raises(BrokerAuthenticationError) as raised:
            app.send_task("ledger.add", (1, 2))
        assert time.monotonic() - started < AT_ONCE
        assert "password" in str(raised.value)
        assert PASSWORD not in str(raised.value)
    finally:
        app.close()


@pytest.mark.timeout(60)
def test_the_cli_says_a_refused_password_in_one_line_without_it(locked: RedisServer) -> None:
    wrong = f"wrong-{PASSWORD}x"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CELERIAC_", "CELERY_"))}
    env["CELERIAC_BROKER_URL"] = json.dumps(f"redis://:{wrong}@127.0.0.1:{locked.port}/0")
    done = subprocess.run([sys.executable, "-m", "celeriac", "call", "proj.add", "-a", "[1, 2]"],
                          env=env, capture_output=True, text=True, timeout=20, check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert "invalid username-password pair" in errors[0]
    assert wrong not in output
    assert "Traceback" not in output


@pytest.mark.timeout(60)
def test_a_worker_with_a_wrong_password_stops_with_one_line_without_the_password(
    locked: RedisServer, tmp_path: Path,
) -> None:
    url = f"redis://:wrong-{PASSWORD}x@127.0.0.1:{locked.port}/0"
    world = RedisDeployment(tmp_path, url, 2.0)
    try:
        worker = world.start_worker(broker_connection_retry_on_startup=False)
        assert worker.wait(30) != 0
        log = worker.log()
        assert "invalid username-password pair" in log, log
        assert PASSWORD not in log, log
        assert "Traceback" not in log, log
    finally:
        world.close()


@pytest.mark.timeout(90)
def test_a_running_worker_refused_its_password_retries_quietly_and_recovers(
    locked: RedisServer, tmp_path: Path,
) -> None:
    url = with_prefix(f"redis://:{PASSWORD}@127.0.0.1:{locked.port}/0", unique_prefix("pw"))
    world = RedisDeployment(tmp_path, url, 2.0)
    admin = redis.Redis(host="127.0.0.1", port=locked.port, password=PASSWORD)
    try:
        worker = world.start_worker("-c", "1").wait_ready()
        assert world.tasks.add.delay(1, 1).get(timeout=20) == 2
        # When the server starts refusing the worker's password (rotated on the server)
        admin.config_set("requirepass", "rotated-" + PASSWORD)
        admin.client_kill_filter(_type="normal", skipme=True)
        admin = redis.Redis(host="127.0.0.1", port=locked.port,
                            password="rotated-" + PASSWORD)
        window = 6.0
        time.sleep(window)  # the window whose log lines are counted
        failures = [line for line in worker.log().splitlines()
                    if "fetch from the broker failed" in line]
        # Then it retries with a backoff: a line per attempt, no tracebacks, no password
        assert 2 <= len(failures) <= 8, failures
        assert all("invalid username-password pair" in line for line in failures), failures
        attempts = [int(m.group(1)) for line in failures
                    if (m := re.search(r"attempt (\d+)", line))]
        assert attempts == sorted(attempts)
        assert "Traceback" not in worker.log()
        assert PASSWORD not in worker.log()
        # And once the password works again, it runs tasks again
        admin.config_set("requirepass", PASSWORD)
        wait_until(lambda: "fetch from the broker failed" not in worker.log().splitlines()[-1],
                   15, "the worker to reconnect")
        assert world.tasks.add.delay(2, 2).get(timeout=20) == 4
        assert worker.running
    finally:
        admin.config_set("requirepass", PASSWORD)
        admin.close()
        world.close()


@pytest.mark.timeout(60)
def test_the_bus_uses_the_brokers_tls_settings(mutual: RedisServer, certs: Certificates
                                              ) -> None:
    url = with_prefix(f"rediss://127.0.0.1:{mutual.port}/0", unique_prefix("tls-bus"))
    app = App("bus", broker=url, backend="memory://", broker_use_ssl=tls_settings(certs))
    try:
        assert asyncio.run(bus_round_trip(app)) == [b"over tls"]
    finally:
        app.close()

