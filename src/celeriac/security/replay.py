"""Replay protection: which signed messages' nonces have been seen, kept on a shared server.

A signed message is valid for ``task_signing_max_age`` seconds (``security.signing``);
within that window a copy of it re-published by someone who captured it would verify.
So each worker remembers every nonce it takes, until the message's validity ends, and
refuses a nonce already seen.

Where "seen" is kept decides what it protects. In a worker process's memory it would
protect that process only: a replay fetched by the process next door, or by another
node, would run. So nonces live on a server every worker reaches, the same one unique
jobs use (``celeriac.state_home``): the broker's (SQLite file, Redis, PostgreSQL), else
under a RabbitMQ broker the result backend's (SQLite, Redis, PostgreSQL); RabbitMQ with
rpc:// results has nowhere to keep them and is refused at worker start, with what to
use instead. The memory broker keeps them in
the process (it has only one).

A nonce's entry holds who has it: the token of the worker process that fetched it
(claimed when fetched, for the whole batch with the longest validity in it), and on a
broker whose delivery count travels in the message (RabbitMQ: a header any publisher
could set) then ``done``, marked once its verdict is carried out, after the ack. On
SQLite, Redis and PostgreSQL the server keeps the count and an acked message is gone, so nothing
can come back as a redelivery after it ran, and the mark is left out (a round trip per
flush saved). At-least-once delivery means one message may legitimately arrive twice,
and those cases must not be called replays:

- a redelivery (its worker died, its lease ran out) comes with a delivery count above
  1 and finds a token: it is taken over;
- a message handed back unstarted (a warm stop, ``cancel_consumer``, the companions of
  a last-chance delivery) or requeued by its task (``Reject(requeue=True)``) has its
  claim released first, so it is new again when it comes back;
- anything that finds ``done``, or finds a token while it is itself a first delivery,
  is a replay: a copy of a message that ran, or runs now.

Entries expire with the message's validity (Redis: a hash per minute of messages,
expiring with the last of them; SQLite rows deleted by later claims, PostgreSQL rows
by a batched prune: ``security.replay_postgresql``), so the store
holds one small entry per message of the last ``max_age`` seconds. Claims, marks and
releases are one round trip per fetched batch or flush.
"""

from __future__ import annotations

import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celeriac.security.signing import Opened
from celeriac.state_home import kind_of, state_home

if TYPE_CHECKING:
    from celeriac.app import App

DONE = "done"
# Seconds a nonce is kept past its message's validity: clocks of producers, workers and
# the server a little apart must not open a window for a replay.
CLOCK_MARGIN = 60.0


def kept_until(opened: Opened) -> float:
    """Until when (Unix time) a message's nonce is remembered."""
    return opened.valid_until + CLOCK_MARGIN


class SeenNonces(ABC):
    """The nonces of signed (verified) messages on one server: claim, mark done, release.
    Each is kept until ``kept_until`` its message."""

    @abstractmethod
    async def claim(self, signed: Sequence[Opened], token: str) -> list[str | None]:
        """Claim each message's nonce for ``token`` unless it is held: None where
        claimed, else the holder (a token, or ``DONE``)."""

    @abstractmethod
    async def done(self, signed: Sequence[Opened]) -> None:
        """Mark the messages' nonces as run, to refuse their replays."""

    @abstractmethod
    async def release(self, signed: Sequence[Opened], token: str) -> None:
        """Forget the claims of ``token`` on the messages' nonces: they went back
        unstarted."""


class MemorySeenNonces(SeenNonces):
    """Nonces in a dict of this process (the memory broker: one process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[str, float]] = {}  # nonce -> (holder, monotonic end)

    @staticmethod
    def _ends(signed: Sequence[Opened]) -> list[tuple[str, float]]:
        """(nonce, monotonic end) of each message: a clock set back or forward while
        they are kept changes nothing."""
        shift = time.monotonic() - time.time()
        return [(opened.nonce.hex(), kept_until(opened) + shift) for opened in signed]

    async def claim(self, signed: Sequence[Opened], token: str) -> list[str | None]:
        now = time.monotonic()
        found: list[str | None] = []
        with self._lock:
            for nonce, end in self._ends(signed):
                held = self._seen.get(nonce)
                if held is not None and held[1] > now:
                    found.append(held[0])
                    continue
                self._seen[nonce] = (token, end)
                found.append(None)
            if len(self._seen) > 4096:
                self._seen = {k: v for k, v in self._seen.items() if v[1] > now}
        return found

    async def done(self, signed: Sequence[Opened]) -> None:
        with self._lock:
            for nonce, end in self._ends(signed):
                self._seen[nonce] = (DONE, end)

    async def release(self, signed: Sequence[Opened], token: str) -> None:
        with self._lock:
            for opened in signed:
                nonce = opened.nonce.hex()
                if self._seen.get(nonce, ("", 0.0))[0] == token:
                    del self._seen[nonce]


# -- Redis ------------------------------------------------------------------------------

# Nonces are kept per time bucket: a hash ``<prefix>seen:<start>`` whose fields are the
# nonces (16 bytes) of the messages valid from (signed at, or due at) within BUCKET
# seconds of ``<start>`` (Unix seconds), each with its holder. The bucket comes from the
# signed envelope, so a replay is looked up where its original is, whatever any worker's
# task_signing_max_age; the hash expires when its last message's validity ends (an
# expiry is only ever extended). Against a string key with its own expiry per nonce (the
# first version) this spares the server a key and an expiry entry per message (about
# 180 bytes of Redis memory per message held, now about 110, measured with ``INFO
# memory``), and looks a batch up and stores it with one HMGET and one HSET per bucket
# instead of a SET per nonce: about 0.8 rather than 1.3 us of server CPU per message.
# A nonce is kept up to BUCKET seconds longer than its message needs.
BUCKET = 60

# The nonces go in one argument, not as KEYS or one argument each: packing and sending
# 256 arguments costs the worker about 4 us per message in redis-py, one string a
# fraction of that. (The keys a script touches are then not declared, which only a
# Redis Cluster would mind; celeriac uses one server, and the broker's keys of a queue
# already share it.) Each script takes ARGV[1] the key prefix, ARGV[2] a token (unused
# by _DONE), then groups of three: a bucket (the key's suffix), how long from now it
# must be kept at least (ms), its nonces back to back.
_KEEP = """
local function keep(key, ms)  -- the expiry is extended, never shortened
  if redis.call('PTTL', key) < tonumber(ms) then redis.call('PEXPIRE', key, ms) end
end
local function fields(nonces)
  local out = {}
  for i = 1, #nonces / 16 do out[i] = string.sub(nonces, i * 16 - 15, i * 16) end
  return out
end
-- redis.call(command, key, ...) with a list's items as the arguments, CHUNK (or twice
-- CHUNK) at a time: Lua's unpack takes at most about 8,000, and a batch may be larger.
local CHUNK = 1000
local function each(list, step, command, key, into)
  if #list <= CHUNK * step and not into then return redis.call(command, key, unpack(list)) end
  for at = 1, #list, CHUNK * step do
    local last = math.min(#list, at + CHUNK * step - 1)
    local reply = redis.call(command, key, unpack(list, at, last))
    if into then for _, item in ipairs(reply) do into[#into + 1] = item end end
  end
end
"""

_CLAIM = _KEEP + """
-- Returns {index, holder, ...} for each nonce already held (1-based, counted across the
-- groups); the rest are claimed for the token.
local found = {}
local token = ARGV[2]
local base = 0
for g = 3, #ARGV, 3 do
  local key = ARGV[1] .. ARGV[g]
  local nonces = fields(ARGV[g + 2])
  local held
  if #nonces <= CHUNK then
    held = redis.call('HMGET', key, unpack(nonces))
  else
    held = {}
    each(nonces, 1, 'HMGET', key, held)
  end
  local new = {}
  local mine = {}
  for i = 1, #nonces do
    local nonce = nonces[i]
    if held[i] then
      found[#found + 1] = base + i
      found[#found + 1] = held[i]
    elseif mine[nonce] then  -- twice in one batch: the second is a copy
      found[#found + 1] = base + i
      found[#found + 1] = token
    else
      mine[nonce] = true
      new[#new + 1] = nonce
      new[#new + 1] = token
    end
  end
  if #new > 0 then
    each(new, 2, 'HSET', key)
    keep(key, ARGV[g + 1])
  end
  base = base + #nonces
end
return found
"""

_DONE = _KEEP + """
for g = 3, #ARGV, 3 do
  local key = ARGV[1] .. ARGV[g]
  local marks = {}
  for _, nonce in ipairs(fields(ARGV[g + 2])) do
    marks[#marks + 1] = nonce
    marks[#marks + 1] = 'done'
  end
  each(marks, 2, 'HSET', key)
  keep(key, ARGV[g + 1])
end
return 1
"""

_RELEASE = _KEEP + """
for g = 3, #ARGV, 3 do
  local key = ARGV[1] .. ARGV[g]
  for _, nonce in ipairs(fields(ARGV[g + 2])) do
    if redis.call('HGET', key, nonce) == ARGV[2] then redis.call('HDEL', key, nonce) end
  end
end
return 1
"""


class RedisSeenNonces(SeenNonces):
    """``<prefix>seen:<start>`` hashes (nonce -> holder) on a broker's or backend's Redis
    server, one per ``BUCKET`` seconds of messages."""

    def __init__(self, owner: Any) -> None:
        from celeriac.brokers.redis_connection import Script

        self._owner = owner
        self._prefix = f"{owner.prefix}seen:"
        self._claim = Script("seen_claim", _CLAIM)
        self._done = Script("seen_done", _DONE)
        self._release = Script("seen_release", _RELEASE)

    async def _run(self, script: Any, args: list[Any], what: str) -> Any:
        client = await self._owner._clients.get()
        with self._owner._errors(f"signed message nonce {what}"):
            async with self._owner.settings.deadline():
                return await script(client, [], args)

    @staticmethod
    def _groups(signed: Sequence[Opened]) -> tuple[list[Any], Sequence[int]]:
        """The scripts' groups for ``signed`` and, for each message in the groups'
        order, its index in ``signed``."""
        now = time.time()
        buckets = [int(opened.valid_from // BUCKET) * BUCKET for opened in signed]
        first = buckets[0]
        if buckets.count(first) == len(buckets):  # nearly every batch: one bucket
            return [first, _ms(max([opened.valid_until for opened in signed])
                               + CLOCK_MARGIN - now),
                    b"".join([opened.nonce for opened in signed])], range(len(signed))
        by_bucket: dict[int, list[int]] = {}
        for index, bucket in enumerate(buckets):
            by_bucket.setdefault(bucket, []).append(index)
        args: list[Any] = []
        order: list[int] = []
        for bucket, members in by_bucket.items():
            args += (bucket, _ms(max(kept_until(signed[index]) for index in members) - now),
                     b"".join([signed[index].nonce for index in members]))
            order += members
        return args, order

    async def claim(self, signed: Sequence[Opened], token: str) -> list[str | None]:
        if not signed:
            return []
        groups, order = self._groups(signed)
        found = await self._run(self._claim, [self._prefix, token, *groups], "claim")
        holders: list[str | None] = [None] * len(signed)
        for at in range(0, len(found), 2):
            holder = found[at + 1]
            text = holder.decode() if isinstance(holder, bytes) else str(holder)
            holders[order[int(found[at]) - 1]] = text or None
        return holders

    async def done(self, signed: Sequence[Opened]) -> None:
        if signed:
            groups, _ = self._groups(signed)
            await self._run(self._done, [self._prefix, "", *groups], "mark")

    async def release(self, signed: Sequence[Opened], token: str) -> None:
        if signed:
            groups, _ = self._groups(signed)
            await self._run(self._release, [self._prefix, token, *groups], "release")


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


# -- SQLite ------------------------------------------------------------------------------

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS seen_nonces (nonce TEXT PRIMARY KEY, holder TEXT NOT NULL, "
    "expires_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS seen_nonces_expiry ON seen_nonces (expires_at)",
)


class SQLiteSeenNonces(SeenNonces):
    """A ``seen_nonces`` table in a broker's or backend's SQLite file; each call is one
    write transaction, so claims by processes sharing the file never both succeed."""

    def __init__(self, owner: Any) -> None:
        self._db = owner._db
        self._ready = False

    def _create(self) -> None:
        if not self._ready:
            with self._db.write() as conn:
                for statement in _SCHEMA:
                    conn.execute(statement)
            self._ready = True

    async def claim(self, signed: Sequence[Opened], token: str) -> list[str | None]:
        if not signed:
            return []
        self._create()
        found: list[str | None] = []
        with self._db.write() as conn:
            conn.execute("DELETE FROM seen_nonces WHERE expires_at <= ?", (time.time(),))
            for opened in signed:
                nonce = opened.nonce.hex()
                row = conn.execute("SELECT holder FROM seen_nonces WHERE nonce = ?",
                                   (nonce,)).fetchone()
                if row is not None:
                    found.append(str(row[0]))
                    continue
                conn.execute("INSERT INTO seen_nonces VALUES (?, ?, ?)",
                             (nonce, token, kept_until(opened)))
                found.append(None)
        return found

    async def done(self, signed: Sequence[Opened]) -> None:
        if signed:
            self._create()
            with self._db.write() as conn:
                conn.executemany("INSERT OR REPLACE INTO seen_nonces VALUES (?, ?, ?)",
                                 [(opened.nonce.hex(), DONE, kept_until(opened))
                                  for opened in signed])

    async def release(self, signed: Sequence[Opened], token: str) -> None:
        if signed:
            self._create()
            with self._db.write() as conn:
                conn.executemany("DELETE FROM seen_nonces WHERE nonce = ? AND holder = ?",
                                 [(opened.nonce.hex(), token) for opened in signed])


# -- which server ------------------------------------------------------------------------

_STORES: weakref.WeakKeyDictionary[Any, SeenNonces] = weakref.WeakKeyDictionary()
_STORES_LOCK = threading.Lock()


def seen_nonces(app: App) -> SeenNonces:
    """Where ``app``'s workers keep the nonces they have seen: the broker's server, else
    the result backend's (``celeriac.state_home``); ConfigurationError when neither
    keeps anything."""
    owner = state_home(app, "signed messages need a server shared by the workers to "
                            "remember the messages they have run (replay "
                            "protection)").owner
    with _STORES_LOCK:
        store = _STORES.get(owner)
        if store is None:
            store = _STORES[owner] = _make(owner)
        return store


def _make(owner: Any) -> SeenNonces:
    kind = kind_of(owner)
    if kind == "memory":
        return MemorySeenNonces()
    if kind == "sqlite":
        return SQLiteSeenNonces(owner)
    if kind == "postgresql":
        from celeriac.security.replay_postgresql import PostgreSQLSeenNonces

        return PostgreSQLSeenNonces(owner)
    return RedisSeenNonces(owner)
