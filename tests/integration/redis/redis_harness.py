"""Real Redis servers for the Redis tests: the shared one on 6379, or one of a test's own.

- ``SHARED``: the local server on 127.0.0.1:6379, database 14 (the Redis tests' own);
  each test uses a key prefix of its own (``unique_prefix``, ``with_prefix``), whose
  keys are deleted after it (``delete_prefix``).
- ``RedisServer``: a ``redis-server`` a test starts on a free port with persistence
  on (AOF in the test's directory), so it can shut the server down and start it again
  with its data, or leave it down.
- ``RedisDeployment``: the integration harness's ``Deployment`` on a Redis URL, so the
  ledger, worker processes and probe work unchanged.

Without a server (or the ``redis-server`` binary) the tests are skipped, except under
CI (the ``CI`` environment variable is set), where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import pytest
import redis
from worker_harness import Deployment, wait_until

from celeriac.brokers.base import Broker
from celeriac.brokers.redis import RedisBroker

SHARED = "redis://127.0.0.1:6379/14"


def unavailable(reason: str) -> None:
    """Skip for lack of a server, or fail when running under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the Redis tests must run)")
    pytest.skip(reason)


def ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """``redis-server`` on its own port, with an append-only file in ``directory``.

    ``args``: more server options, after the defaults (so they win): ``("--appendonly",
    "no")`` for a server without persistence, ``("--port", "0", "--tls-port", "{port}",
    ...)`` for TLS only (``{port}`` is replaced by the server's port). ``url``: how to
    reach it, also with ``{port}`` (a password, ``rediss://``, TLS options).
    """

    def __init__(self, directory: Path, args: Sequence[str] = (),
                 url: str = "redis://127.0.0.1:{port}/0") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed")
        self.binary = str(binary)
        self.directory = directory
        self.port = free_port()
        self.url = url.format(port=self.port)
        self.args = [arg.replace("{port}", str(self.port)) for arg in args]
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.start()

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (again, with the data of its append-only file) and wait for it."""
        assert self.process is None or self.process.poll() is not None
        self._log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "yes", "--dir", str(self.directory),
             *self.args],
            stdout=self._log, stderr=subprocess.STDOUT)
        wait_until(lambda: ping(self.url), timeout, f"redis-server on port {self.port}")

    def shutdown(self, timeout: float = 10.0, save: bool = True) -> None:
        """SHUTDOWN: the server flushes its append-only file and exits (NOSAVE: it
        writes nothing, as when a server without persistence goes down)."""
        assert self.process is not None
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        with contextlib.suppress(redis.ConnectionError):  # the connection drops, as it should
            client.shutdown(nosave=not save)
        client.close()
        self.process.wait(timeout)
        self._close_log()

    def restart(self) -> float:
        """Shut down and start again; return how long the server was unreachable."""
        down = time.monotonic()
        self.shutdown()
        self.start()
        return time.monotonic() - down

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


class RedisDeployment(Deployment):
    """The ledger deployment of ``worker_harness``, on a Redis broker and backend."""

    def __init__(self, root: Path, url: str, lease_seconds: float) -> None:
        super().__init__(root, url, lease_seconds=lease_seconds)


def with_prefix(url: str, prefix: str) -> str:
    return f"{url}?key_prefix={prefix}"


def unique_prefix(kind: str) -> str:
    return f"test-{kind}:{uuid.uuid4().hex[:12]}:"


def stream_lengths(broker: Broker, queue: str) -> list[int]:
    """XLEN of every band of a queue, through a client of its own."""
    assert isinstance(broker, RedisBroker)
    client = redis.Redis.from_url(broker.settings.url, socket_timeout=5)
    try:
        return [int(client.xlen(broker.stream_key(queue, band))) for band in range(10)]
    finally:
        client.close()
