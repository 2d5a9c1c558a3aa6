"""Publishing a batch on an aiormq channel in confirm mode, every confirm awaited.

``publish_confirmed`` is what a link's publisher channel sends producers' messages
with: the safety of aiormq's ``basic_publish`` (one confirm awaited per message), at a
fraction of its cost per message (see its docstring). The consumer's own connection
publishes its copies on ``amqp_wire.Wire.publish`` instead.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from functools import partial
from typing import Any

import aiormq
import pamqp.frame
from aiormq.abc import AbstractChannel, ChannelFrame
from pamqp import commands as spec
from pamqp.header import ContentHeader

# Messages written to the socket at once by ``publish_confirmed``.
PUBLISH_CHUNK = 256

Outbound = tuple[bytes, str, str, spec.Basic.Properties]  # body, exchange, key, properties


async def publish_confirmed(channel: AbstractChannel, messages: Sequence[Outbound],
                            timeout: float | None) -> list[BaseException | None]:
    """Publish ``mandatory`` messages on a confirm-mode channel and await every confirm.

    The outcome of each message, in order: None once RabbitMQ confirmed it, else the
    error (``PublishError`` when it was unroutable and returned, ``DeliveryError`` for
    a nack, ``TimeoutError`` when no confirm came within ``timeout``, or why the
    channel closed). The safety is that of aiormq's ``basic_publish``, one confirm
    awaited per message; the cost is not: ``basic_publish`` takes the channel lock, a
    timeout scope, a drain future and a socket write per message, which made the
    publishing process's CPU the limit of a batch. Here a batch takes the lock once,
    its frames go out in a few writes, and the writer's bounded queue is the
    back-pressure. This relies on the confirm bookkeeping of ``aiormq.Channel`` (the
    same fields ``basic_publish`` uses); any other channel gets ``basic_publish``.
    """
    if not messages:
        return []
    if not isinstance(channel, aiormq.Channel) or not _LEAN_PUBLISH \
            or not channel.publisher_confirms:
        results = await asyncio.gather(*(
            channel.basic_publish(body, exchange=exchange, routing_key=key,
                                  properties=properties, mandatory=True, timeout=timeout)
            for body, exchange, key, properties in messages), return_exceptions=True)
        return [result if isinstance(result, BaseException) else None for result in results]
    confirmations: list[asyncio.Future[Any]] = []
    message_ids: list[tuple[str, int]] = []
    # One future in the channel's store stands for the whole batch: when aiormq gives up
    # the channel it fails that one, and the batch with it (a store entry per message
    # cost more than the rest of the publish).
    guard = channel.create_future()
    guard.add_done_callback(partial(_fail_pending, confirmations))
    try:
        async with asyncio.timeout(timeout):
            async with channel.lock:
                for start in range(0, len(messages), PUBLISH_CHUNK):
                    chunk = messages[start:start + PUBLISH_CHUNK]
                    await _write_chunk(channel, chunk, confirmations, message_ids)
            await asyncio.wait(confirmations)
    except TimeoutError:
        pass  # what is not confirmed by now is reported as timed out, below
    finally:
        if not guard.done():
            guard.set_result(None)
        # How aiormq matched a basic.return to its publish: not needed once settled.
        found = channel.message_id_delivery_tag
        for message_id, tag in message_ids:
            if found.get(message_id) == tag:
                del found[message_id]
    outcomes: list[BaseException | None] = []
    for future in confirmations:
        if not future.done():
            future.cancel()  # aiormq ignores a confirm that comes later
            outcomes.append(TimeoutError(f"no confirm from RabbitMQ within {timeout:g}s"))
        elif future.cancelled():
            outcomes.append(asyncio.CancelledError())
        else:
            outcomes.append(future.exception())
    # A chunk that never reached the writer's queue (timed out waiting for room) has no
    # confirmations: its messages were not sent.
    outcomes += [TimeoutError(f"RabbitMQ took no more messages within {timeout:g}s")
                 ] * (len(messages) - len(confirmations))
    return outcomes


def _fail_pending(confirmations: list[asyncio.Future[Any]], guard: asyncio.Future[Any]
                  ) -> None:
    """The channel failed the batch's guard: fail every confirm still awaited with it."""
    if guard.cancelled() or (error := guard.exception()) is None:
        return
    for future in confirmations:
        if not future.done():
            future.set_exception(error)


async def _write_chunk(channel: aiormq.Channel, chunk: Sequence[Outbound],
                       confirmations: list[asyncio.Future[Any]],
                       message_ids: list[tuple[str, int]]) -> None:
    """Number, register and queue one chunk for the writer; the channel lock is held.

    The frames are marshalled here rather than by pamqp one object at a time: the
    ``basic.publish`` frame of a route is made once and reused, body frames are a
    header and the bytes. (Content headers are pamqp's.)
    """
    first_tag = channel.delivery_tag + 1
    number = channel.number
    parts: list[bytes] = []
    futures: list[asyncio.Future[Any]] = []
    room = channel.max_content_size
    create_future = channel.loop.create_future
    confirms = channel.confirmations
    returns = channel.message_id_delivery_tag
    for body, exchange, routing_key, properties in chunk:
        channel.delivery_tag += 1
        tag = channel.delivery_tag
        future = create_future()
        confirms[tag] = future
        message_id = properties.message_id
        if message_id:
            returns[message_id] = tag  # how aiormq finds the publish a basic.return is about
            message_ids.append((message_id, tag))
        futures.append(future)
        parts.append(_publish_frame(number, exchange, routing_key))
        parts.append(pamqp.frame.marshal(ContentHeader(properties=properties,
                                                       body_size=len(body)), number))
        for at in range(0, len(body), room):
            piece = body[at:at + room]
            parts += (_BODY_HEAD.pack(3, number, len(piece)), piece, _FRAME_END)
    frame = ChannelFrame(payload=b"".join(parts), should_close=False)
    try:
        channel.write_queue.put_nowait(frame)
    except asyncio.QueueFull:
        try:
            await channel.write_queue.put(frame)
        except BaseException:
            # Not queued, so RabbitMQ never sees these numbers: give them back (the lock
            # is still held, so nobody numbered a publish after them).
            channel.delivery_tag = first_tag - 1
            for offset, future in enumerate(futures):
                confirms.pop(first_tag + offset, None)
                future.cancel()
            raise
    confirmations.extend(futures)


_BODY_HEAD = struct.Struct(">BHI")  # frame type, channel, size
_FRAME_END = b"\xce"
_PUBLISH_FRAMES: dict[tuple[int, str, str], bytes] = {}


def _publish_frame(channel_number: int, exchange: str, routing_key: str) -> bytes:
    """The marshalled ``basic.publish`` (mandatory) of a route, made once per route."""
    key = (channel_number, exchange, routing_key)
    frame = _PUBLISH_FRAMES.get(key)
    if frame is None:
        if len(_PUBLISH_FRAMES) >= 4096:
            _PUBLISH_FRAMES.clear()  # reply queues come and go: keep it bounded
        frame = _PUBLISH_FRAMES[key] = pamqp.frame.marshal(
            spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True),
            channel_number)
    return frame


# The confirm bookkeeping publish_confirmed shares with aiormq's own basic_publish.
_LEAN_PUBLISH = all(hasattr(aiormq.Channel, name) for name in ("lock", "create_future")) \
    and "confirmations" in getattr(aiormq.Channel, "__annotations__", {})
