"""The embedded result backend: a table in a SQLite file, often the broker's own file.

Schema (version 1)::

    results
      task_id     TEXT PRIMARY KEY
      data        BLOB      the encoded outcome
      expires_at  REAL      Unix time; NULL keeps it until deleted

    result_sets          key, size, expires_at    a chord's member count (by set key)
    result_set_members   key, member              its members: (key, member) is unique
    result_claims        key, value, expires_at   who completed or failed a chord

Expired rows are invisible to reads at once and deleted by ``cleanup``. Adding to a set
and claiming are single write transactions (``BEGIN IMMEDIATE``), so they are atomic
across processes; the member table's primary key makes adding idempotent. ``wait`` sleeps
on ``PRAGMA data_version`` (see ``celeriac.sqlite_db``), reading the row again only
when some process committed something.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celeriac.backends.base import ResultBackend
from celeriac.errors import BackendError
from celeriac.sqlite_db import Database, PollPolicy, Schema, placeholders

if TYPE_CHECKING:
    from celeriac.bus.base import Bus

SCHEMA = Schema("results", 1, (
    """CREATE TABLE IF NOT EXISTS results (
        task_id TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        expires_at REAL
    )""",
    """CREATE INDEX IF NOT EXISTS results_expiry
        ON results (expires_at) WHERE expires_at IS NOT NULL""",
    # Chords (celeriac.worker.workflow): sets of members with their size, and claims.
    """CREATE TABLE IF NOT EXISTS result_sets (
        key TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        expires_at REAL
    )""",
    """CREATE TABLE IF NOT EXISTS result_set_members (
        key TEXT NOT NULL,
        member TEXT NOT NULL,
        PRIMARY KEY (key, member)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS result_claims (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        expires_at REAL
    )""",
))

# Most results arrive within milliseconds of the wait starting, so a new waiter polls
# every half millisecond; a long task's waiter backs off to 50 ms.
POLL = PollPolicy(first=0.0005, active_for=0.5, maximum=0.05, wake_on_wait=True)

# A wait without a timeout still wakes up now and then; the loop simply waits again.
WAIT_FOREVER = 3600.0

# Ids per statement: well under SQLite's limit on bound parameters.
CHUNK = 500


class SQLiteBackend(ResultBackend):
    """Results in one SQLite file: ``sqlite:///relative.db`` or ``sqlite:////abs.db``."""

    scheme = "sqlite"

    def __init__(self, url: str = "sqlite:///celeriac.db",
                 options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self._db = Database(url, SCHEMA, POLL, BackendError)

    @property
    def path(self) -> str:
        return self._db.path

    async def connect(self) -> None:
        self._db.connection()  # opens this thread's connection and creates the table

    def bus(self) -> Bus:
        from celeriac.bus.sqlite import SQLiteBus

        return SQLiteBus(self.url)  # a table of its own in this file

    async def close(self) -> None:
        self._db.close()

    async def store_many(self, results: Mapping[str, bytes], ttl: float | None) -> None:
        expires_at = None if ttl is None else time.time() + ttl
        with self._db.write() as conn:
            conn.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?)",
                             [(task_id, data, expires_at) for task_id, data in results.items()])

    async def add_many(self, results: Mapping[str, bytes], ttl: float | None) -> None:
        now = time.time()
        expires_at = None if ttl is None else now + ttl
        with self._db.write() as conn:  # an expired row is as good as none
            conn.executemany(
                "INSERT INTO results VALUES (?, ?, ?) ON CONFLICT (task_id) DO UPDATE "
                "SET data = excluded.data, expires_at = excluded.expires_at "
                "WHERE results.expires_at <= ?",
                [(task_id, data, expires_at, now) for task_id, data in results.items()])

    async def load_many(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        now = time.time()
        found: dict[str, bytes] = {}
        with self._db.read() as conn:
            for start in range(0, len(task_ids), CHUNK):
                chunk = task_ids[start:start + CHUNK]
                found.update(conn.execute(
                    f"SELECT task_id, data FROM results WHERE task_id IN ({placeholders(chunk)}) "
                    "AND (expires_at IS NULL OR expires_at > ?)", (*chunk, now)))
        return found

    async def load(self, task_id: str) -> bytes | None:
        # The one-id case of load_many, without building a dict: it is what wait() polls.
        with self._db.read() as conn:
            row = conn.execute("SELECT data FROM results WHERE task_id = ? AND "
                               "(expires_at IS NULL OR expires_at > ?)",
                               (task_id, time.time())).fetchone()
        return None if row is None else bytes(row[0])

    async def delete_many(self, task_ids: Sequence[str]) -> None:
        with self._db.write() as conn:
            conn.executemany("DELETE FROM results WHERE task_id = ?",
                             [(task_id,) for task_id in task_ids])

    async def cleanup(self) -> int:
        now = time.time()
        with self._db.write() as conn:
            count: int = conn.execute("DELETE FROM results WHERE expires_at <= ?",
                                      (now,)).rowcount
            conn.execute("DELETE FROM result_set_members WHERE key IN "
                         "(SELECT key FROM result_sets WHERE expires_at <= ?)", (now,))
            conn.execute("DELETE FROM result_sets WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM result_claims WHERE expires_at <= ?", (now,))
        return count

    async def wait(self, task_id: str, timeout: float | None,
                   accept: Callable[[bytes], bool] | None = None) -> bytes | None:
        """Wait for an accepted result, reading again only after the file changed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            since = self._db.version()  # before reading, so a store during the read wakes us
            data = await self.load(task_id)
            if data is not None and (accept is None or accept(data)):
                return data
            remaining = WAIT_FOREVER if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return None
            await self._db.wait_for_change(since, remaining)

    # -- chords: sets and claims ----------------------------------------------------------

    supports_chords = True

    async def add_to_set(self, key: str, member: str, ttl: float | None) -> int:
        now = time.time()
        expires_at = None if ttl is None else now + ttl
        with self._db.write() as conn:
            row = conn.execute("SELECT expires_at FROM result_sets WHERE key = ?",
                               (key,)).fetchone()
            if row is not None and row[0] is not None and row[0] <= now:  # start afresh
                conn.execute("DELETE FROM result_set_members WHERE key = ?", (key,))
                conn.execute("DELETE FROM result_sets WHERE key = ?", (key,))
            added = conn.execute("INSERT OR IGNORE INTO result_set_members VALUES (?, ?)",
                                 (key, member)).rowcount
            conn.execute("INSERT INTO result_sets VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE "
                         "SET size = size + excluded.size, expires_at = excluded.expires_at",
                         (key, added, expires_at))
            size: int = conn.execute("SELECT size FROM result_sets WHERE key = ?",
                                     (key,)).fetchone()[0]
        return size

    async def set_members(self, key: str) -> set[str]:
        with self._db.read(snapshot=True) as conn:
            row = conn.execute("SELECT expires_at FROM result_sets WHERE key = ?",
                               (key,)).fetchone()
            if row is None or (row[0] is not None and row[0] <= time.time()):
                return set()
            return {member for (member,) in conn.execute(
                "SELECT member FROM result_set_members WHERE key = ?", (key,))}

    async def claim(self, key: str, value: str, ttl: float | None) -> str:
        now = time.time()
        with self._db.write() as conn:
            conn.execute("DELETE FROM result_claims WHERE key = ? AND expires_at <= ?",
                         (key, now))
            conn.execute("INSERT OR IGNORE INTO result_claims VALUES (?, ?, ?)",
                         (key, value, None if ttl is None else now + ttl))
            holder: str = conn.execute("SELECT value FROM result_claims WHERE key = ?",
                                       (key,)).fetchone()[0]
        return holder
