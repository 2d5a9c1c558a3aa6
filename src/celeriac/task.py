"""Tasks: the decorator's product, the request context, and retries.

``Task[P, R]`` wraps a function ``(*P) -> R`` (or ``async (*P) -> R``). Its ``delay``
has the function's own signature, so a type checker catches ``add.delay("x")``, and the
arguments are bound against the signature at send time so a wrong call raises
``TypeError`` before anything is sent.
"""

from __future__ import annotations

import contextvars
import inspect
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from celeriac.errors import MaxRetriesExceededError, Retry
from celeriac.priorities import priority_level
from celeriac.timezones import aware

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.canvas import Signature
    from celeriac.canvas import chunks as Chunks
    from celeriac.result import AsyncResult
    from celeriac.validation import Validator

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(slots=True)
class Request:
    """What a running task knows about its own message (``self.request`` in a bound task)."""

    id: str | None = None
    task: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    queue: str | None = None
    priority: int = 0
    delivery_count: int = 0
    eta: float | None = None
    expires: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    is_eager: bool = False
    hostname: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    callbacks: tuple[dict[str, Any], ...] = ()  # link signatures (payloads), as in Celery
    errbacks: tuple[dict[str, Any], ...] = ()  # link_error signatures
    unique_key: str | None = None  # the key it holds (unique jobs); a retry keeps it
    unique_for: float | None = None

    @property
    def delivery_info(self) -> dict[str, Any]:
        return {"queue": self.queue, "priority": self.priority,
                "redelivered": self.delivery_count > 1}


# The request of the task running in this context: a contextvar, so each async task and
# each worker thread sees its own, and nothing is global.
current_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "celeriac_current_request", default=None
)


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Per-task settings; ``None`` means "use the app's setting"."""

    queue: str | None = None
    priority: int | None = None
    max_retries: int | None = 3
    default_retry_delay: float | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()  # exceptions to autoretry_for
    retry_kwargs: Mapping[str, Any] = field(default_factory=dict)
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    acks_late: bool | None = None
    ignore_result: bool | None = None
    serializer: str | None = None
    compression: str | None = None
    expires: float | timedelta | datetime | None = None
    rate_limit: str | float | None = None  # "100/s", "10/m", "1000/h": see celeriac.ratelimit
    track_started: bool | None = None  # store STARTED when it starts (task_track_started)
    time_limit: float | None = None  # hard, seconds (see celeriac.limits)
    soft_time_limit: float | None = None
    # seconds a send holds its key (task name + arguments): no second copy meanwhile
    unique_for: float | None = None  # (celeriac.uniqueness, docs/unique-jobs.md)
    # The dashboard shows "(hidden)" for its args, kwargs and result, and its history
    # never stores them: for tasks whose arguments are secrets or personal data.
    dashboard_hide_args: bool = False
    # encrypt its payload on the broker (celeriac.security); None: task_encryption
    encrypt: bool | None = None
    # arguments and result checked against the type hints with pydantic, at send and
    # again on the worker (celeriac.validation, docs/security.md)
    validate: bool = False


TASK_OPTION_NAMES = frozenset(TaskOptions.__dataclass_fields__)

# What ``retry()`` (and ``retry_kwargs``) may change of the next attempt besides its
# timing, arguments and retry limit.
RETRY_OPTION_NAMES = frozenset({"queue", "priority"})
RETRY_KWARGS_NAMES = frozenset({"countdown", "eta", "max_retries", *RETRY_OPTION_NAMES})


def check_task_options(options: Mapping[str, Any]) -> None:
    """Raise ValueError or TypeError for a bad ``rate_limit`` or ``retry_kwargs``."""
    if options.get("rate_limit") is not None:
        from celeriac.ratelimit import parse_rate

        parse_rate(options["rate_limit"])
    retry_kwargs = options.get("retry_kwargs") or {}
    if not isinstance(retry_kwargs, Mapping):
        raise TypeError(f"retry_kwargs must be a mapping, not {retry_kwargs!r}")
    unknown = set(retry_kwargs) - RETRY_KWARGS_NAMES
    if unknown:
        raise TypeError(f"retry_kwargs has an unknown option {sorted(unknown)[0]!r}; "
                        f"known: {', '.join(sorted(RETRY_KWARGS_NAMES))}")

# What apply_async accepts besides args and kwargs.
SEND_OPTION_NAMES = frozenset({
    "countdown", "eta", "expires", "queue", "priority", "task_id", "serializer",
    "compression", "ignore_result", "headers", "link", "link_error", "retries",
    "root_id", "parent_id", "group_id", "time_limit", "soft_time_limit",
    "routing_key", "exchange",  # Celery's: a routing key picks a queue of task_queues
    "unique_key", "unique_for",  # unique jobs (celeriac.uniqueness)
    "partition_key",  # one at a time per key, in order (brokers with supports_partition_key)
})


class Task(Generic[P, R]):
    """A registered task. Call it to run it here; ``delay`` it to run it on a worker."""

    _options: TaskOptions  # as declared
    _annotated: TaskOptions  # with the task_annotations of _annotated_from applied
    _annotated_from: Any

    def __init__(self, app: App, fn: Callable[..., Any], name: str, bind: bool,
                 options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.bind = bind
        self.options = options  # the decorator's; read back with task_annotations applied
        self.is_async = inspect.iscoroutinefunction(fn)
        self._signature = _call_signature(fn, bind)
        self._simple_params = _simple_params(self._signature)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__wrapped__ = fn
        self._validator: Validator | None = None

    def __repr__(self) -> str:
        return f"<@task {self.name}>"

    # -- Celery's hooks: override them in a base class, ``@app.task(base=MyTask)`` -------
    # They run on the worker, in the task's own thread or loop, around each execution; an
    # exception raised by a hook is logged and does not change the task's outcome.

    def before_start(self, task_id: str, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> None:
        """Before the function runs."""

    def on_success(self, retval: Any, task_id: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> None:
        """After it returned ``retval``."""

    def on_failure(self, exc: BaseException, task_id: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any], einfo: str) -> None:
        """After it raised ``exc`` for good (``einfo``: the traceback text)."""

    def on_retry(self, exc: BaseException, task_id: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any], einfo: str) -> None:
        """After it raised ``exc`` and another attempt was scheduled."""

    def after_return(self, status: str, retval: Any, task_id: str, args: tuple[Any, ...],
                     kwargs: dict[str, Any], einfo: str | None) -> None:
        """After any of the above, with the final state (``SUCCESS``, ``FAILURE``...)."""

    @property
    def options(self) -> TaskOptions:
        """The task's options: the decorator's, with ``task_annotations`` applied."""
        annotations = self.app.conf.task_annotations
        if annotations is None:
            return self._options
        if self._annotated_from is not annotations:
            from celeriac.annotations import annotate

            self._annotated = annotate(self._options, self, annotations)
            self._annotated_from = annotations
        return self._annotated

    @options.setter
    def options(self, options: TaskOptions) -> None:
        self._options = self._annotated = options
        self._annotated_from = None

    # Celery exposes these option values as task attributes; so do we.
    @property
    def max_retries(self) -> int | None:
        return self.options.max_retries

    @property
    def queue(self) -> str | None:
        return self.options.queue

    @property
    def priority(self) -> int | None:
        return self.options.priority

    @property
    def dashboard_hide_args(self) -> bool:
        """The dashboard shows and keeps no args, kwargs nor result of this task."""
        return self.options.dashboard_hide_args

    @property
    def request(self) -> Request:
        return current_request.get() or Request()

    @property
    def acks_late(self) -> bool:
        late = self.options.acks_late
        return self.app.conf.task_acks_late if late is None else late

    @property
    def ignore_result(self) -> bool:
        ignore = self.options.ignore_result
        return self.app.conf.task_ignore_result if ignore is None else ignore

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the function here and now (for an async task: return its coroutine)."""
        if self.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    # -- sending --------------------------------------------------------------------------

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise TypeError, naming the task, if the function cannot take these arguments."""
        simple = self._simple_params
        if simple is not None:
            # Plain parameters only: the checks Signature.bind makes, without its cost.
            # Anything this does not accept is left to bind, which explains it.
            names, required = simple
            given = len(args)
            if given <= len(names):
                if not kwargs:
                    if given >= required:
                        return
                else:
                    rest = names[given:]
                    if all(key in rest for key in kwargs) \
                            and all(name in kwargs for name in names[given:required]):
                        return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}{self._signature}: {exc}") from None

    @property
    def validator(self) -> Validator | None:
        """The pydantic checks of a ``validate=True`` task (built at first use), else None."""
        if not self.options.validate:
            return None
        if self._validator is None:
            from celeriac.validation import Validator

            self._validator = Validator(self.name, self.fn, self._signature)
        return self._validator

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Sequence[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, **options: Any) -> AsyncResult[R]:
        return self.app.send_task(self.name, args, kwargs, _task=self, **options)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        return await self.aapply_async(args, kwargs)

    async def aapply_async(self, args: Sequence[Any] | None = None,
                           kwargs: Mapping[str, Any] | None = None,
                           **options: Any) -> AsyncResult[R]:
        return await self.app.asend_task(self.name, args, kwargs, _task=self, **options)

    def apply(self, args: Sequence[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, **options: Any) -> AsyncResult[R]:
        """Run the task in this process and return an EagerResult (Celery's ``apply``)."""
        from celeriac.eager import run_eagerly

        return run_eagerly(self, tuple(args or ()), dict(kwargs or {}), options)

    # -- signatures (celeriac.canvas) -----------------------------------------------------

    def signature(self, args: Sequence[Any] | None = None,
                  kwargs: Mapping[str, Any] | None = None, **options: Any) -> Signature:
        """A call of this task as a value, to send later or build a workflow with."""
        from celeriac.canvas import signature

        return signature(self.name, args, kwargs, app=self.app, **options)

    subtask = signature  # Celery's old name

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """``add.s(2)``: a signature with these (possibly partial) arguments."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """``add.si(2, 2)``: an immutable signature; it ignores a previous step's result."""
        return self.signature(args, kwargs, immutable=True)

    def map(self, it: Iterable[Any]) -> Signature:
        """One message that calls this task once per item of ``it``."""
        from celeriac.canvas import xmap

        return xmap(self.s(), it)

    def starmap(self, it: Iterable[Iterable[Any]]) -> Signature:
        """One message that calls this task with each item's arguments: ``task(*item)``."""
        from celeriac.canvas import xstarmap

        return xstarmap(self.s(), it)

    def chunks(self, it: Iterable[Iterable[Any]], n: int) -> Chunks:
        """The calls ``task(*item)`` cut into messages of ``n`` calls each (a group)."""
        from celeriac.canvas import chunks

        return chunks(self.s(), it, n)

    # -- retrying -------------------------------------------------------------------------

    def retry(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              exc: BaseException | None = None, throw: bool = True,
              eta: datetime | float | None = None, countdown: float | None = None,
              max_retries: int | None = None, **options: Any) -> Retry:
        """Ask for another attempt: raises ``Retry`` (use as ``raise self.retry(...)``).

        Celery's signature. The next attempt runs at ``eta`` (a datetime, naive meaning
        UTC, or a Unix time), else ``countdown`` seconds from now, else after
        ``default_retry_delay``; with ``args``/``kwargs`` instead of the current ones, and
        on another ``queue`` or ``priority`` if given. ``max_retries`` overrides the
        task's for this call (None: the task's; the task's None: retry for ever).

        Past ``max_retries`` it raises ``exc`` when given (so the task fails with that
        last error), else MaxRetriesExceededError. ``throw=False`` returns the Retry
        signal instead of raising it; the retry happens only if the task raises it.
        """
        unknown = set(options) - RETRY_OPTION_NAMES
        if unknown:
            raise TypeError(f"retry() got an unexpected option {sorted(unknown)[0]!r}; it "
                            f"takes {', '.join(sorted(RETRY_OPTION_NAMES))}")
        request = self.request
        limit = self.options.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"{self.name}[{request.id}] retried {request.retries} times (max_retries={limit})"
            )
        if eta is not None and countdown is not None:
            raise TypeError("give countdown or eta, not both")
        if eta is None:
            delay = self.default_retry_delay if countdown is None else float(countdown)
            when = datetime.fromtimestamp(_now() + delay, UTC)
        elif isinstance(eta, datetime):
            when = aware(eta, self.app.naive_zone)
        else:
            when = datetime.fromtimestamp(float(eta), UTC)
        changes = {name: value for name, value in options.items() if value is not None}
        if "priority" in changes:
            changes["priority"] = priority_level(changes["priority"],
                                                 self.app.conf.task_queue_max_priority)
        if args is not None:
            changes["args"] = tuple(args)
        if kwargs is not None:
            changes["kwargs"] = dict(kwargs)
        signal = Retry(exc=exc, when=when, changes=changes)
        if throw:
            raise signal
        return signal

    @property
    def default_retry_delay(self) -> float:
        delay = self.options.default_retry_delay
        return self.app.conf.task_default_retry_delay if delay is None else delay

    def backoff_countdown(self, retries: int) -> float:
        """The delay before retry number ``retries + 1`` under ``retry_backoff``."""
        backoff = self.options.retry_backoff
        if not backoff:
            return float(self.options.retry_kwargs.get("countdown", self.default_retry_delay))
        factor = 1.0 if backoff is True else float(backoff)
        countdown = min(self.options.retry_backoff_max, factor * 2.0**retries)
        if self.options.retry_jitter:
            countdown = random.uniform(0, countdown)
        return countdown


def _now() -> float:
    import time

    return time.time()


def _simple_params(signature: inspect.Signature) -> tuple[tuple[str, ...], int] | None:
    """(names, how many have no default) when every parameter is a plain one (positional
    or keyword, no ``*args``, ``**kwargs`` or keyword-only ones), else None."""
    params = list(signature.parameters.values())
    if any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params):
        return None
    required = sum(1 for p in params if p.default is inspect.Parameter.empty)
    if any(p.default is not inspect.Parameter.empty for p in params[:required]):
        return None  # defaults not all at the end: cannot happen in Python, but be sure
    return tuple(p.name for p in params), required


def _call_signature(fn: Callable[..., Any], bind: bool) -> inspect.Signature:
    signature = inspect.signature(fn)
    if bind:
        params = list(signature.parameters.values())
        if not params:
            raise TypeError(f"{fn.__qualname__} is bound (bind=True) but takes no `self`")
        signature = signature.replace(parameters=params[1:])
    # Without the return annotation it reads as the call it checks: "add(x: int, y: int)".
    return signature.replace(return_annotation=inspect.Signature.empty)
