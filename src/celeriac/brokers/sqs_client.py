"""SQS clients: one aiobotocore client per event loop, one botocore client per process.

An aiobotocore client holds an aiohttp session, which belongs to the loop that opened
it, and a broker object is used from several loops (the worker's, the app's bridge loop,
``asyncio.run`` in tests): so each loop gets its own, closed when the loop finalises its
async generators (as ``asyncio.run`` does) or when ``close`` is called on it. Sync
producers (``publish_blocking``) share one thread-safe botocore client per process.

``call`` and ``call_blocking`` turn botocore's failures into celeriac's: a server that
cannot be reached is ``BrokerUnavailable``, anything the server refused is
``BrokerError`` naming the action and SQS's error code. Secrets never appear in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import botocore.session
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

from celeriac.brokers.sqs_settings import SqsSettings
from celeriac.errors import BrokerError, BrokerUnavailable
from celeriac.urls import safe_url

# Error codes meaning "this receipt is not the message's current delivery": a handle
# from before a newer receive (ReceiptHandleIsInvalid), or on AWS a message no longer in
# flight under it (InvalidParameterValue, MessageNotInflight).
LOST_RECEIPT = frozenset({"ReceiptHandleIsInvalid", "InvalidParameterValue",
                          "MessageNotInflight", "InvalidReceiptHandle"})
QUEUE_MISSING = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


def client_config(settings: SqsSettings) -> Config:
    return Config(region_name=settings.region, connect_timeout=settings.connection_timeout,
                  read_timeout=max(20.0, settings.connection_timeout),
                  retries={"max_attempts": 3, "mode": "standard"},
                  max_pool_connections=32)


def client_kwargs(settings: SqsSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"config": client_config(settings)}
    if settings.endpoint_url:
        kwargs["endpoint_url"] = settings.endpoint_url
    if settings.access_key is not None:
        kwargs["aws_access_key_id"] = settings.access_key
        kwargs["aws_secret_access_key"] = settings.secret_key
    return kwargs


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class SqsError(BrokerError):
    """SQS refused a call; ``code`` is its error code (``QueueDoesNotExist``...)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def translate(exc: Exception, settings: SqsSettings, action: str) -> Exception:
    """The celeriac error for a failed SQS call."""
    where = settings.endpoint_url or f"SQS in {settings.region}"
    if isinstance(exc, ClientError):
        return SqsError(f"{action} failed at {safe_url(where)}: {error_code(exc)}: "
                        f"{exc.response.get('Error', {}).get('Message', '')}", error_code(exc))
    if isinstance(exc, ConnectionError | HTTPClientError | TimeoutError | OSError):
        return BrokerUnavailable(f"cannot reach {safe_url(where)} for {action}: "
                                 f"{type(exc).__name__}: {exc}")
    return BrokerError(f"{action} failed at {safe_url(where)}: {type(exc).__name__}: {exc}")


# One botocore session per process, for both kinds of client: it caches the service
# model, which takes tens of milliseconds of CPU to load for each new session.
_SESSIONS: dict[str, Any] = {}


def _session(kind: str) -> Any:
    found = _SESSIONS.get(kind)
    if found is None:
        found = get_session() if kind == "async" else botocore.session.get_session()
        _SESSIONS[kind] = found
    return found


class SqsClients:
    """The aiobotocore client of each loop and the botocore client of this process."""

    def __init__(self, settings: SqsSettings,
                 on_missing_queue: Callable[[], None] | None = None) -> None:
        self.settings = settings
        # Told when SQS says a queue is gone (deleted behind this process's back), so
        # that the queue URLs it knew are looked up, and the queues made, again.
        self.on_missing_queue = on_missing_queue
        self._lock = threading.Lock()
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop,
            tuple[Any, AsyncGenerator[None, None]]] = weakref.WeakKeyDictionary()
        self._opening: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
        self._sync: Any = None

    async def client(self) -> Any:
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is not None:
            return entry[0]
        with self._lock:
            opening = self._opening.setdefault(loop, asyncio.Lock())
        async with opening:  # one client per loop, however many tasks ask at once
            entry = self._clients.get(loop)
            if entry is not None:
                return entry[0]
            context = _session("async").create_client("sqs", **client_kwargs(self.settings))
            client = await context.__aenter__()
            keeper = _close_with_loop(lambda: context.__aexit__(None, None, None))
            await keeper.asend(None)
            with self._lock:
                self._clients[loop] = (client, keeper)
            return client

    async def call(self, action: str, **params: Any) -> dict[str, Any]:
        """One SQS action on this loop's client (``action`` in botocore's snake case)."""
        client = await self.client()
        try:
            result: dict[str, Any] = await getattr(client, action)(**params)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._failed(exc, action) from exc
        return result

    def _failed(self, exc: Exception, action: str) -> Exception:
        error = translate(exc, self.settings, action)
        if isinstance(error, SqsError) and error.code in QUEUE_MISSING \
                and action != "get_queue_url" and self.on_missing_queue is not None:
            self.on_missing_queue()
        return error

    def call_blocking(self, action: str, **params: Any) -> dict[str, Any]:
        with self._lock:
            if self._sync is None:
                self._sync = _session("sync").create_client(
                    "sqs", **client_kwargs(self.settings))
            client = self._sync
        try:
            result: dict[str, Any] = getattr(client, action)(**params)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._failed(exc, action) from exc
        return result

    async def close(self) -> None:
        """Close this loop's client (others close when their own loops shut down)."""
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            with self._lock:
                entry = self._clients.pop(loop, None)
            if entry is not None:
                await entry[1].aclose()

    def close_blocking(self) -> None:
        with self._lock:
            client, self._sync = self._sync, None
        if client is not None:
            client.close()


async def _close_with_loop(close: Callable[[], Awaitable[Any]]) -> AsyncGenerator[None, None]:
    """Parked at its ``yield`` on the loop that made a client: closed by ``close()``, or
    when the loop finalises its async generators on shutdown, while that loop still runs."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await close()
