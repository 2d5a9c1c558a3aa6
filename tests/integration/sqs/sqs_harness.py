"""The ledger deployment of the integration harness, on an SQS broker (ministack).

The broker is ``sqs://`` on the test process's ministack server (``sqs_server`` in
tests/contract); each deployment has a queue-name prefix of its own, whose queues are
deleted after the test. SQS keeps no results: they go to a SQLite file in the test's
directory. Idle workers poll every 0.1 s, so a lease that runs out is seen at once.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import sqs_server
from worker_harness import BrokerProbe, Deployment

from celeriac.brokers import create_broker

POLLING_INTERVAL = 0.1


class SqsProbe(BrokerProbe):
    """The harness's probe, on the deployment's queues."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        super().__init__("memory://")
        self._runner.run(self.broker.close())
        self.broker = create_broker(url, options)
        self._runner.run(self.broker.connect())


class SqsDeployment(Deployment):
    """Workers and producers on SQS queues of this deployment's own prefix."""

    def __init__(self, root: Path, lease_seconds: float) -> None:
        self._namespace = contextlib.ExitStack()
        options = self._namespace.enter_context(sqs_server.namespace(
            polling_interval=POLLING_INTERVAL, lease_seconds=lease_seconds))
        super().__init__(root, sqs_server.broker_url(), f"sqlite:///{root / 'results.db'}",
                         **options)

    @property
    def probe(self) -> BrokerProbe:
        if self._probe is None:
            self._probe = SqsProbe(self.url, self.transport_options)
        return self._probe

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._namespace.close()
