"""A Redis that is not there, or that stops answering: a clear error in time, never a hang.

These need no Redis at all: one test points at a port where nothing listens, the other
at a "black hole" that accepts connections and never answers (as a dead server behind
a live network path, or a paused one, does).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from redis_harness import free_port

from celeriac import App
from celeriac.backends import create_backend
from celeriac.brokers import create_broker
from celeriac.errors import BackendError, BrokerUnavailable

TIMEOUT = 1.0  # connection_timeout of the brokers under test
SLACK = 1.0  # scheduling delays on a loaded machine, on top of the timeout


@pytest.fixture
def closed_port() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A server that accepts connections and reads, but never writes a byte back."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def swallow() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=swallow, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("server", ["closed_port", "black_hole"])
def test_a_producer_gets_broker_unavailable_within_its_timeout(
    server: str, request: pytest.FixtureRequest,
) -> None:
    # Given an app whose broker is down (or not answering)
    url = request.getfixturevalue(server)
    app = App("down", broker=url, backend="memory://",
              broker_transport_options={"connection_timeout": TIMEOUT})

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    try:
        # When a task is sent, twice (the second time with no connect step before it)
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable, match="Redis is unavailable"):
                add.delay(1, 2)
            # Then the error comes within the connection timeout, not after a hang
            assert time.monotonic() - started < TIMEOUT + SLACK
    finally:
        app.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("server", ["closed_port", "black_hole"])
def test_every_broker_call_fails_in_time(server: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(server)
    broker = create_broker(url, {"connection_timeout": TIMEOUT, "lease_seconds": 2})

    async def call_each() -> list[str]:
        calls = {
            "connect": broker.connect(), "fetch": broker.fetch(["q"], 10, timeout=5),
            "queue_stats": broker.queue_stats(["q"]), "purge": broker.purge(["q"]),
            "dead_letters": broker.dead_letters(), "extend": broker.extend([]),
        }
        slow = []
        for name, call in calls.items():
            started = time.monotonic()
            try:
                await call
            except BrokerUnavailable:
                pass
            else:
                if name != "extend":  # nothing to extend: no round trip at all
                    raise AssertionError(f"{name} did not fail")
            if time.monotonic() - started > TIMEOUT + SLACK:
                slow.append(name)
        await broker.close()
        return slow

    assert asyncio.run(call_each()) == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("server", ["closed_port", "black_hole"])
def test_waiting_on_a_result_fails_in_time(server: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(server)
    backend = create_backend(url, {"connection_timeout": TIMEOUT})

    async def wait() -> float:
        started = time.monotonic()
        with pytest.raises(BackendError, match="Redis is unavailable"):
            await backend.wait("some-task", timeout=10)
        elapsed = time.monotonic() - started
        await backend.close()
        return elapsed

    assert asyncio.run(wait()) < TIMEOUT + SLACK


@pytest.mark.timeout(30)
@pytest.mark.parametrize("server", ["closed_port", "black_hole"])
def test_sync_waits_and_reads_fail_in_time(server: str, request: pytest.FixtureRequest) -> None:
    # What AsyncResult.get() and .state call in a thread with no event loop
    url = request.getfixturevalue(server)
    backend = create_backend(url, {"connection_timeout": TIMEOUT})
    try:
        for name, call in {
            "wait": lambda: backend.wait_blocking("some-task", timeout=10),
            "load": lambda: backend.load_many_blocking(["some-task"]),
        }.items():
            started = time.monotonic()
            with pytest.raises(BackendError, match="Redis is unavailable"):
                call()
            assert time.monotonic() - started < TIMEOUT + SLACK, name
    finally:
        backend.close_blocking()


@pytest.mark.timeout(30)
def test_get_and_state_raise_backend_error_when_the_backend_is_down(closed_port: str) -> None:
    # Given an app whose result backend is down (its broker is fine)
    app = App("down", broker="memory://", backend=closed_port)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    try:
        result = add.delay(1, 2)
        # Then reading the result is a clear error, not a hang or a PENDING that lies
        with pytest.raises(BackendError, match="Redis is unavailable"):
            result.get(timeout=10)
        with pytest.raises(BackendError, match="Redis is unavailable"):
            _ = result.state
    finally:
        app.close()
