"""The task history on a Redis server: the broker's (under its key prefix) or the one
``dashboard_history_url`` names.

Key layout (``P`` is the key prefix, ``celeriac:`` by default, then ``dashboard:``)::

    P t:<id>              HASH  j: the record (JSON), r: its revision (1, 2, ...),
                                f: the fields searches filter and sort on (JSON)
    P time                ZSET  task id -> updated_at: every task, the trim's order
    P name:<name>         ZSET  task id -> updated_at   (one per task name,
    P state:<state>       ZSET  task id -> updated_at    state, queue and worker:
    P queue:<queue>       ZSET  task id -> updated_at    the exact filters)
    P worker:<hostname>   ZSET  task id -> updated_at
    P root:<root id>      ZSET  task id -> received_at (or updated_at): the tasks of a
                                workflow other than its root
    P tp:<hour>           HASH  "<grain>:<state>" -> tasks finished in that GRAIN of
                                the hour in that state (throughput; expires after ttl)
    P tmp:<random>        ZSET  an intersection of filters, for one search (10 s TTL)

Writing: a batch is read (one pipeline), merged in Python (``history.merge``: one rule
for every store) and written by one Lua script that writes each record only if its
revision is still the one read (a compare-and-set), moving it between index sets. A
record another dashboard wrote in between is read and merged again (a few rounds at
most: the merge is order-free, so whichever dashboard writes last writes the union of
what both saw), so two dashboards applying the same stream converge without WATCH.
The throughput counts change in the same script, only with a record written, so a task
is counted once however often its events are applied.

Size: about 2 KB a task (a record and its five index entries), so some 200 MB on the
broker's server at the default ``dashboard_history_max_tasks`` of 100,000.

Searching: an id is one read. The exact filters pick their index set (several are
intersected into a short-lived key), the time range is its score range, and the
default order (``updated_at``) is the set's order: paging happens on the server. The
text filter and the other sorts are applied in Python, to the newest
``CANDIDATES_MAX`` tasks the exact filters and time range select, so such a search sees
only those (and its total counts only them); it reads their ``f`` fields (a quarter of
a record or less: no timeline, no traceback) in one script call, then the page's
records.

Trimming removes by the time index (older than the ttl, beyond ``max_tasks``), each
record with a compare-and-set as well, so that a record just updated is not removed
half-way.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import orjson

from celeriac.brokers.redis_connection import LoopClients, RedisSettings, Script, command
from celeriac.brokers.redis_failures import translate_errors
from celeriac.dashboard.history import (
    GRAIN,
    STATES,
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

CANDIDATES_MAX = 5_000  # records a text search or a non-time sort looks at (newest)
CHUNK = 500  # records per script call or pipeline: keeps each one short on the server
ROUNDS = 8  # compare-and-set rounds before a batch gives up (others keep writing)
TRIM_ROUNDS = 400  # chunks one trim removes at most (200,000 records)
TMP_TTL_MS = 10_000
INDEXED = ("name", "state", "queue", "worker")

# ARGV: the prefix, the throughput counts' lifetime (ms), then per record: id, expected
# revision ("" for none), JSON, facets, n, n index keys to leave, m, m (key, score)
# pairs to join, c, c (hash, field, change) throughput counts. Returns the ids whose
# revision had changed (not written).
WRITE = Script("dashboard-write", """
local p = ARGV[1]
local keep = ARGV[2]
local i = 3
local conflicts = {}
while i <= #ARGV do
  local id, expected, json, facets = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key = p .. 't:' .. id
  local rev = redis.call('HGET', key, 'r')
  local ok = (rev == false and expected == '') or rev == expected
  local leave = tonumber(ARGV[i + 4])
  i = i + 5
  if ok then
    for k = i, i + leave - 1 do redis.call('ZREM', ARGV[k], id) end
  end
  i = i + leave
  local join = tonumber(ARGV[i])
  i = i + 1
  if ok then
    for k = i, i + 2 * join - 1, 2 do redis.call('ZADD', ARGV[k], ARGV[k + 1], id) end
    redis.call('HSET', key, 'j', json, 'f', facets, 'r', (tonumber(rev) or 0) + 1)
  else
    conflicts[#conflicts + 1] = id
  end
  i = i + 2 * join
  local counts = tonumber(ARGV[i])
  i = i + 1
  if ok then
    for k = i, i + 3 * counts - 1, 3 do
      redis.call('HINCRBY', ARGV[k], ARGV[k + 1], ARGV[k + 2])
      redis.call('PEXPIRE', ARGV[k], keep)
    end
  end
  i = i + 3 * counts
end
return conflicts
""")

# ARGV: the prefix, then per record: id, expected revision ("" for a record already
# gone: its index entries only), n, n index keys. Returns how many records it removed.
REMOVE = Script("dashboard-remove", """
local p = ARGV[1]
local i = 2
local removed = 0
while i <= #ARGV do
  local id, expected = ARGV[i], ARGV[i + 1]
  local key = p .. 't:' .. id
  local rev = redis.call('HGET', key, 'r')
  local n = tonumber(ARGV[i + 2])
  i = i + 3
  if (rev == false and expected == '') or rev == expected then
    for k = i, i + n - 1 do redis.call('ZREM', ARGV[k], id) end
    if rev ~= false then
      redis.call('DEL', key)
      removed = removed + 1
    end
  end
  i = i + n
end
return removed
""")


# KEYS: an index set; ARGV: the prefix, max score, min score, count. The newest
# ``count`` ids of the set within the scores, each followed by its search fields ("" for
# a record trimmed meanwhile): one call, where a pipeline of thousands of HGETs costs
# more to pack and parse on the client than the server spends on it.
CANDIDATES = Script("dashboard-candidates", """
local ids = redis.call('ZRANGE', KEYS[1], ARGV[2], ARGV[3], 'BYSCORE', 'REV', 'LIMIT', 0,
                       ARGV[4])
local found = {}
for _, id in ipairs(ids) do
  found[#found + 1] = id
  found[#found + 1] = redis.call('HGET', ARGV[1] .. 't:' .. id, 'f') or ''
end
return found
""")


class RedisHistory(HistoryStore):
    """The history on the Redis server of ``settings``, under its key prefix."""

    def __init__(self, settings: RedisSettings, max_tasks: int = 100_000,
                 ttl: float = 7 * 24 * 3600.0) -> None:
        super().__init__(max_tasks, ttl)
        self.settings = settings
        self.prefix = f"{settings.key_prefix}dashboard:"
        self._clients = LoopClients(settings.make_client)

    @property
    def where(self) -> str:
        parts = self.settings.url.split("@")[-1]  # no credentials in a log line
        return f"Redis {parts.split('://')[-1]} under {self.prefix!r}"

    def __repr__(self) -> str:
        return f"<RedisHistory {self.where}>"

    # -- keys ------------------------------------------------------------------------------

    def _task(self, task_id: str) -> str:
        return f"{self.prefix}t:{task_id}"

    def _index(self, field: str, value: str) -> str:
        return f"{self.prefix}{field}:{value}"

    def _hour(self, grain: int) -> str:
        """The throughput hash of the hour ``grain`` falls in."""
        return f"{self.prefix}tp:{grain * GRAIN // 3600}"

    @property
    def _time(self) -> str:
        return f"{self.prefix}time"

    def _memberships(self, record: TaskRecord) -> dict[str, float]:
        """The index sets ``record`` belongs in, with its score in each."""
        keys = {self._time: record.updated_at}
        for field in INDEXED:
            value = getattr(record, field)
            if value is not None:
                keys[self._index(field, value)] = record.updated_at
        if record.root_id is not None and record.root_id != record.id:
            # Only the members of a workflow: most tasks are their own root, and one set
            # per task would double the keys the history holds (family adds the root).
            keys[self._index("root", record.root_id)] = (record.received_at
                                                          or record.updated_at)
        return keys

    def _errors(self, what: str) -> AbstractContextManager[None]:
        return translate_errors(HistoryError, HistoryError, f"dashboard history {what}")

    # -- writing ---------------------------------------------------------------------------

    async def apply(self, events: Sequence[dict[str, Any]]) -> None:
        grouped: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in events:
            if is_task_event(event):
                grouped[str(event["uuid"])].append(event)
        client = await self._clients.get()
        for chunk in _chunks(list(grouped)):
            pending = chunk
            for _ in range(ROUNDS):
                pending = await self._write(client, {i: grouped[i] for i in pending})
                if not pending:
                    break
            else:
                raise HistoryError(f"dashboard history: {len(pending)} records kept "
                                   f"changing under {ROUNDS} attempts to write them")

    async def _write(self, client: Any, events: dict[str, list[dict[str, Any]]]
                     ) -> list[str]:
        """One compare-and-set round; returns the ids to merge again."""
        ids = list(events)
        with self._errors("read"):
            async with self.settings.deadline():
                pipe = client.pipeline(transaction=False)
                for task_id in ids:
                    pipe.hmget(self._task(task_id), "j", "r")
                found = await pipe.execute()
        # The counts of an hour live a ttl beyond its end (at least: set on every write).
        keep_ms = int((self.ttl + 3600) * 1000)
        args: list[str | bytes | float | int] = [self.prefix, keep_ms]
        for task_id, (data, rev) in zip(ids, found, strict=True):
            old = _record(data) if data is not None else None
            new = merge_all(old, task_id, events[task_id])
            before = self._memberships(old) if old is not None else {}
            after = self._memberships(new)
            leave = [key for key in before if key not in after]
            args += [task_id, rev if rev is not None else "",
                     orjson.dumps(new.to_json()), _facets(new), len(leave), *leave,
                     len(after)]
            for key, score in after.items():
                args += [key, repr(score)]
            changes = grain_changes(old, new)
            args.append(len(changes))
            for grain, state, change in changes:
                args += [self._hour(grain), f"{grain}:{state}", change]
        with self._errors("write"):
            async with self.settings.deadline():
                conflicts = await WRITE(client, [], args)
        return [_text(task_id) for task_id in conflicts]

    async def trim(self) -> int:
        client = await self._clients.get()
        removed = 0
        for _ in range(TRIM_ROUNDS):
            doomed = await self._doomed(client)
            if not doomed:
                break
            removed += await self._remove(client, doomed)
        return removed

    async def _doomed(self, client: Any) -> list[str]:
        """The next ``CHUNK`` (at most) tasks the ttl or ``max_tasks`` excludes."""
        run = command(client)
        with self._errors("trim"):
            async with self.settings.deadline():
                expired = await run("ZRANGEBYSCORE", self._time, "-inf",
                                    f"({time.time() - self.ttl!r}", "LIMIT", 0, CHUNK)
                room = CHUNK - len(expired)
                excess = int(await run("ZCARD", self._time)) - len(expired) \
                    - self.max_tasks
                # The oldest come first in the index: the expired ones, then these.
                oldest = await run("ZRANGE", self._time, len(expired),
                                   len(expired) + min(excess, room) - 1) \
                    if excess > 0 and room > 0 else []
        return [_text(task_id) for task_id in [*expired, *oldest]]

    async def _remove(self, client: Any, ids: list[str]) -> int:
        with self._errors("trim"):
            async with self.settings.deadline():
                pipe = client.pipeline(transaction=False)
                for task_id in ids:
                    pipe.hmget(self._task(task_id), "j", "r")
                found = await pipe.execute()
                args: list[str | bytes | float | int] = [self.prefix]
                for task_id, (data, rev) in zip(ids, found, strict=True):
                    # A record already gone leaves only its entry in the time index.
                    keys = list(self._memberships(_record(data))) if data is not None \
                        else [self._time]
                    args += [task_id, rev if rev is not None else "", len(keys), *keys]
                return int(await REMOVE(client, [], args))

    async def close(self) -> None:
        await self._clients.close()

    # -- reading ---------------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord | None:
        client = await self._clients.get()
        with self._errors("read"):
            async with self.settings.deadline():
                data = await command(client)("HGET", self._task(task_id), "j")
        return _record(data) if data is not None else None

    async def _records(self, client: Any, ids: Sequence[bytes | str]) -> list[TaskRecord]:
        """The records of ``ids``, in their order (those trimmed meanwhile left out)."""
        found: list[TaskRecord] = []
        for chunk in _chunks([_text(task_id) for task_id in ids]):
            with self._errors("read"):
                async with self.settings.deadline():
                    pipe = client.pipeline(transaction=False)
                    for task_id in chunk:
                        pipe.hget(self._task(task_id), "j")
                    found.extend(_record(data) for data in await pipe.execute()
                                 if data is not None)
        return found

    async def search(self, query: TaskQuery) -> tuple[list[TaskRecord], int]:
        client = await self._clients.get()
        if query.id is not None:
            record = await self.get(query.id)
            matched = [record] if record is not None and query.matches(record) else []
            return matched[query.offset:query.offset + query.limit], len(matched)
        filters = [self._index(f, getattr(query, f)) for f in INDEXED
                   if getattr(query, f) is not None]
        low = repr(query.since) if query.since is not None else "-inf"
        high = repr(query.until) if query.until is not None else "+inf"
        run = command(client)
        temporary = None
        with self._errors("search"):
            async with self.settings.deadline():
                if len(filters) > 1:
                    # Scores are the same updated_at in every index: keep the first's.
                    temporary = f"{self.prefix}tmp:{secrets.token_hex(8)}"
                    await run("ZINTERSTORE", temporary, len(filters), *filters,
                              "WEIGHTS", 1, *[0] * (len(filters) - 1))
                    await run("PEXPIRE", temporary, TMP_TTL_MS)
                source = temporary or (filters[0] if filters else self._time)
                try:
                    if query.sort == "updated_at" and not query.text:
                        total = int(await run("ZCOUNT", source, low, high))
                        ids = await _by_score(run, source, low, high, query.descending,
                                              query.offset, query.limit)
                        return await self._records(client, ids), total
                    found = await CANDIDATES(client, [source],
                                             [self.prefix, high, low, CANDIDATES_MAX])
                finally:
                    if temporary is not None:
                        await run("DEL", temporary)
        light = [TaskRecord(_text(task_id), *orjson.loads(facets))
                 for task_id, facets in zip(found[::2], found[1::2], strict=True) if facets]
        matched = [record for record in light if query.matches(record)]
        page = query.order(matched)[query.offset:query.offset + query.limit]
        return await self._records(client, [record.id for record in page]), len(matched)

    async def family(self, root_id: str, limit: int = 200) -> list[TaskRecord]:
        client = await self._clients.get()
        with self._errors("read"):
            async with self.settings.deadline():
                ids = await command(client)("ZRANGE", self._index("root", root_id), 0,
                                            limit - 1)
        members = await self._records(client, [root_id, *ids])
        members = [r for r in members if r.root_id == root_id]
        members.sort(key=lambda r: (r.received_at or r.updated_at, r.id))
        return members[:limit]

    async def counts(self) -> dict[str, int]:
        client = await self._clients.get()
        with self._errors("read"):
            async with self.settings.deadline():
                pipe = client.pipeline(transaction=False)
                for state in STATES:
                    pipe.zcard(self._index("state", state))
                found = await pipe.execute()
        return {state: int(n) for state, n in zip(STATES, found, strict=True) if n}

    async def throughput(self, since: float, step: float) -> list[tuple[float, int, int]]:
        now = time.time()
        # Hours older than the ttl have expired: not asked for.
        first, last = grain_range(max(since, now - self.ttl - 3600), now)
        hours = range(first * GRAIN // 3600, last * GRAIN // 3600 + 1)
        client = await self._clients.get()
        with self._errors("read"):
            async with self.settings.deadline():
                pipe = client.pipeline(transaction=False)
                for hour in hours:
                    pipe.hgetall(f"{self.prefix}tp:{hour}")
                found = await pipe.execute()
        grains = []
        for counts in found:
            for field, n in counts.items():
                grain, _, state = _text(field).partition(":")
                grains.append((int(grain), state, int(n)))
        return throughput_buckets(since, step, now, grains)


async def _by_score(run: Any, key: str, low: str, high: str, descending: bool,
                    offset: int, limit: int) -> list[bytes]:
    if descending:
        ids: list[bytes] = await run("ZRANGE", key, high, low, "BYSCORE", "REV",
                                     "LIMIT", offset, limit)
    else:
        ids = await run("ZRANGE", key, low, high, "BYSCORE", "LIMIT", offset, limit)
    return ids


# The fields of TaskRecord a search filters and sorts on, in the dataclass's order
# after ``id`` (so that TaskRecord(id, *facets) rebuilds them); checked at import.
FACETS = ("name", "state", "queue", "worker", "args", "kwargs", "retries", "eta",
          "expires", "sent_at", "received_at", "started_at", "finished_at", "updated_at",
          "runtime")
assert [f.name for f in dataclasses.fields(TaskRecord)][1:len(FACETS) + 1] == list(FACETS)


def _facets(record: TaskRecord) -> bytes:
    return orjson.dumps([getattr(record, name) for name in FACETS])


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start:start + CHUNK]


def _record(data: bytes | str) -> TaskRecord:
    return TaskRecord.from_json(orjson.loads(data))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
