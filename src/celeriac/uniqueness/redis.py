"""Unique keys on a Redis server: the broker's (claimed and published by one script) or,
under a RabbitMQ broker, the result backend's (claimed first, then published).

Keys (``P``: the broker's or backend's ``key_prefix``)::

    P unique:<key>   STRING  the id of the task holding the key; expires (PX) when the
                             hold's ``unique_for`` runs out, on the server's clock

Claiming is a script that returns the holder when the key exists and otherwise sets it
(``SET ... PX``); on the broker's server the same script then stores the message as the
broker's PUBLISH script does (a stream entry, or a member of the queue's ETA set), so
the key is held exactly when the message is queued. Releasing is a compare-and-delete
script on (key, task id).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from celeriac.brokers.base import Outgoing
from celeriac.brokers.redis_connection import BlockingClient, LoopClients, Script
from celeriac.uniqueness.store import Hold, UniqueKeys

CLAIM = Script("unique_claim", """
-- KEYS[1] the unique key; ARGV task id, hold (ms)
-- Returns the holder's task id, or false when claimed for ARGV[1].
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
""")

CLAIM_AND_PUBLISH = Script("unique_publish", """
-- Claim a unique key and, if claimed, store one message as the broker's PUBLISH does.
-- KEYS[1] the unique key, [2] the queues set, [3] the message's stream or ETA zset
-- ARGV task id, hold (ms), queue, then for a stream: '', message id, body;
--      for an ETA zset: due time (Unix ms), member, ''
-- Returns the holder's task id, or false when claimed and published.
-- The message is stored before the key is set: a script that fails halfway keeps
-- what it wrote, and a message without its hold is the lesser harm.
local held = redis.call('GET', KEYS[1])
if held then return held end
if ARGV[4] == '' then
  redis.call('XADD', KEYS[3], '*', 'i', ARGV[5], 'b', ARGV[6])
else
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
end
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
""")

RELEASE = Script("unique_release", """
-- KEYS the unique keys; ARGV the task id expected to hold each
-- Deletes each key still held by its task id; returns how many were deleted.
local freed = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('DEL', KEYS[i])
    freed = freed + 1
  end
end
return freed
""")


class RedisUniqueKeys(UniqueKeys):
    """Holds on the Redis server of a broker or backend, on its own connections."""

    def __init__(self, owner: Any, prefix: str, clients: LoopClients,
                 blocking: BlockingClient, broker: Any = None) -> None:
        self._owner = owner
        self.prefix = prefix
        self._clients = clients
        self._blocking = blocking
        self._broker = broker  # a RedisBroker on this server, for atomic sends
        self.atomic = broker is not None

    @classmethod
    def on(cls, owner: Any) -> RedisUniqueKeys:
        from celeriac.brokers.redis import RedisBroker

        broker = owner if isinstance(owner, RedisBroker) else None
        return cls(owner, owner.prefix, owner._clients, owner._blocking, broker)

    def key(self, key: str) -> str:
        return f"{self.prefix}unique:{key}"

    def _errors(self, what: str) -> Any:
        return self._owner._errors(f"unique key {what}")

    async def _run(self, script: Script, keys: Sequence[str], args: Sequence[Any],
                   what: str) -> Any:
        client = await self._clients.get()
        with self._errors(what):
            async with self._owner.settings.deadline():
                return await script(client, keys, args)

    async def claim(self, key: str, task_id: str, ttl: float) -> str | None:
        return _text(await self._run(CLAIM, [self.key(key)], [task_id, _ms(ttl)], "claim"))

    def claim_blocking(self, key: str, task_id: str, ttl: float) -> str | None:
        return _text(self._blocking.script("unique key claim", CLAIM, [self.key(key)],
                                           [task_id, _ms(ttl)]))

    async def release(self, holds: Sequence[Hold]) -> None:
        if holds:
            await self._run(RELEASE, [self.key(key) for key, _ in holds],
                            [task_id for _, task_id in holds], "release")

    def release_blocking(self, holds: Sequence[Hold]) -> None:
        if holds:
            self._blocking.script("unique key release", RELEASE,
                                  [self.key(key) for key, _ in holds],
                                  [task_id for _, task_id in holds])

    async def holder(self, key: str) -> str | None:
        from celeriac.brokers.redis_connection import command

        client = await self._clients.get()
        with self._errors("holder"):
            async with self._owner.settings.deadline():
                return _text(await command(client)("GET", self.key(key)))

    def _publish_call(self, key: str, task_id: str, ttl: float,
                      outgoing: Outgoing) -> tuple[list[str], list[Any]]:
        ((keys, args),) = self._broker._publish_calls([outgoing])  # checks the message
        return [self.key(key), *keys], [task_id, _ms(ttl), *args]

    async def send(self, key: str, task_id: str, ttl: float, outgoing: Outgoing,
                   publish: Callable[[Sequence[Outgoing]], Awaitable[None]]) -> str | None:
        if self._broker is None:
            return await super().send(key, task_id, ttl, outgoing, publish)
        keys, args = self._publish_call(key, task_id, ttl, outgoing)
        return _text(await self._run(CLAIM_AND_PUBLISH, keys, args, "claim and publish"))

    def send_blocking(self, key: str, task_id: str, ttl: float, outgoing: Outgoing,
                      publish: Callable[[Sequence[Outgoing]], None]) -> str | None:
        if self._broker is None:
            return super().send_blocking(key, task_id, ttl, outgoing, publish)
        keys, args = self._publish_call(key, task_id, ttl, outgoing)
        return _text(self._blocking.script("unique key claim and publish",
                                           CLAIM_AND_PUBLISH, keys, args))


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(reply: Any) -> str | None:
    """A script's reply: a task id (bytes or str), or None for Lua's false/nil."""
    if reply is None or reply is False or reply == 0:
        return None
    return reply.decode() if isinstance(reply, bytes) else str(reply)
