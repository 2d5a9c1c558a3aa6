"""Beat's state on a Redis server (the broker's, or with RabbitMQ the result backend's).

Keys are in ``beat.store``'s docstring, under the broker's (or backend's) key prefix.
The lease is a key with a ``PX`` expiry, so it runs out by the server's clock, whatever
the beat processes' clocks say. Each change that must be atomic (taking the lease, a
guarded compare-and-set, an entry change with its version bump) is one Lua script.
Calls are blocking (``BlockingClient``): beat runs on a thread of its own.
"""

from __future__ import annotations

from celeriac.beat.store import BeatStore, LeaseHolder, RunState
from celeriac.brokers.redis_connection import BlockingClient, RedisSettings, Script
from celeriac.errors import (
    BackendError,
    BackendRefused,
    BrokerError,
    BrokerRefused,
    BrokerUnavailable,
    CeleriacError,
)

# KEYS: lease, token. ARGV: holder, ttl (ms). Returns the token, or 0.
ACQUIRE = Script("beat_acquire", """
local current = redis.call('GET', KEYS[1])
if current then
    local sep = string.find(current, '|', 1, true)
    if string.sub(current, sep + 1) ~= ARGV[1] then return 0 end
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.sub(current, 1, sep - 1))
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. '|' .. ARGV[1], 'PX', ARGV[2])
return token
""")

# KEYS: lease. ARGV: "<token>|<holder>".
RELEASE = Script("beat_release", """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
""")

# KEYS: lease, state, paused, entries. ARGV: entry, expected ('' = absent), new
# ('' = delete), lease value ('' = no lease check), running ('1': not paused), dynamic
# ('1': still stored). Returns 1 if replaced.
SWAP = Script("beat_swap", """
if ARGV[4] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[4] then return 0 end
if ARGV[5] == '1' and redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return 0 end
if ARGV[6] == '1' and redis.call('HEXISTS', KEYS[4], ARGV[1]) == 0 then return 0 end
local current = redis.call('HGET', KEYS[2], ARGV[1])
if ARGV[2] == '' then
    if current then return 0 end
elseif current ~= ARGV[2] then
    return 0
end
if ARGV[3] == '' then redis.call('HDEL', KEYS[2], ARGV[1])
else redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
return 1
""")

# KEYS: entries, paused, state, version. ARGV: op, name, data.
CHANGE = Script("beat_change", """
local found = 1
if ARGV[1] == 'put' then
    redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
elseif ARGV[1] == 'remove' then
    found = redis.call('HDEL', KEYS[1], ARGV[2])
    redis.call('SREM', KEYS[2], ARGV[2])
    redis.call('HDEL', KEYS[3], ARGV[2])
elseif ARGV[1] == 'pause' then
    redis.call('SADD', KEYS[2], ARGV[2])
else
    redis.call('SREM', KEYS[2], ARGV[2])
end
redis.call('INCR', KEYS[4])
return found
""")


class RedisStore(BeatStore):
    def __init__(self, settings: RedisSettings, error: type[CeleriacError]) -> None:
        # The broker's errors on the broker's server, the backend's on the backend's.
        if issubclass(error, BrokerError):
            self._client = BlockingClient(settings, BrokerUnavailable, BrokerError,
                                          "Redis beat", BrokerRefused)
        else:
            self._client = BlockingClient(settings, BackendError, BackendError,
                                          "Redis beat", BackendRefused)
        prefix = f"{settings.key_prefix}beat:"
        self.lease_key, self.token_key = f"{prefix}lease", f"{prefix}token"
        self.state_key, self.entries_key = f"{prefix}state", f"{prefix}entries"
        self.paused_key, self.version_key = f"{prefix}paused", f"{prefix}version"
        self.where = f"Redis keys {prefix}*"

    def acquire(self, holder: str, ttl: float) -> int | None:
        token = self._client.script("acquire lease", ACQUIRE,
                                    [self.lease_key, self.token_key],
                                    [holder, max(1, int(ttl * 1000))])
        return int(token) or None

    def release(self, holder: str, token: int) -> None:
        self._client.script("release lease", RELEASE, [self.lease_key], [f"{token}|{holder}"])

    def leader(self) -> LeaseHolder | None:
        value = self._client.call("read lease", "GET", self.lease_key)
        if value is None:
            return None
        token, _, holder = value.decode().partition("|")
        return LeaseHolder(holder, int(token))

    def states(self) -> dict[str, RunState]:
        raw = self._client.call("read states", "HGETALL", self.state_key)
        pairs = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) \
            else raw
        return {name.decode(): RunState.from_json(data) for name, data in pairs.items()}

    def swap(self, entry: str, expected: RunState | None, new: RunState | None,
             lease: tuple[str, int] | None, *, running: bool = False,
             dynamic: bool = False) -> bool:
        replaced = self._client.script(
            "record run", SWAP,
            [self.lease_key, self.state_key, self.paused_key, self.entries_key],
            [entry, b"" if expected is None else expected.to_json(),
             b"" if new is None else new.to_json(),
             "" if lease is None else f"{lease[1]}|{lease[0]}",
             "1" if running else "0", "1" if dynamic else "0"])
        return bool(replaced)

    def version(self) -> int:
        value = self._client.call("read version", "GET", self.version_key)
        return 0 if value is None else int(value)

    def dynamic_entries(self) -> dict[str, bytes]:
        raw = self._client.call("read entries", "HGETALL", self.entries_key)
        pairs = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) \
            else raw
        return {name.decode(): bytes(data) for name, data in pairs.items()}

    def paused(self) -> set[str]:
        return {name.decode()
                for name in self._client.call("read paused", "SMEMBERS", self.paused_key)}

    def _change(self, op: str, name: str, data: bytes = b"") -> bool:
        return bool(self._client.script(
            f"{op} entry", CHANGE,
            [self.entries_key, self.paused_key, self.state_key, self.version_key],
            [op, name, data]))

    def put_entry(self, name: str, data: bytes) -> None:
        self._change("put", name, data)

    def remove_entry(self, name: str) -> bool:
        return self._change("remove", name)

    def set_paused(self, name: str, paused: bool) -> None:
        self._change("pause" if paused else "resume", name)

    def close(self) -> None:
        self._client.close()
