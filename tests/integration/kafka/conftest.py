"""Fixtures for the Kafka tests: one Tansu server per test process, a prefix per test.

Worker processes are killed after each test; when one fails, their logs are added to
its report.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka_harness import KafkaDeployment, stop_server
from worker_harness import reported

LEASE_SECONDS = 2.0  # as the sqlite deployments of the integration harness



@pytest.fixture(scope="session", autouse=True)
def _stop_kafka_server() -> Iterator[None]:
    """Stop this process's Kafka server (Tansu) when the session ends."""
    yield
    stop_server()


@pytest.fixture
def deployment(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[KafkaDeployment]:
    """The integration harness's deployment, on Kafka: ledger, workers, probe."""
    yield from reported(request, KafkaDeployment(tmp_path, LEASE_SECONDS))

