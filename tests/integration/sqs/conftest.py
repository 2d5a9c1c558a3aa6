"""Fixtures for the SQS tests: one ministack server per test process, a queue-name
prefix per test (its queues deleted after it).

Worker processes are killed after each test; when one fails, their logs are added to
its report.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_harness import reported

# The server launcher is shared with the contract suite.
sys.path.insert(0, str(Path(__file__).parents[2] / "contract"))

import sqs_server
from sqs_harness import SqsDeployment

LEASE_SECONDS = 2.0  # as the sqlite deployments of the integration harness



@pytest.fixture(scope="session", autouse=True)
def _sqs_server() -> Iterator[None]:
    yield
    sqs_server.stop()


@pytest.fixture
def deployment(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SqsDeployment]:
    """The integration harness's deployment, on SQS: ledger, workers, probe."""
    yield from reported(request, SqsDeployment(tmp_path, LEASE_SECONDS))

