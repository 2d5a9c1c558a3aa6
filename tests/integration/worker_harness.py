"""Real worker processes on the embedded SQLite broker, and a ledger to count executions.

A ``Deployment`` is one test's world: a SQLite file that is broker and result backend,
a ledger file the tasks append to, a producer-side App with the ledger tasks, a probe on
the broker to read queue counts and dead letters, and the worker processes the test
starts (``python -m celeriac -A ledger_app worker ...``). ``close`` kills every process
it started, whatever state the test left them in.

Nothing here sleeps and hopes: ``wait_until`` polls a condition against a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

import psutil
import pytest

from celeriac import App
from celeriac.brokers import Broker, DeadLetter, Outgoing, QueueStats, create_broker

APPS_DIR = Path(__file__).parent / "apps"
sys.path.insert(0, str(APPS_DIR))  # the producer side imports the same task module

from ledger_app import LEDGER_ENV, LedgerTasks, register  # noqa: E402

QUEUE = "celeriac"  # the default queue
LEASE_SECONDS = 2.0  # short, so that a dead worker's tasks come back quickly
POLL = 0.02

T = TypeVar("T")


def wait_until(condition: Callable[[], T | Literal[False] | None], timeout: float,
               what: str) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value is not None and value is not False and value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL)


# -- the ledger ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One line of the ledger: something a task did, in which process, when."""

    event: str  # "start" (one per execution) or "done"
    id: str
    task: str
    tag: Any
    pid: int
    t: float  # Unix time
    eta: float | None
    delivery: int
    priority: int


class Ledger:
    """Reads the append-only ledger the tasks write (see apps/ledger_app.py)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def entries(self, event: str | None = "start") -> list[Entry]:
        """Entries in the order they were written; only ``event`` ones unless None."""
        data = self.path.read_bytes()
        lines = data.split(b"\n")[:-1]  # a line still being written has no newline yet
        entries = [Entry(**json.loads(line)) for line in lines]
        return [e for e in entries if event is None or e.event == event]

    def tags(self, event: str = "start") -> list[Any]:
        return [entry.tag for entry in self.entries(event)]

    def of(self, tag: Any, event: str = "start") -> list[Entry]:
        return [entry for entry in self.entries(event) if entry.tag == tag]

    def wait_for_count(self, count: int, event: str = "start",
                       timeout: float = 30.0) -> list[Entry]:
        """Wait until there are at least ``count`` ``event`` entries; return them all."""
        return wait_until(lambda: len(found := self.entries(event)) >= count and found,
                          timeout, f"{count} {event!r} ledger entries")

    def wait_for(self, tag: Any, event: str = "start", count: int = 1,
                 timeout: float = 20.0) -> list[Entry]:
        """Wait until ``tag`` has ``count`` ``event`` entries; return them."""
        return wait_until(lambda: (found := self.of(tag, event)) and len(found) >= count
                          and found, timeout, f"{count} {event!r} ledger entries of {tag!r}")


# -- worker processes ---------------------------------------------------------------------


_worker_numbers = itertools.count(1)


def unique_name(args: Sequence[str]) -> list[str]:
    """``args`` with a node name of its own (``-n``), unless they give one: a live node's
    name is refused to a second worker, and tests start several at once."""
    if "-n" in args or "--hostname" in args or any(a.startswith("--hostname=") for a in args):
        return list(args)
    return ["-n", f"test{next(_worker_numbers)}-{os.getpid()}@%h", *args]


class WorkerProcess:
    """``python -m celeriac -A ledger_app worker ...`` in its own session, logging to a file."""

    app_module = "ledger_app"  # the -A module (in tests/integration/apps)

    def __init__(self, args: Sequence[str], env: Mapping[str, str], cwd: Path,
                 log_path: Path) -> None:
        self.args = unique_name(args)
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "celeriac", "-A", self.app_module, "worker", *self.args],
            env=dict(env), cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: cleanup reaches orphans too
        )
        self.pid = self.popen.pid

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.pid} {' '.join(self.args)}>"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 20.0) -> None:
        wait_until(lambda: self.log().count(text) >= count, timeout,
                   f"{count}x {text!r} in the log of {self}")

    def wait_ready(self, processes: int = 1, timeout: float = 20.0) -> WorkerProcess:
        """Wait until ``processes`` child processes have logged that they consume."""
        self.wait_for_log(" consuming ", processes, timeout)
        return self

    def children(self) -> list[psutil.Process]:
        """The live worker child processes (multiprocessing's resource tracker left out)."""
        try:
            found = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [child for child in found if _is_worker_child(child)]

    def signal(self, signum: signal.Signals) -> None:
        self.popen.send_signal(signum)

    def signal_group(self, signum: signal.Signals) -> None:
        """Signal the whole process group, as systemd and supervisord stop services."""
        os.killpg(self.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.popen.wait(timeout)

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def kill_all(self) -> None:
        """SIGKILL the supervisor, its children and anything else in its process group."""
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        self.popen.wait(10)
        self._log.close()


def _is_worker_child(process: psutil.Process) -> bool:
    try:
        cmdline = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    return "spawn_main" in cmdline


def kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# -- the broker, seen from the side -------------------------------------------------------


class BrokerProbe:
    """Its own broker connection on its own event loop, for reading and raw publishing."""

    def __init__(self, url: str) -> None:
        self._runner = asyncio.Runner()
        self.broker: Broker = create_broker(url, {"lease_seconds": LEASE_SECONDS})
        self._runner.run(self.broker.connect())

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


# -- one test's world ---------------------------------------------------------------------


class Deployment:
    """One test's world: a broker (a SQLite file in ``root`` unless ``url`` names
    another), a result backend (``backend_url``, else the broker's URL), the ledger the
    tasks write to, and the worker processes started on them."""

    worker_class: type[WorkerProcess] = WorkerProcess

    def __init__(self, root: Path, url: str | None = None, backend_url: str | None = None,
                 lease_seconds: float = LEASE_SECONDS, **transport_options: Any) -> None:
        self.root = root
        self.url = url or f"sqlite:///{root / 'broker.db'}"
        self.backend_url = backend_url or self.url
        self.transport_options = {"lease_seconds": lease_seconds, **transport_options}
        self.ledger = Ledger(root / "ledger.jsonl")
        self.app = App("ledger-tests", broker=self.url, backend=self.backend_url,
                       broker_transport_options=self.transport_options)
        self.tasks: LedgerTasks = register(self.app)
        self._probe: BrokerProbe | None = None
        self.workers: list[WorkerProcess] = []
        self._extra_apps: list[App] = []

    @property
    def probe(self) -> BrokerProbe:
        if self._probe is None:
            self._probe = BrokerProbe(self.url)
        return self._probe

    def env(self, **settings: Any) -> dict[str, str]:
        """The environment of a worker or producer process of this deployment.

        ``settings`` become ``CELERIAC_<NAME>`` variables, JSON-encoded; their
        ``broker_transport_options`` are added to the deployment's own.
        """
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("CELERIAC_")
               and key not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(APPS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])])
        env[LEDGER_ENV] = str(self.ledger.path)
        values: dict[str, Any] = {
            "broker_url": self.url, "result_backend": self.backend_url, **settings,
            # (a test's options are added to the deployment's: its queue prefix stays)
            "broker_transport_options": {**self.transport_options,
                                         **settings.get("broker_transport_options", {})},
        }
        for name, value in values.items():
            env[f"CELERIAC_{name.upper()}"] = json.dumps(value)
        return env

    def start_worker(self, *args: str, **settings: Any) -> WorkerProcess:
        """Start ``celeriac -A ledger_app worker *args`` with ``settings`` in its environment."""
        log = self.root / f"worker-{len(self.workers)}.log"
        worker = self.worker_class([*args, "-l", "INFO"], self.env(**settings), self.root,
                                   log)
        self.workers.append(worker)
        return worker

    def wait_for_queue(self, ready: int = 0, scheduled: int = 0, in_flight: int = 0,
                       timeout: float = 10.0) -> None:
        """Wait until the default queue holds exactly these counts.

        A result is stored before its message is acked, so a test that has just got a
        result must wait for the ack before the queue counts settle.
        """
        expected = QueueStats(QUEUE, ready, scheduled, in_flight)
        try:
            wait_until(lambda: self.probe.stats() == expected, timeout, f"{expected}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the queue is at {self.probe.stats()}") from None

    def make_app(self, **settings: Any) -> App:
        """Another producer-side App on this deployment's broker, closed with it."""
        options = {**self.transport_options, **settings.pop("broker_transport_options", {})}
        settings.setdefault("backend", self.backend_url)
        app = App("ledger-tests", broker=self.url, broker_transport_options=options,
                  **settings)
        self._extra_apps.append(app)
        return app

    def close(self) -> None:
        for worker in self.workers:
            worker.kill_all()
        for app in [self.app, *self._extra_apps]:
            app.close()
        if self._probe is not None:
            self._probe.close()

    def dump_logs(self) -> str:
        return "\n".join(f"----- {w} (exit {w.popen.returncode})\n{w.log()[-20000:]}"
                         for w in self.workers)


# The test's deployment: tests/integration/conftest.py adds its workers' logs to the
# report of a test that failed (every broker's directory below it included).
REPORTED = pytest.StashKey[Deployment]()
D = TypeVar("D", bound=Deployment)


def reported(request: pytest.FixtureRequest, world: D) -> Iterator[D]:
    """A ``deployment`` fixture's body: yields ``world``, reported on failure, closed after."""
    request.node.stash[REPORTED] = world
    try:
        yield world
    finally:
        world.close()
