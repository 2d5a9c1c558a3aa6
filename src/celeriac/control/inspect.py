"""``app.control.inspect()``: ask the live workers what they are doing, as Celery does.

Each method broadcasts one request, collects answers for ``timeout`` seconds, and
returns ``{node name: reply}`` (one reply per node, merged from its processes:
``control.replies``), or ``None`` when no worker answered. With ``destination`` a list of
node names only those answer; with a single name (a string) the reply of that node is
returned directly, as Celery does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celeriac.control.mailbox import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from celeriac.control.client import Control


class Inspect:
    def __init__(self, control: Control, destination: str | Sequence[str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT, limit: int | None = None) -> None:
        self.control = control
        self.destination = destination
        self.timeout = timeout
        self.limit = limit

    def _request(self, command: str, **arguments: Any) -> Any:
        replies = self.control.broadcast(command, arguments, destination=self.destination,
                                         reply=True, timeout=self.timeout, limit=self.limit)
        merged: dict[str, Any] = {}
        for item in replies or []:
            merged.update(item)
        if not merged:
            return None
        if isinstance(self.destination, str):
            return merged.get(self.destination)
        return merged

    def ping(self) -> Any:
        """``{node: {"ok": "pong"}}``."""
        return self._request("ping")

    def active(self) -> Any:
        """The tasks each node is running: id, name, args, kwargs, time_start, worker_pid,
        delivery_info (queue)..."""
        return self._request("active")

    def reserved(self) -> Any:
        """The tasks each node fetched and has not started yet."""
        return self._request("reserved")

    def scheduled(self) -> Any:
        """Always empty lists: tasks with an eta wait in the broker, not in workers
        (``celeriac queues`` counts them)."""
        return self._request("scheduled")

    def registered(self, *taskinfoitems: str) -> Any:
        """The task names each node knows."""
        return self._request("registered", taskinfoitems=list(taskinfoitems) or None)

    registered_tasks = registered

    def stats(self) -> Any:
        """Each node's numbers: pid, pool (processes, max-concurrency), total by task
        name, rusage, uptime, broker."""
        return self._request("stats")

    def active_queues(self) -> Any:
        """The queues each node consumes."""
        return self._request("active_queues")

    def conf(self, with_defaults: bool = False) -> Any:
        """Each node's settings (those changed from the defaults), secrets masked."""
        return self._request("conf", with_defaults=with_defaults)

    def revoked(self) -> Any:
        """The revoked task ids each node knows of."""
        return self._request("revoked")
