"""Remote control of the workers: ``app.control``.

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

from collections.abc import Iterable
from typing import TYPE_CHECKING

from celeriac.backends.revocations import REVOKE, TERMINATE, revocation_store
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

    def rate_limit(self, task_name: str, rate_limit: str | float | None) -> None:
        """Set the rate limit of a task for every worker: ``"50/s"``, ``"10/m"``...

        ``None`` or ``0`` lift the limit (as in Celery), whatever the task declares;
        ``reset_rate_limit`` goes back to the declared one.
        """
        self.app._run_sync(self.arate_limit(task_name, rate_limit))

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
