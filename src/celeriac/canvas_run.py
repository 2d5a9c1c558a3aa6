"""Running a canvas: from a signature tree to messages, and inline in eager mode.

Sending a composite signature happens in four steps, all before anything is published,
so a mistake anywhere in the tree raises at ``apply_async`` and nothing is sent:

1. **clone** the tree, so the caller's signatures are never changed;
2. **spread** the options given to a composite onto the tasks they concern (``queue``
   and the like onto every task, ``countdown`` onto the tasks that start first,
   ``link`` onto the tasks whose result is the composite's, ``link_error`` onto every
   task of a chain or group and onto a chord's body);
3. **freeze**: give every task (and group) its id, so results exist before the tasks
   run and a chain's result can be walked back through ``parent``;
4. **check** every task's arguments against its function, counting the result each
   step will receive from the one before, and every option name.

Then the ``Emitter`` turns the tasks that start now into messages. Whatever comes later
travels inside them, as plain signature payloads in message headers:

- ``celeriac-chain``: the steps left after this task (a chain's continuation);
- ``celeriac-chord``: this task's place in a chord — the chord's id, its size, this
  task's index among the members, the body to send when all are done, what follows the
  chord, and the chord this chord is itself a member of;
- ``celeriac-token``: set on every message a *worker* publishes after a task (see
  ``celeriac.worker.workflow``), so that a copy published twice runs once.

``link``/``link_error`` callbacks go in the message's ``callbacks``/``errbacks``.

A task's place in a chord follows it down: a chain in a chord's header carries it to its
last step; a group carries it to each member, with consecutive indexes. So the members
of a chord are the tasks whose completion completes its header ("tails"), counted by
``tails()``: a nested group's results are flattened into the body's list.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.builtins import BUILTINS
from celeriac.canvas import (
    LINK_OPTIONS,
    Signature,
    as_signatures,
    chain,
    chord,
    group,
    is_composite,
)
from celeriac.errors import ChordError, ConfigurationError
from celeriac.group_result import GroupResult, ResultLike
from celeriac.outcome import Outcome, rebuild_exception
from celeriac.result import AsyncResult, EagerResult
from celeriac.task import SEND_OPTION_NAMES, Request, Task

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.brokers.base import Outgoing
    from celeriac.message import Message

logger = logging.getLogger("celeriac.canvas")

CHAIN_HEADER = "celeriac-chain"
CHORD_HEADER = "celeriac-chord"
TOKEN_HEADER = "celeriac-token"

# Options that start the clock: given to a composite, they apply to its first tasks only.
TIMING_OPTIONS = ("countdown", "eta")


# -- sending ------------------------------------------------------------------------------


def send(sig: Signature, args: tuple[Any, ...], kwargs: dict[str, Any],
         options: dict[str, Any]) -> ResultLike:
    app = sig.resolve_app()
    if not is_composite(sig):
        call_args, call_kwargs, call_options = sig.merged(args, kwargs, options)
        return app.send_task(sig.task, call_args, call_kwargs, _task=registered(app, sig.task),
                             **call_options)
    if app.conf.task_always_eager:
        return apply_inline(sig, args, kwargs, options)
    result, calls = plan_calls(app, sig, args, kwargs, options)
    if calls:
        app._send_blocking(calls)  # publish (and mark SENT: task_track_sent)
    return result


async def asend(sig: Signature, args: tuple[Any, ...], kwargs: dict[str, Any],
                options: dict[str, Any]) -> ResultLike:
    app = sig.resolve_app()
    if not is_composite(sig):
        call_args, call_kwargs, call_options = sig.merged(args, kwargs, options)
        return await app.asend_task(sig.task, call_args, call_kwargs,
                                    _task=registered(app, sig.task), **call_options)
    if app.conf.task_always_eager:
        return apply_inline(sig, args, kwargs, options)
    result, calls = plan_calls(app, sig, args, kwargs, options)
    if calls:
        await app._send(calls)
    return result


def registered(app: App, name: str) -> Task[..., Any] | None:
    """The task of that name in this process, a built-in one included; None if unknown."""
    task = app.tasks.get(name)
    if task is None and name in BUILTINS:
        task = app.get_task(name)  # registers it
    return task


def plan(app: App, sig: Signature, args: tuple[Any, ...], kwargs: dict[str, Any],
         options: dict[str, Any]) -> tuple[ResultLike, list[Outgoing]]:
    """The result of sending ``sig`` and the messages to publish for it (nothing sent)."""
    result, calls = plan_calls(app, sig, args, kwargs, options)
    return result, [outgoing for _, outgoing in calls]


def plan_calls(app: App, sig: Signature, args: tuple[Any, ...], kwargs: dict[str, Any],
               options: dict[str, Any]) -> tuple[ResultLike, list[tuple[Message, Outgoing]]]:
    """``plan``, with each message beside its encoded form."""
    tree, result = prepare(app, sig, args, kwargs, options)
    if contains_chord(tree):
        require_chords(app)
    emitter = Emitter(app)
    emitter.emit(tree, args, kwargs, Context())
    return result, emitter.calls


def prepare(app: App, sig: Signature, args: tuple[Any, ...], kwargs: Mapping[str, Any],
            options: Mapping[str, Any]) -> tuple[Signature, ResultLike]:
    """Clone, spread, freeze and check a tree (see the module docstring)."""
    options = dict(options)
    task_id = options.pop("task_id", None)
    tree = sig.clone()
    spread(tree, options)
    result = freeze(tree, app, task_id=task_id)
    check(tree, app, len(args), kwargs)
    return tree, result


def require_chords(app: App) -> None:
    backend = app.backend
    if not backend.supports_chords:
        raise ConfigurationError(
            f"the {backend.scheme}:// result backend cannot run chords: a chord counts its "
            "members in the result backend, and this one keeps no shared state; use a "
            "sqlite://, redis:// or memory:// result backend for workflows with chords")


# -- spreading options --------------------------------------------------------------------


def spread(sig: Signature, inherited: Mapping[str, Any]) -> None:
    """Push composite options down onto tasks, in place; composites keep only ``task_id``."""
    if not is_composite(sig):
        for key, value in inherited.items():
            if key in LINK_OPTIONS:
                sig.options[key] = [*as_signatures(sig.options.get(key), sig.app),
                                    *(link.clone() for link in as_signatures(value))]
            else:
                sig.options.setdefault(key, value)  # the task's own options win
        return
    options = _take_options(sig, inherited)
    common = {key: value for key, value in options.items()
              if key not in TIMING_OPTIONS and key not in LINK_OPTIONS}
    for child, extra in _routes(sig, options):
        spread(child, {**common, **extra})


def _take_options(sig: Signature, inherited: Mapping[str, Any]) -> dict[str, Any]:
    """A composite's own options (taken off it) over the inherited ones; links add up."""
    own = {key: value for key, value in sig.options.items() if key != "task_id"}
    for key in own:
        del sig.options[key]
    options = {**inherited, **own}
    for key in LINK_OPTIONS:
        links = [*as_signatures(inherited.get(key)), *as_signatures(own.get(key))]
        if links:
            options[key] = links
        else:
            options.pop(key, None)
    return options


def _routes(sig: Signature, options: Mapping[str, Any],
            ) -> list[tuple[Signature, dict[str, Any]]]:
    """Which children of a composite get its timing and link options."""
    timing = {key: options[key] for key in TIMING_OPTIONS if key in options}
    links = {key: options[key] for key in LINK_OPTIONS if key in options}
    if isinstance(sig, chord):  # the header starts first; the body's result is the chord's
        routes: list[tuple[Signature, dict[str, Any]]] = [(sig.header, timing)]
        return routes if sig.body is None else [*routes, (sig.body, links)]
    if isinstance(sig, chain):  # first step starts; last step's result is the chain's
        last = len(sig.tasks) - 1
        return [(step, {**(timing if index == 0 else {}),
                        **({"link": links["link"]} if index == last and "link" in links
                           else {}),
                        **({"link_error": links["link_error"]} if "link_error" in links
                           else {})})
                for index, step in enumerate(sig.tasks)]
    return [(member, {**timing, **links}) for member in sig._children()]  # a group


# -- freezing -----------------------------------------------------------------------------


def freeze(sig: Signature, app: App, parent: ResultLike | None = None,
           task_id: str | None = None) -> ResultLike:
    """Give every task and group in the tree its id (in place); return the tree's result.

    ``task_id`` is the id of the tree's result: a task's own, a chain's last step's, a
    group's group id, a chord's body's. Ids already given are kept.
    """
    if isinstance(sig, chord):
        header = freeze(sig.header, app, parent)
        if sig.body is None:
            raise ValueError(f"{sig!r} has no body: give one, chord(header, body)")
        return freeze(sig.body, app, header, task_id)
    if isinstance(sig, group):
        group_id = _assign_id(sig, task_id)
        members = [freeze(member, app) for member in sig.tasks]
        return GroupResult(group_id, members, app, parent)
    if isinstance(sig, chain):
        if not sig.tasks:
            raise ValueError("an empty chain has nothing to run")
        step_result = parent
        last = len(sig.tasks) - 1
        for index, step in enumerate(sig.tasks):
            step_result = freeze(step, app, step_result, task_id if index == last else None)
        assert step_result is not None
        return step_result
    own_id = _assign_id(sig, task_id)
    for key in LINK_OPTIONS:  # callbacks get their ids now: a worker re-sending them
        if key in sig.options:  # after a crash then sends the same ids (see workflow)
            sig.options[key] = as_signatures(sig.options[key], sig.app)
            for callback in sig.options[key]:
                freeze(callback, app)
    own: AsyncResult[Any] = AsyncResult(own_id, app, sig.task)
    own.parent = parent
    return own


def _assign_id(sig: Signature, task_id: str | None) -> str:
    if task_id is not None:
        sig.options["task_id"] = task_id
    found: str = sig.options.setdefault("task_id", str(uuid.uuid4()))
    return found


def link_payloads(value: Any) -> tuple[dict[str, Any], ...]:
    """``link=``/``link_error=`` of a call as message callbacks: frozen payloads."""
    payloads = []
    for callback in as_signatures(value):
        if callback.id is None or is_composite(callback):
            callback = callback.clone()
            freeze(callback, callback.resolve_app())
        payloads.append(callback.to_payload())
    return tuple(payloads)


def task_ids(sigs: Sequence[Signature]) -> list[tuple[str, str]]:
    """(id, task name) of every frozen task in these trees, link callbacks left out."""
    found: list[tuple[str, str]] = []
    for sig in sigs:
        if is_composite(sig):
            found.extend(task_ids(sig._children()))
        elif sig.id is not None:
            found.append((sig.id, sig.task))
    return found


# -- checking -----------------------------------------------------------------------------


def check(sig: Signature, app: App, incoming: int, kwargs: Mapping[str, Any]) -> None:
    """Raise TypeError now for a call in the tree that could never run.

    ``incoming`` is how many arguments the tree's first tasks receive in front of their
    own (the partial arguments of the call, or 1 for the previous step's result).
    """
    if isinstance(sig, chord):
        check(sig.header, app, incoming, kwargs)
        if sig.body is not None:
            check(sig.body, app, 1, {})
    elif isinstance(sig, chain):
        for index, step in enumerate(sig.tasks):
            if index == 0:
                check(step, app, incoming + len(sig.args), {**sig.kwargs, **kwargs})
            else:
                check(step, app, 1, {})
    elif isinstance(sig, group):
        for member in sig.tasks:
            check(member, app, incoming + len(sig.args), {**sig.kwargs, **kwargs})
    else:
        _check_task(sig, app, incoming, kwargs)


def _check_task(sig: Signature, app: App, incoming: int, kwargs: Mapping[str, Any]) -> None:
    unknown = set(sig.options) - SEND_OPTION_NAMES
    if unknown:
        raise TypeError(f"unknown option {sorted(unknown)[0]!r} in {sig!r}")
    task = app.tasks.get(sig.task)
    if task is not None:
        if sig.immutable:
            task.check_arguments(sig.args, sig.kwargs)
        else:
            task.check_arguments((*([None] * incoming), *sig.args), {**sig.kwargs, **kwargs})
    for callback in as_signatures(sig.options.get("link")):
        check(callback, app, 1, {})


def contains_chord(sig: Signature) -> bool:
    if isinstance(sig, chord):
        return True
    links = [link for key in LINK_OPTIONS for link in as_signatures(sig.options.get(key))]
    return any(contains_chord(child) for child in (*sig._children(), *links))


# -- emitting messages --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Context:
    """Where a signature is sent from: what follows it, its chord, its lineage."""

    continuation: tuple[Signature, ...] = ()  # steps to run after it, with its result
    member: dict[str, Any] | None = None  # its place in a chord (CHORD_HEADER)
    group_id: str | None = None
    parent_id: str | None = None
    root_id: str | None = None


def tails(sig: Signature) -> int:
    """How many tasks finish this signature: the members it brings to a chord."""
    if isinstance(sig, chord):
        return 0 if sig.body is None else tails(sig.body)
    if isinstance(sig, group):
        return sum(tails(member) for member in sig.tasks)
    if isinstance(sig, chain):
        return tails(sig.tasks[-1]) if sig.tasks else 0
    return 1


class Emitter:
    """Turns frozen signatures into encoded messages (``Outgoing``), sending nothing.

    Used by the producer for the tasks a workflow starts with, and by a worker for
    those that follow a task (with a publication ``token``: see celeriac.worker.workflow).
    """

    def __init__(self, app: App, token: str | None = None) -> None:
        self.app = app
        self.token = token
        self.calls: list[tuple[Message, Outgoing]] = []  # each message, and its bytes

    def emit(self, sig: Signature, args: tuple[Any, ...], kwargs: Mapping[str, Any],
             ctx: Context) -> None:
        if isinstance(sig, chord):
            self._chord(sig, args, kwargs, ctx)
        elif isinstance(sig, group):
            self._group(sig, args, kwargs, ctx)
        elif isinstance(sig, chain):
            call_args, call_kwargs, _ = sig.merged(args, kwargs)
            if not sig.tasks:
                raise ValueError("an empty chain has nothing to run")
            first, *rest = sig.tasks
            self.emit(first, call_args, call_kwargs,
                      replace(ctx, continuation=(*rest, *ctx.continuation)))
        else:
            self._task(sig, args, kwargs, ctx)

    def _task(self, sig: Signature, args: tuple[Any, ...], kwargs: Mapping[str, Any],
              ctx: Context) -> None:
        call_args, call_kwargs, options = sig.merged(args, kwargs)
        headers = dict(options.get("headers") or {})
        if ctx.continuation:
            headers[CHAIN_HEADER] = [step.to_payload() for step in ctx.continuation]
        if ctx.member is not None:
            headers[CHORD_HEADER] = ctx.member
            options["ignore_result"] = False  # the chord's body is given its result
        if self.token is not None:
            headers[TOKEN_HEADER] = self.token
        if headers:
            options["headers"] = headers
        # The tasks of a workflow are sent as a whole, not one by one: they hold no
        # unique key (docs/unique-jobs.md), whatever their task's unique_for says.
        options.pop("unique_key", None)
        options["unique_for"] = 0
        for key, value in (("group_id", ctx.group_id), ("parent_id", ctx.parent_id),
                           ("root_id", ctx.root_id)):
            if value is not None:
                options.setdefault(key, value)
        self.calls.append(self.app.prepare(sig.task, call_args, call_kwargs, options,
                                           registered(self.app, sig.task)))

    def _group(self, sig: group, args: tuple[Any, ...], kwargs: Mapping[str, Any],
               ctx: Context, group_id: str | None = None) -> None:
        if ctx.continuation:  # more steps after a group: they wait for all of it
            rest = ctx.continuation
            body = rest[0] if len(rest) == 1 else chain(*rest)
            self._chord(chord(sig, body), args, kwargs, replace(ctx, continuation=()))
            return
        call_args, call_kwargs, _ = sig.merged(args, kwargs)
        group_id = group_id or sig.id or str(uuid.uuid4())
        index = 0 if ctx.member is None else int(ctx.member["index"])
        for member in sig.tasks:
            place = None if ctx.member is None else {**ctx.member, "index": index}
            self.emit(member, call_args, call_kwargs,
                      Context(member=place, group_id=group_id, parent_id=ctx.parent_id,
                              root_id=ctx.root_id))
            index += tails(member)

    def _chord(self, sig: chord, args: tuple[Any, ...], kwargs: Mapping[str, Any],
               ctx: Context) -> None:
        if sig.body is None:
            raise ValueError(f"{sig!r} has no body: give one, chord(header, body)")
        require_chords(self.app)
        call_args, call_kwargs, _ = sig.merged(args, kwargs)
        chord_id = sig.header.id or str(uuid.uuid4())
        size = tails(sig.header)
        if size == 0:  # nothing to wait for: the body runs at once, with no results
            self.emit(sig.body, ([],), {}, replace(ctx, group_id=None))
            return
        place: dict[str, Any] = {"id": chord_id, "size": size, "index": 0,
                                 "body": sig.body.to_payload()}
        if ctx.continuation:
            place["then"] = [step.to_payload() for step in ctx.continuation]
        if ctx.member is not None:
            place["member"] = ctx.member
        self._group(sig.header, call_args, call_kwargs,
                    Context(member=place, parent_id=ctx.parent_id, root_id=ctx.root_id),
                    chord_id)


# -- error callbacks ----------------------------------------------------------------------


def takes_request(errback: Signature, task: Task[Any, Any]) -> bool:
    """Whether an errback is called as ``errback(request, exc, traceback)`` (in the
    process that ran the failed task) rather than sent with the task's id, as in Celery:
    it is a mutable task signature whose function takes more than one positional argument.
    """
    if errback.immutable or is_composite(errback):
        return False
    parameters = list(inspect.signature(task.fn).parameters.values())
    if task.bind:
        parameters = parameters[1:]
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY,
                                                      p.POSITIONAL_OR_KEYWORD)]
    return len(positional) > 1 or any(p.kind is p.VAR_POSITIONAL for p in parameters)


def errback_request(task_id: str, task_name: str, args: Sequence[Any] = (),
                    kwargs: Mapping[str, Any] | None = None, **more: Any) -> Request:
    """The ``request`` an inline errback receives: the failed task's."""
    return Request(id=task_id, task=task_name, args=tuple(args), kwargs=dict(kwargs or {}),
                   **more)


# -- eager mode ---------------------------------------------------------------------------


def apply_inline(sig: Signature, args: tuple[Any, ...], kwargs: dict[str, Any],
                 options: dict[str, Any]) -> ResultLike:
    """Run a signature tree here, step by step, with the same ids and results shape."""
    app = sig.resolve_app()
    tree, _ = prepare(app, sig, args, kwargs, options)
    return _run_inline(app, tree, args, kwargs, None)


def _run_inline(app: App, sig: Signature, args: tuple[Any, ...], kwargs: Mapping[str, Any],
                parent: ResultLike | None) -> ResultLike:
    if isinstance(sig, chord):
        call_args, call_kwargs, _ = sig.merged(args, kwargs)
        header = _run_inline(app, sig.header, call_args, call_kwargs, parent)
        assert isinstance(header, GroupResult)
        assert sig.body is not None
        failed = next((leaf for leaf in header._leaves() if not leaf.successful()), None)
        if failed is not None:
            error = ChordError(f"chord {header.id}: member {failed.task_name}[{failed.id}] "
                               f"{describe(_outcome_of(failed))}")
            return _failed_inline(app, sig.body, Outcome.failure(error, task=sig.body.task),
                                  header)
        values = [leaf.get(propagate=False) for leaf in header._leaves()]
        return _run_inline(app, sig.body, (values,), {}, header)
    if isinstance(sig, group):
        call_args, call_kwargs, _ = sig.merged(args, kwargs)
        members = [_run_inline(app, member, call_args, call_kwargs, None)
                   for member in sig.tasks]
        return GroupResult(sig.id, members, app, parent)
    if isinstance(sig, chain):
        call_args, call_kwargs, _ = sig.merged(args, kwargs)
        result = parent
        for index, step in enumerate(sig.tasks):
            if index > 0:
                assert result is not None
                if not _succeeded(result):
                    return _failed_inline(app, chain(*sig.tasks[index:]),
                                          _outcome_of(result), result)
                call_args, call_kwargs = (_value(result),), {}
            result = _run_inline(app, step, call_args, call_kwargs, result)
        assert result is not None
        return result
    call_args, call_kwargs, call_options = sig.merged(args, kwargs)
    applied = app.get_task(sig.task).apply(call_args, call_kwargs, **call_options)
    applied.parent = parent
    return applied


def _succeeded(result: ResultLike) -> bool:
    return result.successful()


def _value(result: ResultLike) -> Any:
    return result.get(propagate=False)


def _outcome_of(result: ResultLike) -> Outcome:
    if isinstance(result, GroupResult):
        failed = next(leaf for leaf in result._leaves() if not leaf.successful())
        return _outcome_of(failed)
    assert result._outcome is not None, "eager results always hold their outcome"
    return result._outcome


def _failed_inline(app: App, sig: Signature, outcome: Outcome,
                   parent: ResultLike | None) -> ResultLike:
    """The results of a tree that will not run, each holding ``outcome``."""
    if isinstance(sig, chord):
        header = _failed_inline(app, sig.header, outcome, parent)
        assert sig.body is not None
        return _failed_inline(app, sig.body, outcome, header)
    if isinstance(sig, group):
        return GroupResult(sig.id, [_failed_inline(app, member, outcome, None)
                                    for member in sig.tasks], app, parent)
    if isinstance(sig, chain):
        result = parent
        for step in sig.tasks:
            result = _failed_inline(app, step, outcome, result)
        assert result is not None
        return result
    failed: EagerResult[Any] = EagerResult(sig.id or str(uuid.uuid4()), app, outcome, sig.task)
    failed.parent = parent
    return failed


def eager_links(app: App, result: AsyncResult[Any], outcome: Outcome,
                options: Mapping[str, Any], request: Request) -> None:
    """Eager mode: run a task's ``link`` callbacks, or its ``link_error`` errbacks."""
    if outcome.state == states.SUCCESS:
        for callback in as_signatures(options.get("link"), app):
            apply_inline(callback, (outcome.result,), {}, {})
        return
    for errback in as_signatures(options.get("link_error"), app):
        task = app.tasks.get(errback.task)
        if task is not None and takes_request(errback, task):
            try:
                value = task(request, rebuild_exception(outcome), outcome.traceback)
                if inspect.iscoroutine(value):
                    asyncio.run(value)
            except Exception:
                logger.exception("error callback %s of %s[%s] failed", errback.task,
                                 request.task, request.id)
        else:
            apply_inline(errback, (result.id,), {}, {})


def describe(outcome: Outcome) -> str:
    """How a task ended, for an error message: "raised ValueError: boom"."""
    if outcome.state == states.REVOKED:
        return f"was revoked: {outcome.exc_message or ''}".rstrip(": ")
    kind = (outcome.exc_type or "Exception").rpartition(".")[2]
    return f"raised {kind}: {outcome.exc_message or ''}"


__all__ = ["CHAIN_HEADER", "CHORD_HEADER", "TOKEN_HEADER", "Context", "Emitter", "apply_inline",
           "asend", "freeze", "link_payloads", "plan", "send", "tails", "task_ids"]
