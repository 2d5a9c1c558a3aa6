"""The canvas on every broker: chain, group, chord, nesting, and a failing chord.

Each test runs a worker in a thread of the test process (``ThreadedWorker``) on a real
broker and result backend:

- memory: the in-memory broker and backend;
- sqlite: one file, broker and backend;
- redis: the local server, database 12, under a key prefix of the test's own (deleted
  afterwards), broker and backend;
- amqp: the local RabbitMQ, in a vhost of this module's own (deleted afterwards) and a
  queue namespace of the test's own, with results in a SQLite file.

Without a Redis or RabbitMQ server those cases are skipped, except under CI (the ``CI``
environment variable), where that fails. Worker processes, crashes and the exactly-once
chord are in test_canvas_workers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from celeriac import App, AsyncResult, ChordError, GroupResult, chain, chord, group
from celeriac.brokers import create_broker
from celeriac.testing import ThreadedWorker

KINDS = ["memory", "sqlite", "redis", "amqp"]
REDIS_URL = "redis://127.0.0.1:6379/12"
AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672
RABBIT_LOCK = Path(tempfile.gettempdir()) / "celeriac-rabbitmq-tests.lock"  # see rabbit_harness
WAIT = 30.0

pytestmark = pytest.mark.timeout(60)  # each test: well within a minute


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so every broker must be tested)")
    pytest.skip(reason)


# -- one world per broker kind ------------------------------------------------------------


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    """A RabbitMQ vhost for this module's tests, deleted with all it holds afterwards."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        unavailable("rabbitmqctl is not installed")
    try:
        socket.create_connection((AMQP_HOST, AMQP_PORT), timeout=2).close()
    except OSError:
        unavailable(f"RabbitMQ is not running on {AMQP_HOST}:{AMQP_PORT}")
    assert ctl is not None
    with RABBIT_LOCK.open("ab") as lock:  # shared: tests that restart RabbitMQ wait for us
        fcntl.flock(lock, fcntl.LOCK_SH)
        name = f"celeriac-canvas-{uuid.uuid4().hex[:10]}"
        run = [ctl, "-q"]
        subprocess.run([*run, "add_vhost", name], check=True, capture_output=True, timeout=30)
        try:
            subprocess.run([*run, "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
                           check=True, capture_output=True, timeout=30)
            yield name
        finally:
            subprocess.run([*run, "delete_vhost", name], check=False, capture_output=True,
                           timeout=30)


@contextlib.contextmanager
def redis_prefix() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        client.close()
        unavailable(f"Redis is not running at {REDIS_URL}")
    prefix = f"canvas:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(params=KINDS)
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    """An App on one broker kind, with a result backend that can count chords."""
    kind = request.param
    with contextlib.ExitStack() as stack:
        if kind == "memory":
            broker = backend = "memory://"
        elif kind == "sqlite":
            broker = backend = f"sqlite:///{tmp_path / 'canvas.db'}"
        elif kind == "redis":
            prefix = stack.enter_context(redis_prefix())
            broker = backend = f"{REDIS_URL}?key_prefix={prefix}"
        else:
            namespace = f"canvas.{uuid.uuid4().hex[:10]}."
            broker = (f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/"
                      f"{request.getfixturevalue('vhost')}?namespace={namespace}")
            backend = f"sqlite:///{tmp_path / 'results.db'}"
            stack.callback(_delete_namespace, broker)
        app = App("canvas", broker=broker, backend=backend)
        stack.callback(app.close)
        yield app


def _delete_namespace(url: str) -> None:
    async def delete() -> None:
        cleaner = create_broker(url)
        try:
            await cleaner.delete_namespace()  # type: ignore[attr-defined]
        finally:
            await cleaner.close()

    asyncio.run(delete())


@pytest.fixture
def t(app: App) -> Iterator[Any]:
    calls: Counter[str] = Counter()
    lock = threading.Lock()
    release = threading.Event()

    @app.task(name="canvas.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="canvas.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="canvas.tsum")
    def tsum(numbers: list[int]) -> int:
        with lock:
            calls["tsum"] += 1
        return sum(numbers)

    @app.task(name="canvas.fail")
    def fail(x: Any = None) -> None:
        raise ValueError(f"member {x} failed")

    @app.task(name="canvas.blocked")
    def blocked(x: int) -> int:
        release.wait(WAIT)
        return x

    with ThreadedWorker(app, slots=8):
        yield SimpleNamespace(add=add, mul=mul, tsum=tsum, fail=fail, blocked=blocked,
                              calls=calls, release=release)
        release.set()


# -- the workflows ------------------------------------------------------------------------


def test_a_chain_of_three(t: Any) -> None:
    result = chain(t.add.s(4, 4), t.mul.s(8), t.mul.s(10)).delay()
    assert isinstance(result, AsyncResult)
    assert result.get(timeout=WAIT) == 640
    assert result.parent.get(timeout=WAIT) == 64
    assert result.parent.parent.get(timeout=WAIT) == 8


def test_a_group_of_100(t: Any) -> None:
    result = group(t.add.s(i, i) for i in range(100)).delay()
    assert isinstance(result, GroupResult)
    assert result.get(timeout=WAIT) == [2 * i for i in range(100)]
    assert result.completed_count() == 100
    assert result.successful()


def test_a_chord_of_100_calls_back_once(t: Any) -> None:
    result = chord(t.add.s(i, i) for i in range(100))(t.tsum.s())
    assert result.get(timeout=WAIT) == 9900
    assert t.calls["tsum"] == 1


def test_a_chain_in_a_group_in_a_chord(t: Any) -> None:
    header = group(t.add.s(1), chain(t.add.s(2), t.mul.s(10)),
                   group(t.add.s(3), chain(t.add.s(4), t.add.s(1))))
    result = (t.add.s(1, 1) | chord(header, t.tsum.s()) | t.mul.s(2)).delay()
    assert result.get(timeout=WAIT) == 2 * (3 + 40 + 5 + 7)
    assert t.calls["tsum"] == 1


def test_a_chord_with_a_failing_member_fails_promptly(t: Any) -> None:
    started = time.monotonic()
    result = chord([t.add.s(1, 1), t.fail.s(2), t.blocked.s(3)], t.tsum.s()).delay()
    with pytest.raises(ChordError, match="raised ValueError: member 2 failed"):
        result.get(timeout=WAIT)
    assert not t.release.is_set()  # while another member is still running
    assert time.monotonic() - started < WAIT
    assert t.calls["tsum"] == 0
