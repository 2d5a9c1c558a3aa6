"""AsyncResult: a handle on a task's outcome, read from the result backend."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from celeriac import states
from celeriac.errors import TimeoutError
from celeriac.outcome import Outcome, rebuild_exception

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.group_result import GroupResult

R = TypeVar("R")


class AsyncResult(Generic[R]):
    """The outcome of one task, by id. Cheap to create; every property reads the backend."""

    # The result of the step before this one in a chain (a GroupResult for a chord's
    # body), set when a canvas is sent: ``chain(...).delay().parent.get()``.
    parent: AsyncResult[Any] | GroupResult | None = None

    def __init__(self, id: str, app: App, task_name: str | None = None) -> None:
        self.id = id
        self.app = app
        self.task_name = task_name
        self._outcome: Outcome | None = None  # cached once ready: a final state never changes

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- waiting --------------------------------------------------------------------------

    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float | None = None) -> R:
        """Wait for the final state and return the value, or raise the task's exception.

        The wait happens in the backend (on its server where it can), so it does not spin.
        ``interval`` is accepted for Celery compatibility; waiting needs no polling interval.
        """
        del interval
        outcome = self._outcome
        if outcome is None:
            backend = self.app.backend
            if backend.supports_blocking:  # waits in this thread, no bridge hop
                started = time.monotonic()
                final = _FinalOutcome(self.app)
                data = backend.wait_blocking(self.id, timeout, accept=final)
                outcome = self._received(data, final, started)
            else:
                outcome = self.app._run_sync(self._wait(timeout))
        return self._settle(outcome, propagate)

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> R:
        """``get()`` for async callers: waits without blocking the event loop."""
        outcome = self._outcome or await self._wait(timeout)
        return self._settle(outcome, propagate)

    wait = get  # Celery's alias

    async def _wait(self, timeout: float | None) -> Outcome:
        started = time.monotonic()
        backend = await self.app._connected_backend()
        final = _FinalOutcome(self.app)
        data = await backend.wait(self.id, timeout, accept=final)
        return self._received(data, final, started)

    def _received(self, data: bytes | None, final: _FinalOutcome, started: float) -> Outcome:
        if data is None:
            waited = time.monotonic() - started
            raise TimeoutError(f"task {self.id} did not finish within {waited:.3g} s")
        outcome = final.decoded(data)
        self._outcome = outcome
        return outcome

    def _settle(self, outcome: Outcome, propagate: bool) -> R:
        if outcome.state == states.SUCCESS:
            value: R = self._value(outcome)
            return value
        exc = rebuild_exception(outcome)
        if propagate:
            raise exc
        return exc  # type: ignore[return-value]  # Celery returns the exception when not propagating

    def _value(self, outcome: Outcome) -> Any:
        """A success's value as the caller expects it: a ``validate=True`` task known here
        gets its stored (JSON) result back through its return annotation, as a model."""
        name = outcome.task or self.task_name
        task = self.app.tasks.get(name) if name is not None else None
        if task is None or not task.options.validate:
            return outcome.result
        validator = task.validator
        return outcome.result if validator is None else validator.result_from_store(
            outcome.result)

    # -- state ----------------------------------------------------------------------------

    def _current(self) -> Outcome | None:
        if self._outcome is not None:
            return self._outcome
        backend = self.app.backend
        if backend.supports_blocking:
            data = backend.load_many_blocking([self.id]).get(self.id)
        else:
            data = self.app._run_sync(self._load())
        if data is None:
            return None
        outcome = self.app.decode_outcome(data)
        if outcome.ready:
            self._outcome = outcome
        return outcome

    async def _load(self) -> bytes | None:
        backend = await self.app._connected_backend()
        return await backend.load(self.id)

    @property
    def state(self) -> str:
        outcome = self._current()
        return states.PENDING if outcome is None else outcome.state

    status = state

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    @property
    def result(self) -> Any:
        """The value when successful, the exception when failed, the worker's ``pid`` and
        ``hostname`` when STARTED, else None (as in Celery)."""
        outcome = self._current()
        if outcome is None:
            return None
        if outcome.state in states.EXCEPTION_STATES:
            return rebuild_exception(outcome)
        return self._value(outcome) if outcome.state == states.SUCCESS else outcome.result

    info = result

    @property
    def traceback(self) -> str | None:
        outcome = self._current()
        return None if outcome is None else outcome.traceback

    @property
    def date_done(self) -> float | None:
        outcome = self._current()
        return None if outcome is None else outcome.date_done

    @property
    def args(self) -> list[Any] | None:
        """A failed task's positional arguments (kept with its FAILURE); else None."""
        outcome = self._current()
        return None if outcome is None else outcome.args

    @property
    def kwargs(self) -> dict[str, Any] | None:
        """A failed task's keyword arguments (kept with its FAILURE); else None."""
        outcome = self._current()
        return None if outcome is None else outcome.kwargs

    def forget(self) -> None:
        """Delete the stored result."""
        self._outcome = None
        self.app._run_sync(self._delete())

    async def _delete(self) -> None:
        backend = await self.app._connected_backend()
        await backend.delete_many([self.id])

    def revoke(self, terminate: bool = False, signal: str | int | None = None) -> None:
        """Do not run this task; with ``terminate``, stop it if it runs (``app.control``)."""
        self.app.control.revoke(self.id, terminate=terminate, signal=signal)

    async def arevoke(self, terminate: bool = False) -> None:
        """``revoke`` for async callers."""
        await self.app.control.arevoke(self.id, terminate=terminate)


class _FinalOutcome:
    """The ``accept`` test of a wait: is this a final state? Keeps what it decoded, so
    that the bytes the wait returns are not decoded a second time."""

    __slots__ = ("app", "data", "outcome")

    def __init__(self, app: App) -> None:
        self.app = app
        self.data: bytes | None = None
        self.outcome: Outcome | None = None

    def __call__(self, data: bytes) -> bool:
        outcome = self.app.decode_outcome(data)
        self.data, self.outcome = data, outcome
        return outcome.ready

    def decoded(self, data: bytes) -> Outcome:
        if self.outcome is not None and (data is self.data or data == self.data):
            return self.outcome
        return self.app.decode_outcome(data)


class EagerResult(AsyncResult[R]):
    """The result of a task run in the calling process (``task_always_eager``, ``apply``)."""

    def __init__(self, id: str, app: App, outcome: Outcome, task_name: str | None = None):
        super().__init__(id, app, task_name)
        self._outcome = outcome

    def forget(self) -> None:
        pass
