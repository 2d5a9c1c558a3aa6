"""Celery's signals on real worker processes on RabbitMQ (scenarios: signal_cases), in a
vhost of each test's own, deleted afterwards."""

from __future__ import annotations

import signal_cases
from rabbit_harness import RabbitDeployment


def test_every_signal_fires_with_celerys_arguments(deployment: RabbitDeployment) -> None:
    signal_cases.every_signal_fires_with_celerys_arguments(deployment)
