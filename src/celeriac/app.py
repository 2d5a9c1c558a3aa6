"""The App: configuration, the task registry and the producer side. No module globals.

Parts of the producer side live in modules of their own: building a call's message
(celeriac.prepare, which is ``App.prepare``) and checking a task's options
(celeriac.task_checks).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, overload

from celeriac import signals
from celeriac.backends import ResultBackend, create_backend
from celeriac.bridge import Bridge
from celeriac.brokers import Broker, Outgoing, broker_class, create_broker
from celeriac.builtins import builtin_task
from celeriac.bus.base import Bus
from celeriac.config import Settings, suggest
from celeriac.errors import ConfigurationError, TaskNotRegistered
from celeriac.message import Message
from celeriac.outcome import Outcome
from celeriac.prepare import prepare_message
from celeriac.result import AsyncResult
from celeriac.routing import Router, transport_queue_options
from celeriac.serialization import Codec
from celeriac.shared import app_created
from celeriac.task import Task as TaskBase  # App.Task is Celery's name for it
from celeriac.task import TaskOptions
from celeriac.task_checks import checked_task_options, task_class
from celeriac.timezones import naive_zone
from celeriac.tracking import mark_sent

if TYPE_CHECKING:
    from celeriac.beat.dynamic import Beat
    from celeriac.control import Control
    from celeriac.events.receiver import Events
    from celeriac.events.sent import SentEvents
    from celeriac.security.policy import Security

logger = logging.getLogger("celeriac.app")

_RESULT_ENCODER = Codec(accept=())

# send_many publishes this many messages per broker call: big enough to amortise the
# round trip, small enough to bound one transaction or pipeline.
SEND_MANY_CHUNK = 1000  # encoding never consults accept_content

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` returns: turns a function (sync or async) into a Task."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> TaskBase[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> TaskBase[P, R]: ...


class BoundTaskDecorator(Protocol):
    """What ``@app.task(bind=True)`` returns: the function's first parameter is the task."""

    @overload
    def __call__(self, fn: Callable[..., Coroutine[Any, Any, R]]) -> TaskBase[..., R]: ...

    @overload
    def __call__(self, fn: Callable[..., R]) -> TaskBase[..., R]: ...


class App:
    """A celeriac application: settings, tasks, and the connections to send them.

    With no broker named, an embedded SQLite file (``sqlite:///celeriac.db``) is both
    broker and result backend, shared by every process on this machine.
    """

    # The base class of tasks, as Celery's app.Task: ``class MyTask(app.Task): ...``.
    Task = TaskBase

    def __init__(self, main: str | None = None, broker: str | None = None,
                 backend: str | None = None, **settings: Any) -> None:
        self.main = main or "__main__"
        self.conf = Settings()
        self.conf.load_environment()
        if broker is not None:
            settings["broker_url"] = broker
        if backend is not None:
            settings["result_backend"] = backend
        self.conf.update(settings)
        self.tasks: dict[str, TaskBase[Any, Any]] = {}
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        self._broker_connected = False
        self._backend_connected = False
        self._bridge = Bridge()
        self._codec_key: tuple[Any, ...] | None = None
        self._codec: Codec | None = None
        self._result_codec: Codec | None = None
        self._security: Security | None = None
        self._security_generation = -1
        self._router_source: Any = None
        self._router = Router(None)
        self._autodiscover: list[tuple[Any, str]] = []  # (packages, related_name)
        # Celery's app signals: receivers get sender=app (add_periodic_task goes here).
        self.on_after_configure = signals.Signal("on_after_configure", ("source",))
        self.on_after_finalize = signals.Signal("on_after_finalize")
        self._finalized = False
        app_created(self)  # shared tasks declared so far are registered here too

    def __repr__(self) -> str:
        return f"<App {self.main} broker={self.conf.effective_broker_url}>"

    # -- configuration --------------------------------------------------------------------

    def config_from_object(self, obj: object | str, namespace: str | None = None) -> None:
        """Load settings from a module, ``"module"`` or ``"module:attribute"`` path, or
        object; ``namespace="CELERY"`` reads ``CELERY_BROKER_URL``-style names (Django)."""
        self.conf.load_object(obj, namespace)

    def finalize(self) -> None:
        """Send ``on_after_configure`` and ``on_after_finalize`` once, as Celery does
        when an app is first used; beat calls it when it starts."""
        if self._finalized:
            return
        self._finalized = True
        self.on_after_configure.send(sender=self, source=self.conf)
        self.on_after_finalize.send(sender=self)

    def add_periodic_task(self, schedule: Any, sig: Any, args: Sequence[Any] = (),
                          kwargs: Mapping[str, Any] | None = None, name: str | None = None,
                          **opts: Any) -> str:
        """Celery's ``add_periodic_task``: an entry of ``beat_schedule`` sending the
        signature ``sig`` on ``schedule`` (``opts``: send options, and ``missed``).
        Returns the entry's name (``name``, else the signature's repr)."""
        from celeriac.beat.dynamic import periodic_task_entry

        key, entry = periodic_task_entry(schedule, sig, args, kwargs, name, opts)
        self.conf.beat_schedule = {**self.conf.beat_schedule, key: entry}
        return key

    # -- the task registry ----------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> TaskBase[P, R]: ...

    @overload
    def task(self, fn: Callable[P, R], /) -> TaskBase[P, R]: ...

    @overload
    def task(self, *, bind: Literal[True], name: str | None = None,
             **options: Any) -> BoundTaskDecorator: ...

    @overload
    def task(self, *, bind: Literal[False] = False, name: str | None = None,
             **options: Any) -> TaskDecorator: ...

    # mypy cannot match a positional-only `fn` against the overloads' **options.
    def task(  # type: ignore[misc]
        self, fn: Callable[..., Any] | None = None, /, *, bind: bool = False,
        name: str | None = None, base: type[TaskBase[Any, Any]] | None = None, **options: Any,
    ) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(**options)``.

        ``base``: a subclass of ``Task`` (``app.Task``) whose hooks (``on_failure`` and
        the others) run around each execution, as Celery's ``base=``.
        """
        task_options = checked_task_options(options)
        cls = task_class(base)

        def register(function: Callable[..., Any]) -> TaskBase[Any, Any]:
            return self.register_task(function, name or self._default_name(function), bind,
                                      task_options, cls)

        return register if fn is None else register(fn)

    def register_task(self, fn: Callable[..., Any], name: str, bind: bool,
                      options: TaskOptions,
                      cls: type[TaskBase[Any, Any]] = TaskBase) -> TaskBase[Any, Any]:
        """Register ``fn`` as the task ``name`` (what ``@app.task`` does, options checked)."""
        if name in self.tasks and self.tasks[name].fn is not fn:
            logger.debug("task %s registered again; the new definition wins", name)
        registered: TaskBase[Any, Any] = cls(self, fn, name, bind, options)
        self.tasks[name] = registered
        return registered

    def _default_name(self, fn: Callable[..., Any]) -> str:
        module = getattr(fn, "__module__", None) or self.main
        if module == "__main__":
            module = self.main
        return f"{module}.{fn.__qualname__}"

    # -- task modules ---------------------------------------------------------------------

    def autodiscover_tasks(self, packages: Sequence[str] | Callable[[], Sequence[str]]
                           | None = None, related_name: str = "tasks",
                           force: bool = False) -> None:
        """Import ``<package>.<related_name>`` of each package, as Celery does.

        Lazily: when a worker (or any ``celeriac`` command) has loaded the app, not at
        this call, because in a Django project the app module is imported before Django
        is ready; ``force=True`` imports now. ``packages`` may be a callable returning
        them; without it, Django's installed apps (with Django configured).
        """
        self._autodiscover.append((packages, related_name))
        if force:
            self.import_task_modules()

    def import_task_modules(self) -> None:
        """Import ``imports``, then ``include``, then the autodiscovered task modules."""
        from celeriac.modules import discover, import_listed

        import_listed(self.conf.imports, "imports")
        import_listed(self.conf.include, "include")
        pending, self._autodiscover = self._autodiscover, []
        for packages, related_name in pending:
            discover(packages, related_name)

    def get_task(self, name: str) -> TaskBase[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            builtin = builtin_task(self, name)  # celeriac.map / starmap, registered now
            if builtin is not None:
                return builtin
            raise TaskNotRegistered(
                f"no task named {name!r} is registered{suggest(name, self.tasks)}"
            ) from None

    # -- connections ----------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            self._broker = self.new_broker()
        return self._broker

    def new_broker(self) -> Broker:
        """A broker from this app's settings, apart from ``broker`` (not connected): for a
        caller on another event loop than the app's, such as the metrics endpoint."""
        url, options = self.conf.effective_broker_url, self.conf.broker_transport_options
        if broker_class(url).supports_queue_options:  # task_queues: durable, transient
            options = transport_queue_options(self.conf.task_queues, options)
        if broker_class(url).supports_delivery_limit:
            options = self._delivery_limit_option(options)
        if "connection_timeout" not in options and "connect_timeout" not in options:
            # broker_connection_timeout bounds every broker's connection attempts
            options = {**options,
                       "connection_timeout": self.conf.broker_connection_timeout}
        options = self._celery_broker_settings(url, options)
        if self.conf.broker_use_ssl not in (None, False) and "ssl" not in options:
            options = {**options, "ssl": self.conf.broker_use_ssl}  # celeriac.tls
        return create_broker(url, options)

    def _delivery_limit_option(self, options: dict[str, Any]) -> dict[str, Any]:
        """task_delivery_limit as the transport option of a broker that enforces it on its
        server; one given there too must agree (it would be a second, different limit)."""
        limit = self.conf.delivery_limit
        given = options.get("delivery_limit", limit)
        if given != limit:
            raise ConfigurationError(
                f"broker_transport_options['delivery_limit'] is {given!r} but the app's "
                f"delivery limit is {limit} (task_delivery_limit, or 1 with "
                "task_reject_on_worker_lost=False): leave the transport option out, the "
                "app fills it in")
        return {**options, "delivery_limit": limit}

    def _celery_broker_settings(self, url: str, options: dict[str, Any]) -> dict[str, Any]:
        """Celery's broker_pool_limit and broker_heartbeat, as the transport options of a
        broker that has them; on one that does not, a warning says they are not used."""
        cls = broker_class(url)
        for setting, option in (("broker_pool_limit", "pool_limit"),
                                ("broker_heartbeat", "heartbeat")):
            value = getattr(self.conf, setting)
            if value is None or option in options:
                continue  # unset, or the transport option says it already
            if option in cls.setting_options:
                options = {**options, option: value}
            else:
                logger.warning("%s=%r is not used by the %s broker (it has no such "
                               "connection setting)", setting, value, cls.scheme)
        return options

    @property
    def backend(self) -> ResultBackend:
        if self._backend is None:
            # rpc:// sends results over the broker's own server, so it needs its URL.
            # (and its TLS options; redis_backend_use_ssl for a Redis backend).
            self._backend = create_backend(self.conf.effective_result_backend, {
                "broker_url": self.conf.effective_broker_url,
                "broker_use_ssl": self.conf.broker_use_ssl,
                "redis_backend_use_ssl": self.conf.redis_backend_use_ssl,
                "result_backend_transport_options":
                    self.conf.result_backend_transport_options})
        return self._backend

    async def connect(self) -> None:
        """Connect the broker and backend (done on first use; call to fail early)."""
        await self._connected_broker()
        await self._connected_backend()

    async def connect_broker(self) -> None:
        """Connect the broker only (``connect`` does both): to say which one failed."""
        await self._connected_broker()

    async def connect_backend(self) -> None:
        """Connect the result backend only."""
        await self._connected_backend()

    async def _connected_broker(self) -> Broker:
        broker = self.broker
        if not self._broker_connected:
            await broker.connect()
            self._broker_connected = True
        return broker

    async def _connected_backend(self) -> ResultBackend:
        backend = self.backend
        if not self._backend_connected:
            await backend.connect()
            self._backend_connected = True
        return backend

    @functools.cached_property
    def _sent_events(self) -> SentEvents:
        from celeriac.events.sent import SentEvents

        return SentEvents(self)

    @functools.cached_property
    def events(self) -> Events:
        """The event stream: ``app.events.iter(since=...)``, ``app.events.aiter()``."""
        from celeriac.events.receiver import Events

        return Events(self)

    def bus(self) -> Bus:
        """A new ``Bus`` (not connected) for events and remote control: on the broker's
        server, or on the result backend's when the broker carries no topics (SQS and
        Kafka have no cheap broadcast log; a Redis, PostgreSQL or SQLite backend does).

        Raises NotImplementedError, saying why, when neither carries them."""
        try:
            return self.broker.bus()
        except NotImplementedError as broker_has_none:
            try:
                return self.backend.bus()
            except NotImplementedError:
                raise NotImplementedError(
                    f"{broker_has_none}, nor does the {self.backend.scheme}:// result "
                    f"backend (use a Redis, PostgreSQL or SQLite result backend for "
                    f"events and remote control)") from None

    async def open_bus(self) -> Bus:
        """A connected ``Bus`` (``bus``), for this event loop; the caller closes it."""
        bus = self.bus()
        await bus.connect()
        return bus

    def _run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of this app's for a synchronous caller."""
        return self._bridge.run(coro)

    async def aclose(self) -> None:
        if self._broker is not None and self._broker_connected:
            await self._broker.close()
        if self._backend is not None and self._backend_connected:
            await self._backend.close()
        self._broker_connected = self._backend_connected = False

    def close(self) -> None:
        """Close connections and stop the bridge thread."""
        if self._broker_connected or self._backend_connected:
            self._run_sync(self.aclose())
        sent = self.__dict__.get("_sent_events")  # (task_send_sent_event's bus, if opened)
        if sent is not None:
            self._run_sync(sent.aclose())
        # What sync callers opened without the bridge (brokers/base.py, backends/base.py).
        if self._backend is not None:
            self._backend.close_blocking()
        if self._broker is not None:
            self._broker.close_blocking()
        self._bridge.close()

    # -- encoding -------------------------------------------------------------------------

    @property
    def naive_zone(self) -> tzinfo | None:
        """What a naive datetime means (``enable_utc``, ``timezone``; None: local time)."""
        return naive_zone(self.conf.enable_utc, self.conf.timezone)

    @property
    def codec(self) -> Codec:
        key = (self.conf.accept_content, self.conf.task_message_max_size)
        if self._codec is None or self._codec_key != key:
            self._codec = Codec(self.conf.accept_content, self.conf.task_message_max_size)
            self._codec_key = key
        return self._codec

    @property
    def security(self) -> Security | None:
        """Signing and encryption as the settings say (celeriac.security), or None when
        no security setting is set: then messages and results are plain frames."""
        generation = self.conf.security_generation
        if generation != self._security_generation:
            from celeriac.security.policy import Security, enabled

            self._security = Security(self.conf) if enabled(self.conf) else None
            self._security_generation = generation
        return self._security

    def decode_message(self, body: bytes) -> Message:
        """A task message from its bytes, bounded by ``task_message_max_size`` (a body
        that inflates past it is refused before it is inflated whole). A signed one's
        signature is not checked here (for display: inspect, queues; a worker checks it
        before decoding), an encrypted one is decrypted when the key is here."""
        security = self.security
        frame: Any = body if security is None else security.unwrap(body)
        return Message.from_payload(self.codec.decode(frame, self.codec.max_size))

    def encode_outcome(self, outcome: Outcome, serializer: str | None = None) -> bytes:
        # Results have no size limit: a finished task's outcome must always be storable.
        data = _RESULT_ENCODER.encode(outcome.to_payload(),
                                      serializer or self.conf.result_serializer)
        security = self.security
        return data if security is None else security.encrypt_result(data)

    def decode_outcome(self, data: bytes) -> Outcome:
        security = self.security
        if security is not None:
            data = security.decrypt_result(data)
        return Outcome.from_payload(self.result_codec.decode(data))

    @property
    def result_codec(self) -> Codec:
        """Reads results: ``result_accept_content`` (else ``accept_content``), no size
        limit (a finished task's outcome must always be readable)."""
        accept = self.conf.effective_result_accept_content
        if self._result_codec is None or self._result_codec.accept != frozenset(accept):
            self._result_codec = Codec(accept)
        return self._result_codec

    def result_is_final(self, data: bytes) -> bool:
        return self.decode_outcome(data).ready

    # -- sending --------------------------------------------------------------------------

    def send_task(self, name: str, args: Sequence[Any] | None = None,
                  kwargs: Mapping[str, Any] | None = None, *,
                  _task: TaskBase[Any, Any] | None = None, **options: Any) -> AsyncResult[Any]:
        """Send a task by name; the task need not be registered in this process."""
        task = _task if _task is not None else self.tasks.get(name)
        if self.conf.task_always_eager and task is not None:
            return task.apply(args, kwargs, **options)
        message, outgoing = self.prepare(name, args, kwargs, options, task)
        if message.unique_key is not None:  # sent only if no task holds its key
            from celeriac.uniqueness.send import send_unique_blocking

            return AsyncResult(send_unique_blocking(self, message, outgoing), self, name)
        self._send_blocking(((message, outgoing),))
        return AsyncResult(message.id, self, name)

    async def asend_task(self, name: str, args: Sequence[Any] | None = None,
                         kwargs: Mapping[str, Any] | None = None, *,
                         _task: TaskBase[Any, Any] | None = None,
                         **options: Any) -> AsyncResult[Any]:
        """``send_task`` for async callers: publishes on the running event loop."""
        task = _task if _task is not None else self.tasks.get(name)
        if self.conf.task_always_eager and task is not None:
            return task.apply(args, kwargs, **options)
        message, outgoing = self.prepare(name, args, kwargs, options, task)
        if message.unique_key is not None:  # sent only if no task holds its key
            from celeriac.uniqueness.send import send_unique

            return AsyncResult(await send_unique(self, message, outgoing), self, name)
        await self._send([(message, outgoing)])
        return AsyncResult(message.id, self, name)

    def send_many(self, calls: Iterable[Any], chunk_size: int = SEND_MANY_CHUNK) -> list[
            AsyncResult[Any]]:
        """Send many tasks in few broker round trips; every call is checked first.

        Each call is a signature (``add.s(1, 2)``, anything with ``name``, ``args``,
        ``kwargs`` and ``options``) or a tuple ``(task or name, args[, kwargs[, options]])``.
        All calls are validated and encoded before anything is sent, so a wrong one
        raises and sends nothing; then they are published ``chunk_size`` at a time.
        """
        prepared = [self._prepare_call(call) for call in calls]
        if self.conf.task_always_eager:
            return [task.apply(message.args, message.kwargs)
                    for (message, _), task in prepared if task is not None]
        calls = [call for call, _ in prepared if call[0].unique_key is None]
        for start in range(0, len(calls), chunk_size):
            self._send_blocking(calls[start:start + chunk_size])
        if len(calls) < len(prepared):  # unique ones one by one: each may find its key held
            from celeriac.uniqueness.send import send_unique_blocking

            return [AsyncResult(message.id if message.unique_key is None
                                else send_unique_blocking(self, message, outgoing),
                                self, message.task) for (message, outgoing), _ in prepared]
        return [AsyncResult(message.id, self, message.task) for (message, _), _ in prepared]

    def _prepare_call(self, call: Any) -> tuple[tuple[Message, Outgoing],
                                                TaskBase[Any, Any] | None]:
        if isinstance(call, tuple):
            target, args, kwargs, options = (*call, None, None)[:4]
        else:
            target, args, kwargs, options = call.name, call.args, call.kwargs, call.options
        task = target if isinstance(target, TaskBase) else self.tasks.get(target)
        name = target.name if isinstance(target, TaskBase) else target
        return self.prepare(name, args, kwargs, dict(options or {}), task), task

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        broker = await self._connected_broker()
        await broker.publish(messages)

    async def _send(self, calls: Sequence[tuple[Message, Outgoing]]) -> None:
        """Publish new tasks; then, with ``task_track_sent``, record them as SENT."""
        await self.publish([outgoing for _, outgoing in calls])
        await self._after_send(calls)

    async def _after_send(self, calls: Sequence[tuple[Message, Outgoing]]) -> None:
        """What follows the publish of new tasks: signals and SENT markers."""
        _published(calls)
        if self.conf.task_track_sent:
            await mark_sent(self, [message for message, _ in calls])
        if self.conf.task_send_sent_event:
            await self._sent_events.send([message for message, _ in calls])

    def _send_blocking(self, calls: Sequence[tuple[Message, Outgoing]]) -> None:
        """``_send`` for a sync caller.

        A broker that can publish without an event loop (``supports_blocking_publish``)
        publishes in this thread, in one round trip; any other goes through the bridge.
        The SENT markers of ``task_track_sent`` are written after the publish, as in
        ``_send``, through the bridge.
        """
        broker = self.broker
        if not broker.supports_blocking_publish:
            self._run_sync(self._send(calls))
            return
        broker.publish_blocking([outgoing for _, outgoing in calls])
        self._after_send_blocking(calls)

    def _after_send_blocking(self, calls: Sequence[tuple[Message, Outgoing]]) -> None:
        """``_after_send`` for a sync caller."""
        _published(calls)
        if self.conf.task_track_sent:
            self._run_sync(mark_sent(self, [message for message, _ in calls]))
        if self.conf.task_send_sent_event:
            self._sent_events.send_blocking([message for message, _ in calls])

    # The message of one call, checked and encoded (celeriac.prepare): the function
    # itself, so that every send pays no extra call for the split.
    prepare = prepare_message

    def AsyncResult(self, task_id: str) -> AsyncResult[Any]:
        return AsyncResult(task_id, self)

    @functools.cached_property
    def beat(self) -> Beat:
        """Periodic tasks kept on the server: ``app.beat.add(name, task, schedule)``,
        ``remove``, ``pause``, ``resume``, ``list()`` (docs/periodic-tasks.md)."""
        from celeriac.beat.dynamic import Beat

        return Beat(self)

    @functools.cached_property
    def control(self) -> Control:
        """Remote control of the workers: ``app.control.revoke(task_id, terminate=True)``."""
        from celeriac.control import Control

        return Control(self)


def _published(calls: Sequence[tuple[Message, Outgoing]]) -> None:
    """``after_task_publish`` for each message the broker has accepted."""
    if not signals.after_task_publish.receivers:
        return
    for message, outgoing in calls:
        signals.after_task_publish.send(sender=message.task, body=message.to_payload(),
                                        exchange="", routing_key=outgoing.queue,
                                        headers=message.headers)

