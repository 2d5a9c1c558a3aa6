"""The integration harness's deployment on a Kafka broker (Tansu, started by the tests).

Results go to an SQLite file of the test's own: Kafka keeps no results. Each test gets
a topic prefix of its own; its topics are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

from worker_harness import Deployment, register

from celeriac import App
from celeriac.brokers import create_broker

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "contract"))
from kafka_server import kafka_url, stop_server  # the contract suite's server module

__all__ = ["KafkaDeployment", "delete_topics", "kafka_url", "stop_server"]


class KafkaDeployment(Deployment):
    """The ledger deployment of ``worker_harness``, on Kafka with an SQLite backend."""

    def __init__(self, root: Path, lease_seconds: float) -> None:
        super().__init__(root)
        self.app.close()  # the SQLite producer made by the base class, never connected
        self.prefix = f"it{uuid.uuid4().hex[:12]}."
        self.url = f"{kafka_url()}?prefix={self.prefix}"
        self.backend = f"sqlite:///{root / 'results.db'}"
        self.lease_seconds = lease_seconds
        self.app = App("ledger-tests", broker=self.url, backend=self.backend,
                       broker_transport_options={"lease_seconds": lease_seconds})
        self.tasks = register(self.app)

    def env(self, **settings: Any) -> dict[str, str]:
        settings.setdefault("broker_transport_options", {"lease_seconds": self.lease_seconds})
        settings.setdefault("result_backend", self.backend)
        return super().env(**settings)

    def make_app(self, **settings: Any) -> App:
        options = {"lease_seconds": self.lease_seconds,
                   **settings.pop("broker_transport_options", {})}
        app = App("ledger-tests", broker=self.url, backend=self.backend,
                  broker_transport_options=options, **settings)
        self._extra_apps.append(app)
        return app

    def close(self) -> None:
        try:
            super().close()
        finally:
            delete_topics(self.url)


def delete_topics(url: str) -> None:
    async def delete() -> None:
        cleaner = create_broker(url)
        try:
            await cleaner.delete_topics()  # type: ignore[attr-defined]
        finally:
            await cleaner.close()

    asyncio.run(delete())
