"""Remote control of the workers: ``app.control``.

Most commands travel to the live workers over the broker's control topic
(``control.mailbox``): ``broadcast``, ``ping``, ``inspect()``, ``time_limit``,
``pool_grow``/``pool_shrink``, ``add_consumer``/``cancel_consumer``, ``shutdown``, with
Celery's names, arguments and reply shapes (``reply=True`` returns
``[{node: reply}, ...]``; ``destination=[names]`` limits who answers).

``revoke`` writes to the result backend's server, not to the workers, so it reaches every
worker, including those that start later (see ``celeriac.backends.revocations``):

- a revoked task that has not run yet is never run: when its message comes out of the
  queue (now, after its countdown, or on a worker started tomorrow), the worker stores
  REVOKED (``get()`` raises ``TaskRevokedError``) and acks it;
- with ``terminate=True`` a running task is stopped as well: an async task is cancelled,
  a sync task's worker process is replaced, as for a hard time limit
  (``celeriac.worker.guard``); its outcome is REVOKED;
- workers read new revocations about once a second, so a revoke takes up to about a
  second to reach a running worker; it is kept for ``result_expires`` seconds.

A revoke is not undone, and it does not affect a task that has already finished.

``rate_limit(task_name, "50/s")`` changes a task's rate limit for every worker at once; it
is kept beside the token buckets (``celeriac.ratelimit``), which workers read about once
a second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celeriac.backends.revocations import REVOKE, TERMINATE, revocation_store
from celeriac.control import replies
from celeriac.control.inspect import Inspect
from celeriac.control.mailbox import DEFAULT_TIMEOUT, Request, call
from celeriac.errors import ConfigurationError

if TYPE_CHECKING:
    from celeriac.app import App


class Control:
    """What ``app.control`` offers (Celery's names)."""

    def __init__(self, app: App) -> None:
        self.app = app

    def revoke(self, task_id: str | Iterable[str], terminate: bool = False,
               signal: str | int | None = None) -> None:
        """Revoke one task id or several; ``terminate`` also stops them if running.

        ``signal`` is accepted for Celery compatibility and has no effect: a running sync
        task is stopped by replacing its process, whatever the signal asked for.
        """
        self.app._run_sync(self.arevoke(task_id, terminate, signal))

    async def arevoke(self, task_id: str | Iterable[str], terminate: bool = False,
                      signal: str | int | None = None) -> None:
        """``revoke`` for async callers."""
        del signal  # see revoke()
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        if not all(isinstance(one, str) and one for one in ids):
            raise TypeError(f"task ids are non-empty strings, not {task_id!r}")
        backend = await self.app._connected_backend()
        store = revocation_store(backend)
        if store is None:
            raise ConfigurationError(
                f"the {backend.scheme}:// result backend keeps no state on a server, so "
                "there is nowhere to keep revocations for the workers; use a stored "
                "result backend (sqlite://, redis://) to revoke tasks")
        await store.add(ids, TERMINATE if terminate else REVOKE,
                        self.app.conf.result_expires)

    def terminate(self, task_id: str | Iterable[str]) -> None:
        """``revoke(task_id, terminate=True)``."""
        self.revoke(task_id, terminate=True)

    def rate_limit(self, task_name: str, rate_limit: str | float | None,
                   destination: str | Sequence[str] | None = None, reply: bool = False,
                   timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]] | None:
        """Set the rate limit of a task for every worker: ``"50/s"``, ``"10/m"``...

        ``None`` or ``0`` lift the limit (as in Celery), whatever the task declares;
        ``reset_rate_limit`` goes back to the declared one. The limit is kept beside the
        shared token buckets, so it reaches every worker, including those started later;
        with ``reply=True`` the live workers also confirm it (Celery's reply shape), and
        with a ``destination`` only the workers named are asked to set it (for them all:
        the buckets are shared).
        """
        if destination is None:
            self.app._run_sync(self.arate_limit(task_name, rate_limit))
            if not reply:
                return None
        return self.broadcast("rate_limit", {"task_name": task_name,
                                             "rate_limit": rate_limit},
                              destination=destination, reply=reply, timeout=timeout)

    async def arate_limit(self, task_name: str, rate_limit: str | float | None) -> None:
        """``rate_limit`` for async callers."""
        from celeriac.ratelimit import canonical

        await self._set_rate_limit(task_name, canonical(rate_limit))

    def reset_rate_limit(self, task_name: str) -> None:
        """Forget the run-time rate limit of a task: its declared one applies again."""
        self.app._run_sync(self._set_rate_limit(task_name, None))

    async def _set_rate_limit(self, task_name: str, rate: str | None) -> None:
        from celeriac.ratelimit import shared_buckets

        buckets = shared_buckets(self.app)
        if buckets is None:
            raise ConfigurationError(
                "neither the broker nor the result backend keeps state on a server, so "
                "there is nowhere to keep rate limits for the workers; use a sqlite:// or "
                "redis:// broker or result backend")
        try:
            await buckets.set_override(task_name, rate)
        finally:
            await buckets.close()

    # -- commands to the live workers (control.mailbox) -----------------------------------

    def broadcast(self, command: str, arguments: Mapping[str, Any] | None = None,
                  destination: str | Sequence[str] | None = None, reply: bool = False,
                  timeout: float = DEFAULT_TIMEOUT, limit: int | None = None,
                  **extra: Any) -> list[dict[str, Any]] | None:
        """Send ``command`` to the workers (those named in ``destination``, else all).

        With ``reply=True``: ``[{node: reply}, ...]``, one entry per node that answered
        within ``timeout`` seconds (its processes' answers merged); else ``None``.
        """
        return self.app._run_sync(self.abroadcast(command, arguments, destination, reply,
                                                  timeout, limit, **extra))

    async def abroadcast(self, command: str, arguments: Mapping[str, Any] | None = None,
                         destination: str | Sequence[str] | None = None,
                         reply: bool = False, timeout: float = DEFAULT_TIMEOUT,
                         limit: int | None = None,
                         **extra: Any) -> list[dict[str, Any]] | None:
        """``broadcast`` for async callers."""
        if isinstance(destination, str):
            destination = [destination]
        request = Request(command, {**(arguments or {}), **extra},
                          tuple(destination) if destination is not None else None, reply)
        bus = await self.app.open_bus()
        try:
            answers = await call(bus, request, timeout, limit)
        finally:
            await bus.close()
        if not reply:
            return None
        return [{node: value} for node, value in replies.by_node(command, answers).items()]

    def inspect(self, destination: str | Sequence[str] | None = None,
                timeout: float = DEFAULT_TIMEOUT, limit: int | None = None) -> Inspect:
        """``inspect().active()``, ``.stats()``...: ask the live workers (see Inspect)."""
        return Inspect(self, destination, timeout, limit)

    def ping(self, destination: str | Sequence[str] | None = None,
             timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
        """``[{node: {"ok": "pong"}}, ...]`` for every node that answered in time."""
        return self.broadcast("ping", destination=destination, reply=True,
                              timeout=timeout) or []

    def time_limit(self, task_name: str, soft: float | None = None,
                   hard: float | None = None, destination: str | Sequence[str] | None = None,
                   reply: bool = False,
                   timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]] | None:
        """Change a task's time limits in the live workers (later runs; not kept for
        workers started after)."""
        return self.broadcast("time_limit", {"task_name": task_name, "soft": soft,
                                             "hard": hard},
                              destination=destination, reply=reply, timeout=timeout)

    def pool_grow(self, n: int = 1, destination: str | Sequence[str] | None = None,
                  reply: bool = False,
                  timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]] | None:
        """Add ``n`` processes (prefork) or slots (threads, async) to each worker."""
        return self.broadcast("pool_grow", {"n": n}, destination=destination, reply=reply,
                              timeout=timeout)

    def pool_shrink(self, n: int = 1, destination: str | Sequence[str] | None = None,
                    reply: bool = False,
                    timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]] | None:
        """Remove ``n`` processes or slots from each worker (a process finishes its task
        and hands back what it prefetched first)."""
        return self.broadcast("pool_shrink", {"n": n}, destination=destination,
                              reply=reply, timeout=timeout)

    def add_consumer(self, queue: str, exchange: str | None = None,
                     exchange_type: str = "direct", routing_key: str | None = None,
                     options: Mapping[str, Any] | None = None,
                     destination: str | Sequence[str] | None = None, reply: bool = False,
                     timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]] | None:
        """Make the workers consume ``queue`` too (until they restart). ``exchange``,
        ``exchange_type``, ``routing_key`` and ``options`` are Celery's; celeriac consumes
        queues by name and ignores them."""
        del exchange, exchange_type, routing_key, options
        return self.broadcast("add_consumer", {"queue": queue}, destination=destination,
                              reply=reply, timeout=timeout)

    def cancel_consumer(self, queue: str, destination: str | Sequence[str] | None = None,
                        reply: bool = False,
                        timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]] | None:
        """Make the workers stop consuming ``queue`` (until they restart)."""
        return self.broadcast("cancel_consumer", {"queue": queue}, destination=destination,
                              reply=reply, timeout=timeout)

    def shutdown(self, destination: str | Sequence[str] | None = None, reply: bool = False,
                 timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]] | None:
        """A warm shutdown of the workers (as a first SIGTERM)."""
        return self.broadcast("shutdown", destination=destination, reply=reply,
                              timeout=timeout)
