"""Looking into a Redis broker's queues: their counts, purging, the dead letters.

The administrative side of ``RedisBroker`` (``celeriac inspect``, ``celeriac purge``,
``celeriac dead-letters``, the queue alerts and the metrics), apart from the broker
module because none of it is on the path of a task: each function is given the broker
whose keys it reads. The broker's methods of the same names call them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

# The key layout's names: a module import, as celeriac.brokers.redis imports this one.
import celeriac.brokers.redis as layout
from celeriac.brokers.base import DeadLetter, QueueStats, ScheduledMessage
from celeriac.brokers.redis_connection import command
from celeriac.brokers.redis_scripts import PURGE, STATS

if TYPE_CHECKING:
    from celeriac.brokers.redis import RedisBroker

PURGE_BUDGET = 5000  # entries deleted per band per purge script call


async def queue_stats(broker: RedisBroker,
                      queues: Sequence[str] | None = None) -> list[QueueStats]:
    if queues is None:
        client = await broker._clients.get()
        with broker._errors("queue_stats"):
            async with broker.settings.deadline():
                names = sorted(n.decode() for n in await command(client)(
                    "SMEMBERS", broker._queues_key))
    else:
        names = list(queues)
    if not names:
        return []
    keys: list[str] = []
    for name in names:
        keys += [broker._key("eta", name),
                 *(broker.stream_key(name, band) for band in layout.BANDS)]
    lease_ms = max(1, round(broker.lease_seconds * 1000))
    counts = await broker._run(STATS, keys, [layout.GROUP, layout.RETURNED, lease_ms],
                               "queue_stats")
    now_ms = int(counts[-1])  # ages by the server's clock, which wrote the entry ids
    return [QueueStats(name, int(counts[4 * i]), int(counts[4 * i + 1]),
                       int(counts[4 * i + 2]),
                       _age(now_ms, int(counts[4 * i + 3])) if int(counts[4 * i]) else None)
            for i, name in enumerate(names)]


async def purge(broker: RedisBroker, queues: Sequence[str]) -> int:
    removed = 0
    for name in queues:
        keys = [broker._key("eta", name), broker._key("requeued", name),
                *(broker.stream_key(name, band) for band in layout.BANDS)]
        more = 1
        while more:
            count, more = await broker._run(
                PURGE, keys, [layout.GROUP, layout.RETURNED, PURGE_BUDGET], "purge")
            removed += int(count)
    return removed


async def dead_letters(broker: RedisBroker, limit: int = 100) -> list[DeadLetter]:
    if limit <= 0:
        return []
    client = await broker._clients.get()
    with broker._errors("dead_letters"):
        async with broker.settings.deadline():
            entries = await command(client)("XREVRANGE", broker._dead_key, "+", "-",
                                            "COUNT", limit)
    # Decoded leniently: a malformed entry's message id is kept as it was written.
    return [DeadLetter(fields.get(b"i", b"").decode(errors="backslashreplace"),
                       fields.get(b"q", b"").decode(errors="backslashreplace"),
                       fields.get(b"b", b""),
                       fields.get(b"r", b"").decode(errors="replace"),
                       int(fields.get(b"t", b"0")) / 1000)
            for _, fields in entries]


async def purge_dead_letters(broker: RedisBroker) -> int:
    client = await broker._clients.get()
    pipe = client.pipeline(transaction=True)
    command(pipe)("XLEN", broker._dead_key)
    command(pipe)("UNLINK", broker._dead_key)
    with broker._errors("purge_dead_letters"):
        async with broker.settings.deadline():
            count, _ = await pipe.execute()
    return int(count)


async def remove_dead_letters(broker: RedisBroker, ids: Collection[str]) -> int:
    wanted = {message_id.encode() for message_id in ids}
    client = await broker._clients.get()
    with broker._errors("remove_dead_letters"):
        async with broker.settings.deadline():
            entries = await command(client)("XRANGE", broker._dead_key, "-", "+")
            doomed = [entry_id for entry_id, fields in entries
                      if fields.get(b"i") in wanted]
            if not doomed:
                return 0
            return int(await command(client)("XDEL", broker._dead_key, *doomed))


async def scheduled(broker: RedisBroker, limit: int = 100) -> list[ScheduledMessage]:
    """The soonest ``limit`` scheduled messages over every queue's eta set."""
    if limit <= 0:
        return []
    client = await broker._clients.get()
    with broker._errors("scheduled"):
        async with broker.settings.deadline():
            names = sorted(n.decode(errors="backslashreplace") for n in await command(client)(
                "SMEMBERS", broker._queues_key))
            pipe = client.pipeline(transaction=False)
            for name in names:
                command(pipe)("ZRANGE", broker._key("eta", name), 0, limit - 1,
                              "WITHSCORES")
            answers = await pipe.execute() if names else []
    found: list[ScheduledMessage] = []
    for name, entries in zip(names, answers, strict=True):
        # Pairs under RESP3, a flat member, score, member... list under RESP2.
        pairs = [tuple(entry) for entry in entries] \
            if entries and isinstance(entries[0], list | tuple) \
            else list(zip(entries[::2], entries[1::2], strict=True))
        found += [_scheduled(name, member, float(score) / 1000) for member, score in pairs]
    found.sort(key=lambda item: item.eta)
    return found[:limit]


def _scheduled(queue: str, member: bytes, eta: float) -> ScheduledMessage:
    """An eta set's member (``<band>:<id length>:<16 hex nonce><id><body>``) read."""
    match = _MEMBER.match(member)
    if match is None:  # not written by celeriac: shown whole, as the fetch dead-letters it
        return ScheduledMessage("", queue, member, eta)
    start = match.end() + 16
    end = start + int(match.group(1))
    return ScheduledMessage(member[start:end].decode(errors="backslashreplace"), queue,
                            member[end:], eta)


_MEMBER = re.compile(rb"^\d:(\d+):")


def _age(now_ms: int, oldest_ms: int) -> float | None:
    """Seconds since the oldest ready entry was added (-1: none found)."""
    return None if oldest_ms < 0 else max(0.0, (now_ms - oldest_ms) / 1000)
