"""Fixtures for the RabbitMQ tests: a vhost of the test's own, and a deployment in it.

Every fixture cleans up after itself: worker processes are killed, the broker is started
again if a test left it stopped, and the vhost is deleted with all it holds. When a test
fails, the logs of its worker processes are added to its report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from rabbit_harness import Deploy, FreezableProxy, Rabbit, RabbitDeployment

_DEPLOYMENTS = pytest.StashKey[list[RabbitDeployment]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "restarts_rabbitmq: the test stops and starts the RabbitMQ application")


@pytest.fixture
def rabbit(request: pytest.FixtureRequest) -> Iterator[Rabbit]:
    """RabbitMQ with a vhost of this test's own (deleted afterwards).

    Tests marked ``restarts_rabbitmq`` may stop and start the broker; they run alone.
    """
    server = Rabbit(restarts=request.node.get_closest_marker("restarts_rabbitmq") is not None)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def proxy() -> Iterator[FreezableProxy]:
    server = FreezableProxy()
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
    return report
