"""RabbitMQ for the AMQP tests: a vhost per test, on the shared node or a private one.

- ``Rabbit``: ``rabbitmqctl`` for one vhost of a test's own (created, and deleted with
  everything in it afterwards), on the shared RabbitMQ (127.0.0.1:5672), or on a
  private node (``rabbit_node.RabbitNode``) that the test may stop and restart.
- ``RabbitDeployment``: the integration harness's ``Deployment`` on an ``amqp://`` broker
  in that vhost, with results in a SQLite file (or ``rpc://``), so the ledger, the
  worker processes and the probe work as in the other integration tests.

Without RabbitMQ (or ``rabbitmqctl``) the tests are skipped, except under CI (the
``CI`` environment variable is set), where that is a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from rabbit_node import RABBITMQCTL, RabbitNode
from worker_harness import (
    Deployment,
    WorkerProcess,
    unique_name,
    wait_until,
)

from celeriac.brokers import Broker, DeadLetter, Outgoing, QueueStats, create_broker

HOST, PORT = "127.0.0.1", 5672
QUEUE = "celeriac"
LEASE_SECONDS = 2.0  # as the sqlite deployments of the integration harness
APPS_DIR = Path(__file__).parent / "apps"


def unavailable(reason: str) -> None:
    """Skip for lack of a server, or fail when running under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the RabbitMQ tests must run)")
    pytest.skip(reason)


def port_open(timeout: float = 1.0, port: int = PORT) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=timeout).close()
    except OSError:
        return False
    return True


class Rabbit:
    """A vhost of this test's own, on the shared RabbitMQ or on a private node.

    On the shared node (``node=None``) nothing may be stopped or misconfigured: other
    test runs use it at the same time. A test that restarts or stops RabbitMQ passes a
    ``RabbitNode`` of its own (``rabbit_node.py``), which ``stop``/``start``/``restart``
    act on.
    """

    def __init__(self, node: RabbitNode | None = None) -> None:
        self.node = node
        if node is None:
            binary = shutil.which("rabbitmqctl")
            if binary is None:
                unavailable("rabbitmqctl is not installed")
            self._ctl = [str(binary)]
            self.host, self.port = HOST, PORT
            self._env: dict[str, str] | None = None
        else:
            self._ctl = [RABBITMQCTL, "-n", node.name]
            self.host, self.port = HOST, node.port
            self._env = node.env
        if not _wait(lambda: port_open(port=self.port), 30):
            unavailable(f"RabbitMQ is not running on {self.host}:{self.port}")
        self.vhost = f"celeriac-test-{uuid.uuid4().hex[:10]}"
        self.ctl("add_vhost", self.vhost)
        self.ctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")

    def url(self, **query: str) -> str:
        suffix = "&".join(f"{key}={value}" for key, value in query.items())
        return (f"amqp://guest:guest@{self.host}:{self.port}/{self.vhost}"
                + (f"?{suffix}" if suffix else ""))

    def ctl(self, *args: str, timeout: float = 30.0) -> str:
        done = subprocess.run([*self._ctl, *args], capture_output=True, text=True,
                              timeout=timeout, check=False, env=self._env)
        if done.returncode != 0:
            raise AssertionError(f"rabbitmqctl {' '.join(args)} failed: "
                                 f"{done.stdout}{done.stderr}")
        return done.stdout

    def _private(self) -> RabbitNode:
        if self.node is None:
            raise AssertionError("only a private RabbitMQ node may be stopped by a test "
                                 "(the private_rabbit fixture)")
        return self.node

    def stop(self) -> None:
        """Shut the private node down: every client is cut off, the port is closed."""
        self._private().stop()

    def start(self) -> None:
        """Start the private node again, with its database (queues, messages) kept."""
        self._private().start()

    def restart(self) -> float:
        """Stop then start the private node; how long it was down."""
        return self._private().restart()

    def close(self) -> None:
        """Delete the vhost (on a private node that is down, there is nothing to do)."""
        if self.node is not None and not self.node.running:
            return
        # Right after a restart, RabbitMQ may still be recovering the vhost's queues and
        # fail the deletion; it succeeds once they are back.
        wait_until(self._delete_vhost, 30, f"the deletion of vhost {self.vhost}")

    def _delete_vhost(self) -> bool:
        done = subprocess.run([*self._ctl, "delete_vhost", self.vhost], capture_output=True,
                              text=True, timeout=30, check=False, env=self._env)
        return done.returncode == 0 or "does not exist" in done.stdout + done.stderr


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class RabbitProbe:
    """A broker of its own on its own event loop, for counts, dead letters and raw sends."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self._runner = asyncio.Runner()
        self.broker: Broker = create_broker(url, options)

    def stats(self, queue: str = QUEUE) -> QueueStats:
        return self._runner.run(self.broker.queue_stats([queue]))[0]

    def dead_letters(self) -> list[DeadLetter]:
        return self._runner.run(self.broker.dead_letters(1000))

    def publish(self, messages: Sequence[Outgoing]) -> None:
        self._runner.run(self.broker.publish(messages))

    def close(self) -> None:
        try:
            self._runner.run(self.broker.close())
        finally:
            self._runner.close()


class AmqpWorker(WorkerProcess):
    """``python -m celeriac -A amqp_ledger_app worker ...``: the ledger tasks and a few more."""

    def __init__(self, args: Sequence[str], env: dict[str, str], cwd: Path,
                 log_path: Path) -> None:
        self.args = unique_name(args)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "celeriac", "-A", "amqp_ledger_app", "worker", *self.args],
            env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.pid = self.popen.pid


class RabbitDeployment(Deployment):
    """The ledger deployment of ``worker_harness``, on RabbitMQ in the test's vhost."""

    def __init__(self, root: Path, rabbit: Rabbit, backend: str | None = None,
                 **transport_options: Any) -> None:
        self.rabbit = rabbit
        super().__init__(root, rabbit.url(), backend or f"sqlite:///{root / 'results.db'}",
                         **transport_options)
        self._probe: RabbitProbe | None = None  # type: ignore[assignment]

    @property
    def probe(self) -> RabbitProbe:  # type: ignore[override]
        if self._probe is None:
            self._probe = RabbitProbe(self.url, self.transport_options)
        return self._probe

    def env(self, **settings: Any) -> dict[str, str]:
        env = super().env(**settings)
        env["PYTHONPATH"] = os.pathsep.join([str(APPS_DIR), env["PYTHONPATH"]])
        return env

    def start_worker(self, *args: str, **settings: Any) -> WorkerProcess:
        log = self.root / f"worker-{len(self.workers)}.log"
        worker = AmqpWorker([*args, "-l", "INFO"], self.env(**settings), self.root, log)
        self.workers.append(worker)
        return worker



# What the ``deploy`` fixture gives: ``deploy(backend=None, **transport_options)``.
Deploy = Callable[..., RabbitDeployment]
