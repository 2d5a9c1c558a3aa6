"""One message through its life in a worker: decode, check, run, decide what happens next.

The executor is pure worker logic with no broker I/O of its own: it returns a
``Verdict`` (store this outcome, ack, dead-letter with a reason, publish a retry) and the
consumer carries the verdicts out in batches. Eager mode runs tasks through the same
``run_call`` so retries and failures behave alike in tests and in production.
"""

from __future__ import annotations

import logging
import os
import sysconfig
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any

from celeriac import signals, states
from celeriac.app import App
from celeriac.brokers.base import PARTITION_KEY_HEADER, Delivery, Outgoing
from celeriac.canvas_run import CHAIN_HEADER, CHORD_HEADER, TOKEN_HEADER
from celeriac.errors import (
    ContentDisallowed,
    DecodeError,
    MessageTooLarge,
    Reject,
    Retry,
    TaskNotRegistered,
    TaskRevokedError,
    ValidationError,
    brief,
    describe,
)
from celeriac.events.tasks import TaskEvents
from celeriac.logs import task_fields
from celeriac.message import Message
from celeriac.outcome import Outcome
from celeriac.task import Request, Task, current_request
from celeriac.tracking import mark_started, tracks_started
from celeriac.worker import hooks, signalling
from celeriac.worker.guard import Guard, Interrupted
from celeriac.worker.hooks import has_hooks

logger = logging.getLogger("celeriac.worker")

# Runs a sync callable off the event loop (a thread of the pool) and awaits its result.
SyncRunner = Callable[[Callable[[], Any]], Awaitable[Any]]


class Action(Enum):
    ACK = "ack"  # done (success, failure, revoked): remove the message
    RETRY = "retry"  # publish the retry message, then remove this one
    DEAD_LETTER = "dead_letter"  # cannot or must not run: keep it aside with a reason
    REQUEUE = "requeue"  # hand it back untouched
    DEFER = "defer"  # over its rate limit: publish the later copy, then remove this one


@dataclass(slots=True)
class Verdict:
    action: Action
    outcome: Outcome | None = None  # to store in the result backend, if any
    retry: Outgoing | None = None
    reason: str | None = None
    message: Message | None = None
    error: BaseException | None = None  # a failure's exception, for the log's exc_info
    runtime: float | None = None  # seconds the call took; None when it did not run
    logged: bool = False  # already logged by whoever decided it (a refused message)


@dataclass(slots=True)
class Prepared:
    """A decoded message whose task is known and which may run now."""

    delivery: Delivery
    message: Message
    task: Task[Any, Any]
    # A validate=True task's arguments converted into their annotated types (models
    # from dicts): what its function is called with. None: the message's own.
    call: tuple[tuple[Any, ...], dict[str, Any]] | None = None


class Executor:
    def __init__(self, app: App, run_sync: SyncRunner, hostname: str) -> None:
        self.app = app
        self.run_sync = run_sync
        self.hostname = hostname
        self.guard = Guard(app, run_sync)  # revocations and time limits
        self.security = app.security  # signing and encryption (celeriac.security), or None
        self.events: TaskEvents | None = None  # set by the consumer when events are on
        # task_received/task_rejected's sender: Celery's is the consumer (set by it)
        self.signal_sender: Any = None

    def prepare(self, delivery: Delivery, frame: Any = None) -> Prepared | Verdict:
        """Decide what to do with a delivery before running it (``_prepare``), and send
        the signals Celery sends at this point when anything listens.

        ``frame``: the verified frame inside a signed delivery (``security.screen``);
        a worker that checks signatures runs nothing without one.
        """
        outcome = self._guarded_prepare(delivery, frame)
        if signals.task_received.receivers or signals.task_rejected.receivers \
                or signals.task_revoked.receivers:
            signalling.after_prepare(self.app, delivery, outcome, self.hostname,
                                     self.signal_sender)
        if self.events is not None and type(outcome) is Prepared:
            self.events.received(outcome)
        return outcome

    def _guarded_prepare(self, delivery: Delivery, frame: Any) -> Prepared | Verdict:
        """Decode and check a delivery; a Verdict when it must not run.

        Never raises: whatever goes wrong with one delivery is that delivery's verdict
        (dead-lettered with the reason), so it cannot stop the slot that prepares it.
        """
        try:
            return self._prepare(delivery, frame)
        except Exception as exc:  # a bug, or a value no check foresaw: this delivery only
            logger.exception("could not prepare message %s", delivery.id)
            return _dead(f"the worker could not prepare it: {describe(exc)}")

    def _prepare(self, delivery: Delivery, frame: Any) -> Prepared | Verdict:
        problem = delivery.problem
        if problem is not None:  # the broker could not read its own fields
            return _dead(f"unreadable delivery: {problem}")
        limit = self.app.conf.delivery_limit
        if delivery.delivery_count > limit:
            return _dead(f"delivery limit exceeded: delivered {delivery.delivery_count} times "
                         f"(task_delivery_limit={limit}); the task may be killing its worker")
        message = self._decode(delivery, frame)
        if isinstance(message, Verdict):
            return message
        try:
            task = self.app.get_task(message.task)
        except TaskNotRegistered as exc:
            # Celery's words, which its users search for; the usual causes follow.
            logger.error("Received unregistered task of type %r (id %s): it goes to the dead "
                         "letters. The worker knows the tasks of the modules its app imports: "
                         "is the task's module listed in include or imports, found by "
                         "autodiscover_tasks, or imported by the app module? Is it sent to "
                         "the app this worker runs, under the name it was registered with?",
                         message.task, message.id)
            return _dead(f"unknown task: {exc}", message)
        try:  # as at send time: a call its function cannot take is a malformed message
            call = _checked_call(task, message)
        except ValidationError as exc:  # "<task>: invalid arguments: <path>: <what>"
            return _dead(f"malformed message: {exc}", message)
        except TypeError as exc:
            return _dead(f"malformed message: its arguments do not fit the task: {exc}",
                         message)
        if message.callbacks or message.errbacks or CHAIN_HEADER in message.headers \
                or CHORD_HEADER in message.headers:
            unreadable = self._unreadable_workflow(message)
            if unreadable is not None:  # found now, before the task runs, not after
                # (without its message: what follows it cannot be read, so not failed)
                return _dead(f"malformed message: {message.task}[{message.id}]: "
                             f"{unreadable}")
        if message.expires is not None and message.expires < time.time():
            expired = TaskRevokedError(f"task {message.task}[{message.id}] expired before it ran")
            logger.info("Task %s[%s] expired, not run", message.task, message.id,
                        extra=task_fields(message.id, message.task, message.queue,
                                          states.REVOKED, retries=message.retries))
            return Verdict(Action.ACK, _failure(expired, states.REVOKED, message),
                           message=message)
        refused = self.guard.refused(message)  # revoked: an O(1) look-up in memory
        if refused is not None:
            return Verdict(Action.ACK, refused, message=message)
        return Prepared(delivery, message, task, call)

    def _decode(self, delivery: Delivery, frame: Any) -> Message | Verdict:
        """The message in a delivery (its verified ``frame`` when signed), decrypted if
        it is encrypted, or the verdict that dead-letters it with why it cannot be."""
        codec = self.app.codec
        security = self.security
        if frame is None:
            if security is not None and security.verifier is not None \
                    and not _too_large(delivery.body, codec.max_size):
                # Never reached through the consumer (its screen opens every delivery
                # but the too large); a path that skipped it must not run it unchecked.
                return _dead("bad_signature: the worker did not check this message's "
                             "signature before running it (a bug), so it is not run")
            frame = delivery.body  # (too large: the codec refuses it unread)
        try:  # the size is checked before a byte is decompressed or decoded
            if security is not None:
                frame = security.open_frame(frame)  # decrypted, if it is encrypted
            return Message.from_payload(codec.decode(frame, codec.max_size))
        except MessageTooLarge as exc:
            return _dead(f"message too large: {exc}")
        except (DecodeError, ContentDisallowed) as exc:
            reason = str(exc)  # "malformed message: <field> ..." says enough by itself
            return _dead(reason if reason.startswith("malformed message")
                         else f"undecodable message: {reason}")

    def _unreadable_workflow(self, message: Message) -> str | None:
        """What is wrong with the signatures of what follows the task, if anything."""
        from celeriac.canvas import Signature

        chain = message.headers.get(CHAIN_HEADER)
        if chain is not None and not isinstance(chain, list | tuple):
            return f"header {CHAIN_HEADER!r} must be a list of signatures, not {brief(chain)}"
        for name, payloads in (("callbacks", message.callbacks),
                               ("errbacks", message.errbacks),
                               (f"header {CHAIN_HEADER!r}", chain or ())):
            for index, payload in enumerate(payloads):
                try:
                    Signature.from_payload(payload, self.app)
                except Exception as exc:
                    return f"{name}[{index}] is not a signature: {describe(exc)}"
        member = message.headers.get(CHORD_HEADER)
        return None if member is None else self._unreadable_chord(member, CHORD_HEADER)

    def _unreadable_chord(self, member: Any, where: str, depth: int = 0) -> str | None:
        """What is wrong with a chord member header (``canvas_run``: id, size, index,
        body, then, and the member header of an enclosing chord), if anything."""
        from celeriac.canvas import Signature

        if not isinstance(member, dict) or depth > 32:
            return f"header {where!r} must be a chord member (a mapping), not {brief(member)}"
        chord_id, size, index = member.get("id"), member.get("size"), member.get("index")
        for key, value, sound in (
                ("id", chord_id, isinstance(chord_id, str) and chord_id != ""),
                ("size", size, type(size) is int and size > 0),
                ("index", index, type(index) is int and index >= 0)):
            if not sound:
                return f"header {where!r}: {key!r} is {brief(value)}"
        then = member.get("then", [])
        if not isinstance(then, list | tuple):
            return f"header {where!r}: 'then' must be a list of signatures"
        for place, payload in (("body", member.get("body")),
                               *((f"then[{i}]", step) for i, step in enumerate(then))):
            try:
                Signature.from_payload(payload, self.app)
            except Exception as exc:
                return f"header {where!r}: {place} is not a signature: {describe(exc)}"
        outer = member.get("member")
        if outer is None:
            return None
        return self._unreadable_chord(outer, f"{where}.member", depth + 1)

    async def run(self, prepared: Prepared) -> Verdict:
        message, task = prepared.message, prepared.task
        if TOKEN_HEADER in message.headers:  # sent by a worker after a task of a workflow
            from celeriac.worker.workflow import is_duplicate

            if await is_duplicate(self.app, message):  # sent twice: one copy runs
                return Verdict(Action.ACK, message=message)
        request = _request_for(message, prepared.delivery.delivery_count, self.hostname,
                               prepared.call)
        if tracks_started(task) and not message.ignore_result:
            try:
                await mark_started(self.app, message, self.hostname)
            except Exception as exc:  # STARTED is informative: not worth not running for
                logger.warning("Task %s[%s]: could not store STARTED (%s); running it anyway",
                               message.task, message.id, describe(exc))
        if self.events is not None:
            self.events.started(prepared)
        started = time.perf_counter()
        try:
            verdict = await self.guard.run(task, message,
                                           lambda runner: run_call(task, request, runner))
        except Interrupted as stop:  # a time limit or a terminating revoke cut it short
            verdict = Verdict(Action.ACK, stop.outcome, message=message)
            if stop.outcome.state == states.REVOKED and signals.task_revoked.receivers:
                signals.task_revoked.send(sender=task, request=request, terminated=True,
                                          signum=None, expired=False)
        return _finished(task, message, verdict, time.perf_counter() - started)

    def batchable(self, prepared: Prepared) -> bool:
        """Whether a call may run in a batch, back to back with others on one thread hop.

        Only a plain sync call qualifies: acked late, no time limit (whose timers are
        per call), not part of a workflow step that checks for duplicates, and not
        tracked as STARTED (a write before the call).
        """
        message, task = prepared.message, prepared.task
        return (not task.is_async and task.acks_late and not has_hooks(task)
                and not signalling.task_signals_connected()
                and TOKEN_HEADER not in message.headers
                and (message.ignore_result or not tracks_started(task))
                and self.guard.limits_for(task, message) is None)

    async def run_batch(self, batch: Sequence[Prepared]) -> list[tuple[Verdict, float]]:
        """Run batchable calls one after another on one pool thread, in a single hop.

        A thread hop costs about as much as a quick task itself (two wake-ups), so quick
        tasks run in batches; each still gets its own request context, verdict and log
        line. Returns each call's verdict with its run time in seconds.
        """
        calls = [(p.task, p.message, _request_for(p.message, p.delivery.delivery_count,
                                                  self.hostname, p.call)) for p in batch]

        def run_all() -> list[tuple[bool, Any, float]]:
            done: list[tuple[bool, Any, float]] = []
            for task, _, request in calls:
                started = time.perf_counter()
                try:
                    done.append((True, _call_sync(task, request),
                                 time.perf_counter() - started))
                except Exception as exc:
                    done.append((False, exc, time.perf_counter() - started))
            return done

        if self.events is not None:
            self.events.started_batch(batch)
        ran = await self.guard.runner(run_all)
        verdicts = []
        for (task, message, request), (ok, value, elapsed) in zip(calls, ran, strict=True):
            verdict = _succeeded(task, message, value) if ok else \
                _verdict_for_error(task, request, message, value)
            verdicts.append((_finished(task, message, verdict, elapsed), elapsed))
        return verdicts


def _checked_call(task: Task[Any, Any], message: Message,
                  ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """The message's arguments checked against the task's signature (TypeError) and, for
    a ``validate=True`` task, against its type hints again, since the broker's data is
    untrusted (ValidationError). Returns a validated task's arguments converted into
    their annotated types; None: the function takes the message's own."""
    task.check_arguments(message.args, message.kwargs)
    validator = task.validator if task.options.validate else None
    return None if validator is None else validator.arguments(message.args, message.kwargs)


def _finished(task: Task[Any, Any], message: Message, verdict: Verdict,
              elapsed: float) -> Verdict:
    """Log what happened to a call; drop a result nobody will read."""
    verdict.runtime = elapsed
    _log_verdict(task, message, verdict, elapsed)
    if verdict.action is Action.ACK and verdict.outcome is not None \
            and verdict.outcome.state == states.SUCCESS and message.ignore_result \
            and not message.callbacks and CHAIN_HEADER not in message.headers:
        verdict.outcome = None  # (kept for a workflow: what follows needs the value)
    return verdict


async def run_call(task: Task[Any, Any], request: Request, run_sync: SyncRunner) -> Verdict:
    """Run one call of ``task`` with ``request`` as its context; say what should follow."""
    message = _message_for(task, request)
    if has_hooks(task) or signalling.task_signals_connected():
        return await _run_call_with_hooks(task, request, run_sync, message)
    try:
        value = await _invoke(task, request, run_sync)
    except Exception as exc:
        return _verdict_for_error(task, request, message, exc)
    return _succeeded(task, message, value)


async def _run_call_with_hooks(task: Task[Any, Any], request: Request, run_sync: SyncRunner,
                               message: Message) -> Verdict:
    """``run_call`` for a task class with Celery's hooks (``worker/hooks.py``)."""
    await hooks.before_start(task, request, run_sync)
    started = time.perf_counter()
    try:
        value = await _invoke(task, request, run_sync)
    except Exception as exc:
        verdict = _verdict_for_error(task, request, message, exc)
        await hooks.after(task, request, verdict, run_sync, exc=exc)
        return verdict
    runtime = time.perf_counter() - started  # task_success's runtime, as in Celery
    verdict = _succeeded(task, message, value)
    await hooks.after(task, request, verdict, run_sync, retval=value, runtime=runtime)
    return verdict


def _succeeded(task: Task[Any, Any], message: Message, value: Any) -> Verdict:
    validator = task.validator if task.options.validate else None
    if validator is not None:  # checked against the return annotation, stored as JSON
        try:
            value = validator.result_to_store(value)
        except ValidationError as exc:  # the task's own bug: it fails, and says where
            return Verdict(Action.ACK, _failure(exc, states.FAILURE, message),
                           message=message, error=exc)
    return Verdict(Action.ACK, Outcome.success(value, message.task, message.retries),
                   message=message)


def _verdict_for_error(task: Task[Any, Any], request: Request, message: Message,
                       exc: Exception) -> Verdict:
    """What follows a call that raised: a retry, a rejection, or a failure."""
    if isinstance(exc, Retry):
        return _retry_verdict(task, message, exc)
    if isinstance(exc, Reject):
        action = Action.REQUEUE if exc.requeue else Action.DEAD_LETTER
        said = str(exc.reason) if exc.reason else "(no reason given)"
        return Verdict(action, reason=f"rejected by the task: {said}", message=message)
    if task.options.autoretry_for and isinstance(exc, task.options.autoretry_for) \
            and not isinstance(exc, task.options.dont_autoretry_for):
        return _autoretry(task, request, message, exc)
    return Verdict(Action.ACK, _failure(exc, states.FAILURE, message), message=message,
                   error=exc)


async def _invoke(task: Task[Any, Any], request: Request, run_sync: SyncRunner) -> Any:
    if task.is_async:
        args = (task, *request.args) if task.bind else request.args
        token = current_request.set(request)
        try:
            return await task.fn(*args, **request.kwargs)
        finally:
            current_request.reset(token)
    return await run_sync(lambda: _call_sync(task, request))


def _call_sync(task: Task[Any, Any], request: Request) -> Any:
    """Call a sync task function with ``request`` as the context of the calling thread.

    Runs in a pool thread, so the request is set in that thread's context.
    """
    args = (task, *request.args) if task.bind else request.args
    token = current_request.set(request)
    try:
        return task.fn(*args, **request.kwargs)
    finally:
        current_request.reset(token)


def _autoretry(task: Task[Any, Any], request: Request, message: Message,
               exc: Exception) -> Verdict:
    token = current_request.set(request)
    retry_kwargs = dict(task.options.retry_kwargs)  # Celery's: countdown, max_retries ...
    if task.options.retry_backoff:
        retry_kwargs["countdown"] = task.backoff_countdown(request.retries)
        retry_kwargs.pop("eta", None)
    try:
        task.retry(exc=exc, **retry_kwargs)
    except Retry as signal:
        return _retry_verdict(task, message, signal)
    except Exception as final:  # retries used up: the task fails with the last error
        return Verdict(Action.ACK, _failure(final, states.FAILURE, message), message=message)
    finally:
        current_request.reset(token)
    raise AssertionError("task.retry() always raises")  # pragma: no cover


def _retry_verdict(task: Task[Any, Any], message: Message, signal: Retry) -> Verdict:
    when = signal.when.timestamp() if signal.when is not None else time.time()
    next_message = message.replace(retries=message.retries + 1, eta=when, sent_at=time.time(),
                                   **signal.changes)  # args, kwargs, queue, priority
    try:
        body = encode_for(task, next_message)
    except Exception as exc:  # new arguments that cannot be sent: the task fails with that
        logger.error("Task %s[%s]: its retry cannot be sent: %s", message.task, message.id,
                     describe(exc))
        return Verdict(Action.ACK, _failure(exc, states.FAILURE, message), message=message,
                   error=exc)
    key = next_message.headers.get(PARTITION_KEY_HEADER)
    retry = Outgoing(next_message.id, next_message.queue, body, next_message.priority, when,
                     key if isinstance(key, str) and key else None)
    cause = signal.exc if signal.exc is not None else signal
    return Verdict(Action.RETRY, _failure(cause, states.RETRY, message), retry=retry,
                   message=message)


def encode_for(task: Task[Any, Any], message: Message) -> bytes:
    """A message a worker sends again (a retry, a deferral) encoded as the task sends."""
    app = task.app
    conf, options = app.conf, task.options
    validator = task.validator if options.validate else None
    if validator is not None:  # as at send: validated, in their JSON form
        args, kwargs = validator.for_message(message.args, message.kwargs)
        message = message.replace(args=args, kwargs=kwargs)
    body = app.codec.encode(message.to_payload(),
                            options.serializer or conf.task_serializer,
                            options.compression or conf.task_compression)
    security = app.security
    if security is not None:  # signed anew: a new nonce, signed now (celeriac.security)
        encrypt = options.encrypt
        body = security.seal(body, message.queue, message.eta,
                             security.encrypt_tasks if encrypt is None else encrypt)
    return body


def _request_for(message: Message, delivery_count: int, hostname: str,
                 call: tuple[tuple[Any, ...], dict[str, Any]] | None = None) -> Request:
    args, kwargs = (message.args, message.kwargs) if call is None else call
    return Request(
        id=message.id, task=message.task, args=args, kwargs=kwargs,
        retries=message.retries, queue=message.queue, priority=message.priority,
        delivery_count=delivery_count, eta=message.eta, expires=message.expires,
        root_id=message.root_id or message.id, parent_id=message.parent_id,
        group_id=message.group_id, hostname=hostname, headers=message.headers,
        callbacks=message.callbacks, errbacks=message.errbacks,
        unique_key=message.unique_key, unique_for=message.unique_for,
    )


def _message_for(task: Task[Any, Any], request: Request) -> Message:
    """The message a request came from (rebuilt in eager mode, where there is none)."""
    return Message(
        id=request.id or "", task=task.name, args=request.args, kwargs=request.kwargs,
        queue=request.queue or task.app.conf.task_default_queue, priority=request.priority,
        eta=request.eta, expires=request.expires, retries=request.retries,
        root_id=request.root_id, parent_id=request.parent_id, group_id=request.group_id,
        headers=request.headers, callbacks=request.callbacks, errbacks=request.errbacks,
        unique_key=request.unique_key, unique_for=request.unique_for,
    )


def _failure(exc: BaseException, state: str, message: Message | None) -> Outcome:
    if message is None:
        return Outcome.failure(exc, state)
    # The stored traceback starts at the task's own code, as the worker's log does: the
    # frames of celeriac calling it (and of the thread pool) are noise to whoever reads
    # it in AsyncResult.traceback or the dashboard. A failure inside celeriac keeps all.
    own = user_frames(exc.__traceback__)
    if own is not None:
        exc = exc.with_traceback(own)
    call = (message.args, message.kwargs) if state == states.FAILURE else None
    return Outcome.failure(exc, state, message.task, message.retries, call)


# Frames of these directories that come before the task's own are left out of a logged
# failure: celeriac calling the task, and the standard library's thread pool under it.
_CALLERS = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            sysconfig.get_paths()["stdlib"])


def user_frames(tb: TracebackType | None) -> TracebackType | None:
    """A traceback without its leading celeriac frames: the user's code comes first."""
    first = tb
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_CALLERS):
        tb = tb.tb_next
    return tb if tb is not None else first


def _too_large(body: bytes, max_size: int | None) -> bool:
    """Whether a signed delivery is too large to hold a message (``security.screen``
    leaves such a body unopened, for the codec to refuse)."""
    from celeriac.security.signing import ENVELOPE_MAX

    return max_size is not None and len(body) > max_size + ENVELOPE_MAX


def _dead(reason: str, message: Message | None = None) -> Verdict:
    return Verdict(Action.DEAD_LETTER, reason=reason, message=message)


def _log_verdict(task: Task[Any, Any], message: Message, verdict: Verdict,
                 elapsed: float) -> None:
    def fields(state: str) -> dict[str, Any] | None:  # the task's fields, for JSON lines
        return task_fields(message.id, message.task, message.queue, state, elapsed,
                           message.retries)

    if verdict.action is Action.ACK and verdict.outcome is not None:
        outcome = verdict.outcome
        if outcome.state == states.SUCCESS:
            if logger.isEnabledFor(logging.INFO):
                logger.info("Task %s[%s] succeeded in %.4fs: %.200r", message.task, message.id,
                            elapsed, outcome.result, extra=fields(outcome.state))
        elif verdict.error is not None:
            # exc_info, so that Sentry's logging integration and log aggregators get a real
            # stack; the frames celeriac called the task through are left out.
            error = verdict.error
            logger.error("Task %s[%s] failed in %.4fs: %s: %s", message.task, message.id,
                         elapsed, outcome.exc_type, outcome.exc_message,
                         exc_info=(type(error), error, user_frames(error.__traceback__)),
                         extra=fields(outcome.state))
        else:
            logger.error("Task %s[%s] failed in %.4fs: %s: %s\n%s", message.task, message.id,
                         elapsed, outcome.exc_type, outcome.exc_message, outcome.traceback,
                         extra=fields(outcome.state))
    elif verdict.action is Action.RETRY and verdict.retry is not None:
        delay = (verdict.retry.eta or time.time()) - time.time()
        logger.warning("Task %s[%s] retry %d in %.2fs: %s", message.task, message.id,
                       message.retries + 1, max(0.0, delay),
                       verdict.outcome.exc_message if verdict.outcome else "",
                       extra=fields(states.RETRY))
    elif verdict.action is Action.DEAD_LETTER:
        logger.error("Task %s[%s] dead-lettered: %s", message.task, message.id, verdict.reason,
                     extra=fields("DEAD_LETTERED"))
