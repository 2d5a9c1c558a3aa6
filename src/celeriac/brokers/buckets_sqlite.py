"""Token buckets in a SQLite file, shared by every process on the machine.

Schema (component ``ratelimit``, version 1), in the broker's (or backend's) own file::

    rate_buckets    key TEXT PRIMARY KEY, tat REAL   next free token (Unix time)
    rate_overrides  key TEXT PRIMARY KEY, rate TEXT  run-time limits (control.rate_limit)

A reservation reads and writes its bucket's row in one ``BEGIN IMMEDIATE`` transaction,
so two processes never hand out the same token. See ``celeriac.brokers.buckets``.
"""

from __future__ import annotations

import time

from celeriac.brokers.buckets import Grant, TokenBuckets, reserve
from celeriac.errors import BrokerError
from celeriac.sqlite_db import Database, PollPolicy, Schema

SCHEMA = Schema("ratelimit", 1, (
    "CREATE TABLE IF NOT EXISTS rate_buckets (key TEXT PRIMARY KEY, tat REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rate_overrides (key TEXT PRIMARY KEY, rate TEXT NOT NULL)",
))

# Nothing waits on this file's changes through this object; the policy is never used.
_NO_POLL = PollPolicy(first=0.05, active_for=0.0, maximum=0.05)

UPSERT = ("INSERT INTO rate_buckets (key, tat) VALUES (?, ?) "
          "ON CONFLICT (key) DO UPDATE SET tat = excluded.tat")


class SQLiteBuckets(TokenBuckets):
    """Buckets in the SQLite file of ``url`` (``sqlite:///celeriac.db``)."""

    def __init__(self, url: str) -> None:
        self._db = Database(url, SCHEMA, _NO_POLL, BrokerError)

    async def reserve(self, key: str, interval: float, horizon: float) -> Grant:
        with self._db.write() as conn:
            row = conn.execute("SELECT tat FROM rate_buckets WHERE key = ?", (key,)).fetchone()
            tat, grant = reserve(None if row is None else row[0], time.time(), interval,
                                 horizon)
            if tat is not None:
                conn.execute(UPSERT, (key, tat))
        return grant

    async def set_override(self, key: str, rate: str | None) -> None:
        with self._db.write() as conn:
            if rate is None:
                conn.execute("DELETE FROM rate_overrides WHERE key = ?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO rate_overrides (key, rate) VALUES (?, ?)",
                             (key, rate))
            conn.execute("DELETE FROM rate_buckets WHERE key = ?", (key,))

    async def overrides(self) -> dict[str, str]:
        with self._db.read() as conn:
            return dict(conn.execute("SELECT key, rate FROM rate_overrides"))

    async def close(self) -> None:
        self._db.close()
