"""TLS and credentials against RabbitMQ nodes of the tests' own, with certificates made here.

Two private nodes for the module (each boots in a few seconds): one whose TLS listener
requires a client certificate signed by the test CA (mutual TLS), and one presenting an
expired certificate. Never the shared server on 5672. Every failure must be a clear
error at once: no hang, no retrying until a timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bus_check import bus_round_trip
from rabbit_harness import Rabbit, RabbitDeployment
from rabbit_node import HOST, RabbitNode
from tls_certs import Certificates
from worker_harness import register

from celeriac import App, BrokerAuthenticationError, BrokerRefused
from celeriac.brokers import create_broker

AT_ONCE = 2.0  # seconds: a refusal is raised within this, never after retrying


class TLSNode(RabbitNode):
    """A private node whose TLS listener uses the test's certificates."""

    def __init__(self, root: Path, certs: Certificates, cert: Path, *, mutual: bool) -> None:
        self.certs, self.cert, self.mutual = certs, cert, mutual
        super().__init__(root, tls=True)

    def _config(self) -> str:
        return "\n".join([
            f"listeners.tcp.1 = {HOST}:{self.port}", "disk_free_limit.absolute = 50MB",
            "log.console = false", "log.file.level = info",
            f"listeners.ssl.1 = {HOST}:{self.tls_port}",
            f"ssl_options.cacertfile = {self.certs.ca}",
            f"ssl_options.certfile = {self.cert}",
            f"ssl_options.keyfile = {self.certs.server_key}",
            f"ssl_options.verify = {'verify_peer' if self.mutual else 'verify_none'}",
            f"ssl_options.fail_if_no_peer_cert = {'true' if self.mutual else 'false'}",
        ]) + "\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates.make(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def mutual(tmp_path_factory: pytest.TempPathFactory, certs: Certificates
           ) -> Iterator[TLSNode]:
    node = TLSNode(tmp_path_factory.mktemp("mtls-node"), certs, certs.server_cert,
                   mutual=True).start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def expired(tmp_path_factory: pytest.TempPathFactory, certs: Certificates
            ) -> Iterator[TLSNode]:
    node = TLSNode(tmp_path_factory.mktemp("expired-node"), certs, certs.expired_cert,
                   mutual=False).start()
    yield node
    node.stop()


def tls_settings(certs: Certificates, *, client: bool = True, ca: Path | None = None
                 ) -> dict[str, str]:
    """Celery's broker_use_ssl for RabbitMQ (py-amqp's spelling: both are read)."""
    settings = {"cert_reqs": "required", "ca_certs": str(ca or certs.ca)}
    if client:
        settings |= {"certfile": str(certs.client_cert), "keyfile": str(certs.client_key)}
    return settings


def tls_url(node: RabbitNode, vhost: str = "/") -> str:
    return node.url(vhost, tls=True).replace("localhost", HOST)


def connect(url: str, **options: Any) -> None:
    broker = create_broker(url, {"connection_timeout": 4.0, **options})
    asyncio.run(_connect_and_close(broker))


async def _connect_and_close(broker: Any) -> None:
    try:
        await broker.connect()
    finally:
        await broker.close()
        # aiormq closes a connection whose reader failed (a TLS alert after the
        # handshake) in a task of its own: let it finish before the loop ends, or
        # asyncio.run cancels it half-way and a coroutine of it is never awaited.
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=5)


def refused_at_once(url: str, match: str, error: type[Exception] = BrokerRefused,
                    **options: Any) -> str:
    started = time.monotonic()
    with pytest.raises(error, match=match) as raised:
        connect(url, **options)
    assert time.monotonic() - started < AT_ONCE
    return str(raised.value)


class TLSDeployment(RabbitDeployment):
    """The ledger deployment on the mutual-TLS node, results over rpc:// (so the
    producer's blocking publisher, the rpc:// listener, aiormq and the worker's own
    wire connection all speak TLS)."""

    def __init__(self, root: Path, rabbit: Rabbit, url: str, tls: dict[str, str]) -> None:
        super().__init__(root, rabbit, "rpc://")
        self.app.close()  # the plain one made by the base class, never connected
        self.url, self.tls = url, tls
        self.app = App("ledger-tests", broker=url, backend="rpc://", broker_use_ssl=tls,
                       broker_transport_options=self.transport_options)
        self.tasks = register(self.app)

    def env(self, **settings: Any) -> dict[str, str]:
        settings.setdefault("broker_use_ssl", self.tls)
        return super().env(**settings)


@pytest.mark.timeout(90)
def test_a_task_round_trip_over_mutual_tls(mutual: TLSNode, certs: Certificates,
                                           tmp_path: Path) -> None:
    rabbit = Rabbit(mutual)
    world = TLSDeployment(tmp_path, rabbit, tls_url(mutual, rabbit.vhost),
                          tls_settings(certs))
    try:
        world.start_worker("-c", "1").wait_ready(timeout=40)
        assert world.tasks.add.delay(2, 3).get(timeout=30) == 5
        assert world.tasks.add.apply_async((4, 5), countdown=0.2).get(timeout=30) == 9
    finally:
        world.close()
        rabbit.close()


@pytest.mark.timeout(30)
def test_mutual_tls_without_a_client_certificate_is_refused_at_once(
    mutual: TLSNode, certs: Certificates,
) -> None:
    connect(tls_url(mutual), ssl=tls_settings(certs))  # with one: connects
    refused_at_once(tls_url(mutual), "certificate required",
                    ssl=tls_settings(certs, client=False))


@pytest.mark.timeout(30)
def test_a_wrong_ca_is_refused_at_once_and_verification_is_on_by_default(
    mutual: TLSNode, certs: Certificates,
) -> None:
    refused_at_once(tls_url(mutual), "not trusted",
                    ssl=tls_settings(certs, ca=certs.other_ca))
    refused_at_once(tls_url(mutual), "not trusted",  # no CA given: the system's only
                    ssl={"certfile": str(certs.client_cert), "keyfile": str(certs.client_key)})


@pytest.mark.timeout(30)
def test_an_expired_server_certificate_is_refused_at_once(
    expired: TLSNode, certs: Certificates,
) -> None:
    refused_at_once(tls_url(expired), "certificate has expired", ssl=tls_settings(certs))


@pytest.mark.timeout(30)
def test_a_plain_client_against_the_tls_port_is_told_at_once(mutual: TLSNode) -> None:
    assert mutual.tls_port is not None
    refused_at_once(f"amqp://guest:guest@{HOST}:{mutual.tls_port}/", "use amqps://")


@pytest.mark.timeout(30)
def test_tls_options_for_a_plain_url_are_an_error(certs: Certificates) -> None:
    with pytest.raises(Exception, match="use amqps://"):
        create_broker(f"amqp://guest:guest@{HOST}:1/", {"ssl": tls_settings(certs)})


# -- credentials ---------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_wrong_password_is_a_clear_authentication_error(mutual: TLSNode) -> None:
    secret = "wrong-Pa55word"
    url = f"amqp://guest:{secret}@{HOST}:{mutual.port}/"
    text = refused_at_once(url, "ACCESS_REFUSED", BrokerAuthenticationError)
    assert secret not in text
    app = App("producer", broker=url, backend="memory://")  # delay(): blocking publisher
    try:
        with pytest.raises(BrokerAuthenticationError) as raised:
            app.send_task("ledger.add", (1, 2))
        assert secret not in str(raised.value)
    finally:
        app.close()


@pytest.mark.timeout(60)
def test_a_worker_with_a_wrong_password_stops_with_one_line_without_it(
    mutual: TLSNode, tmp_path: Path,
) -> None:
    secret = "wrong-Pa55word"
    rabbit = Rabbit(mutual)
    world = RabbitDeployment(tmp_path, rabbit)
    try:
        worker = world.start_worker(
            broker_url=f"amqp://guest:{secret}@{HOST}:{mutual.port}/{rabbit.vhost}",
            broker_connection_retry_on_startup=False)
        assert worker.wait(30) != 0
        log = worker.log()
        assert "ACCESS_REFUSED" in log, log
        assert secret not in log, log
        assert "Traceback" not in log, log
    finally:
        world.close()
        rabbit.close()


@pytest.mark.timeout(30)
def test_the_bus_uses_the_brokers_tls_settings(mutual: TLSNode, certs: Certificates) -> None:
    rabbit = Rabbit(mutual)
    app = App("bus", broker=tls_url(mutual, rabbit.vhost), backend="memory://",
              broker_use_ssl=tls_settings(certs))
    try:
        assert asyncio.run(bus_round_trip(app)) == [b"over tls"]
    finally:
        app.close()
        rabbit.close()


@pytest.mark.timeout(120)
def test_a_running_worker_refused_its_password_retries_quietly_and_recovers(
    mutual: TLSNode, tmp_path: Path,
) -> None:
    user, password = "celeriac-rotated", "first-Pa55word"
    rabbit = Rabbit(mutual)
    mutual.ctl("add_user", user, password)
    mutual.ctl("set_permissions", "-p", rabbit.vhost, user, ".*", ".*", ".*")
    world = RabbitDeployment(tmp_path, rabbit)
    url = f"amqp://{user}:{password}@{HOST}:{mutual.port}/{rabbit.vhost}"
    try:
        worker = world.start_worker("-c", "1", broker_url=url).wait_ready(timeout=40)
        producer = world.make_app()
        tasks = register(producer)
        assert tasks.add.delay(1, 1).get(timeout=30) == 2
        # When the password is changed on the server and the connections are closed
        mutual.ctl("change_password", user, "second-Pa55word")
        mutual.ctl("close_all_connections", "-p", rabbit.vhost, "password rotated")
        time.sleep(6.0)  # the window whose log lines are counted
        failures = [line for line in worker.log().splitlines()
                    if "fetch from the broker failed" in line]
        # Then it retries with a backoff: a line per attempt, no tracebacks, no password
        assert 1 <= len(failures) <= 8, failures
        assert any("ACCESS_REFUSED" in line for line in failures), failures
        # (aiormq itself logs the forced close once, with a traceback; the retries none)
        retrying = worker.log().split("fetch from the broker failed", 1)[1]
        assert "Traceback" not in retrying
        assert password not in worker.log()
        # And once the password works again, it runs tasks again
        mutual.ctl("change_password", user, password)
        assert tasks.add.delay(2, 2).get(timeout=40) == 4
        assert worker.running
    finally:
        world.close()
        rabbit.close()
        mutual.ctl("delete_user", user)
