"""Helpers of the alert tests: brokers in a namespace of their own, and webhook receivers.

A ``Hook`` is a stdlib HTTP server on 127.0.0.1 (port 0) in a thread that records each
POSTed JSON body; it can answer the first few POSTs with an error (503) to test retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from celeriac import App
from celeriac.brokers import create_broker

REDIS_URL = "redis://127.0.0.1:6379/7"  # this suite's database on the local server
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
KINDS = ["sqlite", "redis", "amqp"]


class Hook:
    """A webhook receiver: ``posts`` holds the JSON bodies, ``attempts`` every POST."""

    def __init__(self, fail_first: int = 0, fail_status: int = 503) -> None:
        self.posts: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_first = fail_first
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with hook._lock:
                    hook.attempts += 1
                    failing = hook.attempts <= hook.fail_first
                    if not failing:
                        hook.posts.append(json.loads(body))
                self.send_response(fail_status if failing else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def statuses(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return [(post["status"], post["queue"], post["metric"]) for post in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def refused_url() -> str:
    """A URL nothing listens on (a port just closed): every POST is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/down"


@contextlib.contextmanager
def alert_app(kind: str, tmp_path: Any, **settings: Any) -> Iterator[App]:
    """An app on a broker of ``kind``, in a namespace of its own, cleaned up after."""
    if kind in ("sqlite", "memory"):
        url = "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'b.db'}"
        app = App("alerts", broker=url, **settings)
        try:
            yield app
        finally:
            app.close()
        return
    if kind == "redis":
        url, options = REDIS_URL, {"key_prefix": f"alerts:{uuid.uuid4().hex[:12]}:"}
    else:
        url, options = AMQP_URL, {"namespace": f"alerts.{uuid.uuid4().hex[:12]}."}
    _require(url)
    app = App("alerts", broker=url, broker_transport_options=options, **settings)
    try:
        yield app
    finally:
        app.close()
        _clean(url, options)


def _require(url: str) -> None:
    port = 6379 if url.startswith("redis") else 5672
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        pytest.skip(f"no server at {url}")


def _clean(url: str, options: dict[str, str]) -> None:
    if url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{options['key_prefix']}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        return

    async def delete() -> None:
        cleaner = create_broker(url, options)
        try:
            await cleaner.delete_namespace()  # type: ignore[attr-defined]
        finally:
            await cleaner.close()

    asyncio.run(delete())


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)
