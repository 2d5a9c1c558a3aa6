"""The task events a worker process emits, at the moments Celery emits them.

- ``task-received``: a delivery was decoded and checked and will run (``Executor.prepare``);
- ``task-started``: just before the call (for a batch of quick calls, before the batch);
- ``task-succeeded``, ``task-failed``, ``task-retried``, ``task-rejected``,
  ``task-revoked``: once the flush has carried the verdict out (``settled``): the result
  is stored and the message acked, so a monitor that sees ``task-succeeded`` can
  ``get()`` the result at once, and a verdict whose write is retried is reported once.

Each is one tuple appended to the process's ``EventEmitter`` buffer (``event.FIELDS``
gives the order of the values). A task revoked or dead-lettered before it ran has no
``task-received``, as in Celery.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.events.emitter import EventEmitter
from celeriac.events.event import REASON_MAX, TRACEBACK_MAX, bounded, bounded_repr, iso

if TYPE_CHECKING:
    from celeriac.message import Message
    from celeriac.worker.executor import Prepared, Verdict


class TaskEvents:
    """Makes a worker process's task events and hands them to its emitter."""

    def __init__(self, emitter: EventEmitter) -> None:
        self.emitter = emitter
        self._emit = emitter.emit

    def received(self, prepared: Prepared) -> None:
        m = prepared.message
        self._emit(("task-received", time.time(), m.id, m.task, m.queue, _root(m),
                    m.parent_id, bounded_repr(m.args) if m.args else "()",
                    bounded_repr(m.kwargs) if m.kwargs else "{}", m.retries,
                    iso(m.eta) if m.eta is not None else None,
                    iso(m.expires) if m.expires is not None else None))

    def started(self, prepared: Prepared) -> None:
        m = prepared.message
        self._emit(("task-started", time.time(), m.id, m.task, m.queue, _root(m),
                    m.parent_id))

    def started_batch(self, batch: Sequence[Prepared]) -> None:
        now, emit = time.time(), self._emit
        for prepared in batch:
            m = prepared.message
            emit(("task-started", now, m.id, m.task, m.queue, _root(m), m.parent_id))

    def settled(self, batch: Sequence[tuple[Any, Verdict]],
                stored: Mapping[str, bytes]) -> None:
        """The events of a batch of verdicts the flush has just carried out; ``stored``
        is what it wrote to the result backend (task id -> bytes: the result's size)."""
        from celeriac.worker.executor import Action

        now, emit = time.time(), self._emit
        for held, verdict in batch:
            m, action, outcome = verdict.message, verdict.action, verdict.outcome
            if action is Action.ACK:
                if m is None:
                    continue  # (a duplicate workflow step: nothing ran, nothing to say)
                state = outcome.state if outcome is not None else states.SUCCESS
                if state == states.SUCCESS:
                    result = stored.get(m.id)
                    emit(("task-succeeded", now, *_task(m), verdict.runtime,
                          len(result) if result is not None else None))
                elif state == states.REVOKED:
                    assert outcome is not None
                    emit(("task-revoked", now, *_task(m), verdict.runtime is not None,
                          "expired" in (outcome.exc_message or "")))
                else:
                    emit(("task-failed", now, *_task(m), _exception(verdict),
                          bounded(outcome.traceback if outcome else None, TRACEBACK_MAX),
                          verdict.runtime))
            elif action is Action.RETRY and m is not None:
                eta = verdict.retry.eta if verdict.retry is not None else None
                emit(("task-retried", now, *_task(m), _exception(verdict), iso(eta),
                      max(0.0, eta - now) if eta is not None else 0.0))
            elif action in (Action.DEAD_LETTER, Action.REQUEUE):
                dead = action is Action.DEAD_LETTER
                fields = _task(m) if m is not None else (held.delivery.id, None,
                                                         held.delivery.queue, None, None)
                emit(("task-rejected", now, *fields, bounded(verdict.reason, REASON_MAX),
                      dead, not dead))

    def set_aside(self, held: Any, verdict: Verdict, reason: str) -> None:
        """A verdict the flush could not carry out was dead-lettered instead."""
        m = verdict.message
        fields = _task(m) if m is not None else (held.delivery.id, None,
                                                 held.delivery.queue, None, None)
        self._emit(("task-rejected", time.time(), *fields, bounded(reason, REASON_MAX),
                    True, False))


def _task(m: Message) -> tuple[Any, ...]:
    return m.id, m.task, m.queue, _root(m), m.parent_id


def _root(m: Message) -> str | None:
    """The root id as sent: None for a task that is its own root (``event.expand``
    fills it in), which keeps a fifth of the bytes of a task's events off the wire."""
    root = m.root_id
    return None if root == m.id else root


def _exception(verdict: Verdict) -> str | None:
    """``Type: message``, as Celery's task-failed and task-retried say it."""
    outcome = verdict.outcome
    if outcome is None:
        return None
    kind = (outcome.exc_type or "Exception").rpartition(".")[2]
    return bounded(f"{kind}: {outcome.exc_message}" if outcome.exc_message else kind,
                   REASON_MAX)
