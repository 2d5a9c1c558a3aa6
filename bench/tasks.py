"""The benchmark app: one no-op task that only records its execution in the ledger.

``celeriac -A bench.tasks worker`` loads ``app``, which names no broker and so follows
``CELERIAC_BROKER_URL`` and ``CELERIAC_RESULT_BACKEND``, set by the runner. The runner
itself builds a fresh App per workload with ``create_app(url)``: the same task under the
same name, pointed at that workload's own database file.
"""

from __future__ import annotations

from typing import Any

from bench.ledger import LedgerWriter
from celeriac import App, Task

NOOP = "bench.noop"

_ledger = LedgerWriter()


def create_app(url: str | None = None) -> App:
    """An App with the benchmark task, on ``url`` (broker and backend) or the environment."""
    app = App("bench", broker=url, backend=url)

    @app.task(name=NOOP, bind=True)
    def noop(self: Task[..., Any]) -> None:
        """Does nothing but write one ledger line, so executions can be counted exactly."""
        _ledger.record(self.request.id)

    return app


app = create_app()
