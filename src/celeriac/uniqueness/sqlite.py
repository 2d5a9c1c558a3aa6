"""Unique keys in a SQLite file: the broker's (claim and publish in one transaction)
or, under a RabbitMQ broker, the result backend's (claim first, then publish).

Table (made on first use, in the owner's file)::

    unique_keys   key TEXT PRIMARY KEY, task_id TEXT, expires_at REAL (Unix time)

A claim is one ``BEGIN IMMEDIATE`` transaction: it reads the key's row and writes its
own unless a live hold is there, so two processes can never both claim it. On the
broker's file the message is inserted in that same transaction (``SQLiteBroker.
publish_in``): the key is held exactly when the message is stored, and a producer that
dies halfway leaves neither. Holds past their end are deleted by later claims.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from celeriac.brokers.base import Outgoing, check_outgoing
from celeriac.sqlite_db import Database
from celeriac.uniqueness.store import Hold, UniqueKeys

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS unique_keys (
        key TEXT PRIMARY KEY,
        task_id TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS unique_keys_expiry ON unique_keys (expires_at)",
)


class SQLiteUniqueKeys(UniqueKeys):
    """Holds in the ``unique_keys`` table of a broker's or backend's SQLite file."""

    def __init__(self, db: Database, broker: Any = None) -> None:
        self._db = db  # the owner's connections: closed with it
        self._broker = broker  # a SQLiteBroker on the same file, for atomic sends
        self.atomic = broker is not None
        self._ready = False

    @classmethod
    def on(cls, owner: Any) -> SQLiteUniqueKeys:
        """The store in a SQLite broker's file (atomic) or a SQLite backend's."""
        from celeriac.brokers.sqlite import SQLiteBroker

        if isinstance(owner, SQLiteBroker):
            return cls(owner._db, owner)
        return cls(owner._db)

    def _create(self) -> None:
        if self._ready:
            return
        with self._db.write() as conn:
            for statement in SCHEMA:
                conn.execute(statement)
        self._ready = True

    def _claim_in(self, conn: sqlite3.Connection, key: str, task_id: str,
                  ttl: float) -> str | None:
        now = time.time()
        row = conn.execute("SELECT task_id, expires_at FROM unique_keys WHERE key = ?",
                           (key,)).fetchone()
        if row is not None and row[1] > now:
            return str(row[0])
        conn.execute("DELETE FROM unique_keys WHERE expires_at <= ?", (now,))
        conn.execute("INSERT OR REPLACE INTO unique_keys (key, task_id, expires_at) "
                     "VALUES (?, ?, ?)", (key, task_id, now + ttl))
        return None

    def claim_blocking(self, key: str, task_id: str, ttl: float) -> str | None:
        self._create()
        with self._db.write() as conn:
            return self._claim_in(conn, key, task_id, ttl)

    async def claim(self, key: str, task_id: str, ttl: float) -> str | None:
        return self.claim_blocking(key, task_id, ttl)

    def release_blocking(self, holds: Sequence[Hold]) -> None:
        if not holds:
            return
        self._create()
        with self._db.write() as conn:
            conn.executemany("DELETE FROM unique_keys WHERE key = ? AND task_id = ?", holds)

    async def release(self, holds: Sequence[Hold]) -> None:
        self.release_blocking(holds)

    async def holder(self, key: str) -> str | None:
        self._create()
        with self._db.read() as conn:
            row = conn.execute("SELECT task_id FROM unique_keys WHERE key = ? AND "
                               "expires_at > ?", (key, time.time())).fetchone()
        return None if row is None else str(row[0])

    def send_blocking(self, key: str, task_id: str, ttl: float, outgoing: Outgoing,
                      publish: Callable[[Sequence[Outgoing]], None]) -> str | None:
        if self._broker is None:
            return super().send_blocking(key, task_id, ttl, outgoing, publish)
        check_outgoing([outgoing])
        self._create()
        with self._db.write() as conn:  # the claim and the message: both or neither
            holder = self._claim_in(conn, key, task_id, ttl)
            if holder is None:
                self._broker.publish_in(conn, [outgoing])
        return holder

    async def send(self, key: str, task_id: str, ttl: float, outgoing: Outgoing,
                   publish: Callable[[Sequence[Outgoing]], Awaitable[None]]) -> str | None:
        if self._broker is None:
            return await super().send(key, task_id, ttl, outgoing, publish)
        return self.send_blocking(key, task_id, ttl, outgoing, self._broker.publish_blocking)
