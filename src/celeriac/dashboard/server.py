"""Serving the dashboard under uvicorn, for the CLI and the tests.

uvicorn's own logging set-up is turned off (``log_config=None``): its loggers
(``uvicorn.error``, ``uvicorn.access``) then go through celeriac's handlers like every
other line. ``serve`` blocks until SIGTERM or SIGINT (uvicorn handles both in the main
thread: it stops accepting, finishes the requests in progress within
``GRACEFUL_SECONDS``, then runs the app's shutdown: the ingest and the queue sampler
stop and the history store closes). ``Background`` runs the same server on a thread,
for tests and embedding, and stops it with ``close``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from starlette.types import ASGIApp

GRACEFUL_SECONDS = 5
STARTUP_WAIT = 30.0


def config(asgi: ASGIApp, host: str, port: int, access_log: bool = False) -> uvicorn.Config:
    return uvicorn.Config(asgi, host=host, port=port, log_config=None,
                          access_log=access_log, lifespan="on",
                          timeout_graceful_shutdown=GRACEFUL_SECONDS, server_header=False)


class _Server(uvicorn.Server):
    """uvicorn's server, stopping on SIGTERM/SIGINT without raising the signal again
    once stopped (uvicorn does, which would kill the process before the CLI closes the
    app's connections)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(asgi: ASGIApp, host: str, port: int, access_log: bool = False) -> None:
    """Serve until SIGTERM/SIGINT; the app's lifespan starts and stops the rest. Call
    it from the main thread (signals)."""
    _Server(config(asgi, host, port, access_log)).run()


class Background:
    """The dashboard served on a thread of this process (tests, embedding)."""

    def __init__(self, asgi: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = uvicorn.Server(config(asgi, host, port))  # (no signals on a thread)
        self.thread = threading.Thread(target=self.server.run, name="dashboard",
                                       daemon=True)

    def start(self) -> Background:
        self.thread.start()
        deadline = time.monotonic() + STARTUP_WAIT
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the dashboard did not start (see the log)")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        sockets = [s for server in self.server.servers for s in server.sockets]
        host, port = sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(GRACEFUL_SECONDS + 10)
