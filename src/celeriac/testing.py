"""Testing aids: a worker in a thread of the test process, and a pytest plugin.

The plugin (registered as the ``celeriac`` pytest11 entry point) gives:

- ``celeriac_app``: an ``App`` on the in-memory broker and backend;
- ``celeriac_worker``: a ``ThreadedWorker`` consuming ``celeriac_app``'s default queue;
- ``celeriac_eager_app``: an ``App`` with ``task_always_eager`` and
  ``task_eager_propagates``, for tests that should run tasks inline.

Use ``ThreadedWorker`` directly to consume another app or queues::

    with ThreadedWorker(app, queues=["io"], slots=4):
        assert fetch.delay(url).get(timeout=5) == ...
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import pytest

from celeriac.app import App
from celeriac.control.commands import ProcessInfo
from celeriac.worker.consumer import Consumer
from celeriac.worker.pools import runner_for

START_TIMEOUT = 10.0
_numbers = itertools.count(1)

T = TypeVar("T")


class ThreadedWorker:
    """A real consumer on its own event loop, in a thread of this process.

    It answers remote control (``app.control.inspect()``, ``ping``, ``shutdown``...) as
    a node named ``hostname`` (by default ``threaded-<n>@<host>``, unique in the process).
    """

    def __init__(self, app: App, queues: Sequence[str] | None = None, slots: int = 4,
                 pool: str = "threads", grace: float = 10.0,
                 hostname: str | None = None) -> None:
        self.app = app
        self.hostname = hostname or f"threaded-{next(_numbers)}@{socket.gethostname()}"
        self.queues = list(queues or [app.conf.task_default_queue])
        self.slots = slots
        self.pool = pool
        self.grace = grace
        self.consumer: Consumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> ThreadedWorker:
        self._thread = threading.Thread(target=self._serve, name="celeriac-test-worker",
                                        daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT):
            raise RuntimeError("the test worker did not start")
        if self._error is not None:
            raise self._error
        if self.consumer is not None and self.consumer.control is not None:
            # Remote control reaches it once its listener reads (inspect(), ping()).
            self.consumer.control.listening.wait(START_TIMEOUT)
        return self

    def stop(self) -> None:
        """Warm-stop the worker and wait for its thread."""
        if self._loop is not None and self.consumer is not None:
            self._loop.call_soon_threadsafe(self.consumer.stop)
        if self._thread is not None:
            self._thread.join(self.grace + START_TIMEOUT)
        if self._error is not None:
            raise self._error

    def call(self, fn: Callable[[], T], timeout: float = START_TIMEOUT) -> T:
        """Run ``fn`` on the worker's event loop (e.g. ``consumer.resize``); its result."""
        if self._loop is None:
            raise RuntimeError("the test worker is not running")

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def __enter__(self) -> ThreadedWorker:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _serve(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # surfaced to the test thread by start()/stop()
            self._error = exc
            self._started.set()

    async def _run(self) -> None:
        runner = runner_for(self.pool, self.slots)
        self.consumer = Consumer(self.app, self.queues, self.slots, runner,
                                 hostname=self.hostname)
        self.consumer.control = ProcessInfo(self.consumer, self.hostname, 0, self.pool,
                                            own_node=True)
        self._loop = asyncio.get_running_loop()
        await self.app.connect()
        self._started.set()
        try:
            await self.consumer.run(grace=self.grace)
        finally:
            runner.shutdown()


@pytest.fixture
def celeriac_app() -> Iterator[App]:
    """An App on the in-memory broker and result backend, closed after the test."""
    app = App("tests", broker="memory://", backend="memory://")
    yield app
    app.close()


@pytest.fixture
def celeriac_worker(celeriac_app: App) -> Iterator[ThreadedWorker]:
    """A worker thread consuming ``celeriac_app``'s default queue for the test's length."""
    with ThreadedWorker(celeriac_app) as worker:
        yield worker


@pytest.fixture
def celeriac_eager_app() -> Iterator[App]:
    """An App whose tasks run inline when sent, raising their errors."""
    app = App("tests", broker="memory://", backend="memory://", task_always_eager=True,
              task_eager_propagates=True)
    yield app
    app.close()


def pytest_configure(config: Any) -> None:
    del config  # nothing to configure: fixtures are enough
