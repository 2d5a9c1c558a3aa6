"""The Redis result backend: results under keys with a TTL, and waiting on the server.

Key layout (``P`` is the ``key_prefix`` option, ``celeriac:`` by default)::

    P result:<task id>   STRING  the result bytes; expires after ``result_expires``
                                 (no expiry when it is None)
    P ready:<task id>    LIST    a wake-up token pushed with every store of that id;
                                 expires after NOTIFY_TTL (or the result's TTL if shorter)

``store_many`` writes each result and replaces its token list with one fresh token,
pipelined in one round trip. ``wait`` reads the result; while it is missing or not
accepted (an intermediate state such as STARTED), it blocks in BLPOP on the token list,
so the server wakes it the moment a store happens: no polling. A waiter that pops the
token and finds a result it accepts pushes the token back before returning, so every
other waiter of the same id wakes in turn. A waiter that finds a result it does not
accept keeps the token (pushing it back would wake itself again at once) and waits on.

The token only has to outlive the gap between a waiter's read and its BLPOP, which is
why it expires quickly instead of living as long as the result.

Options (also read from the URL's query string): ``key_prefix``, ``connection_timeout``
(default 4 s: a call during an outage raises BackendError within about that time),
``pool_limit`` (connections per event loop; each waiting ``get`` holds one while it
waits, so the default is unbounded), and the TLS options of ``rediss://`` URLs, as for
the Redis broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celeriac.backends.base import ResultBackend
from celeriac.brokers.redis_connection import (
    CONNECTION_OPTIONS,
    LoopClients,
    RedisSettings,
    command,
    translate_errors,
)
from celeriac.errors import BackendError

OPTIONS = frozenset({"key_prefix", *CONNECTION_OPTIONS})
NOTIFY_TTL_MS = 10_000
TOKEN = b"1"


class RedisBackend(ResultBackend):
    scheme = "redis"

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        # Options come from the app, which may pass some meant for other backends (the
        # broker's URL, for rpc://); only the ones named in OPTIONS are read.
        mine = {name: value for name, value in self.options.items() if name in OPTIONS}
        self.settings = RedisSettings.from_options(url, {"pool_limit": None, **mine})
        self.prefix = self.settings.key_prefix
        # A BLPOP must end well within the socket timeout (see the broker's blocking read).
        self.max_block = self.settings.connection_timeout / 2
        self._clients = LoopClients(self.settings.make_client)

    def __repr__(self) -> str:
        return f"<RedisBackend {self.settings.url} prefix={self.prefix!r}>"

    def result_key(self, task_id: str) -> str:
        return f"{self.prefix}result:{task_id}"

    def ready_key(self, task_id: str) -> str:
        return f"{self.prefix}ready:{task_id}"

    def _errors(self, what: str) -> Any:
        return translate_errors(BackendError, BackendError, f"Redis result backend {what}")

    def _deadline(self, extra: float = 0.0) -> asyncio.Timeout:
        return asyncio.timeout(self.settings.connection_timeout + extra)

    async def connect(self) -> None:
        client = await self._clients.get()
        with self._errors("connect"):
            async with self._deadline():
                await client.ping()

    async def close(self) -> None:
        await self._clients.close()

    async def store_many(self, results: Mapping[str, bytes], ttl: float | None) -> None:
        if not results:
            return
        client = await self._clients.get()
        pipe = client.pipeline(transaction=False)
        execute = command(pipe)
        ttl_ms = None if ttl is None else max(1, round(ttl * 1000))
        notify_ms = NOTIFY_TTL_MS if ttl_ms is None else min(ttl_ms, NOTIFY_TTL_MS)
        for task_id, data in results.items():
            key, ready = self.result_key(task_id), self.ready_key(task_id)
            if ttl_ms is None:
                execute("SET", key, data)
            else:
                execute("SET", key, data, "PX", ttl_ms)
            # One fresh token, whatever earlier stores (STARTED, RETRY) left behind.
            execute("DEL", ready)
            execute("RPUSH", ready, TOKEN)
            execute("PEXPIRE", ready, notify_ms)
        with self._errors("store"):
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
        woken = None
        with self._errors("wait"):
            while True:
                async with self._deadline():
                    data = await execute("GET", key)
                if data is not None and (accept is None or accept(data)):
                    if woken is not None:
                        await self._wake_next(client, ready)
                    return bytes(data)
                remaining = self.max_block if deadline is None \
                    else deadline - time.monotonic()
                if remaining <= 0:
                    return None
                block = min(remaining, self.max_block)
                async with self._deadline(block):
                    # BLPOP's timeout is in seconds (decimals allowed); 0 means forever.
                    woken = await execute("BLPOP", ready, max(0.001, round(block, 3)))

    async def _wake_next(self, client: Any, ready: str) -> None:
        """Put the popped token back so that the next waiter of this id wakes too."""
        pipe = client.pipeline(transaction=False)
        command(pipe)("LPUSH", ready, TOKEN)
        command(pipe)("PEXPIRE", ready, NOTIFY_TTL_MS)
        async with self._deadline():
            await pipe.execute()


class RedissBackend(RedisBackend):
    """``rediss://``: the Redis result backend over TLS."""

    scheme = "rediss"
