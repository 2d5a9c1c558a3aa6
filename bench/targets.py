"""What is measured: a framework on a broker, behind one small interface.

A ``Target`` opens a ``Session`` per workload: fresh broker and backend storage in the
workload's own directory, a producer, and the command line of a worker on the same
storage. The workloads (``bench.workloads``) only use this interface, so a later target
(celeriac on Redis, Celery on Redis) is one more class here, registered in ``TARGETS``.
"""

from __future__ import annotations

import asyncio
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from bench.ledger import LEDGER_ENV
from bench.tasks import NOOP, create_app
from celeriac import states

# The queue the no-op tasks go to, and a second one nobody consumes, where the
# producer's warm-up message waits so that it is never counted.
QUEUE = "celeriac"
WARMUP_QUEUE = "bench.warmup"


class Handle(Protocol):
    """What sending returns: a result handle (celeriac's and Celery's AsyncResult alike)."""

    @property
    def id(self) -> str: ...

    def get(self, timeout: float | None = ...) -> Any: ...


class Session(ABC):
    """One workload's broker and backend, with a producer connected to them."""

    @abstractmethod
    def send_noop(self) -> Handle:
        """Send one no-op task to ``QUEUE`` the way a user would (``noop.delay()``)."""

    @abstractmethod
    def warm_up(self) -> None:
        """Connect the producer (the send goes to a queue no worker reads)."""

    @abstractmethod
    def worker_command(self, concurrency: int) -> list[str]:
        """The command line of a worker with ``concurrency`` processes on this session."""

    @abstractmethod
    def worker_env(self) -> dict[str, str]:
        """Environment variables the worker needs besides the runner's own."""

    @abstractmethod
    def remaining(self) -> int:
        """Messages of ``QUEUE`` not yet acknowledged: ready, scheduled or in flight."""

    @abstractmethod
    def successes(self, task_ids: Sequence[str]) -> int:
        """How many of these tasks have a SUCCESS result in the backend."""

    @abstractmethod
    def close(self) -> None:
        """Close the producer's connections."""


class Target(ABC):
    name: str  # as shown in the table: "celeriac/sqlite"
    framework: str
    broker: str

    @abstractmethod
    def open(self, workdir: Path, ledger: Path) -> Session:
        """A session on fresh storage in ``workdir``; its tasks write ledgers to ``ledger``."""


class CeleriacSQLite(Target):
    """celeriac on its embedded SQLite broker and result backend, one file for both."""

    name = "celeriac/sqlite"
    framework = "celeriac"
    broker = "sqlite"

    def open(self, workdir: Path, ledger: Path) -> Session:
        return CeleriacSession(f"sqlite:///{workdir / 'bench.db'}", ledger)


class CeleriacSession(Session):
    def __init__(self, url: str, ledger: Path) -> None:
        self.url = url
        self.ledger = ledger
        self.app = create_app(url)
        self.noop = self.app.tasks[NOOP]
        # The runner's own loop for the broker and backend queries it polls with.
        self._loop = asyncio.new_event_loop()

    def send_noop(self) -> Handle:
        return self.noop.delay()

    def warm_up(self) -> None:
        self.noop.apply_async(queue=WARMUP_QUEUE)

    def worker_command(self, concurrency: int) -> list[str]:
        return [sys.executable, "-m", "celeriac", "-A", "bench.tasks", "worker",
                "-c", str(concurrency), "-l", "WARNING"]

    def worker_env(self) -> dict[str, str]:
        return {"CELERIAC_BROKER_URL": self.url, "CELERIAC_RESULT_BACKEND": self.url,
                LEDGER_ENV: str(self.ledger)}

    def remaining(self) -> int:
        stats = self._loop.run_until_complete(self.app.broker.queue_stats([QUEUE]))
        return sum(s.ready + s.scheduled + s.in_flight for s in stats)

    def successes(self, task_ids: Sequence[str]) -> int:
        found = self._loop.run_until_complete(self.app.backend.load_many(task_ids))
        return sum(1 for data in found.values()
                   if self.app.decode_outcome(data).state == states.SUCCESS)

    def close(self) -> None:
        self._loop.run_until_complete(self._close_here())
        self._loop.close()
        self.app.close()

    async def _close_here(self) -> None:
        # The connections this loop's thread opened; the app closes its bridge's own.
        await self.app.broker.close()
        await self.app.backend.close()


TARGETS: dict[str, type[Target]] = {
    CeleriacSQLite.name: CeleriacSQLite,
}
