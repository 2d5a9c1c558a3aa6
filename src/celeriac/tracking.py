"""``task_track_sent`` and ``task_track_started``: states stored before the final one.

``task_track_started`` (or ``@app.task(track_started=True)``), as in Celery: the worker
stores STARTED, with its hostname and process id as the result, just before it runs the
task. It costs one backend write per task, in the task's slot.

``task_track_sent``: the producer records SENT for each task it sends.

Without it a task id nobody knows and a task still waiting in its queue both read as
PENDING, since nothing is stored before a worker finishes the task. With it, the
producer stores a SENT outcome right after the broker accepted the message, so:

- ``SENT``: the task was sent and is queued (or running, without ``task_track_started``);
- ``PENDING``: nothing is known of this id: never sent, sent before tracking was on,
  or its result expired (``result_expires``) or was forgotten.

The marker is written only where nothing is stored yet (``ResultBackend.add_many``), so
a worker that already stored STARTED, RETRY or the final state is never overwritten,
however the two race. It costs one extra backend write per send (per batch for
``send_many``), which is why it is off by default: see docs/states.md for the
measurements. Tasks that keep no result (``ignore_result``) get no marker, since nothing
would ever replace it. The rpc:// backend keeps no markers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.message import Message
from celeriac.outcome import Outcome

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.task import Task


async def mark_sent(app: App, messages: Sequence[Message]) -> None:
    """Store SENT for each message whose task keeps its result, unless something is stored."""
    encoded: dict[tuple[str, str | None], bytes] = {}  # the same bytes for every call
    markers: dict[str, bytes] = {}
    for message in messages:
        if message.ignore_result:
            continue
        key = (message.task, message.result_serializer)
        if key not in encoded:
            encoded[key] = app.encode_outcome(Outcome(states.SENT, task=message.task),
                                              message.result_serializer)
        markers[message.id] = encoded[key]
    if markers:
        backend = await app._connected_backend()
        await backend.add_many(markers, app.conf.result_expires)


def tracks_started(task: Task[Any, Any]) -> bool:
    """Whether a worker stores STARTED for ``task`` (its option, else the setting)."""
    own = task.options.track_started
    return task.app.conf.task_track_started if own is None else own


async def mark_started(app: App, message: Message, hostname: str) -> None:
    """Store STARTED for a task about to run, as Celery does: its worker in the result."""
    started = Outcome(states.STARTED, result={"pid": os.getpid(), "hostname": hostname},
                      task=message.task, retries=message.retries)
    data = app.encode_outcome(started, message.result_serializer)
    await app.backend.store_replies({message.id: data}, {message.id: message.headers},
                                    app.conf.result_expires)
