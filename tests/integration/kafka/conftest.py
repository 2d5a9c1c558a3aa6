"""Fixtures for the Kafka tests: one Tansu server per test process, a prefix per test.

Worker processes are killed after each test; when one fails, their logs are added to
its report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from kafka_harness import KafkaDeployment, stop_server

LEASE_SECONDS = 2.0  # as the sqlite deployments of the integration harness

_DEPLOYMENT = pytest.StashKey[KafkaDeployment]()


@pytest.fixture(scope="session", autouse=True)
def _stop_kafka_server() -> Iterator[None]:
    """Stop this process's Kafka server (Tansu) when the session ends."""
    yield
    stop_server()


@pytest.fixture
def deployment(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[KafkaDeployment]:
    """The integration harness's deployment, on Kafka: ledger, workers, probe."""
    world = KafkaDeployment(tmp_path, LEASE_SECONDS)
    request.node.stash[_DEPLOYMENT] = world
    try:
        yield world
    finally:
        world.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    world = item.stash.get(_DEPLOYMENT, None)
    if report.failed and world is not None and world.workers:
        report.sections.append(("worker logs", world.dump_logs()))
    return report
