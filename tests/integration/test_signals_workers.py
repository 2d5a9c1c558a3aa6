"""Celery's signals on real worker processes on the embedded SQLite broker (scenarios:
signal_cases)."""

from __future__ import annotations

import signal_cases
from worker_harness import Deployment


def test_every_signal_fires_with_celerys_arguments(deployment: Deployment) -> None:
    signal_cases.every_signal_fires_with_celerys_arguments(deployment)


def test_setup_logging_takes_logging_over(deployment: Deployment) -> None:
    signal_cases.setup_logging_takes_logging_over(deployment)
