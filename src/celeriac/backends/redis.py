"""The Redis result backend: results under keys with a TTL, and waiting on the server.

Key layout (``P`` is the ``key_prefix`` option, ``celeriac:`` by default)::

    P result:<task id>   STRING  the result bytes; expires after ``result_expires``
                                 (no expiry when it is None)
    P ready:<task id>    LIST    one wake-up token, replaced by every store of that id:
                                 the result itself, or b"" for a result over
                                 INLINE_MAX (then the waiter reads the key); expires
                                 after NOTIFY_TTL_MS (or the result's TTL if shorter)
    P set:<key>          SET     a chord's members (``add_to_set``: SADD + SCARD in
                                 MULTI/EXEC); expires ``result_expires`` after the last add
    P claim:<key>        STRING  who completed or failed a chord (``claim``: SET NX + GET
                                 in MULTI/EXEC)

``store_many`` writes each result and replaces its token, in one script call per batch.
``wait`` reads the result; while it is missing or not accepted (an intermediate state
such as STARTED), it blocks in BLPOP on the token list, so the server wakes it the
moment a store happens: no polling, and no further read, since the token carries the
result. A waiter that accepts the result it popped pushes the token back (after
returning, off the caller's path), so every other waiter of the same id wakes in turn.
A waiter that does not accept it keeps the token (pushing it back would only wake
itself again) and waits for the next store.

The token only has to outlive the gap between a waiter's read of the key and its
BLPOP, which is why it expires within seconds instead of living as long as the result.

Sync callers (``get()``, ``.state`` in a thread with no event loop) use
``wait_blocking`` and ``load_many_blocking``, on one sync redis-py connection pool per
process (``redis_connection.BlockingClient``). ``wait_blocking`` reads the key as
``wait`` does. While nothing at all is stored (the usual case right after sending), it
waits with BLMOVE from the token list to itself: that rotates the one-token list, so
the waiter gets the token without taking it, every other waiter blocked on the list is
served the same token by the server, and there is nothing to push back (measured: the
push-back, even off the caller's path, delayed the caller's next send by a tenth of a
millisecond). Once it has seen a state its caller waits past (STARTED), a rotating
wait would find that token again at once, so it waits as ``wait`` does from then on:
BLPOP, keep a refused token, push back an accepted one. Those push-backs go to a small
thread of the backend's (``_PushBacks``), off the caller's path; ``close_blocking``
(``App.close``) finishes them. BLMOVE needs Redis 6.2, as the broker's XAUTOCLAIM does.

Options (also read from the URL's query string): ``key_prefix``, ``connection_timeout``
(default 4 s: a call during an outage raises BackendError within about that time; a
refused password, an untrusted certificate or an unknown database raises
BackendRefused at once), ``require_noeviction`` (refuse to connect to a server that
could evict results: ``redis://host/1?require_noeviction=true``),
``pool_limit`` (connections per event loop, unbounded by default; each waiting ``get``
holds one while it waits), and the TLS options of ``rediss://`` URLs, as for the broker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celeriac.backends.base import ResultBackend
from celeriac.brokers.redis_connection import (
    CONNECTION_OPTIONS,
    BlockingClient,
    LoopClients,
    RedisSettings,
    Script,
    check_options,
    command,
)
from celeriac.brokers.redis_durability import check_server
from celeriac.brokers.redis_failures import translate_errors
from celeriac.errors import BackendError, BackendRefused

if TYPE_CHECKING:
    from celeriac.bus.base import Bus

OPTIONS = frozenset({"key_prefix", *CONNECTION_OPTIONS})
NOTIFY_TTL_MS = 10_000
INLINE_MAX = 64 * 1024  # results up to this size travel in their wake-up token


STORE = Script("store", """
-- Store results and replace each one's wake-up token, in one round trip.
-- KEYS  per result: its key, its token list
-- ARGV  ttl ms ('' for none), token ttl ms, largest result sent as its own token,
--       then per result: its bytes
local ttl, notify, inline_max = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 1, #KEYS / 2 do
  local data, ready = ARGV[3 + i], KEYS[2 * i]
  if ttl == '' then
    redis.call('SET', KEYS[2 * i - 1], data)
  else
    redis.call('SET', KEYS[2 * i - 1], data, 'PX', ttl)
  end
  -- One fresh token, whatever earlier stores (STARTED, RETRY) left behind.
  redis.call('DEL', ready)
  if #data > inline_max then data = '' end  -- a large result is read from its key
  redis.call('RPUSH', ready, data)
  redis.call('PEXPIRE', ready, notify)
end
return #KEYS / 2
""")


class RedisBackend(ResultBackend):
    scheme = "redis"
    supports_blocking = True
    takes_transport_options = True

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        # Options come from the app, which may pass some meant for other backends (the
        # broker's URL, for rpc://); only the ones named in OPTIONS are read.
        mine = {name: value for name, value in self.options.items() if name in OPTIONS}
        if self.options.get("redis_backend_use_ssl") and "ssl" not in mine:
            mine["ssl"] = self.options["redis_backend_use_ssl"]  # Celery's setting
        # result_backend_transport_options (Celery's setting): checked, then under the
        # URL's query string, which wins.
        transport = self.options.get("result_backend_transport_options") or {}
        check_options(transport, OPTIONS, "Redis result backend transport")
        mine = {**mine, **transport}
        self.settings = RedisSettings.from_options(url, mine)
        self._bus_options = mine
        self.prefix = self.settings.key_prefix
        # A wait re-reads the result at least this often, whatever the wake-up tokens do.
        self.max_block = self.settings.connection_timeout / 2
        self._clients = LoopClients(self.settings.make_client)
        self._blocking = BlockingClient(self.settings, BackendError, BackendError,
                                        "Redis result backend", BackendRefused)
        self._push_backs = _PushBacks(self._blocking)
        self._background: set[asyncio.Task[None]] = set()  # token push-backs under way
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<RedisBackend {self.settings.url} prefix={self.prefix!r}>"

    def result_key(self, task_id: str) -> str:
        return f"{self.prefix}result:{task_id}"

    def ready_key(self, task_id: str) -> str:
        return f"{self.prefix}ready:{task_id}"

    def _errors(self, what: str) -> Any:
        return translate_errors(BackendError, BackendError, f"Redis result backend {what}",
                                BackendRefused)

    def _deadline(self, extra: float = 0.0) -> asyncio.Timeout:
        return self.settings.deadline(extra)

    async def connect(self) -> None:
        """Reach the server and check what it may lose: a WARNING naming each way results
        can be lost (no persistence, RDB only, eviction under ``allkeys-*`` or
        ``volatile-*``, since results have a TTL), or BackendRefused with
        ``require_noeviction``; BackendRefused at once for a refused password, an
        untrusted certificate or an unknown database."""
        client = await self._clients.get()
        with self._errors("connect"):
            async with self._deadline():
                await client.ping()
                await check_server(command(client), self.settings.url, "result backend",
                                   "results", expiring=True,
                                   require_noeviction=self.settings.require_noeviction,
                                   refused=BackendRefused)

    async def store_many(self, results: Mapping[str, bytes], ttl: float | None) -> None:
        if not results:
            return
        client = await self._clients.get()
        ttl_ms = None if ttl is None else max(1, round(ttl * 1000))
        notify_ms = NOTIFY_TTL_MS if ttl_ms is None else min(ttl_ms, NOTIFY_TTL_MS)
        keys = [key for task_id in results
                for key in (self.result_key(task_id), self.ready_key(task_id))]
        with self._errors("store"):
            async with self._deadline():
                await STORE(client, keys, ["" if ttl_ms is None else ttl_ms, notify_ms,
                                           INLINE_MAX, *results.values()])

    async def add_many(self, results: Mapping[str, bytes], ttl: float | None) -> None:
        if not results:
            return
        client = await self._clients.get()
        pipe = client.pipeline(transaction=False)
        ttl_ms = [] if ttl is None else ["PX", max(1, round(ttl * 1000))]
        for task_id, data in results.items():  # NX: never over what a worker stored
            command(pipe)("SET", self.result_key(task_id), data, *ttl_ms, "NX")
        with self._errors("add"):
            async with self._deadline():
                await pipe.execute()

    async def load_many(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        if not task_ids:
            return {}
        client = await self._clients.get()
        with self._errors("load"):
            async with self._deadline():
                values = await command(client)(
                    "MGET", *(self.result_key(task_id) for task_id in task_ids))
        return {task_id: value for task_id, value in zip(task_ids, values, strict=True)
                if value is not None}

    async def delete_many(self, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        client = await self._clients.get()
        keys = [key for task_id in task_ids
                for key in (self.result_key(task_id), self.ready_key(task_id))]
        with self._errors("delete"):
            async with self._deadline():
                await command(client)("UNLINK", *keys)

    async def wait(self, task_id: str, timeout: float | None,
                   accept: Callable[[bytes], bool] | None = None) -> bytes | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        client = await self._clients.get()
        key, ready = self.result_key(task_id), self.ready_key(task_id)
        execute = command(client)
        token: bytes | None = None  # the token this waiter popped, if any
        with self._errors("wait"):
            async with self._deadline():
                data = await execute("GET", key)
            while data is None or (accept is not None and not accept(data)):
                remaining = self.max_block if deadline is None \
                    else deadline - time.monotonic()
                if remaining <= 0:
                    return None
                block = min(remaining, self.max_block)
                async with self._deadline(block):
                    # BLPOP's timeout is in seconds (decimals allowed); 0 means forever.
                    popped = await execute("BLPOP", ready, max(0.001, round(block, 3)))
                token = None if popped is None else bytes(popped[1])
                if token:
                    data = token
                else:  # a large result's empty token, or no store for a while: read it
                    async with self._deadline():
                        data = await execute("GET", key)
        if token is not None:
            self._wake_next(client, ready, token)
        return bytes(data)

    def _wake_next(self, client: Any, ready: str, token: bytes) -> None:
        """Put the popped token back, so that the next waiter of this id wakes too.

        Done in the background: the caller has its result and need not wait for it.
        """
        async def push_back() -> None:
            pipe = client.pipeline(transaction=False)
            command(pipe)("LPUSH", ready, token)
            command(pipe)("PEXPIRE", ready, NOTIFY_TTL_MS)
            with contextlib.suppress(Exception):  # the server's problem shows on next use
                async with self._deadline():
                    await pipe.execute()

        task = asyncio.get_running_loop().create_task(push_back())
        with self._lock:
            self._background.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        with self._lock:
            self._background.discard(task)

    def bus(self) -> Bus:
        from celeriac.bus.redis import RedisBus

        return RedisBus(self.url, self._bus_options)  # under this backend's key prefix

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:  # other threads' loops add theirs concurrently
            mine = [task for task in self._background if task.get_loop() is loop]
        if mine:
            await asyncio.wait(mine, timeout=self.settings.connection_timeout)
        await self._clients.close()


    # -- for sync callers -----------------------------------------------------------------

    def load_many_blocking(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        if not task_ids:
            return {}
        values = self._blocking.call(
            "load", "MGET", *(self.result_key(task_id) for task_id in task_ids))
        return {task_id: value for task_id, value in zip(task_ids, values, strict=True)
                if value is not None}

    def wait_blocking(self, task_id: str, timeout: float | None,
                      accept: Callable[[bytes], bool] | None = None) -> bytes | None:
        """``wait`` for a sync caller; see the module docstring for the two ways to wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        key, ready = self.result_key(task_id), self.ready_key(task_id)
        call = self._blocking.call
        data = call("wait", "GET", key)
        if data is not None and (accept is None or accept(data)):
            return bytes(data)
        share = data is None  # nothing stored yet: look at tokens without taking them
        token: bytes | None = None  # the token this waiter popped (took), if any
        refused = None if data is None else bytes(data)  # what accept() said no to last
        while True:
            remaining = self.max_block if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return None
            block = min(remaining, self.max_block)
            seconds = max(0.001, round(block, 3))  # in seconds; 0 would mean forever
            if share:  # rotates the one-token list: the token stays for every waiter
                moved = call("wait", "BLMOVE", ready, ready, "LEFT", "RIGHT", seconds,
                             block=block)
                seen = None if moved is None else bytes(moved)
            else:
                popped = call("wait", "BLPOP", ready, seconds, block=block)
                seen = token = None if popped is None else bytes(popped[1])
            # No token (no store for a while) or a large result's empty one: read the key.
            data = seen or call("wait", "GET", key)
            if data is not None and data != refused and (accept is None or accept(data)):
                break
            if data is not None:
                refused = bytes(data)  # accept() is a test of the bytes: no need to ask again
            if seen is not None:
                share = False  # a state the caller waits past: take its token from now on
        if token is not None:
            self._push_backs.add(ready, token)  # wake the next waiter, off this path
        return bytes(data)

    def close_blocking(self) -> None:
        self._push_backs.finish(self.settings.connection_timeout)
        self._blocking.close()

    # -- chords: sets and claims, each a MULTI/EXEC transaction ---------------------------

    supports_chords = True

    def set_key(self, key: str) -> str:
        return f"{self.prefix}set:{key}"

    def claim_key(self, key: str) -> str:
        return f"{self.prefix}claim:{key}"

    async def add_to_set(self, key: str, member: str, ttl: float | None) -> int:
        client = await self._clients.get()
        pipe = client.pipeline(transaction=True)
        execute = command(pipe)
        execute("SADD", self.set_key(key), member)
        execute("SCARD", self.set_key(key))
        if ttl is not None:
            execute("PEXPIRE", self.set_key(key), max(1, round(ttl * 1000)))
        with self._errors("add to a set"):
            async with self._deadline():
                replies = await pipe.execute()
        return int(replies[1])

    async def set_members(self, key: str) -> set[str]:
        client = await self._clients.get()
        with self._errors("read a set"):
            async with self._deadline():
                members = await command(client)("SMEMBERS", self.set_key(key))
        return {bytes(member).decode() for member in members}

    async def claim(self, key: str, value: str, ttl: float | None) -> str:
        client = await self._clients.get()
        pipe = client.pipeline(transaction=True)
        execute = command(pipe)
        if ttl is None:
            execute("SET", self.claim_key(key), value, "NX")
        else:
            execute("SET", self.claim_key(key), value, "NX", "PX", max(1, round(ttl * 1000)))
        execute("GET", self.claim_key(key))
        with self._errors("claim"):
            async with self._deadline():
                replies = await pipe.execute()
        return bytes(replies[1]).decode()


class _PushBacks:
    """Puts popped tokens back for sync waiters, from a thread of its own.

    ``wait`` pushes its token back in a background task of its loop; a sync caller has
    no loop, so its tokens are queued here and pushed (all queued at once, pipelined)
    by a daemon thread, started when needed and ended after a second with nothing to
    do. Failures are ignored, as in ``wait``: the server's problem shows on next use,
    and a waiter that missed its wake-up reads the result after ``max_block``.
    """

    IDLE = 1.0  # seconds the thread waits for work before it ends

    def __init__(self, client: BlockingClient) -> None:
        self._client = client
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[str, bytes]] = collections.deque()
        self._busy = False  # a batch taken off the queue is being pushed
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def add(self, ready: str, token: bytes) -> None:
        with self._cond:
            if self._pid != os.getpid():  # forked: the parent's thread is not here
                self._pid, self._thread, self._busy = os.getpid(), None, False
                self._queue.clear()
            self._queue.append((ready, token))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="celeriac-redis-wake")
                self._thread.start()
            else:
                self._cond.notify()

    def finish(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) until every queued token has been pushed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._queue or self._busy) and self._pid == os.getpid():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None:
                    return
                self._cond.wait(remaining)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()  # for finish()
                if not self._queue:
                    self._cond.wait(self.IDLE)
                if not self._queue:
                    self._thread = None
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._busy = True
            with contextlib.suppress(Exception):
                self._push(batch)

    def _push(self, batch: list[tuple[str, bytes]]) -> None:
        pool = self._client.pool()
        conn: Any = pool.get_connection()  # redis-py leaves Connection's methods untyped
        try:
            commands: list[tuple[Any, ...]] = []
            for ready, token in batch:
                commands += [("LPUSH", ready, token), ("PEXPIRE", ready, NOTIFY_TTL_MS)]
            conn.send_packed_command(conn.pack_commands(commands))
            for _ in commands:
                conn.read_response()
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)


class RedissBackend(RedisBackend):
    """``rediss://``: the Redis result backend over TLS."""

    scheme = "rediss"


class SentinelBackend(RedisBackend):
    """``sentinel://``: the Redis result backend on the master the sentinels name
    (``redis_sentinel``); ``master_name`` in result_backend_transport_options."""

    scheme = "sentinel"
