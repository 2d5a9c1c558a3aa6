"""Celery's targets: Celery on the same Redis and RabbitMQ servers as celeriac's.

Celery runs with its defaults, as a Celery user who follows the documentation gets
them, and as the runner states in its output:

- json serializer, ``task_acks_late=False`` (a task is acked when a worker process
  receives it, before it runs: at-most-once), ``worker_prefetch_multiplier=4``;
- prefork pool with Celery's default scheduling, which is already ``-O fair``
  (``celery.concurrency.asynpool.SCHED_STRATEGIES[None]``);
- workers started ``--without-heartbeat --without-gossip --without-mingle``, the
  usual advice for workers that only run tasks (``WORKER_FLAGS``);
- gevent pool ``-c 100`` for the I/O-bound workload, Celery's recommended pool for it;
- on Redis, the Redis result backend (``get()`` waits on pub/sub); on RabbitMQ, py-amqp
  (Celery's default AMQP client; librabbitmq is unmaintained) and the ``rpc://``
  result backend, durable queues and persistent messages, and no publisher confirms
  unless ``confirm_publish`` is set (the runner measures W1 both ways).

Batch send: Celery has no multi-message publish; its fastest honest equivalent is a loop
of ``apply_async(producer=...)`` inside one ``app.producer_or_acquire()`` (what
``group().apply_async()`` does, minus the group's own bookkeeping; it measured faster
than ``group`` here).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery.result import ResultSet  # type: ignore[import-untyped]

from bench.celery_tasks import BACKEND_ENV, BROKER_ENV, QUEUE_ENV, create_app
from bench.ledger import LEDGER_ENV
from bench.targets import (
    CELERY_REDIS_DB,
    REDIS_HOST,
    Handle,
    Session,
    Target,
    WorkerSpec,
    delete_vhost,
    flush_redis,
    fresh_vhost,
    rabbit_url,
    session_tag,
)
from bench.tasks import NOOP

# Celery's worker options for a worker that only runs tasks: no heartbeat events, no
# gossip and no start-up sync with other workers (cluster features, not task handling).
# They matter: with them on, the gevent pool on RabbitMQ ran 17 sleeping tasks/s here,
# with them off 1,268/s.
WORKER_FLAGS = ("--without-heartbeat", "--without-gossip", "--without-mingle")
RESULTS_TIMEOUT = 120.0  # seconds the rpc:// results of a drain may take to be read
MGET_CHUNK = 2000

CELERY_DEFAULTS = ("Celery defaults: json, acks early (task_acks_late=False: "
                   "at-most-once), prefetch multiplier 4, -O fair (the default); workers "
                   "--without-heartbeat --without-gossip --without-mingle")


class CeleryTarget(Target):
    framework = "Celery"
    backend: str

    def broker_url(self) -> str:
        raise NotImplementedError

    def open(self, workdir: Path, ledger: Path) -> Session:
        return CelerySession(self.broker_url(), self.backend, f"bench.{session_tag()}",
                             ledger, on_close=self.clean)

    def clean(self) -> None:
        """Remove what a session left on the server (called when it closes)."""


class CeleryRedis(CeleryTarget):
    """Celery on Redis (kombu's Redis transport), with the Redis result backend."""

    name = "Celery/redis"
    broker = "redis"

    def __init__(self) -> None:
        self.backend = self.broker_url()

    def broker_url(self) -> str:
        return f"redis://{REDIS_HOST}/{CELERY_REDIS_DB}"

    def setup(self) -> None:
        flush_redis(CELERY_REDIS_DB)

    def teardown(self) -> None:
        flush_redis(CELERY_REDIS_DB)

    def open(self, workdir: Path, ledger: Path) -> Session:
        flush_redis(CELERY_REDIS_DB)
        return super().open(workdir, ledger)

    def clean(self) -> None:
        flush_redis(CELERY_REDIS_DB)

    def describe(self) -> str:
        return CELERY_DEFAULTS + "; Redis result backend"


class CeleryAMQP(CeleryTarget):
    """Celery on RabbitMQ (py-amqp) with the rpc:// result backend."""

    name = "Celery/amqp"
    broker = "amqp"
    backend = "rpc://"

    def __init__(self, confirm_publish: bool = False) -> None:
        self.confirm_publish = confirm_publish

    def broker_url(self) -> str:
        return rabbit_url()

    def setup(self) -> None:
        fresh_vhost()

    def teardown(self) -> None:
        delete_vhost()

    def open(self, workdir: Path, ledger: Path) -> Session:
        settings: dict[str, Any] = {}
        if self.confirm_publish:
            settings["broker_transport_options"] = {"confirm_publish": True}
        return CelerySession(self.broker_url(), self.backend, f"bench.{session_tag()}",
                             ledger, **settings)

    def describe(self) -> str:
        return CELERY_DEFAULTS + "; rpc:// results; no publisher confirms by default"


class CelerySession(Session):
    def __init__(self, broker: str, backend: str, queue: str, ledger: Path, *,
                 on_close: Any = None, **settings: Any) -> None:
        self.broker_url = broker
        self.backend_url = backend
        self.queue = queue
        self.ledger = ledger
        self.app = create_app(broker, backend, queue, **settings)
        self._on_close = on_close
        self._redis: Any = None
        self._connection: Any = None

    def send(self, task: str, args: tuple[Any, ...] = ()) -> Handle:
        result: Handle = self.app.tasks[task].delay(*args)
        return result

    def send_batch(self, task: str, args: tuple[Any, ...], count: int) -> list[str]:
        registered = self.app.tasks[task]
        with self.app.producer_or_acquire() as producer:
            return [registered.apply_async(args, producer=producer).id
                    for _ in range(count)]

    def warm_up(self) -> None:
        self.app.tasks[NOOP].apply_async(queue=self.warmup_queue)

    @property
    def warmup_queue(self) -> str:
        return f"{self.queue}.warmup"

    def worker_command(self, spec: WorkerSpec) -> list[str]:
        pool = "gevent" if spec.pool == "io" else "prefork"
        return [sys.executable, "-m", "celery", "-A", "bench.celery_tasks", "worker",
                "-Q", self.queue, "-P", pool, "-c", str(spec.concurrency),
                "-n", f"{self.queue}@%h", "-l", "WARNING", *WORKER_FLAGS]

    def worker_env(self) -> dict[str, str]:
        return {BROKER_ENV: self.broker_url, BACKEND_ENV: self.backend_url,
                QUEUE_ENV: self.queue, LEDGER_ENV: str(self.ledger)}

    # -- checks -----------------------------------------------------------------------

    @property
    def _is_redis(self) -> bool:
        return self.broker_url.startswith("redis")

    def _redis_client(self) -> Any:
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.broker_url)
        return self._redis

    def _channel(self) -> Any:
        if self._connection is None:
            # No heartbeats: this connection idles while a drain runs, and py-amqp only
            # sends heartbeats when asked to, so RabbitMQ would close it.
            self._connection = self.app.connection_for_write(heartbeat=0)
        return self._connection.default_channel

    def _reconnect(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
        self._connection = None

    def queued(self) -> int:
        if self._is_redis:
            return int(self._redis_client().llen(self.queue))
        for attempt in (1, 2):  # once more on a fresh connection if this one was dropped
            try:
                declared = self._channel().queue_declare(self.queue, passive=True)
                return int(declared.message_count)
            except OSError:
                self._reconnect()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def settled(self, task_ids: Sequence[str]) -> bool:
        if self.queued():
            return False
        if self._is_redis:
            # Acks early: the unacked hash empties when tasks are received; the results
            # are the test that every task has finished.
            return self.successes(task_ids) == len(task_ids)
        # rpc:// results go to this process's reply queue, which only Celery's result
        # consumer reads; successes() reads them all after the timing.
        return True

    def successes(self, task_ids: Sequence[str]) -> int:
        if self._is_redis:
            backend = self.app.backend
            client = self._redis_client()
            count = 0
            for start in range(0, len(task_ids), MGET_CHUNK):
                keys = [backend.get_key_for_task(i) for i in task_ids[start:start + MGET_CHUNK]]
                for value in client.mget(keys):
                    if value is not None and json.loads(value).get("status") == "SUCCESS":
                        count += 1
            return count
        results = ResultSet([self.app.AsyncResult(i) for i in task_ids], app=self.app)
        results.join_native(timeout=RESULTS_TIMEOUT, propagate=False)
        return sum(1 for result in results.results if result.state == "SUCCESS")

    def close(self) -> None:
        try:
            if not self._is_redis:
                channel = self._channel()
                for queue in (self.queue, self.warmup_queue):
                    channel.queue_delete(queue)
        finally:
            if self._connection is not None:
                self._connection.close()
            if self._redis is not None:
                self._redis.close()
            self.app.close()
            if self._on_close is not None:
                self._on_close()
