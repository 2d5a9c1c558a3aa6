"""Fixtures for the integration tests: a Deployment per test, its workers always killed.

When a test fails, the logs of the worker processes it started are added to its report
(here for every directory below too: their ``deployment`` fixtures use ``reported``).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from worker_harness import REPORTED, Deployment, reported


@pytest.fixture
def deployment(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """A SQLite broker and backend, a ledger, and the worker processes the test starts."""
    yield from reported(request, Deployment(tmp_path))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    world = item.stash.get(REPORTED, None)
    if report.failed and world is not None and world.workers:
        report.sections.append(("worker logs", world.dump_logs()))
    return report
