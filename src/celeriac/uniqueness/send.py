"""Unique jobs at both ends: a producer's send that holds a key, a worker's release.

Producer (``App.send_task`` / ``asend_task`` / ``send_many``, hence ``delay``,
``apply_async``, signatures and beat entries): a message whose ``unique_key`` is set is
sent through the app's ``UniqueKeys`` store, which claims the key and publishes the
message, or publishes nothing and names the task that holds the key; the caller gets
that task's ``AsyncResult``.

Worker: once a task's final verdict is written (its outcome stored and its message
acked: success, failure after its retries, revoked, expired; or dead-lettered), its
key is released, compare-and-delete on its id. A retry keeps the key (the retry
message carries it and runs under the same id), and so does a deferral or a requeue.
A release that fails is logged: the key frees itself at its ``unique_for`` deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from celeriac.brokers.base import Outgoing
from celeriac.errors import describe
from celeriac.message import Message
from celeriac.uniqueness.store import Hold, unique_keys

if TYPE_CHECKING:
    from celeriac.app import App

logger = logging.getLogger("celeriac.unique")


def send_unique_blocking(app: App, message: Message, outgoing: Outgoing) -> str:
    """Send a unique message for a sync caller; the id of the task that holds its key."""
    assert message.unique_key is not None
    assert message.unique_for is not None
    store = unique_keys(app)
    if not app.broker.supports_blocking_publish:  # (memory) through the app's bridge
        return app._run_sync(send_unique(app, message, outgoing))
    holder = store.send_blocking(message.unique_key, message.id, message.unique_for,
                                 outgoing, app.broker.publish_blocking)
    if holder is not None:
        _log_duplicate(message, holder)
        return holder
    app._after_send_blocking(((message, outgoing),))
    return message.id


async def send_unique(app: App, message: Message, outgoing: Outgoing) -> str:
    """Send a unique message on the caller's loop; the id of the task that holds its key."""
    assert message.unique_key is not None
    assert message.unique_for is not None
    store = unique_keys(app)
    await app._connected_broker()
    holder = await store.send(message.unique_key, message.id, message.unique_for,
                              outgoing, app.publish)
    if holder is not None:
        _log_duplicate(message, holder)
        return holder
    await app._after_send(((message, outgoing),))
    return message.id


def _log_duplicate(message: Message, holder: str) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("Task %s not sent: its unique key %r is held by task %s",
                     message.task, message.unique_key, holder)


# -- the worker's side --------------------------------------------------------------------


def final_holds(app: App, batch: Iterable[tuple[Any, Any]],
                dead_lettered: bool = False) -> list[Hold]:
    """The (key, task id) holds that a batch of written verdicts ends.

    Ends a hold: an ack with no retry to follow (success, failure, revoked, expired)
    and a dead letter. Not a retry, a deferral (rate limit) or a requeue: the message
    comes back under the same id and still holds its key. ``dead_lettered``: the batch
    was dead-lettered whatever its verdicts said (set aside).
    """
    from celeriac.worker.executor import Action

    holds: list[Hold] = []
    for held, verdict in batch:
        message = verdict.message
        dead = dead_lettered or verdict.action is Action.DEAD_LETTER
        if message is None and dead:
            message = _decoded(app, held)  # e.g. past its delivery limit, never decoded
        if message is not None and message.unique_key is not None and (
                dead or verdict.action is Action.ACK):
            holds.append((message.unique_key, message.id))
    return holds


def _decoded(app: App, held: Any) -> Message | None:
    """The message of a delivery dead-lettered before it was decoded, if it decodes."""
    body = getattr(getattr(held, "delivery", None), "body", None)
    if not isinstance(body, bytes):
        return None
    try:
        return app.decode_message(body)
    except Exception:  # unreadable: no key to release (its hold ends at its deadline)
        return None


async def release_finished(app: App, batch: Sequence[tuple[Any, Any]],
                           dead_lettered: bool = False) -> None:
    """Free the unique keys of the tasks a written batch of verdicts ended.

    Called after the batch's acks: a crash before this leaves a key held until its
    ``unique_for`` ends, never a key free while its task could still run.
    """
    holds = final_holds(app, batch, dead_lettered)
    if holds:
        await release_holds(app, holds)


async def release_holds(app: App, holds: Sequence[Hold]) -> None:
    """Release ``holds``; a failure is logged (the keys free themselves at their end)."""
    try:
        await unique_keys(app).release(holds)
    except Exception as exc:
        logger.warning("could not release the unique keys of %d finished task(s) (%s); "
                       "each frees itself when its unique_for runs out", len(holds),
                       describe(exc))
