"""RabbitMQ on 127.0.0.1:5672 for the AMQP tests: a vhost per test, and restarts.

- ``Rabbit``: ``rabbitmqctl`` for one vhost of a test's own (created, and deleted with
  everything in it afterwards) and for ``stop_app``/``start_app`` of the whole broker.
- ``RabbitDeployment``: the integration harness's ``Deployment`` on an ``amqp://`` broker
  in that vhost, with results in a SQLite file (or ``rpc://``), so the ledger, the
  worker processes and the probe work as in the other integration tests.

Without RabbitMQ (or ``rabbitmqctl``) the tests are skipped, except under CI (the
``CI`` environment variable is set), where that is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import pytest
from worker_harness import (
    Deployment,
    Ledger,
    LedgerTasks,
    WorkerProcess,
    register,
    wait_until,
)

from celeriac import App
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


def port_open(timeout: float = 1.0) -> bool:
    try:
        socket.create_connection((HOST, PORT), timeout=timeout).close()
    except OSError:
        return False
    return True


class Rabbit:
    """The local RabbitMQ, through ``rabbitmqctl``: one vhost of this test's own.

    Tests that restart the broker take a machine-wide lock exclusively, the others take
    it shared, so that two test runs on one machine do not restart RabbitMQ under each
    other's feet (``restarts=True`` for the former).
    """

    def __init__(self, restarts: bool = False) -> None:
        binary = shutil.which("rabbitmqctl")
        if binary is None:
            unavailable("rabbitmqctl is not installed")
        self.binary = str(binary)
        self._lock = _lock(exclusive=restarts)
        if not _wait(port_open, 30):
            self._lock.close()
            unavailable(f"RabbitMQ is not running on {HOST}:{PORT}")
        self.vhost = f"celeriac-test-{uuid.uuid4().hex[:10]}"
        self.stopped = False
        try:
            self.ctl("add_vhost", self.vhost)
            self.ctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        except BaseException:
            self._lock.close()
            raise

    def url(self, **query: str) -> str:
        suffix = "&".join(f"{key}={value}" for key, value in query.items())
        return f"amqp://guest:guest@{HOST}:{PORT}/{self.vhost}" + (f"?{suffix}" if suffix else "")

    def ctl(self, *args: str, timeout: float = 30.0) -> str:
        done = subprocess.run([self.binary, *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
        if done.returncode != 0:
            raise AssertionError(f"rabbitmqctl {' '.join(args)} failed: "
                                 f"{done.stdout}{done.stderr}")
        return done.stdout

    def stop_app(self) -> None:
        """Stop the RabbitMQ application (the Erlang node stays): every client is cut off."""
        self.stopped = True
        self.ctl("stop_app")
        wait_until(lambda: not port_open(0.2), 10, "RabbitMQ to close its port")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup", timeout=60)
        wait_until(port_open, 20, "RabbitMQ to open its port")
        self.stopped = False

    def restart(self) -> float:
        """stop_app then start_app; return how long the broker was down."""
        down = time.monotonic()
        self.stop_app()
        self.start_app()
        return time.monotonic() - down

    def close(self) -> None:
        """Bring the broker back if a test left it stopped, and delete the vhost."""
        if self.stopped:
            self.start_app()
        try:
            # Right after a restart, RabbitMQ may still be recovering the vhost's queues
            # and fail the deletion; it succeeds once they are back.
            wait_until(self._delete_vhost, 30, f"the deletion of vhost {self.vhost}")
        finally:
            self._lock.close()

    def _delete_vhost(self) -> bool:
        done = subprocess.run([self.binary, "delete_vhost", self.vhost], capture_output=True,
                              text=True, timeout=30, check=False)
        return done.returncode == 0 or "does not exist" in done.stdout + done.stderr


LOCK_PATH = Path(tempfile.gettempdir()) / "celeriac-rabbitmq-tests.lock"
LOCK_WAIT = 90.0


def _lock(exclusive: bool) -> IO[bytes]:
    """Take the machine-wide lock of the RabbitMQ tests; closing the file releases it."""
    handle = LOCK_PATH.open("ab")
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB

    def taken() -> bool:
        try:
            fcntl.flock(handle, mode)
        except BlockingIOError:
            return False
        return True

    if not _wait(taken, LOCK_WAIT):
        handle.close()
        raise AssertionError(f"another test run held {LOCK_PATH} for {LOCK_WAIT:g}s")
    return handle


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
        self.args = list(args)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "celeriac", "-A", "amqp_ledger_app", "worker", *args],
            env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.pid = self.popen.pid


class RabbitDeployment(Deployment):
    """The ledger deployment of ``worker_harness``, on RabbitMQ in the test's vhost."""

    def __init__(self, root: Path, rabbit: Rabbit, backend: str | None = None,
                 **transport_options: Any) -> None:
        self.root = root
        self.rabbit = rabbit
        self.url = rabbit.url()
        self.backend_url = backend or f"sqlite:///{root / 'results.db'}"
        self.transport_options = {"lease_seconds": LEASE_SECONDS, **transport_options}
        self.ledger = Ledger(root / "ledger.jsonl")
        self.app = App("ledger-tests", broker=self.url, backend=self.backend_url,
                       broker_transport_options=self.transport_options)
        self.tasks: LedgerTasks = register(self.app)
        self._probe: RabbitProbe | None = None  # type: ignore[assignment]
        self.workers: list[WorkerProcess] = []
        self._extra_apps: list[App] = []

    @property
    def probe(self) -> RabbitProbe:  # type: ignore[override]
        if self._probe is None:
            self._probe = RabbitProbe(self.url, self.transport_options)
        return self._probe

    def env(self, **settings: Any) -> dict[str, str]:
        settings.setdefault("result_backend", self.backend_url)
        settings.setdefault("broker_transport_options", self.transport_options)
        env = super().env(**settings)
        env["PYTHONPATH"] = os.pathsep.join([str(APPS_DIR), env["PYTHONPATH"]])
        return env

    def start_worker(self, *args: str, **settings: Any) -> WorkerProcess:
        log = self.root / f"worker-{len(self.workers)}.log"
        worker = AmqpWorker([*args, "-l", "INFO"], self.env(**settings), self.root, log)
        self.workers.append(worker)
        return worker

    def make_app(self, **settings: Any) -> App:
        """Another producer-side App on this deployment's broker, closed with it."""
        options = {**self.transport_options, **settings.pop("broker_transport_options", {})}
        settings.setdefault("backend", self.backend_url)
        app = App("ledger-tests", broker=self.url, broker_transport_options=options,
                  **settings)
        self._extra_apps.append(app)
        return app


# What the ``deploy`` fixture gives: ``deploy(backend=None, **transport_options)``.
Deploy = Callable[..., RabbitDeployment]


class FreezableProxy:
    """A TCP proxy to RabbitMQ that can stop passing bytes while keeping sockets open:
    to both ends the other one looks alive but silent, as across a network partition."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self._open.clear()

    def thaw(self) -> None:
        """Pass bytes again; the connections that were frozen are cut, new ones work."""
        with self._lock:
            frozen, self._sockets = self._sockets, []
        for sock in frozen:
            with contextlib.suppress(OSError):
                sock.close()
        self._open.set()

    def close(self) -> None:
        self.thaw()
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._open.wait()
            upstream = socket.create_connection((HOST, PORT))
            with self._lock:
                self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    while not self._open.wait(0.1):
                        if source.fileno() < 0:
                            return
                    target.sendall(data)
        finally:
            for sock in (source, target):  # one side ended: so does the other
                with contextlib.suppress(OSError):
                    sock.close()
