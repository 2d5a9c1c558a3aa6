"""Carrying out a batch of verdicts: results stored, retries published, deliveries settled.

The consumer's flush loop calls these in this order for each batch, which keeps
at-least-once (a crash in between runs a task again rather than losing it). Each step
acts on the whole batch in one call to the server. What a single verdict cannot do
(an outcome its serializer cannot carry) is settled here for that verdict alone;
``transient`` tells a failure of the servers, which the flush retries, from one of a
verdict's own, which the flush sets aside (docs/architecture.md, Flush).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celeriac import states
from celeriac.app import App
from celeriac.brokers.base import Broker, Delivery
from celeriac.errors import BackendError, BrokerError, MessageError, describe
from celeriac.outcome import Outcome
from celeriac.worker.executor import Action, Verdict

logger = logging.getLogger("celeriac.worker")

# (held, verdict) pairs: anything with the ``delivery`` it settles, and its verdict.
Batch = Sequence[tuple[Any, Verdict]]


def transient(exc: BaseException) -> bool:
    """Whether a failed write is the servers' fault (retry it), not one verdict's."""
    return isinstance(exc, BrokerError | BackendError | OSError)


async def store_outcomes(app: App, batch: Batch) -> dict[str, bytes]:
    """Store the batch's outcomes in one write; returns them (task id -> bytes)."""
    results: dict[str, bytes] = {}
    headers: dict[str, dict[str, Any]] = {}  # where a backend may route each result
    for _, verdict in batch:
        if verdict.outcome is not None and verdict.message is not None:
            results[verdict.message.id] = encoded(app, verdict)
            headers[verdict.message.id] = verdict.message.headers
    if results:
        await app.backend.store_replies(results, headers, app.conf.result_expires)
    return results


def encoded(app: App, verdict: Verdict) -> bytes:
    """The verdict's outcome as stored; a value that cannot be encoded fails the task.

    As in Celery: a task whose return value its result serializer cannot carry fails
    with an error that says so (and what follows it fails with it).
    """
    message, outcome = verdict.message, verdict.outcome
    assert message is not None
    assert outcome is not None
    serializer = message.result_serializer
    try:
        return app.encode_outcome(outcome, serializer)
    except Exception as exc:
        chosen = serializer or app.conf.result_serializer
        error = MessageError(f"the {outcome.state} outcome of {message.task}[{message.id}] "
                             f"could not be encoded with {chosen}: {describe(exc)}")
        logger.error("Task %s[%s] failed: %s", message.task, message.id, error)
        verdict.outcome = Outcome.failure(error, states.FAILURE, message.task,
                                          message.retries)
        if verdict.action is Action.RETRY:  # nothing to retry with: it failed
            verdict.action, verdict.retry = Action.ACK, None
        return app.encode_outcome(verdict.outcome)


async def publish_retries(app: App, batch: Batch) -> None:
    retries = [verdict.retry for _, verdict in batch if verdict.retry is not None]
    if retries:
        await app.publish(retries)


async def settle(broker: Broker, batch: Batch) -> None:
    """Acks, then dead letters, then requeues: each one call for the whole batch."""
    acks: list[Delivery] = [held.delivery for held, v in batch
                            if v.action in (Action.ACK, Action.RETRY, Action.DEFER)]
    dead = [(held.delivery, v.reason or "dead-lettered") for held, v in batch
            if v.action is Action.DEAD_LETTER]
    requeue = [held.delivery for held, v in batch if v.action is Action.REQUEUE]
    if acks:
        await broker.ack(acks)
    if dead:
        await broker.dead_letter(dead)
    if requeue:
        await broker.requeue(requeue)


async def set_aside(broker: Broker, delivery: Delivery, verdict: Verdict,
                    exc: Exception) -> Exception | None:
    """Dead-letter a delivery whose verdict cannot be carried out, with the reason why.

    Returns None once done, or the error when even that failed (the broker's trouble).
    """
    reason = (f"the worker could not store its outcome or send what follows it: "
              f"{describe(exc)}")
    name = f"{verdict.message.task}[{verdict.message.id}]" if verdict.message else delivery.id
    logger.error("Task %s: %s; dead-lettering it", name, reason, exc_info=exc)
    try:
        await broker.dead_letter([(delivery, reason)])
    except Exception as failure:
        return failure
    return None
