"""What a worker does after a task that belongs to a workflow.

The consumer's flush loop calls ``follow_up`` with every batch, after the batch's
results are stored and before its messages are acked. A task that is no part of a
workflow (no link callbacks or errbacks, no chain or chord header) costs one look at its
message here and nothing else. For the others:

- **success**: each ``link`` callback is sent with the result; the next step of a chain
  is sent with the result, carrying the rest of the chain; a chord member is counted,
  and the member that completes the chord sends its body with the list of results.
- **failure** (or revoked, or dead-lettered): ``link_error`` errbacks are called or
  sent; the steps of the chain that will now never run are given the same failure as
  their result, so ``get()`` on the chain raises at once; the chord the task belongs to
  fails with a ``ChordError``, stored as the result of its body, and so on outwards.

Everything is published and stored before the task's message is acked, so a worker that
dies in between runs the task again instead of losing what follows it.

The chord guarantee
-------------------
A chord counts its members in the result backend by member id, not with a counter:
``add_to_set("chord:<id>", "<index>:<member id>")`` is atomic and idempotent, so a
member that runs twice (its worker died before acking it) is counted once. When the set
is full, a member takes the chord's "fired" claim (``claim``, an atomic set-if-absent
returning the holder) under its own id, and only the holder sends the body. A failing
member takes the same claim to fail the chord, so a chord ends once, one way.

What remains is the gap between sending the body and acking the member that sent it: a
worker dying there makes the member run again, and its new run (the claim names it)
sends the body again. So every message a worker sends after a task carries a fresh
publication token (``celeriac-token``), and a worker about to run such a message first
claims ``run:<parent id>><task id>`` with its token (``is_duplicate``). The first copy to
arrive wins; a later copy, with another token, is acked without running. Redelivery of
the winning copy (same token) runs it again, as for any task.

So the body of a chord runs once per chord, like any task at least once if a worker
dies *while running it* (``acks_late=False`` makes that at most once); the same holds
for chain steps and callbacks sent by workers. The rpc:// backend keeps no shared
state: chords are refused when sent, and follow-ups carry no token (a worker crash in
that gap can then send a step twice).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.canvas import Signature, as_signatures, chord, is_composite
from celeriac.canvas_run import (
    CHAIN_HEADER,
    CHORD_HEADER,
    TOKEN_HEADER,
    Context,
    Emitter,
    describe,
    errback_request,
    takes_request,
    task_ids,
)
from celeriac.errors import ChordError, TaskError
from celeriac.message import Message
from celeriac.outcome import Outcome, rebuild_exception
from celeriac.task import Task, current_request
from celeriac.worker.executor import Action, Verdict

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.brokers.base import Outgoing

logger = logging.getLogger("celeriac.worker")


def in_workflow(message: Message) -> bool:
    """Whether anything must happen after this message's task: the cheap first look."""
    return bool(message.callbacks or message.errbacks or CHAIN_HEADER in message.headers
                or CHORD_HEADER in message.headers)


async def follow_up(app: App, batch: Sequence[tuple[Any, Verdict]]) -> None:
    """Carry out what follows the tasks of a flushed batch (see the module docstring).

    Backend and broker errors propagate, so the flush is retried as a whole (counting is
    idempotent and a second publication is caught by its token). A follow-up that can
    never be sent (a step whose arguments do not fit) is logged and stored as failed.
    """
    todo = [verdict for _, verdict in batch
            if verdict.message is not None and in_workflow(verdict.message)]
    if not todo:
        return
    effects = _Effects(app)
    for verdict in todo:
        await _after(effects, verdict)
    await effects.carry_out()


async def is_duplicate(app: App, message: Message) -> bool:
    """Whether another copy of this follow-up message claimed the right to run first."""
    token = str(message.headers[TOKEN_HEADER])
    key = f"run:{message.parent_id}>{message.id}"
    try:
        holder = await app.backend.claim(key, token, app.conf.result_expires)
    except Exception:  # without the backend, running twice beats not running at all
        logger.exception("could not check %s[%s] for duplicates; running it",
                         message.task, message.id)
        return False
    if holder == token:
        return False
    logger.warning("Task %s[%s] not run: another copy of it, sent again after a worker "
                   "died, already ran or runs", message.task, message.id)
    return True


class _Effects:
    """What the follow-ups of one batch do: messages to publish, failures to store."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.backend = app.backend
        self.ttl = app.conf.result_expires
        self.tokens = self.backend.supports_chords  # (rpc keeps no claims to check them)
        self.token: str | None = None  # of what follows the task at hand: see _after
        self.calls: list[tuple[Message, Outgoing]] = []
        self.results: dict[str, bytes] = {}
        self.headers: dict[str, Mapping[str, Any]] = {}

    def emit(self, sig: Signature, args: tuple[Any, ...], ctx: Context) -> Exception | None:
        """Add the messages of ``sig``, all or none; the error if it cannot be sent."""
        scratch = Emitter(self.app, self.token)
        try:
            scratch.emit(sig, args, {}, ctx)
        except Exception as exc:
            logger.exception("could not send %r after a task", sig)
            return exc
        self.calls.extend(scratch.calls)
        return None

    def fail(self, sigs: Sequence[Signature], outcome: Outcome,
             headers: Mapping[str, Any]) -> None:
        """Store ``outcome`` as the result of every task in these trees."""
        for task_id, name in task_ids(sigs):
            self.results[task_id] = self.app.encode_outcome(replace(outcome, task=name))
            self.headers[task_id] = headers  # routes it (rpc) as the failed task's own

    async def carry_out(self) -> None:
        if self.results:
            await self.backend.store_replies(self.results, self.headers, self.ttl)
        if self.calls:
            await self.app._send(self.calls)  # publish (and mark SENT: task_track_sent)


async def _after(effects: _Effects, verdict: Verdict) -> None:
    message = verdict.message
    assert message is not None
    if verdict.action is Action.DEAD_LETTER:
        outcome = Outcome.failure(TaskError("DeadLettered", verdict.reason or "dead-lettered"),
                                  task=message.task)
    elif verdict.action is Action.ACK and verdict.outcome is not None \
            and verdict.outcome.ready:
        outcome = verdict.outcome
    else:  # a retry, a requeue, a duplicate that did not run: nothing has ended yet
        return
    # A token of its own for each task's follow-ups: the same message may be twice in a
    # batch, and each copy's follow-ups are a publication of their own.
    effects.token = uuid.uuid4().hex if effects.tokens else None
    # Sent "from inside" this task: a backend that routes results to the caller (rpc)
    # routes the results of what follows it to the same caller.
    token = current_request.set(errback_request(
        message.id, message.task, message.args, message.kwargs, root_id=message.root_id,
        parent_id=message.parent_id, group_id=message.group_id, headers=message.headers))
    try:
        if outcome.state == states.SUCCESS:
            await _succeeded(effects, message, outcome.result)
        else:
            await _failed(effects, message, outcome)
    finally:
        current_request.reset(token)


def _lineage(message: Message) -> Context:
    return Context(parent_id=message.id, root_id=message.root_id or message.id)


async def _succeeded(effects: _Effects, message: Message, value: Any) -> None:
    app = effects.app
    for payload in message.callbacks:
        effects.emit(Signature.from_payload(payload, app), (value,), _lineage(message))
    chain = message.headers.get(CHAIN_HEADER)
    member = message.headers.get(CHORD_HEADER)
    if chain:
        steps = [Signature.from_payload(step, app) for step in chain]
        error = effects.emit(steps[0], (value,), Context(
            continuation=tuple(steps[1:]), member=member, parent_id=message.id,
            root_id=message.root_id or message.id))
        if error is not None:  # the chain cannot go on: it fails as if this step had
            failure = Outcome.failure(error, task=steps[0].task)
            effects.fail(steps, failure, message.headers)
            if member is not None:
                await _fail_member(effects, member, steps[0].id or message.id,
                                   f"step {steps[0].task} could not be sent: {error}")
    elif member is not None:
        await _count(effects, message, member)


async def _failed(effects: _Effects, message: Message, outcome: Outcome) -> None:
    errbacks = [Signature.from_payload(payload, effects.app) for payload in message.errbacks]
    await _call_errbacks(effects, errbacks, message, outcome)
    chain = message.headers.get(CHAIN_HEADER)
    member = message.headers.get(CHORD_HEADER)
    if chain:
        effects.fail([Signature.from_payload(step, effects.app) for step in chain], outcome,
                     message.headers)
    if member is not None:
        await _fail_member(effects, member, message.id,
                           f"member {message.task}[{message.id}] {describe(outcome)}")


# -- chords -------------------------------------------------------------------------------


def _set_key(member: Mapping[str, Any]) -> str:
    return f"chord:{member['id']}"


async def _count(effects: _Effects, message: Message, member: Mapping[str, Any]) -> None:
    """Count a member that succeeded; the one that completes the chord sends its body."""
    backend, key = effects.backend, _set_key(member)
    size = await backend.add_to_set(key, f"{member['index']}:{message.id}", effects.ttl)
    if size < int(member["size"]):
        return
    mine = f"done:{message.id}"
    if await backend.claim(f"{key}:fired", mine, effects.ttl) != mine:
        return  # another member completed it (or failed it) first
    entries = sorted(await backend.set_members(key), key=lambda e: int(e.split(":", 1)[0]))
    ids = [entry.split(":", 1)[1] for entry in entries]
    stored = await backend.load_many(ids)
    values = []
    for task_id in ids:
        data = stored.get(task_id)
        if data is None:
            await _chord_failed(effects, member, message.headers,
                                f"the result of member {task_id} is gone (expired?)")
            return
        outcome = effects.app.decode_outcome(data)
        if outcome.state != states.SUCCESS:  # it ran again, and failed, after counting
            await _chord_failed(effects, member, message.headers,
                                f"member {outcome.task}[{task_id}] {describe(outcome)}")
            return
        values.append(outcome.result)
    body = Signature.from_payload(member["body"], effects.app)
    then = tuple(Signature.from_payload(step, effects.app) for step in member.get("then", ()))
    logger.info("Chord %s complete (%d members): sending %r", member["id"], len(ids), body)
    error = effects.emit(body, (values,), Context(
        continuation=then, member=member.get("member"), parent_id=message.id,
        root_id=message.root_id or message.id))
    if error is not None:
        await _chord_failed(effects, member, message.headers,
                            f"its body could not be sent: {error}")


async def _fail_member(effects: _Effects, member: Mapping[str, Any], culprit: str,
                       reason: str) -> None:
    """A member of ``member``'s chord failed: fail the chord, unless it already ended."""
    mine = f"fail:{culprit}"
    if await effects.backend.claim(f"{_set_key(member)}:fired", mine, effects.ttl) != mine:
        return
    await _chord_failed(effects, member, {}, reason)


async def _chord_failed(effects: _Effects, member: Mapping[str, Any],
                        headers: Mapping[str, Any], reason: str) -> None:
    """The chord will never complete: its body (and what follows) fail with ChordError."""
    error = ChordError(f"chord {member['id']} failed: {reason}")
    logger.error("%s", error)
    body = Signature.from_payload(member["body"], effects.app)
    then = [Signature.from_payload(step, effects.app) for step in member.get("then", ())]
    outcome = Outcome.failure(error, task=body.task)
    request_headers = dict(headers or _current_headers())
    effects.fail([body, *then], outcome, request_headers)
    first = _first_task(body)
    errbacks = as_signatures(first.options.get("link_error"), effects.app)
    if errbacks:
        failed = Message(id=first.id or "", task=first.task, args=first.args,
                         kwargs=first.kwargs, headers=request_headers)
        await _call_errbacks(effects, errbacks, failed, outcome)
    outer = member.get("member")
    if outer is not None:  # this chord was a member of another: that one fails too
        await _fail_member(effects, outer, str(member["id"]), f"chord {reason}")


def _current_headers() -> dict[str, Any]:
    request = current_request.get()
    return dict(request.headers) if request is not None else {}


def _first_task(sig: Signature) -> Signature:
    """The task that runs first in a tree (a chord's: its body's, which is what fails)."""
    while is_composite(sig):
        children = sig._children()
        if not children:
            break
        sig = children[-1] if isinstance(sig, chord) else children[0]
    return sig


# -- error callbacks ----------------------------------------------------------------------


async def _call_errbacks(effects: _Effects, errbacks: Sequence[Signature], message: Message,
                         outcome: Outcome) -> None:
    """Call (or send) the errbacks of a failed task, as Celery does."""
    for errback in errbacks:
        task = effects.app.tasks.get(errback.task)
        if task is not None and takes_request(errback, task):
            await _call_inline(task, message, outcome)
        else:
            effects.emit(errback, (message.id,), _lineage(message))


async def _call_inline(task: Task[..., Any], message: Message, outcome: Outcome) -> None:
    request = errback_request(message.id, message.task, message.args, message.kwargs,
                              root_id=message.root_id, parent_id=message.parent_id,
                              group_id=message.group_id, headers=message.headers)
    exc = rebuild_exception(outcome)
    try:
        if task.is_async:
            await task(request, exc, outcome.traceback)
        else:  # a thread of its own: not the pool's, whose threads may all be busy
            await asyncio.to_thread(task, request, exc, outcome.traceback)
    except Exception:
        logger.exception("error callback %s of %s[%s] failed", task.name, message.task,
                         message.id)


__all__ = ["follow_up", "in_workflow", "is_duplicate"]
