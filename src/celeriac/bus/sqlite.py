"""Topics in the SQLite broker's file: one table, read by polling ``PRAGMA data_version``.

Schema (component ``bus``, version 1), in the broker's own file::

    bus_records   seq INTEGER PRIMARY KEY AUTOINCREMENT   a reader's position
                  topic, at (publisher's Unix time), payload

``AUTOINCREMENT`` because a position is a ``seq``: a plain rowid may be reused once the
newest rows are trimmed, and a reader would then skip records. SQLite commits one writer
at a time, in ``seq`` order, so a reader never sees a later ``seq`` before an earlier
one (no gaps to wait out).

Retention is trimmed by the publisher, inside its publish transaction, at most once a
second per topic and bus object (or after ``TRIM_EVERY`` records, or a quarter of the
topic's ``max_records``): a ``DELETE`` on every
publish would cost more than the insert at tens of thousands of events a second. Both
trims walk the ``(topic, seq)`` index from the oldest row, so they cost what they delete.

Readers wait through ``Database.wait_for_change``: one ``PRAGMA data_version`` poller per
event loop, every 2 ms while the file is busy, backing off to ``POLL.maximum`` (20 ms)
when idle, so a waiting reader sees a record within about 20 ms.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from celeriac.bus.base import (
    RETENTION,
    Bus,
    Record,
    RecordSizes,
    Subscription,
    TrimSchedule,
    check_topic,
)
from celeriac.errors import BrokerError
from celeriac.sqlite_db import Database, PollPolicy, Schema

SCHEMA = Schema("bus", 1, (
    """CREATE TABLE IF NOT EXISTS bus_records (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        at REAL NOT NULL,
        payload BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS bus_records_topic ON bus_records (topic, seq)",
))

# Readers must see a record within ~50 ms, and a control reply must come back within a
# second: the poll never backs off beyond 20 ms.
POLL = PollPolicy(first=0.002, active_for=1.0, maximum=0.02, wake_on_wait=False)

# Trim a topic at most this often (seconds), or after this many records published (or
# a quarter of its max_records if fewer: a topic then holds at most 1.25 times as many).
TRIM_INTERVAL = 1.0
TRIM_EVERY = 10_000

# Rows returned by one read: a reader far behind catches up in several reads.
READ_LIMIT = 1_000

INSERT = "INSERT INTO bus_records (topic, at, payload) VALUES (?, ?, ?)"
# Beyond the newest max_records of the topic.
TRIM_COUNT = """
DELETE FROM bus_records WHERE topic = ?1 AND seq <= (
    SELECT seq FROM bus_records WHERE topic = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)
"""
# Older than the first row stored at or after the horizon (rows are stored in time
# order per publisher; a slow publisher's clock cannot make a young row go early).
TRIM_AGE = """
DELETE FROM bus_records WHERE topic = ?1 AND seq < coalesce(
    (SELECT seq FROM bus_records WHERE topic = ?1 AND at >= ?2 ORDER BY seq LIMIT 1),
    (SELECT max(seq) + 1 FROM bus_records WHERE topic = ?1))
"""
LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM bus_records WHERE topic = ?"
FIRST_SINCE = """
SELECT seq FROM bus_records WHERE topic = ? AND at >= ? ORDER BY seq LIMIT 1
"""
READ = """
SELECT seq, at, payload FROM bus_records WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?
"""


class SQLiteBus(Bus):
    """The topics in the SQLite file of ``url`` (``sqlite:///celeriac.db``)."""

    scheme = "sqlite"

    def __init__(self, url: str) -> None:
        self._db = Database(url, SCHEMA, POLL, BrokerError)
        self._trims = TrimSchedule(TRIM_INTERVAL, TRIM_EVERY)
        self._sizes = RecordSizes()  # the average record size: the count max_bytes allows

    async def connect(self) -> None:
        self._db.connection()  # opens this thread's connection and creates the table

    async def close(self) -> None:
        self._db.close()

    async def publish(self, topic: str, payloads: Sequence[bytes]) -> None:
        check_topic(topic)
        if not payloads:
            return
        now = time.time()
        trim = self._trims.due(topic, payloads)
        limit = self._sizes.limit(topic, payloads)  # within max_records and max_bytes
        with self._db.write() as conn:
            conn.executemany(INSERT, [(topic, now, bytes(p)) for p in payloads])
            if trim:
                retention = RETENTION[topic]
                conn.execute(TRIM_COUNT, (topic, limit))
                conn.execute(TRIM_AGE, (topic, now - retention.max_age))

    async def subscribe(self, topic: str, since: float | None = None) -> Subscription:
        check_topic(topic)
        with self._db.read() as conn:
            last: int = conn.execute(LAST_SEQ, (topic,)).fetchone()[0]
            if since is not None:
                row = conn.execute(FIRST_SINCE, (topic, since)).fetchone()
                last = row[0] - 1 if row is not None else last
        return _SQLiteSubscription(self._db, topic, last)


class _SQLiteSubscription(Subscription):
    def __init__(self, db: Database, topic: str, after: int) -> None:
        self._db = db
        self._topic = topic
        self._after = after  # the seq of the last record read

    async def read(self, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            version = self._db.version()
            with self._db.read() as conn:
                rows = conn.execute(READ, (self._topic, self._after, READ_LIMIT)).fetchall()
            if rows:
                self._after = rows[-1][0]
                return [Record(at, bytes(payload)) for _, at, payload in rows]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            await self._db.wait_for_change(version, remaining)

    async def close(self) -> None:
        pass  # nothing is kept on the server for a reader
