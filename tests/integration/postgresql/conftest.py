"""Fixtures for the PostgreSQL tests: a database per module, a schema per test.

Worker processes are killed after each test; when one fails, their logs are added to
its report.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_harness import PostgreSQLDeployment, database, with_schema
from worker_harness import reported

LEASE_SECONDS = 2.0  # as the sqlite deployments of the integration harness



@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with database("integration") as url:
        yield url


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """A URL with a schema of this test's own."""
    return with_schema(pg_database)


@pytest.fixture
def deployment(pg_url: str, tmp_path: Path,
               request: pytest.FixtureRequest) -> Iterator[PostgreSQLDeployment]:
    """The integration harness's deployment, on PostgreSQL: ledger, workers, probe."""
    yield from reported(request, PostgreSQLDeployment(tmp_path, pg_url, LEASE_SECONDS))

