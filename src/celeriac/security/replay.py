"""Replay protection: which signed messages' nonces have been seen, kept on a shared server.

A signed message is valid for ``task_signing_max_age`` seconds (``security.signing``);
within that window a copy of it re-published by someone who captured it would verify.
So each worker remembers every nonce it takes, until the message's validity ends, and
refuses a nonce already seen.

Where "seen" is kept decides what it protects. In a worker process's memory it would
protect that process only: a replay fetched by the process next door, or by another
node, would run. So nonces live on a server every worker reaches, the same one unique
jobs use: the broker's (SQLite file, Redis), else under a RabbitMQ broker the result
backend's (SQLite, Redis); RabbitMQ with rpc:// results has nowhere to keep them and is
refused at worker start, with what to use instead. The memory broker keeps them in
the process (it has only one).

A nonce's entry holds who has it: the token of the worker process that fetched it
(claimed when fetched, for the whole batch with the longest validity in it), and on a
broker whose delivery count travels in the message (RabbitMQ: a header any publisher
could set) then ``done``, marked once its verdict is carried out, after the ack. On
SQLite and Redis the server keeps the count and an acked message is gone, so nothing
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

Entries expire with the message's validity (Redis ``PX``; SQLite rows deleted by later
claims), so the store holds one small entry per message of the last ``max_age``
seconds. Claims, marks and releases are one round trip per fetched batch or flush.
"""

from __future__ import annotations

import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celeriac.errors import ConfigurationError

if TYPE_CHECKING:
    from celeriac.app import App

DONE = "done"

class SeenNonces(ABC):
    """The nonces of signed messages on one server: claim, mark done, release."""

    @abstractmethod
    async def claim(self, nonces: Sequence[str], token: str, ttl: float) -> list[str | None]:
        """Claim each nonce (hex) for ``token`` for ``ttl`` seconds unless it is held:
        None where claimed, else the holder (a token, or ``DONE``)."""

    @abstractmethod
    async def done(self, nonces: Sequence[tuple[str, float]]) -> None:
        """Mark nonces as run (kept for their seconds, to refuse replays)."""

    @abstractmethod
    async def release(self, held: Sequence[tuple[str, str]]) -> None:
        """Forget (nonce, token) claims: their messages went back unstarted."""


class MemorySeenNonces(SeenNonces):
    """Nonces in a dict of this process (the memory broker: one process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[str, float]] = {}  # nonce -> (holder, monotonic end)

    async def claim(self, nonces: Sequence[str], token: str, ttl: float) -> list[str | None]:
        now = time.monotonic()
        found: list[str | None] = []
        with self._lock:
            for nonce in nonces:
                held = self._seen.get(nonce)
                if held is not None and held[1] > now:
                    found.append(held[0])
                    continue
                self._seen[nonce] = (token, now + ttl)
                found.append(None)
            if len(self._seen) > 4096:
                self._seen = {k: v for k, v in self._seen.items() if v[1] > now}
        return found

    async def done(self, nonces: Sequence[tuple[str, float]]) -> None:
        now = time.monotonic()
        with self._lock:
            for nonce, ttl in nonces:
                self._seen[nonce] = (DONE, now + ttl)

    async def release(self, held: Sequence[tuple[str, str]]) -> None:
        with self._lock:
            for nonce, token in held:
                if self._seen.get(nonce, ("", 0.0))[0] == token:
                    del self._seen[nonce]


# -- Redis ------------------------------------------------------------------------------

# The nonces go in one argument, not as KEYS: packing and sending 256 arguments costs the
# worker about 4 us per message in redis-py, one string a fraction of that. (The keys a
# script touches are then not declared, which only a Redis Cluster would mind; celeriac
# uses one server, and the broker's keys of a queue already share it.)
_CLAIM = """
-- ARGV[1] the token, ARGV[2] the hold (ms), ARGV[3] the key prefix, ARGV[4] the
-- nonces, each 32 hex characters, back to back.
-- Returns {index, holder, ...} for each nonce already held (1-based); the rest are
-- claimed for the token.
local found = {}
local nonces = ARGV[4]
for i = 1, #nonces / 32 do
  local key = ARGV[3] .. string.sub(nonces, i * 32 - 31, i * 32)
  if not redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    found[#found + 1] = i
    found[#found + 1] = redis.call('GET', key) or ''
  end
end
return found
"""

_DONE = """
-- KEYS the nonce keys; ARGV[i] the i-th key's hold (ms)
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], 'done', 'PX', ARGV[i])
end
return #KEYS
"""

_RELEASE = """
-- KEYS the nonce keys; ARGV[i] the token expected to hold the i-th
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then redis.call('DEL', KEYS[i]) end
end
return #KEYS
"""


class RedisSeenNonces(SeenNonces):
    """``<prefix>seen:<nonce>`` strings on a broker's or backend's Redis server."""

    def __init__(self, owner: Any) -> None:
        from celeriac.brokers.redis_connection import Script

        self._owner = owner
        self._prefix = f"{owner.prefix}seen:"
        self._claim = Script("seen_claim", _CLAIM)
        self._done = Script("seen_done", _DONE)
        self._release = Script("seen_release", _RELEASE)

    async def _run(self, script: Any, keys: list[str], args: list[Any], what: str) -> Any:
        client = await self._owner._clients.get()
        with self._owner._errors(f"signed message nonce {what}"):
            async with self._owner.settings.deadline():
                return await script(client, keys, args)

    async def claim(self, nonces: Sequence[str], token: str, ttl: float) -> list[str | None]:
        if not nonces:
            return []
        if any(len(nonce) != 32 for nonce in nonces):
            raise ValueError("a nonce is 32 hex characters")
        found = await self._run(self._claim, [],
                                [token, _ms(ttl), self._prefix, "".join(nonces)], "claim")
        holders: list[str | None] = [None] * len(nonces)
        for at in range(0, len(found), 2):
            holder = found[at + 1]
            text = holder.decode() if isinstance(holder, bytes) else str(holder)
            holders[int(found[at]) - 1] = text or None
        return holders

    async def done(self, nonces: Sequence[tuple[str, float]]) -> None:
        if nonces:
            await self._run(self._done, [self._prefix + nonce for nonce, _ in nonces],
                            [_ms(ttl) for _, ttl in nonces], "mark")

    async def release(self, held: Sequence[tuple[str, str]]) -> None:
        if held:
            await self._run(self._release, [self._prefix + nonce for nonce, _ in held],
                            [token for _, token in held], "release")


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

    async def claim(self, nonces: Sequence[str], token: str, ttl: float) -> list[str | None]:
        if not nonces:
            return []
        self._create()
        now = time.time()
        found: list[str | None] = []
        with self._db.write() as conn:
            conn.execute("DELETE FROM seen_nonces WHERE expires_at <= ?", (now,))
            for nonce in nonces:
                row = conn.execute("SELECT holder FROM seen_nonces WHERE nonce = ?",
                                   (nonce,)).fetchone()
                if row is not None:
                    found.append(str(row[0]))
                    continue
                conn.execute("INSERT INTO seen_nonces VALUES (?, ?, ?)",
                             (nonce, token, now + ttl))
                found.append(None)
        return found

    async def done(self, nonces: Sequence[tuple[str, float]]) -> None:
        if nonces:
            self._create()
            now = time.time()
            with self._db.write() as conn:
                conn.executemany("INSERT OR REPLACE INTO seen_nonces VALUES (?, ?, ?)",
                                 [(nonce, DONE, now + ttl) for nonce, ttl in nonces])

    async def release(self, held: Sequence[tuple[str, str]]) -> None:
        if held:
            self._create()
            with self._db.write() as conn:
                conn.executemany("DELETE FROM seen_nonces WHERE nonce = ? AND holder = ?",
                                 held)


# -- which server ------------------------------------------------------------------------

_KEEPS = ("memory", "sqlite", "redis", "rediss")
_STORES: weakref.WeakKeyDictionary[Any, SeenNonces] = weakref.WeakKeyDictionary()
_STORES_LOCK = threading.Lock()


def seen_nonces(app: App) -> SeenNonces:
    """Where ``app``'s workers keep the nonces they have seen: the broker's server, else
    the result backend's; ConfigurationError when neither keeps anything."""
    owner: Any = app.broker
    if owner.scheme not in _KEEPS:
        owner = app.backend
        if owner.scheme not in _KEEPS:
            raise ConfigurationError(
                f"signed messages need a server shared by the workers to remember the "
                f"messages they have run (replay protection): the {app.broker.scheme}:// "
                f"broker keeps none and the {owner.scheme}:// result backend stores "
                f"nothing on a server; use a sqlite:// or redis:// result_backend")
    with _STORES_LOCK:
        store = _STORES.get(owner)
        if store is None:
            store = _STORES[owner] = _make(owner)
        return store


def _make(owner: Any) -> SeenNonces:
    if owner.scheme == "memory":
        return MemorySeenNonces()
    if owner.scheme == "sqlite":
        return SQLiteSeenNonces(owner)
    return RedisSeenNonces(owner)
