"""Token buckets on a Redis server, shared by every worker that uses it.

Keys (``P`` is the broker's or backend's ``key_prefix``)::

    P rate:<key>      STRING  next free token of the bucket (server time, seconds);
                              expires once that moment is past, so idle buckets vanish
    P rate_overrides  HASH    key -> rate string (run-time limits, control.rate_limit)

A reservation is one Lua script, on the server's clock (``TIME``), so workers on
machines whose clocks differ still share one schedule. See ``celeriac.brokers.buckets``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celeriac.brokers.buckets import Grant, TokenBuckets
from celeriac.brokers.redis_connection import (
    LoopClients,
    RedisSettings,
    Script,
    command,
)
from celeriac.brokers.redis_failures import translate_errors
from celeriac.errors import BrokerError, BrokerRefused, BrokerUnavailable

RESERVE = Script("reserve", """
-- The arithmetic of celeriac.brokers.buckets.reserve, on the server's clock.
-- KEYS[1] the bucket; ARGV interval (s), horizon (s)
-- Returns {granted (0/1), delay (s) as a string: Lua numbers come back truncated}
local interval, horizon = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local start = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
local wait = start - now
if wait > horizon then
  return {0, string.format('%.6f', wait - horizon / 2)}
end
local tat = start + interval
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX',
           math.ceil((tat - now) * 1000) + 1000)
return {1, string.format('%.6f', wait)}
""")


class RedisBuckets(TokenBuckets):
    """Buckets on the Redis server of ``url``, under the ``key_prefix`` of ``options``."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self.settings = RedisSettings.from_options(url, options or {})
        self.prefix = self.settings.key_prefix
        self._clients = LoopClients(self.settings.make_client)

    def bucket_key(self, key: str) -> str:
        return f"{self.prefix}rate:{key}"

    @property
    def overrides_key(self) -> str:
        return f"{self.prefix}rate_overrides"

    def _errors(self, what: str) -> Any:
        return translate_errors(BrokerUnavailable, BrokerError, f"Redis rate limit {what}",
                                BrokerRefused)

    async def reserve(self, key: str, interval: float, horizon: float) -> Grant:
        client = await self._clients.get()
        with self._errors("reserve"):
            async with self.settings.deadline():
                granted, delay = await RESERVE(client, [self.bucket_key(key)],
                                               [repr(interval), repr(horizon)])
        return Grant(bool(int(granted)), float(delay))

    async def set_override(self, key: str, rate: str | None) -> None:
        client = await self._clients.get()
        pipe = client.pipeline(transaction=True)
        if rate is None:
            command(pipe)("HDEL", self.overrides_key, key)
        else:
            command(pipe)("HSET", self.overrides_key, key, rate)
        command(pipe)("DEL", self.bucket_key(key))
        with self._errors("set_override"):
            async with self.settings.deadline():
                await pipe.execute()

    async def overrides(self) -> dict[str, str]:
        client = await self._clients.get()
        with self._errors("overrides"):
            async with self.settings.deadline():
                found = await command(client)("HGETALL", self.overrides_key)
        if isinstance(found, dict):
            return {k.decode(): v.decode() for k, v in found.items()}
        pairs = list(found)
        return {pairs[i].decode(): pairs[i + 1].decode() for i in range(0, len(pairs), 2)}

    async def close(self) -> None:
        await self._clients.close()
