"""GroupResult: the results of a group's members, read and waited for together.

A ``GroupResult`` holds the ``AsyncResult`` of every member (a member that is itself a
group has a ``GroupResult`` of its own), under the group's id. The state questions —
``completed_count()``, ``ready()``, ``successful()``, ``failed()`` — read every member's
stored outcome in one backend call; ``get()`` waits for them in order, in one trip to
the app's event loop, and returns the list of values.

Like an ``AsyncResult`` in a chain, a GroupResult has a ``parent``: the result of the
step before it (for a chord's header, the step before the chord).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from celeriac import states
from celeriac.errors import TimeoutError
from celeriac.result import AsyncResult

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.outcome import Outcome

ResultLike: TypeAlias = "AsyncResult[Any] | GroupResult"


class GroupResult:
    """The results of a group: a list of AsyncResults (or nested GroupResults)."""

    def __init__(self, id: str | None, results: Sequence[ResultLike],
                 app: App | None = None, parent: ResultLike | None = None) -> None:
        self.id = id
        self.results: list[ResultLike] = list(results)
        found = app or next((result.app for result in self.results), None)
        if found is None:
            raise ValueError("an empty GroupResult needs its app")
        self.app: App = found
        self.parent = parent

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} [{', '.join(str(r.id) for r in self.results)}]>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GroupResult) and other.id == self.id \
            and other.results == self.results

    def __hash__(self) -> int:
        return hash(self.id)

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[ResultLike]:
        return iter(self.results)

    def __getitem__(self, index: int) -> ResultLike:
        return self.results[index]

    @property
    def children(self) -> list[ResultLike]:
        return self.results

    # -- waiting --------------------------------------------------------------------------

    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float | None = None) -> list[Any]:
        """Wait for every member; return their values in order.

        With ``propagate`` the first failed member (in order) raises its exception; without,
        its exception takes its place in the list. ``timeout`` bounds the whole wait.
        """
        del interval  # accepted for Celery compatibility; waiting does not poll
        return self.app._run_sync(self.aget(timeout, propagate))

    join = get  # Celery's name

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """``get()`` for async callers."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values: list[Any] = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                values.append(await result.aget(remaining, propagate))
            except TimeoutError:
                raise TimeoutError(f"group {self.id} did not finish within {timeout:.3g} s "
                                   f"(waiting for member {result.id})") from None
        return values

    # -- state ----------------------------------------------------------------------------

    def _leaves(self) -> list[AsyncResult[Any]]:
        leaves: list[AsyncResult[Any]] = []
        for result in self.results:
            if isinstance(result, GroupResult):
                leaves.extend(result._leaves())
            else:
                leaves.append(result)
        return leaves

    def _states(self) -> dict[str, str]:
        """The state of every leaf task, by id, from one backend read."""
        leaves = self._leaves()
        known: dict[str, Outcome] = {
            leaf.id: leaf._outcome for leaf in leaves if leaf._outcome is not None}
        missing = [leaf.id for leaf in leaves if leaf.id not in known]
        if missing:
            stored = self.app._run_sync(self._load(missing))
            for task_id, data in stored.items():
                outcome = self.app.decode_outcome(data)
                known[task_id] = outcome
        return {leaf.id: known[leaf.id].state if leaf.id in known else states.PENDING
                for leaf in leaves}

    async def _load(self, task_ids: list[str]) -> dict[str, bytes]:
        backend = await self.app._connected_backend()
        return await backend.load_many(task_ids)

    def _per_member(self) -> list[list[str]]:
        """The leaf states of each direct member (one list per member)."""
        found = self._states()
        return [[found[leaf.id] for leaf in (member._leaves()
                                             if isinstance(member, GroupResult) else [member])]
                for member in self.results]

    def completed_count(self) -> int:
        """How many members have succeeded (Celery's meaning of "completed")."""
        return sum(all(state == states.SUCCESS for state in member)
                   for member in self._per_member())

    def ready(self) -> bool:
        """Whether every member has finished, successfully or not."""
        return all(state in states.READY_STATES for state in self._states().values())

    def waiting(self) -> bool:
        """Whether some member has not finished yet."""
        return not self.ready()

    def successful(self) -> bool:
        """Whether every member has succeeded."""
        return all(state == states.SUCCESS for state in self._states().values())

    def failed(self) -> bool:
        """Whether some member has failed."""
        return any(state == states.FAILURE for state in self._states().values())

    def revoke(self, terminate: bool = False) -> None:
        """Revoke every member (``app.control.revoke``, in one call)."""
        self.app.control.revoke([leaf.id for leaf in self._leaves()], terminate=terminate)

    def forget(self) -> None:
        """Delete the stored results of every member."""
        for leaf in self._leaves():
            leaf.forget()


__all__ = ["GroupResult", "ResultLike"]
