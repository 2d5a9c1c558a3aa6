"""A link's connection to RabbitMQ: connecting, reconnecting, channels, and what failed.

``Connected`` is the bottom layer of a ``Link`` (``amqp_link``; one per event loop, only
touched from that loop, since aiormq objects are bound to the loop that made them). It
owns aiormq's connection and its two channels:

- *publisher*, in confirm mode: declares and confirmed publishes (``amqp_publish``);
- *admin*: passive declares for counts, ``basic.get`` scans of the dead letters and the
  registry. A passive declare of a missing queue closes a channel; only this one.

It connects with a capped backoff, retries an operation once on a fresh connection when
the old one turns out dead (``run``), and tells a lost connection (``lost``: try again)
from a refusal (``refused``, ``access_refused``: login, vhost, permission; another try gets
the same answer). aiormq hides the reason of a refused ``connection.open``; one handshake
of celeriac's own (``amqp_wire``) reads it, on that failure path only.

``Context`` is what every link of a broker shares (settings, names, the publish clock)
and makes the ``Envelope`` of each message to publish.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection
from aiormq.exceptions import (
    AMQPConnectionError,
    AMQPError,
    ChannelAccessRefused,
    ChannelClosed,
    ChannelInvalidStateError,
    InvalidFrameError,
)
from pamqp import commands as spec

from celeriac.brokers.amqp_blocking import Refused, Server, last_cause, refusal
from celeriac.brokers.amqp_topology import (
    HEADER_DELIVERIES,
    HEADER_ETA,
    HEADER_PRIORITY,
    HEADER_SENT,
    RETURN_PRIORITY,
    AMQPOptions,
    Topology,
)
from celeriac.brokers.amqp_wire import Wire, WireLost
from celeriac.errors import BrokerRefused, BrokerUnavailable, CeleriacError, refused_error
from celeriac.tls import handshake_refusal, speaks_tls_async

logger = logging.getLogger("celeriac.broker.amqp")

RECONNECT_BACKOFF_FIRST = 0.1
RECONNECT_BACKOFF_MAX = 5.0
CLOSE_TIMEOUT = 5.0
# How long a call that found its channel closing waits for the channel's reason.
CHANNEL_CLOSE_WAIT = 0.5

# A channel or connection that is gone: the operation may succeed on a new one.
LOST = (AMQPConnectionError, ChannelInvalidStateError, ConnectionError)

_link_ids = itertools.count(1)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message ready for ``basic.publish``.

    Its route is worked out at the moment it is sent, so that a delay counts from then:
    to ``exchange``/``routing_key`` when given (dead letters), down the delay ladder
    while ``eta_ms`` is ahead, else straight into the queue.
    """

    queue: str  # the celeriac queue it is for (declared before publishing)
    body: bytes
    properties: spec.Basic.Properties
    eta_ms: int | None = None
    exchange: str | None = None
    routing_key: str = ""

    def delayed(self, now_ms: float) -> bool:
        return self.exchange is None and self.eta_ms is not None and self.eta_ms > now_ms


class Context:
    """What every link of one broker shares: settings, names, and the clock for ages."""

    def __init__(self, url: str, safe_url: str, settings: AMQPOptions, topology: Topology,
                 lease_seconds: float) -> None:
        self.url = url
        self.safe_url = safe_url
        self.settings = settings
        self.topology = topology
        self.lease_seconds = lease_seconds
        self.known: set[str] = set()  # celeriac queues declared through this broker
        # (AMQPBroker puts the heartbeat into the URL when it names none.)
        self.server = Server.from_url(url, f"celeriac pid {os.getpid()} consumer",
                                      settings.tls)
        self.consumer_heartbeat = consumer_heartbeat(self.server.heartbeat, lease_seconds)
        self._stamp_lock = threading.Lock()
        self._last_stamp = 0

    def stamp(self) -> int:
        """A publish time in microseconds, strictly increasing within this process."""
        with self._stamp_lock:
            self._last_stamp = max(time.time_ns() // 1000, self._last_stamp + 1)
            return self._last_stamp

    def envelope(self, queue: str, id: str, body: bytes, priority: int, *,
                 eta_ms: int | None = None, deliveries: int = 0, sent: int | None = None,
                 now_ms: float | None = None, returning: bool = False) -> Envelope:
        """A message for ``queue``, to wait in the broker until ``eta_ms`` if that is ahead.

        ``returning``: a copy of a delivered message going back to its queue; unless it
        waits for an eta, it goes at ``RETURN_PRIORITY``, ahead of the waiting messages.
        """
        queue_spec = self.settings.spec(queue)
        headers: dict[str, Any] = {HEADER_SENT: self.stamp() if sent is None else sent}
        if deliveries:
            headers[HEADER_DELIVERIES] = deliveries
        now_ms = time.time() * 1000 if now_ms is None else now_ms
        if eta_ms is not None and eta_ms > now_ms:
            headers[HEADER_ETA] = eta_ms
        else:
            eta_ms = None
        if returning and eta_ms is None:
            headers[HEADER_PRIORITY] = priority
            priority = RETURN_PRIORITY
        properties = spec.Basic.Properties(
            message_id=id, priority=priority, headers=headers,
            delivery_mode=queue_spec.delivery_mode)
        return Envelope(queue, body, properties, eta_ms)

    def route(self, envelope: Envelope) -> tuple[str, str]:
        """The exchange and routing key to publish ``envelope`` with, now."""
        if envelope.exchange is not None:
            return envelope.exchange, envelope.routing_key
        now_ms = time.time() * 1000
        if envelope.eta_ms is not None and envelope.eta_ms > now_ms:
            return self.topology.delay_route(envelope.queue, envelope.eta_ms - now_ms)
        return "", self.topology.queue(envelope.queue)


class Connected:
    """A link's connection and channels, connected on demand, and its background tasks."""

    def __init__(self, context: Context, loop: asyncio.AbstractEventLoop) -> None:
        self.ctx = context
        self.loop = loop
        self.id = next(_link_ids)
        self.connection: AbstractConnection | None = None
        self.publisher: AbstractChannel | None = None
        self.consumer: Wire | None = None  # the consumer's own connection (amqp_consume)
        self.admin: AbstractChannel | None = None
        self.declared: set[str] = set()  # queues declared on this connection
        self.shared_declared = False  # the exchanges every queue uses
        self.ladders: set[str] = set()  # queues whose delay queues are declared
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connect_lock = asyncio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._reached = False  # a connection was opened once: the port is no TLS port
        self._last_error: BaseException | None = None
        self.closed = False

    async def ready(self, timeout: float | None = None) -> AbstractConnection:
        """The open connection, connecting (with capped backoff) if there is none."""
        connection = self.connection
        if connection is not None and not connection.is_closed:
            return connection
        async with self._connect_lock:
            connection = self.connection
            if connection is not None and not connection.is_closed:
                return connection
            return await self._connect(self.ctx.settings.connect_timeout
                                       if timeout is None else timeout)

    async def _connect(self, timeout: float) -> AbstractConnection:
        wait = self._retry_at - self.loop.time()
        if wait > 0:
            if wait > timeout:
                raise self._unavailable(f"next attempt in {wait:.1f}s")
            await asyncio.sleep(wait)
            timeout -= wait
        # context: the same TLS context as every other client of this broker
        # (broker_use_ssl and the URL's options), not aiormq's own reading of the URL.
        connection = _Connection(self.ctx.url, context=self.ctx.server.tls, client_properties={
            "connection_name": f"celeriac pid {os.getpid()} {threading.current_thread().name}"})
        attempt = max(0.05, min(timeout, self.ctx.settings.connect_timeout))
        try:
            await asyncio.wait_for(connection.connect(), attempt)
            self.publisher = await connection.channel(publisher_confirms=True)
            self.connection = connection
            self._reached = True  # a plain server: no TLS check on later failures
        except BaseException as exc:
            refused = refusal(exc)
            if refused is None and isinstance(exc, InvalidFrameError) \
                    and "Connection.Close" in str(exc):
                refused = await self._diagnose(attempt)
            if refused is None and self.ctx.server.tls is None and not self._reached \
                    and isinstance(last_cause(exc), ConnectionResetError) \
                    and await speaks_tls_async(self.ctx.server.host, self.ctx.server.port):
                refused = Refused(f"{self.ctx.server.host}:{self.ctx.server.port} speaks "
                                  "TLS but the URL is a plain amqp:// one: use amqps:// "
                                  "(with broker_use_ssl for the certificates)")
            server = self.ctx.server
            if refused is None and server.tls is not None \
                    and isinstance(last_cause(exc), ConnectionResetError) \
                    and (why := await asyncio.to_thread(
                        handshake_refusal, server.host, server.port, server.tls)):
                refused = Refused(why)  # say, a client certificate the server requires
            if refused is not None:
                # Wrong credentials, an untrusted certificate, an unknown vhost: another
                # attempt gets the same answer, so say it now rather than after a timeout.
                await quietly(connection.close())
                self.connection = self.publisher = None
                raise self.refused(refused) from exc
            if not isinstance(exc, TimeoutError | OSError | AMQPError) and not lost(exc):
                raise
            if isinstance(exc, TimeoutError) and not str(exc):  # asyncio's says nothing
                exc = TimeoutError(f"no answer from RabbitMQ within {attempt:.3g}s "
                                   "while connecting")
            self._failures += 1
            backoff = min(RECONNECT_BACKOFF_MAX, RECONNECT_BACKOFF_FIRST * 2 ** self._failures)
            self._retry_at = self.loop.time() + backoff
            self._last_error = exc
            await quietly(connection.close())
            self.connection = self.publisher = None
            raise self._unavailable() from last_cause(exc)  # the socket's own error
        if self._failures:
            logger.warning("reconnected to RabbitMQ at %s", self.ctx.safe_url)
        self._failures = 0
        self._retry_at = 0.0
        self.shared_declared = False
        connection.closing.add_done_callback(
            lambda closing: self._on_connection_closed(connection, closing))
        return connection

    async def _diagnose(self, timeout: float) -> Refused | None:
        """Why RabbitMQ closed a handshake aiormq reported without the reason.

        aiormq turns a ``connection.close`` answering ``connection.open`` (an unknown
        vhost: 530 NOT_ALLOWED) into "expected OpenOk, got Close", its code and words
        lost; one handshake of celeriac's own reads them. Only on this failure path.
        """
        try:
            wire = await Wire.open(self.ctx.server, timeout, heartbeat=0, confirm=False)
        except Exception as exc:
            return refusal(exc)
        await quietly(wire.close(CLOSE_TIMEOUT))
        return None

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``; if the connection turns out to be dead, once more on a new one.

        A connection the server closed while this loop was not running (a producer
        between two calls) looks open until its reader runs; the first operation on it
        fails, and is retried on a fresh connection.
        """
        for attempt in (1, 2):
            try:
                return await operation()
            except BaseException as exc:
                if (denied := await self._access_refused(exc)) is not None:
                    raise self.refused(denied, "access") from exc
                if not lost(exc):
                    raise
                if attempt == 2:
                    self._last_error = exc
                    raise self._unavailable() from exc
                await self._forget_dead_connection(exc)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _forget_dead_connection(self, error: BaseException) -> None:
        if isinstance(error, WireLost):
            return  # the consumer's own connection: it has dropped its state already
        connection = self.connection
        if connection is not None and (connection.is_closed or isinstance(
                error, AMQPConnectionError | OSError | asyncio.CancelledError)):
            self._on_connection_closed(connection, None, error)
            await quietly(asyncio.wait_for(connection.close(), CLOSE_TIMEOUT))

    def _unavailable(self, detail: str = "") -> BrokerUnavailable:
        error = last_cause(self._last_error)  # the socket's own words, not a wrapper's
        reason = f"{type(error).__name__}: {error}" if error is not None else "not connected"
        return BrokerUnavailable(f"cannot reach RabbitMQ at {self.ctx.safe_url} ({reason})"
                                 + (f"; {detail}" if detail else ""))

    @property
    def last_error(self) -> BaseException | None:
        """Why the last connection attempt failed, or the last connection was lost."""
        return self._last_error

    async def _access_refused(self, error: BaseException) -> ChannelAccessRefused | None:
        """The ACCESS_REFUSED behind ``error``: its own, or the one that closed a channel.

        When RabbitMQ closes a channel with several calls under way on it (declares run
        together), aiormq fails the later ones with ``ChannelInvalidStateError`` (which
        looks like a lost channel, and was retried) before the channel itself has ended
        with the reason; that is awaited briefly, then read.
        """
        if (denied := access_refused(error)) is not None:
            return denied
        channel = self.publisher  # (declares and publishes run on it)
        if not isinstance(error, ChannelInvalidStateError) or channel is None:
            return None
        closing = channel.closing
        if not closing.done():
            await asyncio.wait({closing}, timeout=CHANNEL_CLOSE_WAIT)
        if closing.done() and not closing.cancelled():
            reason = closing.exception()
            if reason is not None:
                return access_refused(reason)
        return None

    def refused(self, refused: Exception, what: str = "the connection") -> CeleriacError:
        """A refusal (login, vhost, certificate, permission) as the error to raise."""
        return refused_error(BrokerRefused, getattr(refused, "authentication", False),
                             f"RabbitMQ at {self.ctx.safe_url} refused {what}: {refused}")

    def _on_connection_closed(self, connection: AbstractConnection,
                              closing: asyncio.Future[Any] | None,
                              error: BaseException | None = None) -> None:
        if closing is not None:
            error = None if closing.cancelled() else closing.exception()
        if self.connection is not connection:
            return  # an older connection, already replaced
        if not self.closed and not isinstance(error, asyncio.CancelledError | None):
            # (CancelledError: the loop itself is ending, as at the end of asyncio.run)
            logger.warning("connection to RabbitMQ at %s lost: %r; its unacked deliveries go "
                           "back to the queues", self.ctx.safe_url, error)
            self._last_error = error
        self.connection = self.publisher = self.admin = None
        self.declared.clear()
        self.ladders.clear()

    async def _publisher_channel(self, timeout: float | None = None) -> AbstractChannel:
        connection = await self.ready(timeout)
        if self.publisher is None or self.publisher.is_closed:
            self.publisher = await connection.channel(publisher_confirms=True)
        return self.publisher

    async def _admin_channel(self) -> AbstractChannel:
        connection = await self.ready()
        if self.admin is None or self.admin.is_closed:
            self.admin = await connection.channel(publisher_confirms=False)
        return self.admin

    # -- background work -----------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background work on RabbitMQ failed", exc_info=task.exception())


class _Connection(aiormq.Connection):
    """aiormq's connection, giving up on a silent peer within two heartbeats.

    aiormq waits ``(heartbeat + 1) * 3`` seconds without a frame (33 s for the default
    10 s) before it drops a connection, and checks every half heartbeat: a producer on
    a half-open link would wait that long to notice. RabbitMQ sends a heartbeat every
    half interval, so ``heartbeat + 1`` seconds of silence is two of them missed, and
    with the check's period a dead link is noticed within twice the heartbeat, as by
    celeriac's own connections (``amqp_wire``).
    """

    HEARTBEAT_GRACE_MULTIPLIER = 1


def lost(error: BaseException) -> bool:
    """Whether ``error`` means the connection or channel is gone, so a new one may do.

    aiormq fails whatever waited on a connection it gave up (missed heartbeats) with
    ``CancelledError``; that is a lost connection unless this task itself is cancelled.
    """
    if isinstance(error, asyncio.CancelledError):
        task = asyncio.current_task()
        return task is not None and task.cancelling() == 0
    if isinstance(error, ChannelClosed):
        # Closed by the server for a reason (404, 403, 405, 406): another try gets the same.
        return type(error) is ChannelClosed
    return isinstance(error, LOST)


def access_refused(error: BaseException) -> ChannelAccessRefused | None:
    """The channel's ACCESS_REFUSED (a permission the user lacks) behind ``error``.

    aiormq fails a call on a channel the server closed with the close's reason, or, when
    the call was waiting in another task, with a ``CancelledError`` carrying it.
    """
    if isinstance(error, ChannelAccessRefused):
        return error
    if isinstance(error, asyncio.CancelledError) and error.args \
            and isinstance(error.args[0], ChannelAccessRefused):
        return error.args[0]
    return None


async def quietly(work: Awaitable[Any]) -> None:
    """Await best-effort clean-up work: its failures (a dead connection) do not matter."""
    try:
        await work
    except BaseException as exc:
        if not isinstance(exc, Exception) and not lost(exc):
            raise


def consumer_heartbeat(configured: int, lease_seconds: float) -> int:
    """The heartbeat of a consumer connection: at most half the lease, at least 1 s.

    RabbitMQ closes a connection it heard nothing from for two to three heartbeat
    intervals, and only then gives its unacked deliveries to other consumers. With this
    interval a paused or cut-off worker's deliveries come back within 1 to 1.5 leases
    (the contract's lease), not after the configured heartbeat's 20-30 s. A configured
    heartbeat of 0 (none) is not honoured here: without one, a paused worker would keep
    its deliveries for ever.
    """
    from_lease = max(1, int(lease_seconds // 2))
    return min(configured, from_lease) if configured > 0 else from_lease
