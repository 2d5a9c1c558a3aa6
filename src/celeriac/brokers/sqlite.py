"""The embedded broker: one SQLite file in WAL mode, shared by every process on a machine.

Schema (version 2; a version 1 file gains ``ready_at`` when first opened)::

    messages      ready and leased messages
      seq             INTEGER PRIMARY KEY   age: FIFO order within a priority
      id, queue, priority, body
      ready_at        Unix time it was published or came due (queue_stats' oldest_age);
                      NULL for rows written before version 2
      delivery_count  fetches so far (a requeue gives one back)
      lease_until     NULL when ready, else the Unix time the lease ends
      lease_id        random token of the current lease; NULL when ready
    scheduled     messages whose eta is still ahead, moved into ``messages`` when due
      seq, id, queue, priority, body, due
    dead_letters  seq, id, queue, priority, body, delivery_count, reason, dead_at

Ready messages are found through a partial index holding only ready rows, ordered as
they come out (queue, priority DESC, seq), so a claim reads exactly the rows it takes,
however many messages are leased or scheduled. Scheduled messages live in their own
table so that thousands of future ETAs cost a fetch nothing: one index probe of the
earliest ``due`` tells whether any must move, and the move happens inside the claiming
transaction.

A delivery's receipt is ``(seq, lease_id)``. Every statement acting on a delivery
matches both, so once a lease ran out and the message was leased again (with a new
random ``lease_id``), the old receipt matches nothing: its ack is a no-op and its
extend returns False. Until a fetch releases it, an expired lease can still be acked,
requeued or dead-lettered (nobody else has the message), but no longer extended, as in
the memory broker. Expired leases are released by the next fetch that sees one is
due (any fetch, of any queue), and fetching workers wake up for it; until then
``queue_stats`` already counts them as ready and ``purge`` deletes them.

A fetch that finds nothing waits on ``PRAGMA data_version`` (see ``celeriac.sqlite_db``)
and on a timer for the next ETA or lease expiry, so it neither spins nor sleeps past work.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

from celeriac.brokers.base import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    Broker,
    DeadLetter,
    Delivery,
    Outgoing,
    QueueStats,
    ScheduledMessage,
    check_outgoing,
)
from celeriac.brokers.buckets_sqlite import SQLiteBuckets
from celeriac.bus.base import Bus
from celeriac.errors import BrokerError
from celeriac.sqlite_db import Database, PollPolicy, Schema, placeholders

logger = logging.getLogger("celeriac.broker")

SCHEMA = Schema("broker", 2, (
    """CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        body BLOB NOT NULL,
        delivery_count INTEGER NOT NULL DEFAULT 0,
        lease_until REAL,
        lease_id INTEGER,
        ready_at REAL
    )""",
    """CREATE INDEX IF NOT EXISTS messages_ready
        ON messages (queue, priority DESC, seq) WHERE lease_until IS NULL""",
    """CREATE INDEX IF NOT EXISTS messages_leased
        ON messages (lease_until) WHERE lease_until IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS scheduled (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        body BLOB NOT NULL,
        due REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS scheduled_due ON scheduled (due)",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        body BLOB NOT NULL,
        delivery_count INTEGER NOT NULL,
        reason TEXT NOT NULL,
        dead_at REAL NOT NULL
    )""",
    # queue_stats counts each queue's dead letters from this index, not the whole table.
    "CREATE INDEX IF NOT EXISTS dead_letters_queue ON dead_letters (queue)",
), upgrades={1: ("ALTER TABLE messages ADD COLUMN ready_at REAL",)})

# A worker that just handled a message polls every millisecond for the next one; one
# that has been idle for a while backs off to 50 ms, costing nothing measurable.
POLL = PollPolicy(first=0.001, active_for=1.0, maximum=0.05)

# One statement claims a batch: the subquery walks the ready index in delivery order.
# (UPDATE ... ORDER BY ... LIMIT needs a compile option most SQLite builds lack.)
CLAIM = """
UPDATE messages
SET lease_until = ?, lease_id = random(), delivery_count = delivery_count + 1
WHERE seq IN (SELECT seq FROM messages WHERE queue = ? AND lease_until IS NULL
              ORDER BY priority DESC, seq LIMIT ?)
RETURNING seq, lease_id, CAST(id AS BLOB), body, priority, delivery_count,
          typeof(id) || ' ' || typeof(body)
"""
# (The id is read as bytes and decoded here: a row whose id is not UTF-8 text, written
# by something other than celeriac, must not make the whole fetch fail; see _delivery.
# Likewise the body only after its type was checked.)

# Moves due messages into the ready table, in the order they came due. The same
# ``now`` is bound in both statements, inside one write transaction.
PROMOTE = """
INSERT INTO messages (id, queue, priority, body, ready_at)
SELECT id, queue, priority, body, due FROM scheduled WHERE due <= ? ORDER BY due, seq
"""
UNSCHEDULE = "DELETE FROM scheduled WHERE due <= ?"

# A scheduled row whose due time is not a number would never come due (and would make
# the next-due probe return text): it is dead-lettered with the reason instead.
BAD_DUE = "typeof(due) NOT IN ('integer', 'real')"
DEAD_BAD_DUE = f"""
INSERT INTO dead_letters (id, queue, priority, body, delivery_count, reason, dead_at)
SELECT id, queue, priority, body, 0,
       'unreadable scheduled message: its due time ' || quote(due) || ' is not a number', ?
FROM scheduled WHERE {BAD_DUE}
"""
DELETE_BAD_DUE = f"DELETE FROM scheduled WHERE {BAD_DUE}"

RECLAIM = """
UPDATE messages SET lease_until = NULL, lease_id = NULL
WHERE lease_until IS NOT NULL AND lease_until <= ?
"""

# The two next moments a waiting fetch must wake for, each one index probe.
NEXT_DUE = """
SELECT (SELECT min(due) FROM scheduled),
       (SELECT min(lease_until) FROM messages WHERE lease_until IS NOT NULL)
"""


# When the oldest ready message of a queue became ready: the head of each priority's
# run of the ready index (ten probes, however long the queue), and the expired leases.
# Within a priority, seq order is the order messages became ready, except that a due
# message is promoted (given its seq) only by the next fetch: while no worker fetches,
# due messages count as scheduled, not ready, as in the counts.
OLDEST_READY = f"""
WITH levels(p) AS (VALUES {", ".join(f"({level})"
                                    for level in range(MIN_PRIORITY, MAX_PRIORITY + 1))})
SELECT min(at) FROM (
    SELECT (SELECT ready_at FROM messages WHERE queue = :queue AND priority = levels.p
            AND lease_until IS NULL ORDER BY seq LIMIT 1) AS at FROM levels
    UNION ALL
    SELECT min(ready_at) FROM messages WHERE lease_until <= :now AND queue = :queue)
"""


def _oldest_ready(conn: sqlite3.Connection, queue: str, now: float) -> float | None:
    """Seconds the oldest ready message of ``queue`` has waited, if it is known."""
    at = conn.execute(OLDEST_READY, {"queue": queue, "now": now}).fetchone()[0]
    return None if not isinstance(at, int | float) else max(0.0, now - at)


class Receipt(NamedTuple):
    """Which row, and which lease of it, a delivery holds."""

    seq: int
    lease_id: int


class SQLiteBroker(Broker):
    """A broker in one SQLite file: ``sqlite:///relative.db`` or ``sqlite:////abs.db``."""

    scheme = "sqlite"
    supports_delay = True
    supports_priority = True
    supports_rate_limit = True
    # SQLite calls block anyway: a sync caller makes them in its own thread, on its own
    # connection, instead of hopping to the app's bridge loop and back.
    supports_blocking_publish = True

    def __init__(self, url: str = "sqlite:///celeriac.db",
                 options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self._db = Database(url, SCHEMA, POLL, BrokerError)

    @property
    def path(self) -> str:
        return self._db.path

    async def connect(self) -> None:
        self._db.connection()  # opens this thread's connection and creates the tables

    async def close(self) -> None:
        self._db.close()

    def close_blocking(self) -> None:
        self._db.close()  # every thread's connection, callers' threads included

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        self.publish_blocking(messages)

    def publish_blocking(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        check_outgoing(messages)  # nothing a fetch could not read is ever stored
        with self._db.write() as conn:
            self.publish_in(conn, messages)

    def publish_in(self, conn: sqlite3.Connection, messages: Sequence[Outgoing]) -> None:
        """Store checked messages within the caller's write transaction on this file
        (``celeriac.uniqueness`` claims a key and publishes in one transaction)."""
        now = time.time()
        ready = [(m.id, m.queue, m.priority, m.body, now) for m in messages
                 if m.eta is None or m.eta <= now]
        later = [(m.id, m.queue, m.priority, m.body, m.eta) for m in messages
                 if m.eta is not None and m.eta > now]
        if ready:
            conn.executemany(
                "INSERT INTO messages (id, queue, priority, body, ready_at) "
                "VALUES (?, ?, ?, ?, ?)", ready)
        if later:
            conn.executemany("INSERT INTO scheduled (id, queue, priority, body, due) "
                             "VALUES (?, ?, ?, ?, ?)", later)

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            # Read the version before looking, so a commit made while we look wakes us.
            since = self._db.version()
            taken, wake_at = self._claim(queues, limit)
            if taken:
                return taken
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if wake_at is not None:
                remaining = min(remaining, max(0.0, wake_at - time.time()))
            await self._db.wait_for_change(since, remaining)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        with self._db.write() as conn:
            conn.executemany("DELETE FROM messages WHERE seq = ? AND lease_id = ?",
                             _receipts(deliveries))

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        # Back to the head of its priority (seq is kept), and the fetch does not count.
        if not deliveries:
            return
        with self._db.write() as conn:
            conn.executemany(
                "UPDATE messages SET lease_until = NULL, lease_id = NULL, "
                "delivery_count = delivery_count - 1 WHERE seq = ? AND lease_id = ?",
                _receipts(deliveries))

    async def extend(self, deliveries: Sequence[Delivery]) -> list[bool]:
        # A lease that already ran out is lost even if nobody took the message yet: the
        # next fetch may release it at any moment, so promising it would be a lie.
        now = time.time()
        until = now + self.lease_seconds
        with self._db.write() as conn:
            return [conn.execute("UPDATE messages SET lease_until = ? WHERE seq = ? AND "
                                 "lease_id = ? AND lease_until > ?",
                                 (until, seq, lease_id, now)).rowcount == 1
                    for seq, lease_id in _receipts(deliveries)]

    async def dead_letter(self, deliveries: Sequence[tuple[Delivery, str]]) -> None:
        if not deliveries:
            return
        now = time.time()
        receipts = _receipts([delivery for delivery, _ in deliveries])
        moves = [(reason, now, *receipt)
                 for (_, reason), receipt in zip(deliveries, receipts, strict=True)]
        with self._db.write() as conn:
            conn.executemany(
                "INSERT INTO dead_letters "
                "(id, queue, priority, body, delivery_count, reason, dead_at) "
                # (coalesce: a row written without celeriac's constraints may hold NULLs)
                "SELECT coalesce(id, 'row-' || seq), coalesce(queue, ''), "
                "coalesce(priority, 0), coalesce(body, X''), delivery_count, ?, ? "
                "FROM messages WHERE seq = ? AND lease_id = ?", moves)
            conn.executemany("DELETE FROM messages WHERE seq = ? AND lease_id = ?", receipts)

    async def queue_stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        now = time.time()
        named = "" if queues is None else f"AND queue IN ({placeholders(queues)})"
        params = () if queues is None else tuple(queues)
        counts: dict[str, list[int]] = {name: [0, 0, 0] for name in queues or ()}
        # Each query reads only the index of its own rows: ready, scheduled, leased.
        # Queue names are read as bytes: a name that is not UTF-8 (written by something
        # other than celeriac) is shown escaped instead of failing the whole listing.
        with self._db.read(snapshot=True) as conn:
            for raw, ready in conn.execute(
                    f"SELECT CAST(queue AS BLOB), count(*) FROM messages "
                    f"WHERE lease_until IS NULL {named} GROUP BY queue", params):
                counts.setdefault(_text(raw), [0, 0, 0])[0] += ready
            for raw, scheduled in conn.execute(
                    f"SELECT CAST(queue AS BLOB), count(*) FROM scheduled WHERE 1 {named} "
                    "GROUP BY queue", params):
                counts.setdefault(_text(raw), [0, 0, 0])[1] = scheduled
            # A lease that ran out is waiting again, though no fetch has released it yet.
            for raw, expired, held in conn.execute(
                    "SELECT CAST(queue AS BLOB), sum(lease_until <= ?), sum(lease_until > ?) "
                    f"FROM messages WHERE lease_until IS NOT NULL {named} GROUP BY queue",
                    (now, now, *params)):
                row = counts.setdefault(_text(raw), [0, 0, 0])
                row[0] += expired
                row[2] = held
            dead: dict[str, int] = {}
            for raw, count in conn.execute(
                    f"SELECT CAST(queue AS BLOB), count(*) FROM dead_letters WHERE 1 {named} "
                    "GROUP BY queue", params):
                dead[_text(raw)] = count
            oldest = {name: _oldest_ready(conn, name, now)
                      for name, row in counts.items() if row[0]}
        names = list(queues) if queues is not None else sorted(counts)
        return [QueueStats(name, counts[name][0], counts[name][1], counts[name][2],
                           oldest_age=oldest.get(name), dead_letters=dead.get(name, 0))
                for name in names]

    async def purge(self, queues: Sequence[str]) -> int:
        """Delete the ready, scheduled and lease-expired messages of the queues."""
        if not queues:
            return 0
        named, params = f"queue IN ({placeholders(queues)})", tuple(queues)
        with self._db.write() as conn:
            return sum(conn.execute(sql, args).rowcount for sql, args in (
                (f"DELETE FROM messages WHERE lease_until IS NULL AND {named}", params),
                (f"DELETE FROM messages WHERE lease_until <= ? AND {named}",
                 (time.time(), *params)),
                (f"DELETE FROM scheduled WHERE {named}", params),
            ))

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT CAST(id AS BLOB), CAST(queue AS BLOB), CAST(body AS BLOB), "
                "CAST(reason AS BLOB), dead_at, delivery_count FROM dead_letters "
                "ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        # Read as bytes: a dead letter is often there because its fields are not text.
        return [DeadLetter(_text(id_), _text(queue), body or b"", _text(reason), dead_at,
                           count if isinstance(count, int) else None)
                for id_, queue, body, reason, dead_at, count in rows]

    async def scheduled(self, limit: int = 100) -> list[ScheduledMessage]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT CAST(id AS BLOB), CAST(queue AS BLOB), CAST(body AS BLOB), due "
                "FROM scheduled ORDER BY due, seq LIMIT ?", (limit,)).fetchall()
        return [ScheduledMessage(_text(id_), _text(queue), body or b"", float(due))
                for id_, queue, body, due in rows]

    async def purge_dead_letters(self) -> int:
        with self._db.write() as conn:
            count: int = conn.execute("DELETE FROM dead_letters").rowcount
        return count

    async def remove_dead_letters(self, ids: Collection[str]) -> int:
        wanted = list(dict.fromkeys(ids))
        removed = 0
        with self._db.write() as conn:
            for start in range(0, len(wanted), 500):  # SQLite's limit on bound values
                chunk = wanted[start:start + 500]
                removed += conn.execute(
                    f"DELETE FROM dead_letters WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk).rowcount
        return removed

    def token_buckets(self) -> SQLiteBuckets:
        return SQLiteBuckets(self.url)  # tables of their own in this file

    def bus(self) -> Bus:
        from celeriac.bus.sqlite import SQLiteBus

        return SQLiteBus(self.url)  # a table of its own in this file

    # -- claiming -------------------------------------------------------------------------

    def _claim(self, queues: Sequence[str], limit: int) -> tuple[list[Delivery], float | None]:
        """Lease up to ``limit`` messages now; else say when to look again (Unix time).

        Looks first with a read, so that idle workers woken by unrelated commits (results,
        acks) do not queue up for the write lock.
        """
        if limit <= 0 or not queues:
            return [], None
        now = time.time()
        with self._db.read() as conn:
            ready = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE lease_until IS NULL AND queue IN "
                f"({placeholders(queues)}))", tuple(queues)).fetchone()[0]
            due, expiry = conn.execute(NEXT_DUE).fetchone()
        bad_due = due is not None and not isinstance(due, int | float)
        promote = bad_due or (due is not None and due <= now)
        reclaim = expiry is not None and expiry <= now
        if not (ready or promote or reclaim):
            return [], min((t for t in (due, expiry) if t is not None), default=None)
        with self._db.write() as conn:
            now = time.time()  # the lease starts now, after any wait for the write lock
            if bad_due:
                self._dead_letter_bad_due(conn, now)
            if promote:
                conn.execute(PROMOTE, (now,))
                conn.execute(UNSCHEDULE, (now,))
            if reclaim:
                conn.execute(RECLAIM, (now,))
            return self._take(conn, queues, limit, now + self.lease_seconds), None

    def _take(self, conn: sqlite3.Connection, queues: Sequence[str], limit: int,
              until: float) -> list[Delivery]:
        taken: list[Delivery] = []
        for queue in queues:  # fill the batch from the first queue, then the next
            room = limit - len(taken)
            if room <= 0:
                break
            found = [_delivery(queue, row) for row in
                     conn.execute(CLAIM, (until, queue, room)).fetchall()]
            found.sort(key=_delivery_order)  # RETURNING has no order
            taken.extend(found)
        return taken

    def _dead_letter_bad_due(self, conn: sqlite3.Connection, now: float) -> None:
        moved = conn.execute(DEAD_BAD_DUE, (now,)).rowcount
        conn.execute(DELETE_BAD_DUE)
        logger.error("dead-lettered %d scheduled message(s) whose due time is not a number "
                     "(written by something other than celeriac?)", moved)


def _delivery(queue: str, row: tuple[Any, ...]) -> Delivery:
    """A claimed row as a Delivery; one whose fields cannot be read says so (``problem``)."""
    seq, lease_id, raw_id, body, priority, count, kinds = row
    if kinds == "text blob" and type(priority) is int and type(count) is int \
            and MIN_PRIORITY <= priority <= MAX_PRIORITY:
        try:
            return Delivery(raw_id.decode(), queue, body, priority, count,
                            Receipt(seq, lease_id))
        except UnicodeDecodeError:
            pass
    id_kind, body_kind = kinds.split(" ")
    problems = []
    if id_kind != "text":
        problems.append(f"its message id is {_describe_cell(id_kind, raw_id)}, not text")
    else:
        try:
            raw_id.decode()
        except UnicodeDecodeError as exc:
            problems.append(f"its message id {raw_id[:60]!r} is not valid UTF-8 text "
                            f"({exc.reason} at byte {exc.start})")
    if body_kind != "blob":
        problems.append(f"its body is {_describe_cell(body_kind, body)}, not a blob")
    if type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        problems.append(f"its priority {priority!r} is not an integer "
                        f"{MIN_PRIORITY}-{MAX_PRIORITY}")
    if type(count) is not int:
        problems.append(f"its delivery count {count!r} is not an integer")
    problem = f"row {seq} of the messages table: " + "; ".join(problems)
    logger.error("unreadable message in queue %s: %s", queue, problem)
    return Delivery(_text(raw_id) or f"row-{seq}", queue,
                    body if isinstance(body, bytes) else b"",
                    priority if type(priority) is int else MIN_PRIORITY,
                    count if type(count) is int else 1, Receipt(seq, lease_id), problem)


def _delivery_order(delivery: Delivery) -> tuple[int, int]:
    """Higher priority first, then older (a lower seq)."""
    return -delivery.priority, delivery.receipt.seq


def _describe_cell(kind: str, value: Any) -> str:
    return "NULL" if kind == "null" else f"of type {kind} ({value!r:.60})"


def _text(raw: Any) -> str:
    """A column read as bytes, as text; bytes that are not UTF-8 are shown escaped."""
    if raw is None:
        return ""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "backslashreplace")
    return str(raw)


def _receipts(deliveries: Sequence[Delivery]) -> list[Receipt]:
    receipts = []
    for delivery in deliveries:
        if not isinstance(delivery.receipt, Receipt):
            raise TypeError(f"delivery {delivery.id!r} did not come from a sqlite broker")
        receipts.append(delivery.receipt)
    return receipts

