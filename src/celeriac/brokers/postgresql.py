"""The PostgreSQL broker: messages as rows, leased with ``FOR UPDATE SKIP LOCKED``.

For teams whose only server is PostgreSQL. ``postgresql://user@host:5432/db`` (also
``postgres://``); ``?schema=name`` (or the ``schema`` transport option) puts the tables
in a schema of their own, made on first connect.

How the contract maps onto rows (schema and statements in ``postgresql_sql``):

- durability: a publish returns after its ``INSERT`` committed;
- a lease is a deadline and a lease id in the row (the id changes on every delivery,
  so a stale receipt matches nothing); ``extend`` moves the deadline; the delivery
  count is a column, raised by each fetch and lowered by ``requeue``;
- ``eta`` hides the row until then, exactly as a lease does; priorities are the
  ready index's order (``priority DESC, seq``), so higher first and FIFO within one;
- dead letters move, row and reason, into a table of their own in one statement;
- an idle fetch sleeps on ``LISTEN`` (one listening connection per event loop), woken
  by the ``NOTIFY`` that every publish and requeue sends at commit, or by its own timer
  when the next hidden row of its queues comes out: no polling loop while idle.

Rows are typed and constrained (``NOT NULL``, priority 0-9, UTF-8 text), so a stored
message's broker fields are always readable and ``Delivery.problem`` is never set.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import psycopg

from celeriac.brokers import postgresql_sql as sql
from celeriac.brokers.base import (
    Broker,
    DeadLetter,
    Delivery,
    Outgoing,
    QueueStats,
    ScheduledMessage,
    check_outgoing,
)
from celeriac.brokers.postgresql_connection import (
    Listener,
    LoopPools,
    PgSettings,
    create_schema,
    create_schema_blocking,
    qualify,
)
from celeriac.errors import BrokerError, BrokerUnavailable

if TYPE_CHECKING:
    from celeriac.brokers.buckets import TokenBuckets
    from celeriac.bus.base import Bus

# The longest one wait on LISTEN lasts before the fetch looks again: a safety net for
# a notification lost with a dropped LISTEN connection, never the way messages arrive.
MAX_SLEEP = 5.0


@dataclass(frozen=True, slots=True)
class Receipt:
    """One delivery of one row: its ``seq`` and the lease id of that fetch."""

    seq: int
    lease_id: int


class PostgreSQLBroker(Broker):
    """Messages in a table of a PostgreSQL database (see the module docstring)."""

    scheme = "postgresql"
    supports_delay = True
    supports_priority = True
    supports_blocking_publish = True
    supports_rate_limit = True
    setting_options: ClassVar[frozenset[str]] = frozenset({"pool_limit"})

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.settings = PgSettings.from_url(url, self.options)
        self._pools = LoopPools(self.settings, BrokerUnavailable)
        self.channel = f"celeriac_{self.settings.schema}_messages"
        self._listener = Listener(self.settings, self.channel, self._notified)
        self._sql = {name: qualify(getattr(sql, name), self.settings.schema) for name in (
            "PUBLISH", "FETCH", "NEXT_HIDDEN", "ACK", "REQUEUE", "EXTEND", "DEAD_LETTER",
            "STATS", "DEAD_COUNTS", "PURGE", "DEAD_LETTERS", "PURGE_DEAD_LETTERS",
            "REMOVE_DEAD_LETTERS", "SCHEDULED")}
        self._ready = False  # the schema is known to exist
        # The events of the fetches waiting now, by loop: a notification sets them all.
        self._waiting: dict[asyncio.AbstractEventLoop, set[asyncio.Event]] = {}

    # -- connections and schema ---------------------------------------------------------

    async def connect(self) -> None:
        await self._schema()

    async def close(self) -> None:
        await self._listener.close()
        await self._pools.close()

    def close_blocking(self) -> None:
        self._pools.close_blocking()

    async def _schema(self) -> None:
        if self._ready:
            return
        async with self._pools.connection() as conn:
            await create_schema(conn, self.settings, "broker", sql.SCHEMA_VERSION, sql.CREATE,
                                BrokerError)
        self._ready = True

    async def _execute(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on this loop's pool; its rows (if it returns any)."""
        await self._schema()
        async with self._pools.connection() as conn:
            try:
                cursor = await conn.execute(self._sql[statement], params)
            except psycopg.OperationalError as exc:
                raise self.settings.unavailable(exc, BrokerUnavailable) from exc
            except psycopg.Error as exc:
                raise self.settings.unavailable(exc, BrokerError) from exc
            return await cursor.fetchall() if cursor.description is not None else []

    # -- publish --------------------------------------------------------------------------

    def _publish_params(self, messages: Sequence[Outgoing]) -> tuple[Any, ...]:
        return ([m.id for m in messages], [m.queue for m in messages],
                [m.priority for m in messages], [m.body for m in messages],
                [math.nan if m.eta is None else float(m.eta) for m in messages],
                self.channel)

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        check_outgoing(messages)
        await self._execute("PUBLISH", self._publish_params(messages))

    def publish_blocking(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        check_outgoing(messages)
        params = self._publish_params(messages)
        with self._pools.blocking() as conn:
            if not self._ready:
                create_schema_blocking(conn, self.settings, "broker", sql.SCHEMA_VERSION,
                                       sql.CREATE, BrokerError)
                self._ready = True
            try:
                conn.execute(self._sql["PUBLISH"], params)
            except psycopg.OperationalError as exc:
                raise self.settings.unavailable(exc, BrokerUnavailable) from exc
            except psycopg.Error as exc:
                raise self.settings.unavailable(exc, BrokerError) from exc

    # -- fetch and wake-ups ---------------------------------------------------------------

    def _notified(self, payload: str) -> None:
        """A notification arrived on some loop's listener: wake every waiting fetch."""
        for loop, events in list(self._waiting.items()):
            for event in list(events):
                with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                    loop.call_soon_threadsafe(event.set)

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        event = asyncio.Event()  # this fetch's own: another's clear() cannot eat its wake-up
        waiting = self._waiting.setdefault(loop, set())
        waiting.add(event)
        listening = False
        try:
            while True:
                event.clear()  # before looking: a notification during the look is kept
                taken = await self._claim(queues, limit)
                if taken:
                    return taken
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                if not listening:
                    listening = await self._listener.ensure()
                    if listening:
                        continue  # look once more: a publish may have come before LISTEN
                rows = await self._execute("NEXT_HIDDEN", (list(queues),))
                due_in = rows[0][0] if rows and rows[0][0] is not None else None
                sleep = min(remaining, MAX_SLEEP if listening else 0.05)
                if due_in is not None:  # (at least a moment: one due now may be locked)
                    sleep = min(sleep, max(0.005, float(due_in)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), sleep)
        finally:
            waiting.discard(event)

    async def _claim(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        rows = await self._execute("FETCH", (list(queues), limit, self.lease_seconds))
        order = {queue: n for n, queue in enumerate(queues)}
        # RETURNING has no order: queues as asked, then higher priority, then older.
        rows.sort(key=lambda row: (order.get(row[3], 0), -row[5], row[0]))
        return [Delivery(id_, queue, bytes(body), priority, count, Receipt(seq, lease_id))
                for seq, lease_id, id_, queue, body, priority, count in rows]

    # -- outcomes -------------------------------------------------------------------------

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            await self._execute("ACK", _receipt_arrays(deliveries))

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            await self._execute("REQUEUE", (*_receipt_arrays(deliveries), self.channel))

    async def extend(self, deliveries: Sequence[Delivery]) -> list[bool]:
        if not deliveries:
            return []
        seqs, leases = _receipt_arrays(deliveries)
        rows = await self._execute("EXTEND", (self.lease_seconds, seqs, leases))
        kept = {Receipt(seq, lease_id) for seq, lease_id in rows}
        return [receipt in kept for receipt in _receipts(deliveries)]

    async def dead_letter(self, deliveries: Sequence[tuple[Delivery, str]]) -> None:
        if not deliveries:
            return
        seqs, leases = _receipt_arrays([delivery for delivery, _ in deliveries])
        await self._execute("DEAD_LETTER", (seqs, leases, [reason for _, reason in deliveries]))

    # -- looking and cleaning -------------------------------------------------------------

    async def queue_stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        named = None if queues is None else list(queues)
        counts = {queue: (int(ready), int(scheduled), int(held),
                          None if age is None else max(0.0, float(age)))
                  for queue, ready, scheduled, held, age
                  in await self._execute("STATS", (named, named))}
        dead = dict(await self._execute("DEAD_COUNTS", (named, named)))
        names = list(queues) if queues is not None else sorted(counts)
        stats = []
        for name in names:
            ready, scheduled, held, age = counts.get(name, (0, 0, 0, None))
            stats.append(QueueStats(name, ready, scheduled, held,
                                    oldest_age=age if ready else None,
                                    dead_letters=int(dead.get(name, 0))))
        return stats

    async def purge(self, queues: Sequence[str]) -> int:
        if not queues:
            return 0
        await self._schema()
        async with self._pools.connection() as conn:
            cursor = await conn.execute(self._sql["PURGE"], (list(queues),))
            return cursor.rowcount

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = await self._execute("DEAD_LETTERS", (limit,))
        return [DeadLetter(id_, queue, bytes(body), reason, float(dead_at), count)
                for id_, queue, body, reason, dead_at, count in rows]

    async def purge_dead_letters(self) -> int:
        await self._schema()
        async with self._pools.connection() as conn:
            cursor = await conn.execute(self._sql["PURGE_DEAD_LETTERS"])
            return cursor.rowcount

    async def remove_dead_letters(self, ids: Collection[str]) -> int:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return 0
        await self._schema()
        async with self._pools.connection() as conn:
            cursor = await conn.execute(self._sql["REMOVE_DEAD_LETTERS"], (wanted,))
            return cursor.rowcount

    def token_buckets(self) -> TokenBuckets:
        from celeriac.brokers.buckets_postgresql import PostgreSQLBuckets

        return PostgreSQLBuckets(self.settings)  # tables of their own in the same schema

    def bus(self) -> Bus:
        from celeriac.bus.postgresql import PostgreSQLBus

        return PostgreSQLBus(self.settings)  # a table of its own in the same schema

    async def scheduled(self, limit: int = 100) -> list[ScheduledMessage]:
        rows = await self._execute("SCHEDULED", (limit,))
        return [ScheduledMessage(id_, queue, bytes(body), float(due))
                for id_, queue, body, due in rows]


def _receipts(deliveries: Sequence[Delivery]) -> list[Receipt]:
    receipts = []
    for delivery in deliveries:
        if not isinstance(delivery.receipt, Receipt):
            raise TypeError(f"delivery {delivery.id!r} did not come from a postgresql broker")
        receipts.append(delivery.receipt)
    return receipts


def _receipt_arrays(deliveries: Sequence[Delivery]) -> tuple[list[int], list[int]]:
    receipts = _receipts(deliveries)
    return [r.seq for r in receipts], [r.lease_id for r in receipts]
