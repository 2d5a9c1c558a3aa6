"""Topics on the Redis broker's server: one capped Stream per topic.

Keys (``P`` is the broker's ``key_prefix``)::

    P bus:<topic>    STREAM   field ``p``: the payload; the entry id is the position

A record's ``at`` is the millisecond part of its entry id: the server's clock.

**Publishing** is one pipeline (one round trip) of ``XADD ... MAXLEN ~ max_records`` per
record. ``XADD`` takes one trimming rule only, so age is trimmed on a timer instead: at
most once a second per topic (and bus object), the pipeline also carries
``XTRIM MINID ~ <now - max_age>``. Both trims are approximate (``~``): Redis drops whole
radix-tree nodes only (100 entries each by default), which makes them nearly free, and
never trims below the limit; so a topic keeps up to a node more than ``max_records``, and
a quiet one may keep its last few records past ``max_age`` until the next publish.

**Reading**: ``since=None`` reads the stream's last id (``XREVRANGE ... COUNT 1``, or
``0-0`` for a stream not made yet) before ``subscribe`` returns, so every later entry has
a greater id and is read; ``since=t`` starts after the id ``<ms - 1>-<max>``, i.e. at the
first entry of millisecond ``floor(t * 1000)``. ``read`` is ``XREAD BLOCK`` on a client of
the subscription's own (one connection, named ``celeriac-bus-reader:pid=<pid>:<key>`` in
``CLIENT LIST``, closed by ``close``), so a waiting reader holds up no publish.

Connections use the broker's settings (URL, TLS, timeouts: ``RedisSettings``), and every
call is bounded by its deadline; failures become ``BrokerUnavailable``/``BrokerError``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from celeriac.brokers.redis_connection import LoopClients, RedisSettings, command
from celeriac.brokers.redis_failures import translate_errors
from celeriac.bus.base import RETENTION, Bus, Record, RecordSizes, Subscription, check_topic
from celeriac.errors import BrokerError, BrokerRefused, BrokerUnavailable

# Trim each topic by age at most this often (seconds).
TRIM_INTERVAL = 1.0
# Entries returned by one read: a reader far behind catches up in several reads.
READ_LIMIT = 1_000
# The largest sequence part of an entry id.
MAX_SEQ = 2 ** 64 - 1
PAYLOAD = b"p"
READER_NAME = "celeriac-bus-reader"  # CLIENT SETNAME of each reader's connection


def _errors(what: str) -> Any:
    return translate_errors(BrokerUnavailable, BrokerError, f"Redis bus {what}",
                            BrokerRefused)

EXACT_TRIM_BELOW = 1_000  # record limits under this are kept exactly (see publish)

class RedisBus(Bus):
    """The topics on the Redis server of ``url``, under the ``key_prefix`` of ``options``."""

    scheme = "redis"

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self.settings = RedisSettings.from_options(url, options or {})
        self.prefix = self.settings.key_prefix
        self._clients = LoopClients(self.settings.make_client)  # publishers' clients
        self._trimmed_at = {topic: 0.0 for topic in RETENTION}  # monotonic time
        self._sizes = RecordSizes()  # the average record size: the count max_bytes allows
        self._subscriptions: set[_RedisSubscription] = set()

    def key(self, topic: str) -> str:
        return f"{self.prefix}bus:{topic}"

    async def connect(self) -> None:
        client = await self._clients.get()
        with _errors("connect"):
            async with self.settings.deadline():
                await command(client)("PING")

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.close()
        await self._clients.close()

    async def publish(self, topic: str, payloads: Sequence[bytes]) -> None:
        check_topic(topic)
        if not payloads:
            return
        key, retention = self.key(topic), RETENTION[topic]
        limit = self._sizes.limit(topic, payloads)  # within max_records and max_bytes
        client = await self._clients.get()
        pipe = client.pipeline(transaction=False)
        # "~" trims whole stream nodes (100 entries) at once: cheap, but loose for a small
        # limit (large records), so those are trimmed exactly.
        trim = ("MAXLEN", "~", limit) if limit >= EXACT_TRIM_BELOW else ("MAXLEN", limit)
        for payload in payloads:
            command(pipe)("XADD", key, *trim, "*", PAYLOAD, payload)
        clock = time.monotonic()
        if clock - self._trimmed_at[topic] >= TRIM_INTERVAL:
            self._trimmed_at[topic] = clock
            horizon_ms = int((time.time() - retention.max_age) * 1000)
            command(pipe)("XTRIM", key, "MINID", "~", f"{max(horizon_ms, 0)}-0")
        with _errors("publish"):
            async with self.settings.deadline():
                await pipe.execute()

    async def subscribe(self, topic: str, since: float | None = None) -> Subscription:
        check_topic(topic)
        key = self.key(topic)
        if since is None:
            client = await self._clients.get()
            with _errors("subscribe"):
                async with self.settings.deadline():
                    last = await command(client)("XREVRANGE", key, "+", "-", "COUNT", 1)
            position = _text(last[0][0]) if last else "0-0"
        else:
            ms = math.floor(since * 1000)  # (the ids have ms precision)
            position = f"{ms - 1}-{MAX_SEQ}" if ms > 0 else "0-0"
        subscription = _RedisSubscription(self, key, position)
        self._subscriptions.add(subscription)
        return subscription


class _RedisSubscription(Subscription):
    def __init__(self, bus: RedisBus, key: str, position: str) -> None:
        self._bus = bus
        self._key = key
        self._position = position  # the id of the last entry read
        self._client: aioredis.Redis | None = None

    async def read(self, timeout: float) -> list[Record]:
        if self._client is None:
            # One connection of its own: XREAD BLOCK occupies it while waiting. Named,
            # so that CLIENT LIST tells which process reads which topic.
            client = self._bus.settings.make_client()
            client.connection_pool.connection_kwargs["client_name"] = (
                f"{READER_NAME}:pid={os.getpid()}:{self._key}")
            self._client = client
        args: list[Any] = ["XREAD", "COUNT", READ_LIMIT]
        block_ms = math.ceil(timeout * 1000)
        if block_ms > 0:  # (BLOCK 0 would wait forever)
            args += ["BLOCK", block_ms]
        args += ["STREAMS", self._key, self._position]
        with _errors("read"):
            async with self._bus.settings.deadline(max(timeout, 0.0)):
                found = await command(self._client)(*args)
        if not found:
            return []
        entries = _entries(found)
        if not entries:
            return []
        self._position = _text(entries[-1][0])
        return [_record(entry_id, fields) for entry_id, fields in entries]

    async def close(self) -> None:
        self._bus._subscriptions.discard(self)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _entries(found: Any) -> list[tuple[Any, Any]]:
    """The entries of the one stream in an XREAD reply (RESP2 list or RESP3 map)."""
    if isinstance(found, dict):
        streams = list(found.values())
        return list(streams[0][0]) if streams and streams[0] else []
    return list(found[0][1])


def _record(entry_id: Any, fields: Any) -> Record:
    ms = int(_text(entry_id).partition("-")[0])
    if isinstance(fields, dict):
        payload = fields.get(PAYLOAD, b"")
    else:
        pairs = list(fields)
        payload = next((pairs[i + 1] for i in range(0, len(pairs), 2)
                        if pairs[i] == PAYLOAD), b"")
    return Record(ms / 1000, bytes(payload))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
