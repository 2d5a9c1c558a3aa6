"""The task history in this process's memory: for the ``memory://`` broker (whose tasks
live in this process too, so a history that outlived it would describe nothing) and for
tests. Searches scan every record, which is fine at ``max_tasks`` of the order of 10^5.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from celeriac.dashboard.history import (
    GRAIN,
    HistoryStore,
    TaskQuery,
    TaskRecord,
    grain_changes,
    is_task_event,
    merge_all,
    throughput_buckets,
)


class MemoryHistory(HistoryStore):
    """Records in a dict, guarded by a lock (the ingest thread writes, the server reads)."""

    def __init__(self, max_tasks: int = 100_000, ttl: float = 7 * 24 * 3600.0) -> None:
        super().__init__(max_tasks, ttl)
        self._lock = threading.Lock()
        self._records: dict[str, TaskRecord] = {}
        self._grains: Counter[tuple[int, str]] = Counter()  # throughput counts

    @property
    def where(self) -> str:
        return "in memory"

    async def apply(self, events: Sequence[dict[str, Any]]) -> None:
        grouped: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in events:
            if is_task_event(event):
                grouped[str(event["uuid"])].append(event)
        with self._lock:
            for task_id, task_events in grouped.items():
                old = self._records.get(task_id)
                new = self._records[task_id] = merge_all(old, task_id, task_events)
                for grain, state, change in grain_changes(old, new):
                    self._grains[(grain, state)] += change
                    if not self._grains[(grain, state)]:
                        del self._grains[(grain, state)]

    async def get(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            record = self._records.get(task_id)
            return None if record is None else record.copy()

    async def search(self, query: TaskQuery) -> tuple[list[TaskRecord], int]:
        with self._lock:
            if query.id is not None:
                found = self._records.get(query.id)
                candidates = [found] if found is not None else []
            else:
                candidates = list(self._records.values())
            matched = [record for record in candidates if query.matches(record)]
            page = query.order(matched)[query.offset:query.offset + query.limit]
            return [record.copy() for record in page], len(matched)

    async def family(self, root_id: str, limit: int = 200) -> list[TaskRecord]:
        with self._lock:
            members = [r for r in self._records.values() if r.root_id == root_id]
        members.sort(key=lambda r: (r.received_at or r.updated_at, r.id))
        return [record.copy() for record in members[:limit]]

    async def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(Counter(record.state for record in self._records.values()))

    async def throughput(self, since: float, step: float) -> list[tuple[float, int, int]]:
        with self._lock:
            grains = [(grain, state, n) for (grain, state), n in self._grains.items()]
        return throughput_buckets(since, step, time.time(), grains)

    async def trim(self) -> int:
        cutoff = time.time() - self.ttl
        with self._lock:
            old = [task_id for task_id, r in self._records.items() if r.updated_at < cutoff]
            for task_id in old:
                del self._records[task_id]
            for key in [key for key in self._grains if key[0] * GRAIN < cutoff]:
                del self._grains[key]
            excess = len(self._records) - self.max_tasks
            if excess > 0:
                oldest = sorted(self._records.values(), key=lambda r: (r.updated_at, r.id))
                for record in oldest[:excess]:
                    del self._records[record.id]
            return len(old) + max(excess, 0)

    async def close(self) -> None:
        """Nothing to release (the records stay, for a store object reused in tests)."""

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
