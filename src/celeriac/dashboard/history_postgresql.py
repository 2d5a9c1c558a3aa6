"""The task history as tables in a PostgreSQL schema: the ``postgresql://`` broker's (or,
under RabbitMQ, the result backend's), or the one ``dashboard_history_url`` names.

Tables (component ``dashboard``, version 1), beside the broker's::

    celeriac_dashboard_tasks       id PRIMARY KEY, the columns searches filter and sort
                                   on (indexed), data (the whole record as JSON)
    celeriac_dashboard_throughput  (grain, state) PRIMARY KEY, count

A batch of events is one transaction: it makes sure a row exists for each of its tasks
(``INSERT ... ON CONFLICT DO NOTHING``, ids in order), reads them ``FOR UPDATE`` (so
two dashboards applying the same events take turns on each task), merges them
(``history.merge``: one rule for every store) and writes them back with the throughput
counts they change (``history.grain_changes``), so a task is counted once however often
its events are applied. A deadlock between two dashboards' batches (PostgreSQL picks
one to fail) runs that batch again.

Searching is SQL: the exact filters and the time range on indexed columns, the text
filter with ``ILIKE`` on args and kwargs, the sorts with ``COLLATE "C"`` so that text
sorts as ``TaskQuery.order`` sorts it (by code point, not by the database's locale).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import psycopg
from psycopg import errors as pg_errors

from celeriac.brokers.postgresql_connection import LoopPools, PgSettings, create_schema, qualify
from celeriac.dashboard import history_sql
from celeriac.dashboard.history import (
    GRAIN,
    HistoryError,
    HistoryStore,
    TaskQuery,
    TaskRecord,
    grain_changes,
    grain_range,
    is_task_event,
    merge_all,
    throughput_buckets,
)
from celeriac.urls import safe_url

SCHEMA_VERSION = 1
T = "{s}.celeriac_dashboard_tasks"
CREATE = (
    f"""CREATE TABLE IF NOT EXISTS {T} (
        id text PRIMARY KEY,
        name text,
        state text NOT NULL,
        queue text,
        worker text,
        root_id text,
        args text,
        kwargs text,
        received_at double precision,
        started_at double precision,
        finished_at double precision,
        updated_at double precision NOT NULL,
        runtime double precision,
        data bytea
    )""",
    f"CREATE INDEX IF NOT EXISTS celeriac_dashboard_updated ON {T} (updated_at)",
    f"CREATE INDEX IF NOT EXISTS celeriac_dashboard_name ON {T} (name, updated_at)",
    f"CREATE INDEX IF NOT EXISTS celeriac_dashboard_state ON {T} (state, updated_at)",
    f"CREATE INDEX IF NOT EXISTS celeriac_dashboard_queue ON {T} (queue, updated_at)",
    f"CREATE INDEX IF NOT EXISTS celeriac_dashboard_worker ON {T} (worker, updated_at)",
    f"CREATE INDEX IF NOT EXISTS celeriac_dashboard_root ON {T} (root_id)",
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_dashboard_throughput (
        grain bigint NOT NULL,
        state text NOT NULL,
        count bigint NOT NULL,
        PRIMARY KEY (grain, state)
    )""",
)
COLUMNS = ("id", "name", "state", "queue", "worker", "root_id", "args", "kwargs",
           "received_at", "started_at", "finished_at", "updated_at", "runtime")
# A row for each task of a batch (data NULL until this transaction writes it: no other
# transaction ever sees such a row), then the rows, locked, in id order.
ENSURE = f"""
INSERT INTO {T} (id, state, updated_at) SELECT i, 'PENDING', 0 FROM unnest(%s::text[]) AS i
ON CONFLICT DO NOTHING
"""
LOCK = f"""
SELECT id, data FROM {T} WHERE id = ANY(%s::text[]) ORDER BY id COLLATE "C" FOR UPDATE
"""
WRITE = (f"UPDATE {T} SET " + ", ".join(f"{c} = %s" for c in COLUMNS[1:])
         + ", data = %s WHERE id = %s")
COUNT = """
INSERT INTO {s}.celeriac_dashboard_throughput AS old (grain, state, count) VALUES (%s, %s, %s)
ON CONFLICT (grain, state) DO UPDATE SET count = old.count + excluded.count
"""
GET = f"SELECT data FROM {T} WHERE id = %s AND data IS NOT NULL"
FAMILY = f"""
SELECT data FROM {T} WHERE root_id = %s AND data IS NOT NULL
 ORDER BY COALESCE(received_at, updated_at), id COLLATE "C" LIMIT %s
"""
COUNTS = f"SELECT state, count(*) FROM {T} WHERE data IS NOT NULL GROUP BY state"
THROUGHPUT = """
SELECT grain, state, count FROM {s}.celeriac_dashboard_throughput
 WHERE grain BETWEEN %s AND %s
"""
TRIM_AGED = f"""
DELETE FROM {T} WHERE id IN (SELECT id FROM {T} WHERE updated_at < %s
                              ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED)
"""
TRIM_GRAINS = "DELETE FROM {s}.celeriac_dashboard_throughput WHERE grain < %s"
TRIM_EXCESS = f"""
DELETE FROM {T} WHERE id IN (SELECT id FROM {T} ORDER BY updated_at, id COLLATE "C"
                              LIMIT greatest(0, (SELECT count(*) FROM {T}) - %s)
                              FOR UPDATE SKIP LOCKED)
"""
TRIM_CHUNK = 1_000  # rows one trim statement removes at most
TEXT_SORTS = ("name", "state")  # compared by code point, as Python compares str
ROUNDS = 5  # tries of a batch that deadlocked with another dashboard's


class PostgreSQLHistory(HistoryStore):
    """The history in the schema of ``settings`` (see the module docstring)."""

    def __init__(self, settings: PgSettings, max_tasks: int = 100_000,
                 ttl: float = 7 * 24 * 3600.0) -> None:
        super().__init__(max_tasks, ttl)
        self.settings = settings
        self._pools = LoopPools(settings, HistoryError)
        self._ready = False

    @property
    def where(self) -> str:
        return (f"the PostgreSQL tables {self.settings.schema}.celeriac_dashboard_* at "
                f"{safe_url(self.settings.url)}")

    def __repr__(self) -> str:
        return f"<PostgreSQLHistory {self.settings.schema} at {safe_url(self.settings.url)}>"

    def _q(self, statement: str) -> str:
        return qualify(statement, self.settings.schema)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self._pools.connection() as conn:
            try:
                if not self._ready:
                    await create_schema(conn, self.settings, "dashboard", SCHEMA_VERSION,
                                        CREATE, HistoryError)
                    self._ready = True
                yield conn
            except psycopg.OperationalError:
                raise  # the pool's: the server is unavailable
            except psycopg.Error as exc:
                raise self.settings.unavailable(exc, HistoryError) from exc

    async def _rows(self, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
        async with self._connection() as conn:
            cursor = await conn.execute(self._q(statement), params)
            return await cursor.fetchall()

    async def apply(self, events: Sequence[dict[str, Any]]) -> None:
        grouped: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in events:
            if is_task_event(event):
                grouped[str(event["uuid"])].append(event)
        if not grouped:
            return
        for attempt in range(ROUNDS):
            try:
                await self._apply(grouped)
                return
            except HistoryError as exc:
                deadlock = isinstance(exc.__cause__, pg_errors.DeadlockDetected)
                if not deadlock or attempt == ROUNDS - 1:
                    raise

    async def _apply(self, grouped: dict[str, list[dict[str, Any]]]) -> None:
        ids = sorted(grouped)
        async with self._connection() as conn, conn.transaction():
            await conn.execute(self._q(ENSURE), (ids,))
            cursor = await conn.execute(self._q(LOCK), (ids,))
            known = {task_id: None if data is None else _record(data)
                     for task_id, data in await cursor.fetchall()}
            rows = []
            grains: Counter[tuple[int, str]] = Counter()
            for task_id in ids:
                old = known.get(task_id)
                new = merge_all(old, task_id, grouped[task_id])
                rows.append(_row(new))
                for grain, state, change in grain_changes(old, new):
                    grains[(grain, state)] += change
            async with conn.cursor() as writer:
                await writer.executemany(self._q(WRITE), rows)
                counts = [(grain, state, n) for (grain, state), n in sorted(grains.items())
                          if n]
                if counts:
                    await writer.executemany(self._q(COUNT), counts)

    async def get(self, task_id: str) -> TaskRecord | None:
        rows = await self._rows(GET, (task_id,))
        return _record(rows[0][0]) if rows else None

    async def search(self, query: TaskQuery) -> tuple[list[TaskRecord], int]:
        where, params = history_sql.where(query, "%s", "ILIKE", always=["data IS NOT NULL"])
        column = query.sort  # one of SORTS (TaskQuery checked it): a column name
        collate = ' COLLATE "C"' if column in TEXT_SORTS else ""
        way = "DESC" if query.descending else "ASC"
        # Missing values last both ways, then the value, then the id, as TaskQuery.order.
        order = f'{column}{collate} {way} NULLS LAST, id COLLATE "C" {way}'
        async with self._connection() as conn, conn.transaction():  # one snapshot
            cursor = await conn.execute(self._q(f"SELECT count(*) FROM {T}{where}"), params)
            total = await cursor.fetchone()
            cursor = await conn.execute(
                self._q(f"SELECT data FROM {T}{where} ORDER BY {order} LIMIT %s OFFSET %s"),
                (*params, query.limit, query.offset))
            rows = await cursor.fetchall()
        return [_record(data) for data, in rows], int(total[0] if total else 0)

    async def family(self, root_id: str, limit: int = 200) -> list[TaskRecord]:
        return [_record(data) for data, in await self._rows(FAMILY, (root_id, limit))]

    async def counts(self) -> dict[str, int]:
        return {str(state): int(count) for state, count in await self._rows(COUNTS)}

    async def throughput(self, since: float, step: float) -> list[tuple[float, int, int]]:
        now = time.time()
        first, last = grain_range(since, now)
        rows = await self._rows(THROUGHPUT, (first, last))
        return throughput_buckets(since, step, now, [(int(g), str(s), int(n))
                                                     for g, s, n in rows])

    async def trim(self) -> int:
        # In chunks of a statement each: a trim after a burst can remove tens of
        # thousands of rows, and dashboards applying events wait on none of them long.
        cutoff = time.time() - self.ttl
        removed = 0
        async with self._connection() as conn:
            for statement, params in ((TRIM_AGED, (cutoff, TRIM_CHUNK)),
                                      (TRIM_EXCESS, (self.max_tasks,))):
                while True:
                    cursor = await conn.execute(self._q(statement), params)
                    removed += cursor.rowcount
                    if cursor.rowcount < TRIM_CHUNK or statement is TRIM_EXCESS:
                        break
            await conn.execute(self._q(TRIM_GRAINS), (cutoff // GRAIN,))
        return removed

    async def close(self) -> None:
        await self._pools.close()


def _row(record: TaskRecord) -> tuple[Any, ...]:
    return (*(getattr(record, column) for column in COLUMNS[1:]),
            orjson.dumps(record.to_json()), record.id)


def _record(data: bytes) -> TaskRecord:
    return TaskRecord.from_json(orjson.loads(bytes(data)))

