"""AMQP 0-9-1 on an asyncio protocol: one connection, one channel, for a worker's hot paths.

A worker draining quick tasks spends most of its CPU on the wire: every delivery is
three frames in, every result three frames out and a confirm back. aiormq reads each
frame through a ``StreamReader``, parses it with pamqp, and passes it through an
``asyncio.Queue`` to a channel task, which waits on the queue again for the content
header and for the body; a worker spent about a third of its CPU there. ``Wire`` reads
in ``data_received``: every complete frame in the buffer is parsed where it lies, and a
delivery, once its body is in, is handed to its consumer's handler in the same call.
The frames of the hot paths (``basic.deliver`` with its content, ``basic.ack`` confirms)
are parsed by hand; every other frame by pamqp.

What a ``Wire`` offers: consuming with manual acks (``consume``, ``ack``, ``nack``,
``cancel``), publishing with publisher confirms (``publish``: each message
``mandatory``, its outcome once RabbitMQ confirmed, returned or nacked it), and any
synchronous method (``call``: ``basic.qos``, a passive ``queue.declare``).

A delivery whose properties cannot be read (a message id that is not UTF-8, a header
table pamqp refuses) is still handed to its consumer, marked ``malformed`` with the
reason, for the consumer to dead-letter: one bad message never ends the connection.

Failure is all or nothing: a lost connection, missed heartbeats (nothing heard for two
intervals; a heartbeat is sent when nothing was written for half of one), a
``connection.close`` or a ``channel.close`` (the one channel is the connection's reason
to live) end the wire. Every waiting call and unconfirmed publish then fails at once
with the reason (``channel.close`` errors as aiormq's exceptions, so that callers tell
a missing queue from a lost connection as before; a refused login or vhost, or an
untrusted certificate, as ``amqp_blocking.Refused``; everything else ``WireLost``), and
``on_lost`` is called once. A closed wire is not reopened: the owner opens a new one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pamqp.frame
from aiormq.channel import exception_by_code as channel_error
from aiormq.connection import exception_by_code as connection_error
from pamqp import commands as spec
from pamqp.decode import field_table
from pamqp.header import ContentHeader, ProtocolHeader

from celeriac.brokers.amqp_blocking import (
    CHANNEL,
    FRAME_MAX,
    Refused,
    Server,
    Unroutable,
    closed_by_server,
    refusal,
    start_ok,
    tune_ok,
)

logger = logging.getLogger("celeriac.broker.amqp")


_HEAD = struct.Struct(">BHI")  # frame type, channel, payload size
_METHOD = struct.Struct(">HH")  # class id, method id
_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")
_CONTENT = struct.Struct(">HHQH")  # class id, weight, body size, property flags
_ACK = struct.Struct(">BHIHHQB")  # a whole basic.ack method frame, without its end
_FRAME_END = 0xCE
_END = b"\xce"
_HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"

_DELIVER = (60 << 16) | 60
_CONFIRM_ACK = (60 << 16) | 80
_METHOD_FRAME, _HEADER_FRAME, _BODY_FRAME, _HEARTBEAT_FRAME = 1, 2, 3, 8


class WireLost(ConnectionError):
    """The connection is gone (closed, reset, silent past its heartbeats)."""


@dataclass(slots=True)
class Incoming:
    """A delivery: what a consumer needs of ``basic.deliver`` and its content."""

    consumer_tag: str
    tag: int
    redelivered: bool
    message_id: str = ""
    correlation_id: str = ""
    priority: int = 0
    headers: dict[str, Any] = field(default_factory=dict)
    body: bytes = b""
    # Why its properties could not be read (a message id that is not UTF-8, a header
    # table that does not parse); "" when they could. Such a delivery is still handed
    # to its consumer, which dead-letters it: the connection must not pay for it.
    malformed: str = ""


Handler = Callable[[Incoming], None]
Outbound = tuple[bytes, str, str, spec.Basic.Properties]  # body, exchange, key, properties


class _Batch:
    """Messages published together, tags ``first`` .. ``first + count - 1``."""

    __slots__ = ("count", "done", "first", "ids", "left", "low", "outcomes", "settled")

    def __init__(self, first: int, count: int, done: asyncio.Future[None],
                 ids: dict[str, list[int]]) -> None:
        self.first = first
        self.count = count
        self.outcomes: list[BaseException | None] = [None] * count
        self.settled = [False] * count
        self.left = count
        self.low = 0  # every index below this one is settled
        self.done = done
        self.ids = ids  # message id -> indexes, to match a basic.return

    def settle(self, index: int, error: BaseException | None) -> None:
        if self.settled[index]:
            return
        self.settled[index] = True
        if error is not None:
            self.outcomes[index] = error
        self.left -= 1
        if not self.left and not self.done.done():
            self.done.set_result(None)


class Wire(asyncio.Protocol):
    """One AMQP connection with one channel; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, heartbeat: int) -> None:
        self.loop = loop
        self.heartbeat = heartbeat
        self.frame_max = FRAME_MAX
        self.on_lost: Callable[[BaseException], None] | None = None
        self.consumers: dict[str, Handler] = {}
        self.on_cancel: Callable[[str], None] | None = None  # the server cancelled a consumer
        self.error: BaseException | None = None  # why it closed; None while open
        # Loop time a synchronous call that got its answer was sent: the server held this
        # connection open then. (Bytes merely read prove less: after a pause they may
        # have waited in the socket since before the server closed it.)
        self.round_trip_at = 0.0
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._content: Incoming | spec.Basic.Return | None = None  # awaiting its frames
        self._content_size = 0
        self._content_parts: list[bytes] = []
        self._waiting: tuple[type[Any], asyncio.Future[Any]] | None = None
        self._call_lock = asyncio.Lock()
        self._next_tag = 1
        self._batches: collections.deque[_Batch] = collections.deque()
        self._returned_id = ""  # the message id of the basic.return being read
        self._paused: asyncio.Future[None] | None = None
        self._heard = self._wrote = True
        self._silent_ticks = 0
        self._timer: asyncio.TimerHandle | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._publish_frames: dict[tuple[str, str], bytes] = {}

    # -- opening and closing --------------------------------------------------------------

    @classmethod
    async def open(cls, server: Server, timeout: float, *, heartbeat: int, confirm: bool
                   ) -> Wire:
        """Connect, log in, open the channel (in confirm mode if asked) within ``timeout``.

        The owner sets ``on_lost`` (and ``on_cancel``) on the wire this returns.
        """
        loop = asyncio.get_running_loop()
        wire = cls(loop, heartbeat)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: wire, server.host, server.port, ssl=server.tls,
                    server_hostname=server.host if server.tls is not None else None)
                await wire._handshake(server, confirm)
        except BaseException as exc:
            wire.abort(exc if isinstance(exc, Exception) else None)
            if (refused := refusal(exc)) is not None and refused is not exc:
                raise refused from exc  # an untrusted certificate: no retry will help
            if isinstance(exc, OSError | TimeoutError) and not isinstance(exc, WireLost):
                raise WireLost(f"cannot connect to RabbitMQ: {exc!r}") from exc
            raise
        return wire

    async def _handshake(self, server: Server, confirm: bool) -> None:
        self._write(ProtocolHeader().marshal())
        await self._expect(spec.Connection.Start)
        self._send(0, start_ok(server, consumer_cancel_notify=True))
        tuned = tune_ok(await self._expect(spec.Connection.Tune), self.heartbeat)
        self.frame_max, self.heartbeat = tuned.frame_max, tuned.heartbeat
        self._send(0, tuned)
        self._send(0, spec.Connection.Open(virtual_host=server.vhost))
        await self._expect(spec.Connection.OpenOk)
        await self.call(spec.Channel.Open(), spec.Channel.OpenOk)
        if confirm:
            await self.call(spec.Confirm.Select(), spec.Confirm.SelectOk)
        if self.heartbeat:
            self._timer = self.loop.call_later(self.heartbeat / 2, self._tick)
        self._keeper = self.loop.create_task(self._keep(), name="celeriac-amqp-wire")

    async def _keep(self) -> None:
        """Close the wire when its event loop ends (``asyncio.run`` cancels every task).

        The wire itself runs in callbacks, which nothing would stop; without this, a
        loop that ends without closing it would leave the socket behind.
        """
        try:
            await asyncio.Future()
        except asyncio.CancelledError:
            self.abort(asyncio.CancelledError("the event loop is ending"))
            raise

    @property
    def is_closed(self) -> bool:
        return self.error is not None

    async def close(self, timeout: float = 5.0) -> None:
        """Close politely (``connection.close``, its answer awaited briefly), then drop."""
        if self.error is not None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                async with self._call_lock:
                    future = self._wait_for(spec.Connection.CloseOk)
                    try:
                        # class_id and method_id 0: no method caused this close.
                        self._send(0, spec.Connection.Close(reply_code=200, reply_text="bye",
                                                            class_id=0, method_id=0))
                        await future
                    finally:
                        if not future.done():  # given up on: nobody will read it
                            future.cancel()
        self.abort(WireLost("closed by celeriac"))

    def abort(self, error: BaseException | None = None) -> None:
        """End the wire now: every waiter fails with ``error``; ``on_lost`` is called."""
        if self.error is not None:
            return
        self.error = error if error is not None else WireLost("connection closed")
        if self._timer is not None:
            self._timer.cancel()
        if self._keeper is not None and self._keeper is not asyncio.current_task():
            self._keeper.cancel()
        if self._transport is not None:
            self._transport.abort()
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting[1].done():
            waiting[1].set_exception(self.error)
        batches, self._batches = self._batches, collections.deque()
        for batch in batches:
            for index in range(batch.count):
                batch.settle(index, self.error)
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        self.consumers.clear()
        if self.on_lost is not None:
            try:
                self.on_lost(self.error)
            except Exception:
                logger.exception("handling a lost RabbitMQ connection failed")

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.abort(WireLost(f"connection lost: {exc!r}" if exc else "connection closed"))

    def pause_writing(self) -> None:
        if self._paused is None or self._paused.done():
            self._paused = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._heard = True
        buffer = self._buffer
        buffer += data
        start = 0
        size = len(buffer)
        try:
            while size - start >= 8:
                kind, channel, length = _HEAD.unpack_from(buffer, start)
                end = start + 7 + length
                if end >= size:
                    break
                if buffer[end] != _FRAME_END:
                    raise WireLost("malformed frame from RabbitMQ")
                self._frame(kind, channel, bytes(buffer[start + 7:end]), buffer, start)
                start = end + 1
                if self.error is not None:
                    return
        except Exception as exc:
            self.abort(exc if isinstance(exc, WireLost)
                       else WireLost(f"could not read a frame from RabbitMQ: {exc!r}"))
            return
        del buffer[:start]

    # -- reading --------------------------------------------------------------------------

    def _frame(self, kind: int, channel: int, payload: bytes, buffer: bytearray,
               start: int) -> None:
        if kind == _METHOD_FRAME:
            class_id, method_id = _METHOD.unpack_from(payload)
            method = (class_id << 16) | method_id
            if method == _DELIVER and self._content is None:
                self._on_deliver(payload)
            elif method == _CONFIRM_ACK:
                tag = _U64.unpack_from(payload, 4)[0]
                self._settle(tag, bool(payload[12] & 1), None)
            else:
                frame_end = start + 8 + len(payload)
                self._on_method(channel, pamqp.frame.unmarshal(bytes(buffer[start:frame_end]))[2])
        elif kind == _HEADER_FRAME:
            self._on_header(payload)
        elif kind == _BODY_FRAME:
            self._on_body(payload)
        elif kind != _HEARTBEAT_FRAME:
            raise WireLost(f"unexpected frame type {kind} from RabbitMQ")

    def _on_deliver(self, payload: bytes) -> None:
        # basic.deliver: consumer-tag, delivery-tag, redelivered, exchange, routing-key
        size = payload[4]
        consumer_tag = payload[5:5 + size].decode()
        at = 5 + size
        tag = _U64.unpack_from(payload, at)[0]
        self._content = Incoming(consumer_tag, tag, bool(payload[at + 8] & 1))

    def _on_header(self, payload: bytes) -> None:
        content = self._content
        if content is None:
            raise WireLost("a content header from RabbitMQ without its method")
        _, _, body_size, flags = _CONTENT.unpack_from(payload)
        if isinstance(content, Incoming):
            try:
                _read_properties(content, payload, flags)
            except Exception as exc:  # anything a publisher could send, and pamqp refuse
                content.malformed = content.malformed or (
                    f"its AMQP properties cannot be read ({type(exc).__name__}: {exc})")
        else:  # a basic.return: only the message id is needed, to match the publish
            header = ContentHeader()
            header.unmarshal(payload)
            self._returned_id = header.properties.message_id or ""
        self._content_size = body_size
        self._content_parts = []
        if not body_size:
            self._content_done(b"")

    def _on_body(self, payload: bytes) -> None:
        if self._content is None:
            raise WireLost("a content body from RabbitMQ without its method")
        parts = self._content_parts
        parts.append(payload)
        self._content_size -= len(payload)
        if self._content_size <= 0:
            self._content_done(parts[0] if len(parts) == 1 else b"".join(parts))

    def _content_done(self, body: bytes) -> None:
        content, self._content = self._content, None
        self._content_parts = []
        if isinstance(content, spec.Basic.Return):
            self._on_return(content, self._returned_id)
            return
        assert content is not None
        content.body = body
        handler = self.consumers.get(content.consumer_tag)
        if handler is None:
            return  # its consumer was cancelled: RabbitMQ requeues it with the channel
        try:
            handler(content)
        except Exception:  # a bug: never let it end the connection with every delivery
            logger.exception("handling a delivery failed")

    def _on_method(self, channel: int, frame: Any) -> None:
        if isinstance(frame, spec.Basic.Nack):
            self._settle(frame.delivery_tag or 0, bool(frame.multiple),
                         NackError("RabbitMQ nacked the message"))
        elif isinstance(frame, spec.Basic.Return):
            if self._content is not None:
                raise WireLost("a basic.return from RabbitMQ inside another message")
            self._content = frame
        elif isinstance(frame, spec.Basic.Cancel):
            self.consumers.pop(frame.consumer_tag or "", None)
            if self.on_cancel is not None:
                self.on_cancel(frame.consumer_tag or "")
        elif isinstance(frame, spec.Channel.Close):
            self._send(CHANNEL, spec.Channel.CloseOk())
            self.abort(channel_error(frame))
        elif isinstance(frame, spec.Connection.Close):
            self._send(0, spec.Connection.CloseOk())
            refused = closed_by_server(frame)  # a refused login or vhost, or a lost one
            self.abort(refused if isinstance(refused, Refused)
                       else WireLost(repr(connection_error(frame))))
        elif self._waiting is not None and isinstance(frame, self._waiting[0]):
            future = self._waiting[1]
            self._waiting = None
            if not future.done():
                future.set_result(frame)
        # Else (connection.blocked, a late answer): nothing to do.

    # -- synchronous methods --------------------------------------------------------------

    def _wait_for(self, answer: type[Any]) -> asyncio.Future[Any]:
        if self.error is not None:
            raise self.error
        future: asyncio.Future[Any] = self.loop.create_future()
        self._waiting = (answer, future)
        return future

    async def _expect(self, answer: type[Any]) -> Any:
        return await self._wait_for(answer)

    async def call(self, method: Any, answer: type[Any]) -> Any:
        """Send a synchronous method on the channel and return its answer."""
        async with self._call_lock:
            future = self._wait_for(answer)
            sent = self.loop.time()
            self._send(CHANNEL, method)
            result = await future
            self.round_trip_at = sent
            return result

    # -- consuming ------------------------------------------------------------------------

    async def consume(self, queue: str, tag: str, handler: Handler) -> None:
        """Consume ``queue`` (manual acks) as ``tag``; each delivery goes to ``handler``."""
        self.consumers[tag] = handler
        try:
            await self.call(spec.Basic.Consume(queue=queue, consumer_tag=tag),
                            spec.Basic.ConsumeOk)
        except BaseException:
            self.consumers.pop(tag, None)
            raise

    async def cancel(self, tag: str) -> None:
        await self.call(spec.Basic.Cancel(consumer_tag=tag), spec.Basic.CancelOk)
        self.consumers.pop(tag, None)

    def ack(self, tag: int, multiple: bool = False) -> None:
        self._write(_ACK.pack(_METHOD_FRAME, CHANNEL, 13, 60, 80, tag, multiple) + _END)

    def nack(self, tag: int, requeue: bool = True) -> None:
        self._send(CHANNEL, spec.Basic.Nack(delivery_tag=tag, requeue=requeue))

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, messages: Sequence[Outbound], timeout: float | None
                      ) -> list[BaseException | None]:
        """Publish ``mandatory`` and await every confirm; each message's outcome, in order.

        None once confirmed; ``Unroutable`` when returned, ``NackError`` when nacked,
        ``TimeoutError`` when nothing came within ``timeout``, or why the wire closed.
        """
        if not messages:
            return []
        if self.error is not None:
            raise self.error
        batch = self._queue_batch(messages)
        try:
            async with asyncio.timeout(timeout):
                if self._paused is not None:
                    await self._paused  # the kernel's buffer is full: let it drain
                await asyncio.shield(batch.done)
        except TimeoutError:
            for index in range(batch.count):
                batch.settle(index, TimeoutError(
                    f"no confirm from RabbitMQ within {timeout:g}s"))
        return batch.outcomes

    def _queue_batch(self, messages: Sequence[Outbound]) -> _Batch:
        """Number the messages, remember them for their confirms, and write them out."""
        first = self._next_tag
        self._next_tag += len(messages)
        parts: list[bytes] = []
        ids: dict[str, list[int]] = {}
        room = self.frame_max - 8
        for index, (body, exchange, routing_key, properties) in enumerate(messages):
            parts.append(self._publish_frame(exchange, routing_key))
            parts.append(pamqp.frame.marshal(
                ContentHeader(properties=properties, body_size=len(body)), CHANNEL))
            for at in range(0, len(body), room):
                piece = body[at:at + room]
                parts += (_HEAD.pack(_BODY_FRAME, CHANNEL, len(piece)), piece, _END)
            if properties.message_id:
                ids.setdefault(properties.message_id, []).append(index)
        batch = _Batch(first, len(messages), self.loop.create_future(), ids)
        self._batches.append(batch)
        self._write(b"".join(parts))
        return batch

    def _publish_frame(self, exchange: str, routing_key: str) -> bytes:
        """The marshalled ``basic.publish`` (mandatory) of a route, made once per route."""
        key = (exchange, routing_key)
        frame = self._publish_frames.get(key)
        if frame is None:
            if len(self._publish_frames) >= 4096:
                self._publish_frames.clear()  # reply queues come and go: keep it bounded
            frame = self._publish_frames[key] = pamqp.frame.marshal(
                spec.Basic.Publish(exchange=exchange, routing_key=routing_key,
                                   mandatory=True), CHANNEL)
        return frame

    def _settle(self, tag: int, multiple: bool, error: BaseException | None) -> None:
        """A confirm (ack or nack) for ``tag``, or for every tag up to it."""
        batches = self._batches
        for batch in batches:
            if batch.first > tag:
                break
            last = min(tag - batch.first, batch.count - 1)
            if multiple:
                for index in range(batch.low, last + 1):
                    batch.settle(index, error)
                batch.low = max(batch.low, last + 1)
            elif last == tag - batch.first:
                batch.settle(last, error)
        while batches and not batches[0].left:
            batches.popleft()

    def _on_return(self, frame: spec.Basic.Return, message_id: str) -> None:
        """Mark the returned message unroutable; its confirm follows the return.

        A return names no delivery tag: it is matched by message id, to the oldest
        unsettled message with that id.
        """
        for batch in self._batches:
            for index in batch.ids.get(message_id, ()):
                if not batch.settled[index] and batch.outcomes[index] is None:
                    batch.outcomes[index] = Unroutable(
                        f"{frame.reply_code} {frame.reply_text}: exchange "
                        f"{frame.exchange!r}, routing key {frame.routing_key!r}")
                    return

    # -- writing and heartbeats -----------------------------------------------------------

    def _send(self, channel: int, method: Any) -> None:
        self._write(pamqp.frame.marshal(method, channel))

    def _write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        assert self._transport is not None
        self._transport.write(data)
        self._wrote = True

    def _tick(self) -> None:
        """Every half heartbeat: send one if we were quiet; give up after two silent ones."""
        if self.error is not None:
            return
        if self._heard:
            self._heard = False
            self._silent_ticks = 0
        else:
            self._silent_ticks += 1
            if self._silent_ticks >= 4:
                self.abort(WireLost(f"no word from RabbitMQ for {2 * self.heartbeat}s "
                                    "(missed heartbeats)"))
                return
        if not self._wrote:
            self._write(_HEARTBEAT)
        self._wrote = False
        self._timer = self.loop.call_later(self.heartbeat / 2, self._tick)


class NackError(Exception):
    """RabbitMQ nacked a published message (it could not store it)."""


def _read_properties(incoming: Incoming, payload: bytes, flags: int) -> None:
    """The properties a consumer uses, read from a content header's property list.

    Basic properties come in a fixed order, each present when its flag bit is set
    (bit 15 first): content-type, content-encoding, headers, delivery-mode, priority,
    correlation-id, reply-to, expiration, message-id, timestamp, type, user-id, app-id.
    """
    at = 14
    if flags & 0x8000:  # content-type
        at += 1 + payload[at]
    if flags & 0x4000:  # content-encoding
        at += 1 + payload[at]
    if flags & 0x2000:  # headers
        used, headers = field_table(payload[at:])
        incoming.headers = headers
        at += used
    if flags & 0x1000:  # delivery-mode
        at += 1
    if flags & 0x0800:
        incoming.priority = payload[at]
        at += 1
    if flags & 0x0400:
        size = payload[at]
        incoming.correlation_id = _text(incoming, "correlation-id", payload[at + 1:at + 1 + size])
        at += 1 + size
    if flags & 0x0200:  # reply-to
        at += 1 + payload[at]
    if flags & 0x0100:  # expiration
        at += 1 + payload[at]
    if flags & 0x0080:
        size = payload[at]
        incoming.message_id = _text(incoming, "message-id", payload[at + 1:at + 1 + size])


def _text(incoming: Incoming, name: str, raw: bytes) -> str:
    """A short string property; one that is not UTF-8 marks the delivery malformed.

    Its text then keeps the bytes readable (backslash escapes), for logs and the dead
    letter, and never raises: one bad message must not end the connection.
    """
    try:
        return raw.decode()
    except UnicodeDecodeError:
        if not incoming.malformed:
            incoming.malformed = f"its {name} is not valid UTF-8: {raw!r}"
        return raw.decode("utf-8", "backslashreplace")
