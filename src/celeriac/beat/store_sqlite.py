"""Beat's state in a SQLite file (the broker's, or with RabbitMQ the result backend's).

The tables are in ``beat.store``'s docstring. Every change is one ``BEGIN IMMEDIATE``
transaction, so a lease check and the write it guards are atomic across processes; the
lease's expiry is this machine's clock, which every process sharing the file reads.
"""

from __future__ import annotations

import time

from celeriac.beat.store import BeatStore, LeaseHolder, RunState
from celeriac.sqlite_db import Database, PollPolicy, Schema

SCHEMA = Schema("beat", 1, (
    """CREATE TABLE IF NOT EXISTS beat_lease (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        holder TEXT,
        token INTEGER NOT NULL,
        expires REAL NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS beat_state (entry TEXT PRIMARY KEY, data BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS beat_entries (name TEXT PRIMARY KEY, data BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS beat_paused (name TEXT PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS beat_version (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
    )""",
))
POLL = PollPolicy(first=0.05, active_for=1.0, maximum=0.25)  # nothing waits on it


class SQLiteStore(BeatStore):
    def __init__(self, url: str, error: type[Exception]) -> None:
        self._db = Database(url, SCHEMA, POLL, error)
        self.where = f"SQLite {self._db.path}"

    def acquire(self, holder: str, ttl: float) -> int | None:
        now = time.time()
        with self._db.write() as conn:
            row = conn.execute("SELECT holder, token, expires FROM beat_lease").fetchone()
            if row is None:
                token = 1
            elif row[0] == holder and row[2] > now:
                token = row[1]  # ours: extend it
            elif row[0] is not None and row[2] > now:
                return None  # another holder's, still running
            else:
                token = row[1] + 1  # free, or run out: a new leader, a new token
            conn.execute("INSERT OR REPLACE INTO beat_lease VALUES (1, ?, ?, ?)",
                         (holder, token, now + ttl))
            return int(token)

    def release(self, holder: str, token: int) -> None:
        with self._db.write() as conn:
            conn.execute("UPDATE beat_lease SET holder = NULL, expires = 0 "
                         "WHERE holder = ? AND token = ?", (holder, token))

    def leader(self) -> LeaseHolder | None:
        with self._db.read() as conn:
            row = conn.execute("SELECT holder, token FROM beat_lease WHERE expires > ?",
                               (time.time(),)).fetchone()
        return None if row is None or row[0] is None else LeaseHolder(row[0], row[1])

    def states(self) -> dict[str, RunState]:
        with self._db.read() as conn:
            rows = conn.execute("SELECT entry, data FROM beat_state").fetchall()
        return {entry: RunState.from_json(data) for entry, data in rows}

    def swap(self, entry: str, expected: RunState | None, new: RunState | None,
             lease: tuple[str, int] | None, *, running: bool = False,
             dynamic: bool = False) -> bool:
        with self._db.write() as conn:
            if lease is not None:
                held = conn.execute(
                    "SELECT 1 FROM beat_lease WHERE holder = ? AND token = ? AND expires > ?",
                    (lease[0], lease[1], time.time())).fetchone()
                if held is None:
                    return False
            if running and conn.execute("SELECT 1 FROM beat_paused WHERE name = ?",
                                        (entry,)).fetchone() is not None:
                return False
            if dynamic and conn.execute("SELECT 1 FROM beat_entries WHERE name = ?",
                                        (entry,)).fetchone() is None:
                return False
            row = conn.execute("SELECT data FROM beat_state WHERE entry = ?",
                               (entry,)).fetchone()
            current = None if row is None else bytes(row[0])
            if current != (None if expected is None else expected.to_json()):
                return False
            if new is None:
                conn.execute("DELETE FROM beat_state WHERE entry = ?", (entry,))
            else:
                conn.execute("INSERT OR REPLACE INTO beat_state VALUES (?, ?)",
                             (entry, new.to_json()))
            return True

    def version(self) -> int:
        with self._db.read() as conn:
            row = conn.execute("SELECT version FROM beat_version").fetchone()
        return 0 if row is None else int(row[0])

    def dynamic_entries(self) -> dict[str, bytes]:
        with self._db.read() as conn:
            rows = conn.execute("SELECT name, data FROM beat_entries").fetchall()
        return {name: bytes(data) for name, data in rows}

    def paused(self) -> set[str]:
        with self._db.read() as conn:
            return {name for (name,) in conn.execute("SELECT name FROM beat_paused")}

    _BUMP = ("INSERT INTO beat_version VALUES (1, 1) "
             "ON CONFLICT (id) DO UPDATE SET version = version + 1")

    def put_entry(self, name: str, data: bytes) -> None:
        with self._db.write() as conn:
            conn.execute("INSERT OR REPLACE INTO beat_entries VALUES (?, ?)", (name, data))
            conn.execute(self._BUMP)

    def remove_entry(self, name: str) -> bool:
        with self._db.write() as conn:
            found = conn.execute("DELETE FROM beat_entries WHERE name = ?",
                                 (name,)).rowcount > 0
            conn.execute("DELETE FROM beat_paused WHERE name = ?", (name,))
            conn.execute("DELETE FROM beat_state WHERE entry = ?", (name,))
            conn.execute(self._BUMP)
        return found

    def set_paused(self, name: str, paused: bool) -> None:
        with self._db.write() as conn:
            if paused:
                conn.execute("INSERT OR IGNORE INTO beat_paused VALUES (?)", (name,))
            else:
                conn.execute("DELETE FROM beat_paused WHERE name = ?", (name,))
            conn.execute(self._BUMP)

    def close(self) -> None:
        self._db.close()
