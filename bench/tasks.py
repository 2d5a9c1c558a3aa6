"""celeriac's benchmark app: the three tasks of the workloads, each recording its run.

``celeriac -A bench.tasks worker`` loads ``app``, which names no broker and so follows
``CELERIAC_BROKER_URL`` and ``CELERIAC_RESULT_BACKEND``, set by the runner. The runner
itself builds a fresh App per workload with ``create_app(broker, backend)``: the same
tasks under the same names, on that workload's own storage. Celery's twin of this module
is ``bench.celery_tasks``: the same names, arguments and ledger lines.

Every task writes its ledger line first, so the ledger's earliest time is when the
first task started.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.ledger import LedgerWriter
from bench.work import burn
from celeriac import App, Task

NOOP = "bench.noop"  # W1, W2, W3, batch send: does nothing
SLEEP = "bench.sleep"  # W4: waits ``seconds`` (I/O-bound)
BURN = "bench.burn"  # W5: burns ``iterations`` of CPU

_ledger = LedgerWriter()


def create_app(broker: str | None = None, backend: str | None = None) -> App:
    """An App with the benchmark tasks on ``broker`` and ``backend`` (or the environment)."""
    app = App("bench", broker=broker, backend=backend if backend is not None else broker)

    @app.task(name=NOOP, bind=True)
    def noop(self: Task[..., Any]) -> None:
        """Does nothing but write one ledger line, so executions can be counted exactly."""
        _ledger.record(self.request.id)

    @app.task(name=SLEEP, bind=True)
    async def sleep(self: Task[..., Any], seconds: float) -> None:
        """An async task waiting on I/O for ``seconds`` (run on the worker's event loop)."""
        _ledger.record(self.request.id)
        await asyncio.sleep(seconds)

    @app.task(name=BURN, bind=True)
    def burn_cpu(self: Task[..., Any], iterations: int) -> None:
        """Burns ``iterations`` of ``bench.work.burn`` (about 5 ms of CPU)."""
        _ledger.record(self.request.id)
        burn(iterations)

    return app


app = create_app()
