"""Canvas: task calls as values (signatures), and the workflows built from them.

A ``Signature`` is a task call that has not been sent: the task's name, its arguments
(possibly partial) and the options it will be sent with. ``add.s(2, 2)`` makes one,
``add.si(2, 2)`` an immutable one (it ignores the result of the step before it).
Signatures compose::

    chain(a, b, c)     a | b | c       one after another, each step getting the result
                                       of the one before as its first argument
    group(a, b, c)                     in parallel; a GroupResult collects the results
    chord(group, body) group | body    the group, then ``body`` with the list of its
                                       results, exactly once

and nest: a chain of groups, a chord whose header holds chains, a chord in a chain.
A group followed by more steps in a chain becomes a chord (the steps wait for all of
it), so ``chain(a, group(b, c), d)`` is ``chain(a, chord(group(b, c), d))``.

Design:

- **Not a dict.** ``Signature`` is a frozen dataclass. What a signature *is* — task
  name, arguments, immutability, children — is fixed once built; ``clone()`` and
  ``replace()`` make new ones. Its ``options`` are the sending options and, as in
  Celery, ``set()``, ``link()``, ``link_error()`` and ``freeze()`` change them in place
  (``set(immutable=...)`` is the one Celery-compatible exception to the frozen fields).
- **Plain data on the wire.** ``to_payload()``/``from_payload()`` turn a signature tree
  into JSON-able data and back, so it can travel inside a message: a chain's remaining
  steps, a chord's body, link callbacks. Datetimes and timedeltas in options are tagged.
- **No I/O here.** ``celeriac.canvas_run`` turns a signature tree into messages (on the
  producer, and on a worker for the steps that follow a task) and runs canvases inline
  in eager mode; ``celeriac.worker.workflow`` is what a worker does after a task that
  belongs to a workflow. The methods below delegate to them.
- **An explicit app.** A signature made by ``task.s()`` carries its task's app;
  ``signature("name", app=app)`` names one; a composite finds it in its children.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, Union

from celeriac.errors import ConfigurationError, DecodeError, brief

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.group_result import ResultLike
    from celeriac.task import Task
    from celeriac.validation import Validator

S = TypeVar("S", bound="Signature")

# The task names of composite signatures in their payloads.
CHAIN = "celeriac.chain"
GROUP = "celeriac.group"
CHORD = "celeriac.chord"
# Built-in tasks behind Task.map / Task.starmap (see celeriac.builtins).
MAP = "celeriac.map"
STARMAP = "celeriac.starmap"

LINK_OPTIONS = ("link", "link_error")
_Step = Union["Signature", Mapping[str, Any]]  # a signature, or its payload
_DATETIME_TAG = "$datetime"  # {"$datetime": unix time} in a payload's options
_TIMEDELTA_TAG = "$timedelta"  # {"$timedelta": seconds}


@dataclass(frozen=True, repr=False)
class Signature:
    """One task call, ready to be sent, chained, grouped or used as a callback."""

    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    immutable: bool = False
    app: App | None = field(default=None, compare=False)

    # -- what it is -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.task

    @property
    def id(self) -> str | None:
        """The task id this call will have (set by ``freeze()``, or ``task_id=``)."""
        task_id: str | None = self.options.get("task_id")
        return task_id

    @property
    def type(self) -> Task[..., Any]:
        """The registered task this signature calls."""
        return self.resolve_app().get_task(self.task)

    def resolve_app(self) -> App:
        """The app to send with: this signature's own, or the first one found inside."""
        app = self._find_app()
        if app is None:
            raise ConfigurationError(
                f"{self!r} has no app to send it with: make it with task.s() or "
                "signature(name, app=app)")
        return app

    def _find_app(self) -> App | None:
        return self.app

    def _children(self) -> tuple[Signature, ...]:
        return ()

    # -- variations -----------------------------------------------------------------------

    def replace(self: S, **changes: Any) -> S:
        """A shallow copy with some fields changed (``args=``, ``options=``, ...)."""
        new = object.__new__(type(self))
        for item in dataclasses.fields(self):
            object.__setattr__(new, item.name, changes.get(item.name,
                                                           getattr(self, item.name)))
        return new

    def merged(self, args: Iterable[Any] = (), kwargs: Mapping[str, Any] | None = None,
               options: Mapping[str, Any] | None = None,
               ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        """Arguments and options of a call with more of them: new args go first, new
        kwargs and options win. An immutable signature keeps its own args and kwargs."""
        merged_options = {**self.options, **(options or {})}
        if self.immutable:
            return self.args, dict(self.kwargs), merged_options
        return (*args, *self.args), {**self.kwargs, **(kwargs or {})}, merged_options

    def clone(self: S, args: Iterable[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, **options: Any) -> S:
        """A deep copy (children and link callbacks too), with partial arguments added."""
        call_args, call_kwargs, merged_options = self.merged(args or (), kwargs, options)
        return self._copy(args=call_args, kwargs=call_kwargs,
                          options=_copy_options(merged_options))

    def _copy(self: S, **changes: Any) -> S:
        return self.replace(**changes)

    def set(self: S, immutable: bool | None = None, **options: Any) -> S:
        """Change sending options in place and return this signature (as in Celery)."""
        if immutable is not None:
            object.__setattr__(self, "immutable", bool(immutable))
        self.options.update(options)
        return self

    def link(self, callback: Signature) -> Signature:
        """Send ``callback`` with this task's result when it succeeds; returns ``callback``."""
        _add_links(self, "link", callback)
        return callback

    def link_error(self, errback: Signature) -> Signature:
        """Call ``errback`` when this task fails; returns ``errback``.

        An errback task taking ``(request, exc, traceback)`` is called in the worker that
        ran the failed task; one taking a single argument is sent with the task's id.
        """
        _add_links(self, "link_error", errback)
        return errback

    def on_error(self: S, errback: Signature) -> S:
        """``link_error`` that returns this signature, for chaining calls."""
        self.link_error(errback)
        return self

    def freeze(self, _id: str | None = None) -> ResultLike:
        """Give this call (and everything in it) its task ids now; return its result."""
        from celeriac.canvas_run import freeze

        return freeze(self, self.resolve_app(), task_id=_id)

    # -- sending --------------------------------------------------------------------------

    def apply_async(self, args: Iterable[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, **options: Any) -> ResultLike:
        """Send it, with partial arguments and options added; return its result.

        A chain returns the result of its last step (whose ``parent`` is the step before),
        a group a GroupResult, a chord the result of its body.
        """
        from celeriac.canvas_run import send

        return send(self, tuple(args or ()), dict(kwargs or {}), options)

    def delay(self, *args: Any, **kwargs: Any) -> ResultLike:
        return self.apply_async(args, kwargs)

    async def aapply_async(self, args: Iterable[Any] | None = None,
                           kwargs: Mapping[str, Any] | None = None,
                           **options: Any) -> ResultLike:
        """``apply_async`` for async callers: publishes on the running event loop."""
        from celeriac.canvas_run import asend

        return await asend(self, tuple(args or ()), dict(kwargs or {}), options)

    async def adelay(self, *args: Any, **kwargs: Any) -> ResultLike:
        return await self.aapply_async(args, kwargs)

    def apply(self, args: Iterable[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, **options: Any) -> ResultLike:
        """Run it here and now, workflow and all (Celery's ``apply``)."""
        from celeriac.canvas_run import apply_inline

        return apply_inline(self, tuple(args or ()), dict(kwargs or {}), options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A task signature calls the function here; a composite one is sent."""
        call_args, call_kwargs, _ = self.merged(args, kwargs)
        return self.type(*call_args, **call_kwargs)

    def __invert__(self) -> Any:
        """``~sig``: send it and wait for its value (``sig.delay().get()``)."""
        return self.apply_async().get()

    def __or__(self, other: Signature) -> Signature:
        """``a | b``: a chain; a group piped into anything is a chord."""
        if not isinstance(other, Signature):
            return NotImplemented
        if isinstance(self, group):
            return chord(self, other)
        return chain(self, other)

    # -- plain data -----------------------------------------------------------------------

    def to_payload(self) -> dict[str, Any]:
        """This signature tree as plain data (JSON- and msgpack-able if its arguments are)."""
        payload: dict[str, Any] = {"task": self.task}
        if self.args or self.kwargs:
            args, kwargs = self._plain_arguments()
            if args:
                payload["args"] = args
            if kwargs:
                payload["kwargs"] = kwargs
        if self.options:
            payload["options"] = _encode_options(self.options)
        if self.immutable:
            payload["immutable"] = True
        return payload

    def _plain_arguments(self) -> tuple[list[Any], dict[str, Any]]:
        """The arguments as the payload carries them: for a ``validate=True`` task known
        to this signature's app, in their JSON form (models as dicts), since they travel
        inside another message (a chain step, a link) and are validated only when the
        step itself is sent."""
        app = self.app
        task = app.tasks.get(self.task) if app is not None else None
        if task is None or not task.options.validate:
            return list(self.args), dict(self.kwargs)
        from celeriac.validation import plain

        return plain(list(self.args)), plain(dict(self.kwargs))

    @staticmethod
    def from_payload(payload: Mapping[str, Any], app: App | None = None) -> Signature:
        """Rebuild a signature tree from ``to_payload`` data; DecodeError if malformed."""
        if not isinstance(payload, Mapping) or not isinstance(payload.get("task"), str):
            raise DecodeError(f"malformed signature: {brief(payload, 200)}")
        try:
            fields: dict[str, Any] = {
                "task": payload["task"], "args": tuple(payload.get("args", ())),
                "kwargs": dict(payload.get("kwargs", {})),
                "options": _decode_options(payload.get("options", {}), app),
                "immutable": bool(payload.get("immutable", False)), "app": app,
            }
            kind = _KINDS.get(payload["task"], Signature)
            fields.update(kind._fields_from_payload(payload, app))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise DecodeError(f"malformed signature {payload.get('task')!r}: {exc}") from exc
        return _build(kind, fields)

    @classmethod
    def _fields_from_payload(cls, payload: Mapping[str, Any], app: App | None,
                             ) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        params = [repr(arg) for arg in self.args]
        params += [f"{key}={value!r}" for key, value in self.kwargs.items()]
        return f"{'%' if self.immutable else ''}{self.task}({', '.join(params)})"


@dataclass(frozen=True, repr=False, init=False)
class _Composite(Signature):
    """What chain and group share: a sequence of signatures."""

    tasks: tuple[Signature, ...] = ()

    def _find_app(self) -> App | None:
        if self.app is not None:
            return self.app
        return next((found for child in self._children()
                     if (found := child._find_app()) is not None), None)

    def _children(self) -> tuple[Signature, ...]:
        return self.tasks

    def _copy(self: S, **changes: Any) -> S:
        return self.replace(tasks=tuple(child.clone() for child in self._children()),
                            **changes)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def to_payload(self) -> dict[str, Any]:
        payload = super().to_payload()
        payload["tasks"] = [child.to_payload() for child in self.tasks]
        return payload

    @classmethod
    def _fields_from_payload(cls, payload: Mapping[str, Any], app: App | None,
                             ) -> dict[str, Any]:
        return {"tasks": tuple(Signature.from_payload(child, app)
                               for child in payload["tasks"])}


@dataclass(frozen=True, repr=False, init=False)
class chain(_Composite):  # Celery's name (lowercase)
    """Steps run one after another; each gets the result of the one before it.

    ``chain(a, b)`` or ``chain([a, b])``; nested chains are flattened, and a group
    followed by more steps becomes a chord whose body is the rest of the chain.
    """

    def __init__(self, *tasks: _Step | Iterable[_Step], app: App | None = None,
                 **options: Any) -> None:
        _init(self, CHAIN, options, app, tasks=tuple(_normalise_steps(_unpack(tasks, app))))

    def __repr__(self) -> str:
        return " | ".join(repr(step) for step in self.tasks) or "chain()"


@dataclass(frozen=True, repr=False, init=False)
class group(_Composite):  # Celery's name (lowercase)
    """Signatures run in parallel; ``apply_async`` returns a GroupResult of them all.

    ``group(a, b)``, ``group([a, b])`` or ``group(add.s(i, i) for i in range(10))``.
    """

    def __init__(self, *tasks: _Step | Iterable[_Step], app: App | None = None,
                 **options: Any) -> None:
        _init(self, GROUP, options, app, tasks=tuple(_unpack(tasks, app)))

    def __call__(self, *args: Any, **options: Any) -> Any:
        """``group(...)(*partial_args, **options)`` sends it (Celery's signature)."""
        return self.apply_async(args, **options)

    def skew(self: S, start: float = 1.0, stop: float | None = None,
             step: float = 1.0) -> S:
        """Spread the members out in time: countdowns ``start``, ``start + step``, ..."""
        countdown = start
        for member in self._children():
            member.set(countdown=countdown)
            if stop is None or countdown + step <= stop:
                countdown += step
        return self

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(member) for member in self.tasks)}])"


_Group = group  # for annotations inside classes that define a method named "group"


@dataclass(frozen=True, repr=False, init=False)
class chord(Signature):  # Celery's name (lowercase)
    """A group (the header) and a body that runs once with the list of its results.

    ``chord(header, body)``, or ``chord(header)(body)`` to send at once. The body's
    result is the chord's; its ``parent`` is the header's GroupResult. If a header task
    fails, the body is not run and its result becomes a ``ChordError`` at once.
    """

    header: group = field(default_factory=lambda: _Group())
    body: Signature | None = None

    def __init__(self, header: group | Iterable[_Step], body: _Step | None = None,
                 app: App | None = None, **options: Any) -> None:
        header_group = header if isinstance(header, group) else group(header, app=app)
        body_sig = None if body is None else signature(body, app=app)
        _init(self, CHORD, options, app, header=header_group, body=body_sig)

    @property
    def tasks(self) -> tuple[Signature, ...]:
        return self.header.tasks

    def _children(self) -> tuple[Signature, ...]:
        return (self.header,) if self.body is None else (self.header, self.body)

    def _find_app(self) -> App | None:
        if self.app is not None:
            return self.app
        return next((found for child in self._children()
                     if (found := child._find_app()) is not None), None)

    def _copy(self: S, **changes: Any) -> S:
        assert isinstance(self, chord)
        return self.replace(header=self.header.clone(),
                            body=None if self.body is None else self.body.clone(), **changes)

    def __call__(self, *args: Any, **options: Any) -> Any:
        """``chord(header)(body)`` sends it with that body (Celery's idiom)."""
        if args and isinstance(args[0], Signature):
            return self.replace(body=args[0]).apply_async(args[1:], **options)
        return self.apply_async(args, options.pop("kwargs", None), **options)

    def to_payload(self) -> dict[str, Any]:
        payload = super().to_payload()
        payload["header"] = self.header.to_payload()
        payload["body"] = None if self.body is None else self.body.to_payload()
        return payload

    @classmethod
    def _fields_from_payload(cls, payload: Mapping[str, Any], app: App | None,
                             ) -> dict[str, Any]:
        header = Signature.from_payload(payload["header"], app)
        if not isinstance(header, group):
            raise ValueError("a chord's header must be a group")
        body = payload.get("body")
        return {"header": header,
                "body": None if body is None else Signature.from_payload(body, app)}

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"


@dataclass(frozen=True, repr=False, init=False)
class chunks(group):  # Celery's name (lowercase)
    """``task.chunks(items, n)``: the items cut into chunks of ``n``, one message each.

    Each chunk runs the task once per item (a ``starmap``) in one worker; the result is
    a GroupResult whose value is a list of lists. ``.group()`` gives the plain group.
    """

    def __init__(self, task: Signature, it: Iterable[Iterable[Any]], n: int,
                 app: App | None = None, **options: Any) -> None:
        if n < 1:
            raise ValueError(f"a chunk holds at least one item, not {n}")
        items = [list(item) for item in it]
        parts = [xstarmap(task, items[start:start + n]) for start in range(0, len(items), n)]
        _init(self, GROUP, options, app or task.app, tasks=tuple(parts))

    def group(self) -> _Group:
        return group(*self.tasks, app=self.app, **self.options)


_KINDS: dict[str, type[Signature]] = {CHAIN: chain, GROUP: group, CHORD: chord}


def signature(varies: str | Signature | Mapping[str, Any], args: Iterable[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, app: App | None = None,
              **options: Any) -> Signature:
    """A signature by task name (``signature("proj.add", args=(2, 2), countdown=10)``),
    from its payload, or the signature itself."""
    if isinstance(varies, Signature):
        return varies
    if isinstance(varies, Mapping):
        return Signature.from_payload(varies, app)
    immutable = bool(options.pop("immutable", False))
    return Signature(varies, tuple(args or ()), dict(kwargs or {}), options, immutable, app)


def xmap(task: Signature, it: Iterable[Any]) -> Signature:
    """One message that calls ``task`` once per item: ``[task(item) for item in it]``.

    An item that is a ``range`` travels as a list (the Celery guide maps over ranges).
    """
    items = [list(item) if isinstance(item, range) else item for item in it]
    validator = _validator_of(task)
    if validator is not None:  # each call checked now, as a delay() of it would be
        items = [validator.for_message((item,), {})[0][0] for item in items]
    return Signature(MAP, (), {"task": task.task, "it": items}, {}, False, task.app)


def xstarmap(task: Signature, it: Iterable[Iterable[Any]]) -> Signature:
    """One message that calls ``task(*item)`` for each item."""
    calls = [list(item) for item in it]
    validator = _validator_of(task)
    if validator is not None:
        calls = [list(validator.for_message(call, {})[0]) for call in calls]
    return Signature(STARMAP, (), {"task": task.task, "it": calls}, {}, False, task.app)


def _validator_of(task: Signature) -> Validator | None:
    """The checks of a ``validate=True`` task this signature's app knows, else None."""
    known = task.app.tasks.get(task.task) if task.app is not None else None
    return known.validator if known is not None else None


def is_composite(sig: Signature) -> bool:
    return isinstance(sig, _Composite | chord)


def as_signatures(value: Any, app: App | None = None) -> list[Signature]:
    """``link=``/``link_error=`` values as a list: one signature, a payload, or a list."""
    if value is None:
        return []
    if isinstance(value, Signature | Mapping):
        return [signature(value, app=app)]
    return [signature(item, app=app) for item in value]


# -- helpers ------------------------------------------------------------------------------


def _init(obj: Signature, task: str, options: dict[str, Any], app: App | None,
          **extra: Any) -> None:
    """Set the fields of a composite built by its own ``__init__`` (the class is frozen)."""
    values = {"task": task, "args": (), "kwargs": {}, "options": options,
              "immutable": False, "app": app, **extra}
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def _build(kind: type[S], fields: dict[str, Any]) -> S:
    obj = object.__new__(kind)
    for item in dataclasses.fields(kind):
        default: Any = item.default
        if item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        object.__setattr__(obj, item.name, fields.get(item.name, default))
    return obj


def _unpack(tasks: tuple[Any, ...], app: App | None) -> list[Signature]:
    """``f(a, b)`` or ``f([a, b])`` or ``f(generator)``: the signatures given."""
    if len(tasks) == 1 and not isinstance(tasks[0], Signature | Mapping):
        tasks = tuple(tasks[0])
    return [signature(task, app=app) for task in tasks]


def _normalise_steps(steps: list[Signature]) -> list[Signature]:
    """Flatten plain nested chains; a group followed by more steps becomes a chord."""
    flat: list[Signature] = []
    for step in steps:
        if type(step) is chain and not (step.options or step.args or step.kwargs):
            flat.extend(step.tasks)
        else:
            flat.append(step)
    for index, step in enumerate(flat[:-1]):
        if isinstance(step, group):
            rest = flat[index + 1:]
            body = rest[0] if len(rest) == 1 else chain(*rest)
            return [*flat[:index], chord(step, body)]
    return flat


def _add_links(sig: Signature, key: str, value: Any) -> None:
    sig.options[key] = [*as_signatures(sig.options.get(key), sig.app),
                        *as_signatures(value, sig.app)]


def _copy_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options with their link callbacks cloned, so a copy never shares mutable parts."""
    copied = dict(options)
    for key in LINK_OPTIONS:
        if key in copied:
            copied[key] = [callback.clone() for callback in as_signatures(copied[key])]
    if isinstance(copied.get("headers"), Mapping):
        copied["headers"] = dict(copied["headers"])
    return copied


def _encode_options(options: Mapping[str, Any]) -> dict[str, Any]:
    encoded: dict[str, Any] = {}
    for key, value in options.items():
        if key in LINK_OPTIONS:
            encoded[key] = [callback.to_payload() for callback in as_signatures(value)]
        elif isinstance(value, datetime):
            moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
            encoded[key] = {_DATETIME_TAG: moment.timestamp()}
        elif isinstance(value, timedelta):
            encoded[key] = {_TIMEDELTA_TAG: value.total_seconds()}
        else:
            encoded[key] = value
    return encoded


def _decode_options(options: Mapping[str, Any], app: App | None) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for key, value in dict(options).items():
        if key in LINK_OPTIONS:
            decoded[key] = [Signature.from_payload(item, app) for item in value]
        elif isinstance(value, Mapping) and _DATETIME_TAG in value:
            decoded[key] = datetime.fromtimestamp(value[_DATETIME_TAG], UTC)
        elif isinstance(value, Mapping) and _TIMEDELTA_TAG in value:
            decoded[key] = timedelta(seconds=value[_TIMEDELTA_TAG])
        else:
            decoded[key] = value
    return decoded


__all__ = ["Signature", "chain", "chord", "chunks", "group", "signature", "xmap", "xstarmap"]
