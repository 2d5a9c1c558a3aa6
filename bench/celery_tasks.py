"""Celery's benchmark app: the same tasks as ``bench.tasks``, under the same names.

``celery -A bench.celery_tasks worker`` loads ``app``, configured from the environment
the runner sets: ``BENCH_CELERY_BROKER``, ``BENCH_CELERY_BACKEND`` and
``BENCH_CELERY_QUEUE`` (the session's own queue). Settings are Celery's defaults except
the queue name and ``broker_connection_retry_on_startup`` (which only silences a
deprecation warning); the runner builds its producer with ``create_app`` and the same
arguments. Only the bench imports Celery: celeriac never does.

The sleep task calls ``time.sleep``, which Celery's gevent pool monkey-patches into a
cooperative wait, the way Celery users write I/O-bound tasks for that pool.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery  # type: ignore[import-untyped]

from bench.ledger import LedgerWriter
from bench.tasks import BURN, NOOP, SLEEP
from bench.work import burn

BROKER_ENV = "BENCH_CELERY_BROKER"
BACKEND_ENV = "BENCH_CELERY_BACKEND"
QUEUE_ENV = "BENCH_CELERY_QUEUE"

_ledger = LedgerWriter()


def create_app(broker: str | None, backend: str | None, queue: str | None,
               **settings: Any) -> Any:
    """A Celery app with the benchmark tasks; ``settings`` are extra Celery settings."""
    app = Celery("bench", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(task_default_queue=queue or "celery",
                    broker_connection_retry_on_startup=True, **settings)

    @app.task(name=NOOP, bind=True, shared=False)  # type: ignore[untyped-decorator]
    def noop(self: Any) -> None:
        _ledger.record(self.request.id)

    @app.task(name=SLEEP, bind=True, shared=False)  # type: ignore[untyped-decorator]
    def sleep(self: Any, seconds: float) -> None:
        _ledger.record(self.request.id)
        time.sleep(seconds)

    @app.task(name=BURN, bind=True, shared=False)  # type: ignore[untyped-decorator]
    def burn_cpu(self: Any, iterations: int) -> None:
        _ledger.record(self.request.id)
        burn(iterations)

    return app


app = create_app(os.environ.get(BROKER_ENV), os.environ.get(BACKEND_ENV),
                 os.environ.get(QUEUE_ENV))
