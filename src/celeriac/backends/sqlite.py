"""The embedded result backend: a table in a SQLite file, often the broker's own file.

Schema (version 1)::

    results
      task_id     TEXT PRIMARY KEY
      data        BLOB      the encoded outcome
      expires_at  REAL      Unix time; NULL keeps it until deleted

Expired rows are invisible to reads at once and deleted by ``cleanup``. ``wait`` sleeps
on ``PRAGMA data_version`` (see ``celeriac.sqlite_db``), reading the row again only
when some process committed something.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celeriac.backends.base import ResultBackend
from celeriac.errors import BackendError
from celeriac.sqlite_db import Database, PollPolicy, Schema, placeholders

SCHEMA = Schema("results", 1, (
    """CREATE TABLE IF NOT EXISTS results (
        task_id TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        expires_at REAL
    )""",
    """CREATE INDEX IF NOT EXISTS results_expiry
        ON results (expires_at) WHERE expires_at IS NOT NULL""",
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

    async def close(self) -> None:
        self._db.close()

    async def store_many(self, results: Mapping[str, bytes], ttl: float | None) -> None:
        expires_at = None if ttl is None else time.time() + ttl
        with self._db.write() as conn:
            conn.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?)",
                             [(task_id, data, expires_at) for task_id, data in results.items()])

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
        with self._db.write() as conn:
            count: int = conn.execute("DELETE FROM results WHERE expires_at <= ?",
                                      (time.time(),)).rowcount
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

