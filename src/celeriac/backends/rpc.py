"""The ``rpc://`` result backend: results travel back to the caller over RabbitMQ.

As in Celery, results are not stored in a server: each client process declares an
exclusive, auto-delete reply queue (``celeriac.reply.<uuid>``, gone when the client
disconnects), names it in every message it sends (the ``reply_to`` header of
``Message.headers``, set through ``message_headers``), and the worker publishes each
result there (``store_replies``), with publisher confirms. A thread of the client's
keeps one connection consuming that queue (a blocking socket, ``amqp_blocking``: no
event loop and no task per result; the thread keeps the heartbeats) and holds the
results in memory, where ``AsyncResult.get()`` waits for them without polling, from
any thread (woken directly by the listener's thread) or event loop.

What follows from that design, and differs from a stored backend:

- only the process that sent a task can read its result, and only while it runs; a
  result that comes back while the client is disconnected (a broker restart) is lost,
  which the worker logs and does not retry;
- results are held until read with ``forget()``, or until ``result_expires``;
- a task sent from inside a running task inherits its parent's reply queue, so the
  results of follow-up tasks (retries, chain steps) go back to the original caller;
- ``store_many`` (no message headers to route by) keeps results in this process.

``rpc://`` uses the broker's server (the App passes its ``broker_url``); the backend
URL may also name a server itself (``rpc://user:pass@host:5672/vhost`` or an
``amqp://`` URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from aiormq.exceptions import AMQPError
from pamqp import commands as spec

from celeriac.backends.base import ResultBackend
from celeriac.brokers.amqp import safe_url, split_url
from celeriac.brokers.amqp_blocking import (
    BlockingConnection,
    ConnectionLost,
    Refused,
    Server,
    Unroutable,
    last_cause,
)
from celeriac.brokers.amqp_topology import DEFAULT_CONNECT_TIMEOUT, DEFAULT_HEARTBEAT
from celeriac.brokers.amqp_wire import Wire, WireLost
from celeriac.errors import BackendError, BackendRefused, ConfigurationError
from celeriac.task import current_request
from celeriac.tls import normalize

logger = logging.getLogger("celeriac.backend.rpc")

REPLY_TO = "reply_to"  # the Message header naming the queue a result goes to
TTL_HEADER = "x-celeriac-ttl"  # seconds the caller keeps the result
RECONNECT_BACKOFF_MAX = 5.0
PUBLISH_TIMEOUT = 10.0


class RPCBackend(ResultBackend):
    """Results published to the caller's own reply queue. See the module docstring."""

    scheme = "rpc"
    # Results arrive in this process's memory: a sync caller waits in its own thread.
    supports_blocking: ClassVar[bool] = True

    def __init__(self, url: str = "rpc://", options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        server = _server_url(url, self.options.get("broker_url"))
        connection_url, query = split_url(server)
        if "heartbeat" not in query:
            sep = "&" if "?" in connection_url else "?"
            connection_url += f"{sep}heartbeat={DEFAULT_HEARTBEAT}"
        self.server_url = connection_url
        # The broker's own TLS options: results travel over the broker's server.
        self.tls_options = normalize(self.options.get("broker_use_ssl"), "broker_use_ssl")
        self.safe_url = safe_url(server)
        # connection_timeout is the generic name, connect_timeout the broker's older one.
        self.connect_timeout = float(self.options.get(
            "connect_timeout", self.options.get("connection_timeout", DEFAULT_CONNECT_TIMEOUT)))
        self.reply_queue = f"celeriac.reply.{uuid.uuid4().hex}"
        self._lock = threading.Lock()
        self._results: dict[str, tuple[bytes, float | None]] = {}
        # Who waits for a task's result: a future on an event loop (``wait``), or a
        # thread (``wait_blocking``), woken straight from the listener's thread.
        self._waiters: dict[str, list[_Waiter]] = {}
        self._listener: _Listener | None = None
        self._publishers: dict[asyncio.AbstractEventLoop, _Publisher] = {}

    # -- the producer side ----------------------------------------------------------------

    def message_headers(self) -> dict[str, Any]:
        request = current_request.get()
        if request is not None and request.headers.get(REPLY_TO):
            # Sent from inside a task: its results belong to whoever waits on the parent.
            return {REPLY_TO: request.headers[REPLY_TO]}
        self._listen()
        return {REPLY_TO: self.reply_queue}

    def _listen(self) -> None:
        """Start the reply consumer once, and wait until its queue exists.

        The queue must exist before the first task is sent, or a quick result would
        find nowhere to go. This blocks the first send of the process for a round trip.
        """
        with self._lock:
            listener = self._listener
            if listener is None or listener.refused is not None:
                # (A refused one has stopped: the next send tries again, and fails at
                # once again unless the cause was fixed.)
                listener = self._listener = _Listener(self)
        listener.wait_ready(self.connect_timeout)

    async def wait(self, task_id: str, timeout: float | None,
                   accept: Callable[[bytes], bool] | None = None) -> bytes | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while True:
            future: asyncio.Future[None] = loop.create_future()
            with self._lock:
                self._waiters.setdefault(task_id, []).append((loop, future))
            data = self._load(task_id)
            if data is not None and (accept is None or accept(data)):
                self._forget_waiter(task_id, future)
                return data
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._forget_waiter(task_id, future)
                return None
            try:
                await asyncio.wait_for(future, remaining)
            except TimeoutError:
                self._forget_waiter(task_id, future)
                return None

    def wait_blocking(self, task_id: str, timeout: float | None,
                      accept: Callable[[bytes], bool] | None = None) -> bytes | None:
        """``wait`` in the caller's thread: the listener's thread wakes it directly."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            event = threading.Event()
            with self._lock:
                self._waiters.setdefault(task_id, []).append(event)
            try:
                data = self._load(task_id)
                if data is not None and (accept is None or accept(data)):
                    return data
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                if not event.wait(remaining):
                    return None
            finally:
                self._forget_waiter(task_id, event)

    def load_many_blocking(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        found = {}
        for task_id in task_ids:
            data = self._load(task_id)
            if data is not None:
                found[task_id] = data
        return found

    def _forget_waiter(self, task_id: str, waiter: asyncio.Future[None] | threading.Event
                       ) -> None:
        with self._lock:
            waiters = [w for w in self._waiters.get(task_id, [])
                       if (w if isinstance(w, threading.Event) else w[1]) is not waiter]
            if waiters:
                self._waiters[task_id] = waiters
            else:
                self._waiters.pop(task_id, None)

    # -- storage, in this process ---------------------------------------------------------

    async def store_many(self, results: Mapping[str, bytes], ttl: float | None) -> None:
        self._keep(results, ttl)

    async def load_many(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        return self.load_many_blocking(task_ids)

    async def delete_many(self, task_ids: Sequence[str]) -> None:
        with self._lock:
            for task_id in task_ids:
                self._results.pop(task_id, None)

    async def cleanup(self) -> int:
        now = time.time()
        with self._lock:
            expired = [key for key, (_, until) in self._results.items()
                       if until is not None and until <= now]
            for task_id in expired:
                del self._results[task_id]
            return len(expired)

    def _keep(self, results: Mapping[str, bytes], ttl: float | None) -> None:
        until = None if ttl is None else time.time() + ttl
        with self._lock:
            for task_id, data in results.items():
                self._results[task_id] = (data, until)
                for waiter in self._waiters.pop(task_id, ()):
                    if isinstance(waiter, threading.Event):
                        waiter.set()
                        continue
                    loop, future = waiter
                    with contextlib.suppress(RuntimeError):  # that loop has closed
                        loop.call_soon_threadsafe(_resolve, future)

    def _load(self, task_id: str) -> bytes | None:
        with self._lock:
            entry = self._results.get(task_id)
            if entry is None:
                return None
            if entry[1] is not None and entry[1] <= time.time():
                del self._results[task_id]
                return None
            return entry[0]

    # -- the worker side ------------------------------------------------------------------

    async def store_replies(self, results: Mapping[str, bytes],
                            headers: Mapping[str, Mapping[str, Any]], ttl: float | None) -> None:
        routed: list[tuple[str, str, bytes]] = []
        local: dict[str, bytes] = {}
        for task_id, data in results.items():
            reply_to = headers.get(task_id, {}).get(REPLY_TO)
            if isinstance(reply_to, str) and reply_to and reply_to != self.reply_queue:
                routed.append((reply_to, task_id, data))
            else:
                local[task_id] = data
        if local:
            self._keep(local, ttl)
        if routed:
            await self._publisher().publish(routed, ttl)

    def _publisher(self) -> _Publisher:
        loop = asyncio.get_running_loop()
        with self._lock:
            publisher = self._publishers.get(loop)
            if publisher is None:
                for gone in [other for other in self._publishers if other.is_closed()]:
                    del self._publishers[gone]
                publisher = self._publishers[loop] = _Publisher(self)
            return publisher

    def close_blocking(self) -> None:
        """Stop consuming the reply queue (``App.close`` calls this for sync callers)."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()

    async def close(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            publishers = list(self._publishers.items())
            self._publishers.clear()
        current = asyncio.get_running_loop()
        for loop, publisher in publishers:
            if loop is current:
                await publisher.close()
            elif loop.is_running():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.wrap_future(
                        asyncio.run_coroutine_threadsafe(publisher.close(), loop)), 5)
        if listener is not None:
            await asyncio.to_thread(listener.stop)

    # -- shared by the listener and the publishers ----------------------------------------

    async def open_wire(self) -> Wire:
        """A connection for publishing results, its channel in confirm mode."""
        server = Server.from_url(self.server_url, f"celeriac rpc pid {os.getpid()}",
                                 self.tls_options)
        try:
            return await Wire.open(server, self.connect_timeout, heartbeat=server.heartbeat,
                                   confirm=True)
        except Refused as exc:  # wrong credentials, untrusted certificate, no such vhost
            raise BackendRefused(f"RabbitMQ for rpc results at {self.safe_url} refused the "
                                 f"connection: {exc}") from exc
        except (WireLost, AMQPError) as exc:
            raise BackendError(f"cannot reach RabbitMQ for rpc results at {self.safe_url} "
                               f"({type(exc).__name__}: {exc})") from exc

    def deliver(self, properties: spec.Basic.Properties, body: bytes) -> None:
        """A result arrived on the reply queue."""
        task_id = properties.correlation_id
        if not task_id:
            return
        ttl = (properties.headers or {}).get(TTL_HEADER)
        self._keep({task_id: body},
                   float(ttl) if isinstance(ttl, int | float) and ttl > 0 else None)


_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | threading.Event


class _Listener:
    """A daemon thread consuming the reply queue on a blocking socket of its own.

    No event loop: the thread reads frames (``amqp_blocking``), keeps the heartbeats,
    and hands each result to ``deliver``, which wakes its waiters directly.
    """

    def __init__(self, backend: RPCBackend) -> None:
        self.backend = backend
        self._ready = threading.Event()
        self._settled = threading.Event()  # ready, or refused for good
        self._wake = threading.Event()  # ends a backoff wait: a sender waits, or stop()
        self._error: BaseException | None = None
        self.refused: Refused | None = None  # set when the server refused us: stopped
        self._stopping = threading.Event()
        self._connection: BlockingConnection | None = None
        self._thread = threading.Thread(target=self._run, name="celeriac-rpc-replies",
                                        daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> None:
        """Return once consuming; ``BackendRefused`` at once when the server refused us,
        ``BackendError`` with the last failure's cause when ``timeout`` ran out."""
        if not self._settled.is_set():
            self._wake.set()  # try now, not at the end of a backoff grown in an outage
        self._settled.wait(timeout)
        if self._ready.is_set():
            return
        if self.refused is not None:
            raise BackendRefused(f"RabbitMQ for rpc results at {self.backend.safe_url} "
                                 f"refused the connection: {self.refused}") from self.refused
        cause = last_cause(self._error)
        raise BackendError(f"the rpc reply queue could not be set up within {timeout:g}s"
                           + (f" (last error: {type(cause).__name__}: {cause})"
                              if cause else "")) from cause

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        connection = self._connection
        if connection is not None:
            connection.shutdown()  # the blocked read returns
        self._thread.join(10)

    def _run(self) -> None:
        backend = self.backend
        server = Server.from_url(backend.server_url, f"celeriac rpc pid {os.getpid()}",
                                 backend.tls_options)
        failures = 0
        down = False  # a failure since the last success: log the recovery
        while not self._stopping.is_set():
            connection: BlockingConnection | None = None
            try:
                connection = self._connection = BlockingConnection(
                    server, backend.connect_timeout, confirm=False, heartbeat=server.heartbeat)
                connection.call(spec.Queue.Declare(queue=backend.reply_queue, exclusive=True,
                                                   auto_delete=True),
                                spec.Queue.DeclareOk, time.monotonic() + backend.connect_timeout)
                if down:
                    logger.warning("rpc reply queue %s consuming again", backend.reply_queue)
                failures, down = 0, False
                self._ready.set()
                self._settled.set()
                connection.consume(backend.reply_queue, backend.deliver, self._stopping)
            except Refused as exc:
                # No retry can fix it: stop, and let every waiting send fail at once.
                logger.error("rpc reply queue: RabbitMQ at %s refused the connection: %s",
                             backend.safe_url, exc)
                self.refused = exc
                self._settled.set()
                break
            except Exception as exc:
                if self._stopping.is_set():
                    break
                failures += 1
                down = True
                self._error = exc
                if isinstance(exc, ConnectionLost | AMQPError):
                    logger.warning("rpc reply queue: %s; retrying (results that come back "
                                   "meanwhile are lost)", exc)
                else:  # a bug: never let it end the thread, and so every result
                    logger.exception("rpc reply queue: unexpected error; consuming again")
            finally:
                self._connection = None
                if connection is not None:
                    connection.close()
            if self._wake.wait(min(RECONNECT_BACKOFF_MAX, 0.1 * 2 ** failures)):
                failures = 0  # a sender is waiting: quick retries again, for its timeout
            self._wake.clear()


class _Publisher:
    """One loop's connection for publishing results to reply queues (``amqp_wire``).

    celeriac's own protocol rather than aiormq's: a worker publishes a result per task,
    and aiormq's writer queue and confirm futures cost about as much as the task.
    """

    def __init__(self, backend: RPCBackend) -> None:
        self.backend = backend
        self._wire: Wire | None = None
        self._lock = asyncio.Lock()

    async def _ready(self) -> Wire:
        async with self._lock:
            if self._wire is None or self._wire.is_closed:
                self._wire = await self.backend.open_wire()
            return self._wire

    async def publish(self, replies: Sequence[tuple[str, str, bytes]],
                      ttl: float | None) -> None:
        wire = await self._ready()
        headers: dict[str, Any] = {TTL_HEADER: int(ttl)} if ttl else {}
        try:
            outcomes = await wire.publish([
                (data, "", queue, spec.Basic.Properties(
                    message_id=task_id, correlation_id=task_id, delivery_mode=1,
                    headers=headers))
                for queue, task_id, data in replies], PUBLISH_TIMEOUT)
        except (WireLost, AMQPError) as exc:  # the connection was gone already
            raise BackendError(f"could not send {len(replies)} rpc result(s): "
                               f"{exc!r}") from exc
        failures = []
        for (queue, task_id, _), outcome in zip(replies, outcomes, strict=True):
            if isinstance(outcome, Unroutable):
                # No such queue: the caller disconnected, and nobody can read this result.
                logger.info("result of %s not delivered: its caller's reply queue %s is "
                            "gone", task_id, queue)
            elif outcome is not None:
                failures.append(outcome)
        if failures:
            raise BackendError(f"could not send {len(failures)} rpc result(s): "
                               f"{failures[0]!r}") from failures[0]

    async def close(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            await wire.close()


def _server_url(url: str, broker_url: Any) -> str:
    """The AMQP URL results travel through: the backend URL's own server, or the broker's."""
    parts = urlsplit(url)
    if parts.scheme in ("amqp", "amqps"):
        return url
    if parts.netloc:
        return urlunsplit(parts._replace(scheme="amqp"))
    if isinstance(broker_url, str) and broker_url.split("://", 1)[0] in ("amqp", "amqps"):
        return broker_url
    raise ConfigurationError(
        f"result backend {url!r} sends results over RabbitMQ, but the broker is "
        f"{broker_url!r}; name a server (rpc://user:pass@host:5672/vhost) or use an amqp:// "
        "broker")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


__all__ = ["REPLY_TO", "RPCBackend"]
