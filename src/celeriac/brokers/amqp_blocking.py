"""Publishing to RabbitMQ from a plain thread: ``AMQPBroker.publish_blocking``.

``delay()`` from a sync caller would otherwise hop to the app's bridge loop and back,
and pay aiormq's reader, writer and future machinery for one confirmed publish; on a
small machine that was most of a send's time. Here the caller's own thread writes the
frames on a socket and reads RabbitMQ's answers until every message is confirmed: one
``sendall`` and, mostly, one ``recv`` per call.

What it keeps from the event-loop path: every message ``mandatory``, on a channel in
confirm mode, and ``publish_blocking`` returns only once each one is confirmed (an
unroutable one, returned, is published again after its queue is declared again). A
connection that fails is replaced and what it had not confirmed is sent again on the
new one (at least once), within ``publish_timeout``; then ``BrokerUnavailable``.

What it leaves to the event-loop path: declaring. A queue (and a delay ladder) is
declared by the broker's ``Link`` once per process, on a private loop thread, before
the first blocking publish to it; a message RabbitMQ returns as unroutable (its queue
was deleted, or lost with a restart) makes that happen again.

The connection: AMQP 0-9-1 over a blocking socket (TLS for ``amqps://``), frames made
and read by pamqp, one channel in confirm mode, **no heartbeats** (an idle producer
cannot answer them from a plain thread). A connection that died while idle is noticed
when it is next used: the write or the read fails (or, for a peer that vanished without
a word, the read times out) and the publish goes to a new connection. TCP keep-alive
is on, so the kernel also notices a dead peer. Connections are pooled per process: a
thread takes one for a publish and gives it back, so threads never share a socket.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from aiormq.channel import exception_by_code as channel_error
from aiormq.connection import exception_by_code as connection_error
from aiormq.exceptions import (
    AMQPConnectionError,
    AMQPError,
    AuthenticationError,
    ChannelAccessRefused,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ConnectionClosed,
    ProbableAuthenticationError,
)
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp.body import ContentBody
from pamqp.constants import FRAME_END, FRAME_HEADER_SIZE
from pamqp.header import ContentHeader, ProtocolHeader
from pamqp.heartbeat import Heartbeat

from celeriac.errors import (
    BrokerError,
    BrokerRefused,
    BrokerUnavailable,
    CeleriacError,
    ConfigurationError,
    refused_error,
)
from celeriac.tls import client_context, from_query
from celeriac.urls import safe_url

CHANNEL = 1
FRAME_MAX = 131072
# An idle pooled connection older than this is closed rather than reused: a firewall may
# have dropped it silently, and a publish on it would wait for its timeout.
IDLE_MAX = 300.0

Outbound = tuple[bytes, str, str, spec.Basic.Properties]  # body, exchange, key, properties


class ConnectionLost(Exception):
    """The socket failed, timed out or was closed: publish again on a new connection."""


class Refused(Exception):
    """RabbitMQ, or the TLS handshake, refused this client for a reason no retry can fix:
    wrong credentials, an untrusted certificate, a vhost that does not exist or is not
    allowed. Each client raises it as its own ``BrokerRefused``/``BackendRefused``
    (``BrokerAuthenticationError`` when ``authentication``: the login was rejected)."""

    def __init__(self, message: str, *, authentication: bool = False) -> None:
        super().__init__(message)
        self.authentication = authentication


# Connection.Close reply codes that mean "not you, not here": ACCESS_REFUSED (a login
# RabbitMQ refused: wrong user or password) and NOT_ALLOWED (an unknown vhost, or one
# the user has no access to). Others (320 CONNECTION_FORCED at a shutdown, 541
# INTERNAL_ERROR, ...) may pass: they are retried.
REFUSED_CODES = {403: "ACCESS_REFUSED", 530: "NOT_ALLOWED"}
# TLS errors that are a dropped connection rather than a refusal.
_TLS_TRANSIENT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def refusal(error: BaseException) -> Refused | None:
    """``error`` as a ``Refused`` when it is a permanent refusal (see there), else None.

    Knows the causes of all three clients: a ``connection.close`` read by this module or
    by ``amqp_wire`` (already a ``Refused``), aiormq's exceptions, and ``ssl``'s.
    """
    if isinstance(error, Refused):
        return error
    if isinstance(error, ssl.SSLCertVerificationError):
        return Refused(f"TLS: RabbitMQ's certificate is not trusted ({error.verify_message}; "
                       "check ssl_ca_certs in broker_use_ssl, or cafile in the URL)")
    if isinstance(error, ssl.SSLError) and not isinstance(error, _TLS_TRANSIENT):
        return Refused(f"TLS handshake with RabbitMQ failed: {error}")
    if isinstance(error, ProbableAuthenticationError | AuthenticationError):
        return Refused(f"ACCESS_REFUSED: RabbitMQ refused the login ({_words(error)})",
                       authentication=True)
    if isinstance(error, AMQPConnectionError) and isinstance(error.__cause__, OSError):
        return refusal(error.__cause__)  # aiormq's wrapping of the socket's own error
    if isinstance(error, ConnectionClosed):
        code = error.args[0] if len(error.args) > 1 else None
        name = REFUSED_CODES.get(code) if isinstance(code, int) else None
        if name is None and type(error).__name__ == "ConnectionNotAllowed":
            name = "NOT_ALLOWED"  # aiormq drops the code of the classes it maps it to
        if name is not None:
            return Refused(_named(name, _words(error)),
                           authentication=name == "ACCESS_REFUSED")
    return None


def closed_by_server(frame: spec.Connection.Close) -> Exception:
    """What a ``connection.close`` from RabbitMQ means: a ``Refused``, or a lost connection."""
    code = frame.reply_code or 0
    if code in REFUSED_CODES:
        return Refused(_named(REFUSED_CODES[code], frame.reply_text or ""),
                       authentication=code == 403)
    return ConnectionLost(repr(connection_error(frame)))


def _named(name: str, text: str) -> str:
    """RabbitMQ's reply text, led by the reply's name (it usually is already)."""
    return text if text.startswith(name) else f"{name}: {text}"


def _words(error: BaseException) -> str:
    """The server's own words in an aiormq error (its args), else the error's text."""
    texts = [str(arg) for arg in error.args if isinstance(arg, str) and arg]
    return "; ".join(texts) or str(error) or type(error).__name__


class Unroutable(Exception):
    """RabbitMQ returned a mandatory message: no queue is bound for its route."""


class Nacked(AMQPError):
    """RabbitMQ nacked a published message: it could not, or would not, store it."""


def queue_full(queue: str) -> BrokerError:
    """The error of a publish a quorum queue refused (nacked).

    Celeriac declares its quorum queues ``x-overflow=reject-publish`` (at-least-once
    dead-lettering needs it), so a quorum queue at a length limit refuses new messages
    instead of dropping its oldest. Retrying at once would only be refused again: the
    producer hears it now, with what to do.
    """
    return BrokerError(
        f"RabbitMQ refused (nacked) a message for quorum queue {queue!r}: the queue is at "
        "its length limit (max-length or max-length-bytes, from a policy; celeriac declares "
        "quorum queues x-overflow=reject-publish, which refuses new messages rather than "
        "drop the oldest). The message was not stored: send it again once workers have "
        "drained the queue, or raise the limit")


@dataclass(frozen=True, slots=True)
class Server:
    """Where and how to connect, from an ``amqp://`` or ``amqps://`` URL."""

    host: str
    port: int
    user: str
    password: str
    vhost: str
    tls: ssl.SSLContext | None
    name: str  # connection_name, shown by rabbitmqctl
    heartbeat: int = 0  # seconds the URL asks for (``?heartbeat=``); 0: none asked

    @classmethod
    def from_url(cls, url: str, name: str,
                 tls_options: Mapping[str, Any] | None = None) -> Server:
        """``tls_options``: ``broker_use_ssl`` as ``celeriac.tls.normalize`` gives it;
        the URL's own TLS query options (``cafile``, ...) win over it."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        tls: ssl.SSLContext | None = None
        if parts.scheme == "amqps":
            tls = client_context({**(tls_options or {}), **from_query(query)})
        elif tls_options is not None:
            raise ConfigurationError(
                f"TLS options (broker_use_ssl) given for a plain amqp:// URL "
                f"({safe_url(url)}); use amqps:// to connect with TLS")
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        return cls(host=parts.hostname or "localhost",
                   port=parts.port or (5671 if tls else 5672),
                   user=unquote(parts.username or "guest"),
                   password=unquote(parts.password or "guest"),
                   vhost=vhost, tls=tls, name=name,
                   heartbeat=int(query.get("heartbeat", 0)))


def start_ok(server: Server, **capabilities: bool) -> spec.Connection.StartOk:
    """The client's answer to ``connection.start``: who it is, with PLAIN credentials."""
    return spec.Connection.StartOk(
        client_properties={"connection_name": server.name, "product": "celeriac",
                           # authentication_failure_close: a refused login is answered
                           # with connection.close 403 ACCESS_REFUSED, not a bare hang-up.
                           "capabilities": {"publisher_confirms": True,
                                            "authentication_failure_close": True,
                                            **capabilities}},
        mechanism="PLAIN", response=f"\0{server.user}\0{server.password}")


def tune_ok(tune: spec.Connection.Tune, heartbeat: int) -> spec.Connection.TuneOk:
    """The limits both sides accept: the smaller frame size, and the smaller heartbeat
    interval unless either side asks for none (0)."""
    frame_max = min(FRAME_MAX, tune.frame_max) if tune.frame_max else FRAME_MAX
    if tune.heartbeat and heartbeat:
        heartbeat = min(heartbeat, tune.heartbeat)
    return spec.Connection.TuneOk(channel_max=tune.channel_max or 0, frame_max=frame_max,
                                  heartbeat=heartbeat)


class BlockingConnection:
    """One socket, one channel; used by one thread at a time.

    For publishing (``confirm=True``, no heartbeats: see the module docstring), or for
    consuming (``consume``, by a thread that does nothing else and so can keep the
    ``heartbeat`` it negotiates).
    """

    def __init__(self, server: Server, timeout: float, *, confirm: bool = True,
                 heartbeat: int = 0) -> None:
        deadline = time.monotonic() + timeout
        self.created = self.used = time.monotonic()
        self._buffer = bytearray()
        self._next_tag = 1
        self.frame_max = FRAME_MAX
        self.heartbeat = heartbeat
        self._confirm = confirm
        self._sent_at = self._heard_at = time.monotonic()
        try:
            sock = socket.create_connection((server.host, server.port), timeout)
        except OSError as exc:
            raise ConnectionLost(f"cannot connect: {exc!r}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if server.tls is not None:
                sock = server.tls.wrap_socket(sock, server_hostname=server.host)
        except OSError as exc:
            sock.close()
            if (refused := refusal(exc)) is not None:
                raise refused from exc
            raise ConnectionLost(f"cannot connect: {exc!r}") from exc
        self.sock = sock
        try:
            self._open(server, deadline)
        except BaseException:
            self.close()
            raise

    def _open(self, server: Server, deadline: float) -> None:
        self._write(ProtocolHeader().marshal(), deadline)
        self._expect(spec.Connection.Start, deadline, channel=0)
        self._send(0, [start_ok(server)], deadline)
        tuned = tune_ok(self._expect(spec.Connection.Tune, deadline, channel=0), self.heartbeat)
        self.frame_max, self.heartbeat = tuned.frame_max, tuned.heartbeat
        self._send(0, [tuned, spec.Connection.Open(virtual_host=server.vhost)], deadline)
        self._expect(spec.Connection.OpenOk, deadline, channel=0)
        self.call(spec.Channel.Open(), spec.Channel.OpenOk, deadline)
        if self._confirm:
            self.call(spec.Confirm.Select(), spec.Confirm.SelectOk, deadline)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def shutdown(self) -> None:
        """Make a read blocked in another thread return (and the connection fail)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def call(self, method: Any, answer: type[Any], deadline: float) -> Any:
        """A synchronous method on the channel: send it, return its answer."""
        self._send(CHANNEL, [method], deadline)
        return self._expect(answer, deadline)

    # -- consuming ------------------------------------------------------------------------

    def consume(self, queue: str, on_message: Callable[[spec.Basic.Properties, bytes], None],
                stopping: threading.Event) -> None:
        """Consume ``queue`` without acks, calling ``on_message`` for each message.

        Returns when ``stopping`` is set; raises ``ConnectionLost`` when the connection
        fails, or RabbitMQ went silent for two heartbeats (one is sent whenever this side
        was quiet for half a heartbeat).
        """
        deadline = time.monotonic() + 30
        self.call(spec.Basic.Consume(queue=queue, no_ack=True), spec.Basic.ConsumeOk,
                  deadline)
        while not stopping.is_set():
            _, frame = self._read_frame(None)
            if isinstance(frame, spec.Basic.Deliver):
                properties, body = self._read_content(time.monotonic() + 30)
                on_message(properties, body)
            elif isinstance(frame, spec.Basic.Cancel):
                raise ConnectionLost(f"RabbitMQ cancelled the consumer of {queue!r}")
            elif not isinstance(frame, Heartbeat):
                self._other(CHANNEL, frame, time.monotonic() + 5)

    # -- publishing -----------------------------------------------------------------------

    def publish(self, messages: Sequence[Outbound], timeout: float) -> list[Exception | None]:
        """Publish ``mandatory`` and wait for every confirm; each message's outcome.

        None once confirmed; ``Unroutable`` when returned, ``Nacked`` when nacked.
        Raises ``ConnectionLost`` (nothing is known of the unconfirmed ones), and the
        channel's error when RabbitMQ closed it (a missing exchange: 404).
        """
        deadline = time.monotonic() + timeout
        first = self._next_tag
        room = self.frame_max - 8
        chunks: list[bytes] = []
        by_id: dict[str, list[int]] = {}
        for index, (body, exchange, routing_key, properties) in enumerate(messages):
            chunks.append(amqp_frame.marshal(spec.Basic.Publish(
                exchange=exchange, routing_key=routing_key, mandatory=True), CHANNEL))
            chunks.append(amqp_frame.marshal(
                ContentHeader(properties=properties, body_size=len(body)), CHANNEL))
            for at in range(0, len(body), room):
                chunks.append(amqp_frame.marshal(ContentBody(body[at:at + room]), CHANNEL))
            if properties.message_id:
                by_id.setdefault(properties.message_id, []).append(index)
        self._next_tag += len(messages)
        self._write(b"".join(chunks), deadline)
        outcomes: list[Exception | None] = [None] * len(messages)
        settled = [False] * len(messages)
        left = len(messages)
        while left:
            channel, frame = self._read_frame(deadline)
            if isinstance(frame, spec.Basic.Ack | spec.Basic.Nack):
                last = (frame.delivery_tag or 0) - first
                start = 0 if frame.multiple else last
                for index in range(max(0, start), min(last + 1, len(messages))):
                    if not settled[index]:
                        settled[index] = True
                        left -= 1
                        if isinstance(frame, spec.Basic.Nack):
                            outcomes[index] = Nacked(f"RabbitMQ nacked message {index}")
            elif isinstance(frame, spec.Basic.Return):
                returned, _ = self._read_content(deadline)
                indexes = by_id.get(returned.message_id or "", [])
                # A return names no delivery tag: it is matched by message id, and one
                # that cannot be matched may be any unsettled message without an id.
                suspects = indexes[:1] if indexes else [
                    index for index, (*_, properties) in enumerate(messages)
                    if not properties.message_id and not settled[index]]
                if indexes:
                    indexes.pop(0)
                for index in suspects:
                    outcomes[index] = Unroutable(
                        f"{frame.reply_code} {frame.reply_text}: exchange "
                        f"{frame.exchange!r}, routing key {frame.routing_key!r}")
            else:
                self._other(channel, frame, deadline)
        self.used = time.monotonic()
        return outcomes

    def _read_content(self, deadline: float) -> tuple[spec.Basic.Properties, bytes]:
        """The header and body frames after a Deliver or Return: properties and body."""
        _, header = self._read_frame(deadline)
        if not isinstance(header, ContentHeader):
            raise ConnectionLost(f"expected a content header, got {header!r}")
        parts: list[bytes] = []
        received = 0
        while received < header.body_size:
            _, body = self._read_frame(deadline)
            if not isinstance(body, ContentBody):
                raise ConnectionLost(f"expected a content body, got {body!r}")
            parts.append(body.value)
            received += len(body.value)
        return header.properties, b"".join(parts)

    def _other(self, channel: int, frame: Any, deadline: float) -> None:
        """Frames besides confirms: closes end this connection, the rest is ignored."""
        if isinstance(frame, spec.Channel.Close):
            self._send_quietly(CHANNEL, spec.Channel.CloseOk(), deadline)
            raise channel_error(frame)
        if isinstance(frame, spec.Connection.Close):
            self._send_quietly(0, spec.Connection.CloseOk(), deadline)
            raise closed_by_server(frame)
        # Heartbeats (none were asked for), Connection.Blocked/Unblocked: nothing to do.

    # -- frames ---------------------------------------------------------------------------

    def _expect(self, kind: type[Any], deadline: float, channel: int = CHANNEL) -> Any:
        while True:
            number, frame = self._read_frame(deadline)
            if isinstance(frame, kind):
                return frame
            self._other(number, frame, deadline)
            if not isinstance(frame, Heartbeat):
                raise ConnectionLost(f"expected {kind.__name__}, got {frame!r}")

    def _send(self, channel: int, frames: Sequence[Any], deadline: float) -> None:
        self._write(b"".join(amqp_frame.marshal(frame, channel) for frame in frames), deadline)

    def _send_quietly(self, channel: int, frame: Any, deadline: float) -> None:
        with contextlib.suppress(ConnectionLost):
            self._send(channel, [frame], deadline)

    def _write(self, data: bytes, deadline: float) -> None:
        try:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            self.sock.sendall(data)
        except OSError as exc:  # socket.timeout is an OSError
            raise ConnectionLost(f"write failed: {exc!r}") from exc
        self._sent_at = time.monotonic()

    def _read_frame(self, deadline: float | None) -> tuple[int, Any]:
        """The next frame; ``deadline`` None: wait as long as heartbeats keep coming."""
        buffer = self._buffer
        while True:
            if len(buffer) >= FRAME_HEADER_SIZE:
                size = int.from_bytes(buffer[3:7], "big")
                end = FRAME_HEADER_SIZE + size + 1
                if len(buffer) >= end:
                    if buffer[end - 1] != FRAME_END:
                        raise ConnectionLost("malformed frame from RabbitMQ")
                    data = bytes(buffer[:end])
                    del buffer[:end]
                    _, channel, frame = amqp_frame.unmarshal(data)
                    return channel, frame
            if deadline is None:
                remaining = self._keep_alive()
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectionLost("timed out waiting for RabbitMQ")
            try:
                self.sock.settimeout(remaining)
                chunk = self.sock.recv(262144)
            except TimeoutError:
                if deadline is None:
                    continue  # time for a heartbeat, or to give up: _keep_alive decides
                raise ConnectionLost("timed out waiting for RabbitMQ") from None
            except OSError as exc:
                raise ConnectionLost(f"read failed: {exc!r}") from exc
            if not chunk:
                raise ConnectionLost("RabbitMQ closed the connection")
            self._heard_at = time.monotonic()
            buffer += chunk

    def _keep_alive(self) -> float | None:
        """Send a heartbeat when one is due; how long a read may wait now (None: forever)."""
        if not self.heartbeat:
            return None
        now = time.monotonic()
        if now - self._heard_at > 2 * self.heartbeat:
            raise ConnectionLost(f"no word from RabbitMQ for {now - self._heard_at:.1f}s "
                                 "(missed heartbeats)")
        half = self.heartbeat / 2
        if now - self._sent_at >= half:
            self._write(amqp_frame.marshal(Heartbeat(), 0), now + self.heartbeat)
            now = self._sent_at
        return max(0.01, min(self._sent_at + half,
                             self._heard_at + 2 * self.heartbeat + 0.01) - now)


class BlockingPool:
    """This process's blocking connections; a thread takes one per publish."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._idle: list[BlockingConnection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def take(self, timeout: float) -> BlockingConnection:
        now = time.monotonic()
        stale: list[BlockingConnection] = []
        found: BlockingConnection | None = None
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's sockets are not ours
                self._idle, self._pid = [], os.getpid()
            while self._idle:
                connection = self._idle.pop()
                if now - connection.used < IDLE_MAX:
                    found = connection
                    break
                stale.append(connection)
        for connection in stale:
            connection.close()
        return found if found is not None else BlockingConnection(self.server, timeout)

    def give(self, connection: BlockingConnection) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def redeclare(error: BaseException) -> bool:
    """Whether a failed publish means a queue or exchange is missing (declare, retry)."""
    return isinstance(error, Unroutable | ChannelNotFoundEntity)


def refused(error: BaseException) -> CeleriacError | None:
    """A failure no retry can fix, as the error to raise; else None."""
    if isinstance(error, ChannelPreconditionFailed):
        return BrokerError(f"RabbitMQ refused a message: {error}")
    if isinstance(error, ChannelAccessRefused):  # the user may not write there
        return BrokerRefused(f"RabbitMQ refused access: {_words(error)}")
    if (refused := refusal(error)) is not None:
        return refused_error(BrokerRefused, refused.authentication,
                             f"RabbitMQ refused the connection: {refused}")
    return None


def unconfirmed(safe_url: str, count: int, timeout: float,
                error: BaseException | None) -> BrokerUnavailable:
    """The error of a publish whose ``count`` messages were not confirmed in time, naming
    the last real cause (chain it: ``raise unconfirmed(...) from last_cause(error)``)."""
    cause = last_cause(error)
    return BrokerUnavailable(
        f"RabbitMQ at {safe_url} did not confirm {count} message(s) within {timeout:g}s "
        f"(last error: {type(cause).__name__}: {cause}); they may not have been stored")


def last_cause(error: BaseException | None) -> BaseException | None:
    """The first failure under ``error``'s chain of causes: what really went wrong
    (a refused connection, a reset) beneath the wrappers each layer added."""
    seen: set[int] = set()
    while error is not None and error.__cause__ is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__
    return error
