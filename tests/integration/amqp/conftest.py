"""Fixtures for the RabbitMQ tests: a vhost of the test's own, and a deployment in it.

``rabbit`` is a vhost on the shared RabbitMQ, which no test may stop or misconfigure.
A test that does (restarts, refused logins, TLS) asks for ``private_rabbit``: a vhost on
a RabbitMQ node of the test run's own (``rabbit_node``), started once and stopped at
the end; a test that leaves the node stopped has it started again for the next.
A test module can make ``rabbit`` mean ``private_rabbit`` for every fixture built on it
(``deployment``, ``deploy``) by overriding it.

Every fixture cleans up after itself: worker processes are killed, the vhost is deleted
with all it holds, private nodes are shut down. When a test fails, the logs of its
worker processes (and of a private node) are added to its report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from fault_proxy import FaultProxy
from rabbit_harness import PORT, Deploy, Rabbit, RabbitDeployment, unavailable
from rabbit_node import RabbitNode

_DEPLOYMENTS = pytest.StashKey[list[RabbitDeployment]]()


_NODES = pytest.StashKey[list[RabbitNode]]()


@pytest.fixture
def rabbit() -> Iterator[Rabbit]:
    """The shared RabbitMQ with a vhost of this test's own (deleted afterwards)."""
    server = Rabbit()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def rabbit_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A RabbitMQ node of the test run's own, with a TLS listener too (see rabbit_node).

    One for the whole run (starting one takes about 4.5 s): tests share it through a
    vhost each, and one that stops it has it started again for the next.
    """
    node = RabbitNode(tmp_path_factory.mktemp("rabbit-node"), tls=True)
    try:
        node.start()
    except FileNotFoundError as exc:
        unavailable(str(exc))
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def private_rabbit(rabbit_node: RabbitNode, request: pytest.FixtureRequest
                   ) -> Iterator[Rabbit]:
    """A vhost of this test's own on the private node, which the test may stop."""
    request.node.stash.setdefault(_NODES, []).append(rabbit_node)
    if not rabbit_node.running:  # an earlier test left it stopped
        rabbit_node.start()
    server = Rabbit(rabbit_node)
    try:
        yield server
    finally:
        if not rabbit_node.running:
            rabbit_node.start()
        server.close()


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    """A fault-injection proxy in front of the shared RabbitMQ."""
    server = FaultProxy(PORT)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def deploy(rabbit: Rabbit, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Deploy]:
    """Makes deployments in the test's vhost: ``deploy(backend=..., **transport_options)``."""
    made: list[RabbitDeployment] = request.node.stash.setdefault(_DEPLOYMENTS, [])

    def make(backend: str | None = None, **options: object) -> RabbitDeployment:
        root = tmp_path / f"world-{len(made)}"
        root.mkdir()
        world = RabbitDeployment(root, rabbit, backend, **options)
        made.append(world)
        return world

    try:
        yield make
    finally:
        for world in made:
            world.close()


@pytest.fixture
def deployment(deploy: Deploy) -> RabbitDeployment:
    """A deployment with the default settings: durable queues, SQLite results."""
    return deploy()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for world in item.stash.get(_DEPLOYMENTS, []):
            if world.workers:
                report.sections.append(("worker logs", world.dump_logs()))
        for node in item.stash.get(_NODES, []):
            report.sections.append((f"RabbitMQ node {node.name}", node.log_tail(15)))
    return report
