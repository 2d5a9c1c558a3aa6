"""Topics in the PostgreSQL broker's schema: one table, readers woken by NOTIFY.

Table (component ``bus``, version 1), beside the broker's::

    celeriac_bus   seq bigint identity (a reader's position), topic, at (server time),
                   payload

A position is a ``seq``, and a reader reads the rows after it. PostgreSQL hands out
identity values when rows are inserted but makes them visible when their transactions
commit, which may be in another order: a reader could see seq 11 before seq 10 commits
and then never read 10. So publishers of one topic take a transaction-scoped advisory
lock of the topic first: one publisher of a topic at a time, and seqs commit in order.
(Events are published in batches, a few times a second per worker: the lock is cheap.)

Every publish sends ``NOTIFY`` with the topic at commit; a reader with nothing to read
sleeps on its event loop's ``LISTEN`` connection. Retention is trimmed by the publisher
inside its transaction, at most once a second per topic and bus object (as the SQLite
bus does, for the same reason: a ``DELETE`` per publish would cost more than the insert).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Sequence

from celeriac.brokers.postgresql_connection import (
    Listener,
    LoopPools,
    PgSettings,
    create_schema,
    qualify,
)
from celeriac.bus.base import (
    RETENTION,
    Bus,
    Record,
    RecordSizes,
    Subscription,
    TrimSchedule,
    check_topic,
)
from celeriac.errors import BrokerError, BrokerUnavailable

SCHEMA_VERSION = 1
NOW = "extract(epoch FROM clock_timestamp())"

CREATE = (
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_bus (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        topic text NOT NULL,
        at double precision NOT NULL,
        payload bytea NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS celeriac_bus_topic ON {s}.celeriac_bus (topic, seq)",
)
LOCK = "SELECT pg_advisory_xact_lock(%s)"
INSERT = f"""
INSERT INTO {{s}}.celeriac_bus (topic, at, payload)
SELECT %s, {NOW}, p FROM unnest(%s::bytea[]) WITH ORDINALITY AS u(p, n) ORDER BY n
"""
NOTIFY = "SELECT pg_notify(%s, %s)"
TRIM_COUNT = """
DELETE FROM {s}.celeriac_bus WHERE topic = %s AND seq <= (
    SELECT seq FROM {s}.celeriac_bus WHERE topic = %s ORDER BY seq DESC LIMIT 1 OFFSET %s)
"""
TRIM_AGE = f"DELETE FROM {{s}}.celeriac_bus WHERE topic = %s AND at < {NOW} - %s"
LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM {s}.celeriac_bus WHERE topic = %s"
FIRST_SINCE = """
SELECT seq FROM {s}.celeriac_bus WHERE topic = %s AND at >= %s ORDER BY seq LIMIT 1
"""
READ = """
SELECT seq, at, payload FROM {s}.celeriac_bus WHERE topic = %s AND seq > %s
 ORDER BY seq LIMIT %s
"""

# Trim a topic at most this often (seconds), or after this many records (or a quarter
# of its max_records if fewer), as the SQLite bus does.
TRIM_INTERVAL = 1.0
TRIM_EVERY = 10_000
READ_LIMIT = 1_000
# The longest one wait on LISTEN lasts before reading again (a lost notification).
MAX_SLEEP = 5.0


class PostgreSQLBus(Bus):
    """The topics in the schema of a ``postgresql://`` broker URL."""

    scheme = "postgresql"

    def __init__(self, settings: PgSettings) -> None:
        self.settings = settings
        self._pools = LoopPools(settings, BrokerUnavailable)
        self.channel = f"celeriac_{settings.schema}_bus"
        self._listener = Listener(settings, self.channel, self._notified)
        self._ready = False
        self._trims = TrimSchedule(TRIM_INTERVAL, TRIM_EVERY)
        self._sizes = RecordSizes()
        self._events: dict[asyncio.AbstractEventLoop, set[asyncio.Event]] = {}

    def _q(self, statement: str) -> str:
        return qualify(statement, self.settings.schema)

    async def connect(self) -> None:
        await self._schema()

    async def _schema(self) -> None:
        if not self._ready:
            async with self._pools.connection() as conn:
                await create_schema(conn, self.settings, "bus", SCHEMA_VERSION, CREATE,
                                    BrokerError)
            self._ready = True

    async def close(self) -> None:
        await self._listener.close()
        await self._pools.close()

    async def publish(self, topic: str, payloads: Sequence[bytes]) -> None:
        check_topic(topic)
        if not payloads:
            return
        await self._schema()
        trim = self._trims.due(topic, payloads)
        limit = self._sizes.limit(topic, payloads)  # within max_records and max_bytes
        async with self._pools.connection() as conn:
            try:
                async with conn.transaction():
                    await conn.execute(LOCK, (zlib.crc32(f"bus:{topic}".encode()),))
                    await conn.execute(self._q(INSERT), (topic, [bytes(p) for p in payloads]))
                    await conn.execute(NOTIFY, (self.channel, topic))
                    if trim:
                        await conn.execute(self._q(TRIM_COUNT), (topic, topic, limit))
                        await conn.execute(self._q(TRIM_AGE),
                                           (topic, RETENTION[topic].max_age))
            except Exception as exc:
                if isinstance(exc, BrokerError):
                    raise
                raise self.settings.unavailable(exc, BrokerError) from exc

    async def subscribe(self, topic: str, since: float | None = None) -> Subscription:
        check_topic(topic)
        await self._schema()
        await self._listener.ensure()  # before the position is fixed: no wake-up lost
        async with self._pools.connection() as conn:
            row = await (await conn.execute(self._q(LAST_SEQ), (topic,))).fetchone()
            last = int(row[0]) if row else 0
            if since is not None:
                first = await (await conn.execute(self._q(FIRST_SINCE),
                                                  (topic, since))).fetchone()
                last = int(first[0]) - 1 if first is not None else last
        return _Subscription(self, topic, last)

    def _notified(self, payload: str) -> None:
        for loop, events in list(self._events.items()):
            for event in list(events):
                with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                    loop.call_soon_threadsafe(event.set)

    async def _read(self, topic: str, after: int) -> list[tuple[int, float, bytes]]:
        async with self._pools.connection() as conn:
            cursor = await conn.execute(self._q(READ), (topic, after, READ_LIMIT))
            return [(int(seq), float(at), bytes(payload))
                    for seq, at, payload in await cursor.fetchall()]


class _Subscription(Subscription):
    def __init__(self, bus: PostgreSQLBus, topic: str, after: int) -> None:
        self._bus = bus
        self._topic = topic
        self._after = after

    async def read(self, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        waiting = self._bus._events.setdefault(loop, set())
        waiting.add(event)
        try:
            while True:
                event.clear()  # before reading: a record stored meanwhile wakes us
                rows = await self._bus._read(self._topic, self._after)
                if rows:
                    self._after = rows[-1][0]
                    return [Record(at, payload) for _, at, payload in rows]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                if not await self._bus._listener.ensure():
                    remaining = min(remaining, 0.05)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, MAX_SLEEP))
        finally:
            waiting.discard(event)

    async def close(self) -> None:
        pass  # nothing is kept on the server for a reader
