"""Beat's state in a PostgreSQL schema (the broker's, or with RabbitMQ the result
backend's), on blocking connections of its own: beat runs on a thread of its own.

Tables (component ``beat``, version 1), beside the broker's or backend's::

    celeriac_beat_lease    id = 1, holder, token, expires (the server's Unix time)
    celeriac_beat_state    entry PRIMARY KEY, data (RunState as JSON)
    celeriac_beat_entries  name PRIMARY KEY, data (Entry as JSON)
    celeriac_beat_paused   name PRIMARY KEY
    celeriac_beat_version  id = 1, version

The lease runs out by the server's clock, whatever the beat processes' clocks say.
Taking it is one ``UPDATE`` of its row (the row lock makes two takers take turns). A
guarded compare-and-set is one transaction that reads the lease row ``FOR SHARE`` (a
new leader's ``UPDATE`` waits until it commits, so a leader that lost its lease can
record nothing after), the version row ``FOR SHARE`` when the entry's paused or stored
state matters (every entry change updates that row first, so a ``pause`` or ``remove``
that returned is seen), then the state row ``FOR UPDATE``. Locks are always taken in
that order (lease, version, state), so two writers never wait on each other in a cycle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg

from celeriac.beat.store import BeatStore, LeaseHolder, RunState
from celeriac.brokers.postgresql_connection import (
    LoopPools,
    PgSettings,
    create_schema_blocking,
    qualify,
)
from celeriac.errors import BackendError, BrokerError, BrokerUnavailable, CeleriacError
from celeriac.urls import safe_url

SCHEMA_VERSION = 1
NOW = "extract(epoch FROM clock_timestamp())"
CREATE = (
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_beat_lease (
        id integer PRIMARY KEY CHECK (id = 1),
        holder text,
        token bigint NOT NULL,
        expires double precision NOT NULL
    )""",
    "INSERT INTO {s}.celeriac_beat_lease VALUES (1, NULL, 0, 0) ON CONFLICT DO NOTHING",
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_beat_state (
        entry text PRIMARY KEY,
        data bytea NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_beat_entries (
        name text PRIMARY KEY,
        data bytea NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS {s}.celeriac_beat_paused (name text PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_beat_version (
        id integer PRIMARY KEY CHECK (id = 1),
        version bigint NOT NULL
    )""",
    "INSERT INTO {s}.celeriac_beat_version VALUES (1, 0) ON CONFLICT DO NOTHING",
)
# ARGV: holder, ttl. Ours and running: extend, same token; free or run out: a new token.
ACQUIRE = f"""
UPDATE {{s}}.celeriac_beat_lease
   SET token = CASE WHEN holder = %(holder)s AND expires > {NOW} THEN token ELSE token + 1 END,
       holder = %(holder)s, expires = {NOW} + %(ttl)s
 WHERE id = 1 AND (holder IS NULL OR holder = %(holder)s OR expires <= {NOW})
RETURNING token
"""
RELEASE = """
UPDATE {s}.celeriac_beat_lease SET holder = NULL, expires = 0
 WHERE id = 1 AND holder = %s AND token = %s
"""
LEADER = f"""
SELECT holder, token FROM {{s}}.celeriac_beat_lease
 WHERE id = 1 AND holder IS NOT NULL AND expires > {NOW}
"""
LEASE_HELD = f"""
SELECT 1 FROM {{s}}.celeriac_beat_lease
 WHERE id = 1 AND holder = %s AND token = %s AND expires > {NOW} FOR SHARE
"""
VERSION_LOCK = "SELECT version FROM {s}.celeriac_beat_version WHERE id = 1 FOR SHARE"
IS_PAUSED = "SELECT 1 FROM {s}.celeriac_beat_paused WHERE name = %s"
IS_STORED = "SELECT 1 FROM {s}.celeriac_beat_entries WHERE name = %s"
STATE = "SELECT data FROM {s}.celeriac_beat_state WHERE entry = %s FOR UPDATE"
STATE_ADD = """
INSERT INTO {s}.celeriac_beat_state (entry, data) VALUES (%s, %s) ON CONFLICT DO NOTHING
"""
STATE_SET = "UPDATE {s}.celeriac_beat_state SET data = %s WHERE entry = %s"
STATE_DROP = "DELETE FROM {s}.celeriac_beat_state WHERE entry = %s"
STATES = "SELECT entry, data FROM {s}.celeriac_beat_state"
VERSION = "SELECT version FROM {s}.celeriac_beat_version WHERE id = 1"
BUMP = "UPDATE {s}.celeriac_beat_version SET version = version + 1 WHERE id = 1"
ENTRIES = "SELECT name, data FROM {s}.celeriac_beat_entries"
PAUSED = "SELECT name FROM {s}.celeriac_beat_paused"
PUT = """
INSERT INTO {s}.celeriac_beat_entries (name, data) VALUES (%s, %s)
ON CONFLICT (name) DO UPDATE SET data = excluded.data
"""
DROP_ENTRY = "DELETE FROM {s}.celeriac_beat_entries WHERE name = %s"
PAUSE = "INSERT INTO {s}.celeriac_beat_paused (name) VALUES (%s) ON CONFLICT DO NOTHING"
RESUME = "DELETE FROM {s}.celeriac_beat_paused WHERE name = %s"


class PostgreSQLStore(BeatStore):
    """Beat's tables in the schema of a ``postgresql://`` broker or backend."""

    def __init__(self, settings: PgSettings, error: type[CeleriacError]) -> None:
        # The broker's errors on the broker's server, the backend's on the backend's.
        self._error = BrokerError if issubclass(error, BrokerError) else BackendError
        unavailable = BrokerUnavailable if self._error is BrokerError else BackendError
        self.settings = settings
        self._pools = LoopPools(settings, unavailable)
        self._ready = False
        self.where = (f"PostgreSQL tables {settings.schema}.celeriac_beat_* at "
                      f"{safe_url(settings.url)}")

    def _q(self, statement: str) -> str:
        return qualify(statement, self.settings.schema)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._pools.blocking() as conn:
            try:
                if not self._ready:
                    create_schema_blocking(conn, self.settings, "beat", SCHEMA_VERSION, CREATE,
                                           self._error)
                    self._ready = True
                yield conn
            except psycopg.OperationalError:
                raise  # the pool's: the server is unavailable
            except psycopg.Error as exc:
                raise self.settings.unavailable(exc, self._error) from exc

    def _rows(self, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            cursor = conn.execute(self._q(statement), params)
            return cursor.fetchall() if cursor.description is not None else []

    # -- the lease ----------------------------------------------------------------------

    def acquire(self, holder: str, ttl: float) -> int | None:
        rows = self._rows(ACQUIRE, {"holder": holder, "ttl": ttl})
        return int(rows[0][0]) if rows else None

    def release(self, holder: str, token: int) -> None:
        self._rows(RELEASE, (holder, token))

    def leader(self) -> LeaseHolder | None:
        rows = self._rows(LEADER)
        return LeaseHolder(rows[0][0], int(rows[0][1])) if rows else None

    # -- run states -----------------------------------------------------------------------

    def states(self) -> dict[str, RunState]:
        return {entry: RunState.from_json(bytes(data)) for entry, data in self._rows(STATES)}

    def swap(self, entry: str, expected: RunState | None, new: RunState | None,
             lease: tuple[str, int] | None, *, running: bool = False,
             dynamic: bool = False) -> bool:
        q = self._q
        with self._connection() as conn, conn.transaction():
            if lease is not None and \
                    conn.execute(q(LEASE_HELD), lease).fetchone() is None:
                return False
            if running or dynamic:
                conn.execute(q(VERSION_LOCK))
            if running and conn.execute(q(IS_PAUSED), (entry,)).fetchone() is not None:
                return False
            if dynamic and conn.execute(q(IS_STORED), (entry,)).fetchone() is None:
                return False
            row = conn.execute(q(STATE), (entry,)).fetchone()
            current = None if row is None else bytes(row[0])
            if current != (None if expected is None else expected.to_json()):
                return False
            if new is None:
                conn.execute(q(STATE_DROP), (entry,))
            elif current is None:  # another writer may insert it first: then it is theirs
                return conn.execute(q(STATE_ADD), (entry, new.to_json())).rowcount > 0
            else:
                conn.execute(q(STATE_SET), (new.to_json(), entry))
            return True

    # -- dynamic entries ------------------------------------------------------------------

    def version(self) -> int:
        rows = self._rows(VERSION)
        return int(rows[0][0]) if rows else 0

    def dynamic_entries(self) -> dict[str, bytes]:
        return {name: bytes(data) for name, data in self._rows(ENTRIES)}

    def paused(self) -> set[str]:
        return {name for (name,) in self._rows(PAUSED)}

    def _change(self, *statements: tuple[str, tuple[Any, ...]]) -> int:
        """Bump the version (first: its row lock orders changes against ``swap``), run
        ``statements``; the first one's row count."""
        with self._connection() as conn, conn.transaction():
            conn.execute(self._q(BUMP))
            counts = [conn.execute(self._q(statement), params).rowcount
                      for statement, params in statements]
        return counts[0]

    def put_entry(self, name: str, data: bytes) -> None:
        self._change((PUT, (name, data)))

    def remove_entry(self, name: str) -> bool:
        return self._change((DROP_ENTRY, (name,)), (RESUME, (name,)),
                            (STATE_DROP, (name,))) > 0

    def set_paused(self, name: str, paused: bool) -> None:
        self._change((PAUSE if paused else RESUME, (name,)))

    def close(self) -> None:
        self._pools.close_blocking()
