"""The task history as a table in an SQLite file: the ``sqlite://`` broker's own file
(so the history lives and is backed up with the queues), or a file of its own.

The file is opened as the broker and result backend open theirs (``celeriac.sqlite_db``:
WAL mode, a connection per thread, the schema made and versioned once), so several
dashboard processes, the workers and the producers share it safely. A batch of events
is one write transaction (``BEGIN IMMEDIATE``): the records it touches are read, merged
(``history.merge``) and written back while the write lock is held, so two dashboards
applying the same events serialise and converge, and the lock is held about a
millisecond per batch rather than per event, leaving the broker's own writers room.

Each row keeps the whole record as JSON (``data``) plus the columns searches filter and
sort on, indexed: the time index alone serves the default page, the others a filter or
a sort. The text filter (``LIKE``) reads every row the other filters leave: about 0.25 s
at 100,000 tasks. Throughput is a small table of counts per ``GRAIN`` seconds and state,
changed in the same transaction as the records (``history.grain_changes``), so it is
exact, cheap to read, and outlives the trimmed records.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

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
from celeriac.sqlite_db import Database, PollPolicy, Schema, placeholders

SCHEMA = Schema("dashboard", 1, (
    """CREATE TABLE IF NOT EXISTS dashboard_tasks (
        id TEXT PRIMARY KEY,
        name TEXT,
        state TEXT NOT NULL,
        queue TEXT,
        worker TEXT,
        root_id TEXT,
        args TEXT,
        kwargs TEXT,
        received_at REAL,
        started_at REAL,
        finished_at REAL,
        updated_at REAL NOT NULL,
        runtime REAL,
        data BLOB NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS dashboard_tasks_updated ON dashboard_tasks (updated_at)",
    "CREATE INDEX IF NOT EXISTS dashboard_tasks_name ON dashboard_tasks (name, updated_at)",
    "CREATE INDEX IF NOT EXISTS dashboard_tasks_state ON dashboard_tasks "
    "(state, updated_at)",
    "CREATE INDEX IF NOT EXISTS dashboard_tasks_queue ON dashboard_tasks "
    "(queue, updated_at)",
    "CREATE INDEX IF NOT EXISTS dashboard_tasks_worker ON dashboard_tasks "
    "(worker, updated_at)",
    "CREATE INDEX IF NOT EXISTS dashboard_tasks_root ON dashboard_tasks (root_id)",
    # The other sorts' pages, read in index order rather than sorted whole.
    "CREATE INDEX IF NOT EXISTS dashboard_tasks_received ON dashboard_tasks (received_at)",
    "CREATE INDEX IF NOT EXISTS dashboard_tasks_started ON dashboard_tasks (started_at)",
    "CREATE INDEX IF NOT EXISTS dashboard_tasks_runtime ON dashboard_tasks (runtime)",
    # Throughput: tasks finished per GRAIN seconds and state (history.grain_changes).
    """CREATE TABLE IF NOT EXISTS dashboard_throughput (
        grain INTEGER NOT NULL,
        state TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (grain, state)
    ) WITHOUT ROWID""",
))
COUNT = ("INSERT INTO dashboard_throughput VALUES (?, ?, ?) ON CONFLICT (grain, state) "
         "DO UPDATE SET count = count + excluded.count")

# Nobody waits on this table for change (the ingest follows the events bus), so the
# poller the Database offers is never started; the policy is only required.
POLL = PollPolicy(first=0.05, active_for=1.0, maximum=1.0)

COLUMNS = ("id", "name", "state", "queue", "worker", "root_id", "args", "kwargs",
           "received_at", "started_at", "finished_at", "updated_at", "runtime")
UPSERT = (f"INSERT INTO dashboard_tasks ({', '.join(COLUMNS)}, data) "
          f"VALUES ({placeholders((*COLUMNS, 'data'))}) ON CONFLICT (id) DO UPDATE SET "
          + ", ".join(f"{c} = excluded.{c}" for c in (*COLUMNS[1:], "data")))

TRIM_CHUNK = 1_000  # rows one trim transaction removes at most
CHUNK = 500  # ids per ``IN (...)`` (SQLite allows 32766 parameters; this keeps it small)


class SQLiteHistory(HistoryStore):
    """The history in the SQLite file of ``url`` (``sqlite:///path``)."""

    def __init__(self, url: str, max_tasks: int = 100_000,
                 ttl: float = 7 * 24 * 3600.0) -> None:
        super().__init__(max_tasks, ttl)
        self._db = Database(url, SCHEMA, POLL, HistoryError)

    @property
    def path(self) -> str:
        return self._db.path

    @property
    def where(self) -> str:
        return f"the SQLite file {self._db.path}"

    def __repr__(self) -> str:
        return f"<SQLiteHistory {self._db.path}>"

    async def apply(self, events: Sequence[dict[str, Any]]) -> None:
        grouped: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in events:
            if is_task_event(event):
                grouped[str(event["uuid"])].append(event)
        if not grouped:
            return
        with self._db.write() as conn:
            known = {record.id: record for record in _load(conn, list(grouped))}
            rows = []
            grains: Counter[tuple[int, str]] = Counter()
            for task_id, task_events in grouped.items():
                old = known.get(task_id)
                new = merge_all(old, task_id, task_events)
                rows.append(_row(new))
                for grain, state, change in grain_changes(old, new):
                    grains[(grain, state)] += change
            conn.executemany(UPSERT, rows)
            conn.executemany(COUNT, [(grain, state, n) for (grain, state), n in
                                     grains.items() if n])

    async def get(self, task_id: str) -> TaskRecord | None:
        with self._db.read() as conn:
            found = _load(conn, [task_id])
        return found[0] if found else None

    async def search(self, query: TaskQuery) -> tuple[list[TaskRecord], int]:
        return await asyncio.to_thread(self._search, query)

    def _search(self, query: TaskQuery) -> tuple[list[TaskRecord], int]:
        where, params = history_sql.where(query, "?", "LIKE")  # (ASCII case-insensitive)
        column = query.sort  # one of SORTS (TaskQuery checked it): a column name
        # Missing values last both ways, then the value, then the id, as TaskQuery.order.
        # SQLite puts NULLs last when descending: the index (whose entries end with the
        # id) gives that order as it is.
        order = f"{column} DESC, id DESC" if query.descending \
            else f"{column} ASC NULLS LAST, id ASC"
        with self._db.read(snapshot=True) as conn:
            total = conn.execute(f"SELECT COUNT(*) FROM dashboard_tasks{where}",
                                 params).fetchone()[0]
            rows = conn.execute(f"SELECT data FROM dashboard_tasks{where} ORDER BY {order} "
                                "LIMIT ? OFFSET ?",
                                (*params, query.limit, query.offset)).fetchall()
        return [_record(data) for data, in rows], int(total)

    async def family(self, root_id: str, limit: int = 200) -> list[TaskRecord]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT data FROM dashboard_tasks WHERE root_id = ? "
                "ORDER BY COALESCE(received_at, updated_at), id LIMIT ?",
                (root_id, limit)).fetchall()
        return [_record(data) for data, in rows]

    async def counts(self) -> dict[str, int]:
        return await asyncio.to_thread(self._counts)

    def _counts(self) -> dict[str, int]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT state, COUNT(*) FROM dashboard_tasks GROUP BY state").fetchall()
        return {str(state): int(count) for state, count in rows}

    async def throughput(self, since: float, step: float) -> list[tuple[float, int, int]]:
        now = time.time()
        first, last = grain_range(since, now)
        with self._db.read() as conn:
            rows = conn.execute("SELECT grain, state, count FROM dashboard_throughput "
                                "WHERE grain BETWEEN ? AND ?", (first, last)).fetchall()
        return throughput_buckets(since, step, now, rows)

    async def trim(self) -> int:
        return await asyncio.to_thread(self._trim)

    def _trim(self) -> int:
        # In chunks, one transaction each: the broker's writers share this file's write
        # lock, and a trim after a burst can remove tens of thousands of rows.
        cutoff = time.time() - self.ttl
        removed = 0
        while True:
            with self._db.write() as conn:
                gone = conn.execute(
                    "DELETE FROM dashboard_tasks WHERE id IN (SELECT id FROM "
                    "dashboard_tasks WHERE updated_at < ? ORDER BY updated_at LIMIT ?)",
                    (cutoff, TRIM_CHUNK)).rowcount
                if gone < TRIM_CHUNK:
                    conn.execute("DELETE FROM dashboard_throughput WHERE grain < ?",
                                 (cutoff // GRAIN,))
                    excess = conn.execute("SELECT COUNT(*) FROM dashboard_tasks"
                                          ).fetchone()[0] - self.max_tasks
                    if excess > 0:
                        gone += conn.execute(
                            "DELETE FROM dashboard_tasks WHERE id IN (SELECT id FROM "
                            "dashboard_tasks ORDER BY updated_at, id LIMIT ?)",
                            (min(excess, TRIM_CHUNK - gone),)).rowcount
            removed += gone
            if gone < TRIM_CHUNK:
                return removed

    async def close(self) -> None:
        self._db.close()


def _load(conn: sqlite3.Connection, ids: list[str]) -> list[TaskRecord]:
    found: list[TaskRecord] = []
    for chunk in _chunks(ids):
        rows = conn.execute(f"SELECT data FROM dashboard_tasks WHERE id IN "
                            f"({placeholders(chunk)})", chunk).fetchall()
        found.extend(_record(data) for data, in rows)
    return found


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start:start + CHUNK]


def _row(record: TaskRecord) -> tuple[Any, ...]:
    return (*(getattr(record, column) for column in COLUMNS),
            orjson.dumps(record.to_json()))


def _record(data: bytes) -> TaskRecord:
    return TaskRecord.from_json(orjson.loads(data))

