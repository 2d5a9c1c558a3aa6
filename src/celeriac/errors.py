"""Every exception celeriac raises, in one tree.

    CeleriacError
    ├── ConfigurationError          an unknown setting, a bad value, an unknown URL scheme
    │   └── QueueNotFound           a queue not in ``task_queues`` (missing queues not created)
    ├── TaskNotRegistered           a name no task was registered under
    ├── SecurityError               a worker that would run unsafely (root with pickle)
    ├── ValidationError             arguments or a result that do not fit a ``validate=True``
    │                               task's type hints (also a subclass of ``TypeError``)
    ├── MessageError                a message that cannot be built or read
    │   ├── MessageTooLarge         over ``task_message_max_size``, raised before sending
    │   ├── ContentDisallowed       a serializer not listed in ``accept_content``
    │   └── DecodeError             bytes that are not a celeriac message
    ├── BrokerError                 the broker could not do what was asked
    │   ├── BrokerUnavailable       no connection within the timeout (a transient cause,
    │   │                           retried until then; the last one is chained)
    │   └── BrokerRefused           the server refused us for good: wrong credentials, an
    │       │                       untrusted certificate, an unknown vhost (never retried)
    │       └── BrokerAuthenticationError   the user name or password was rejected
    ├── BackendError                the result backend could not do what was asked
    │   └── BackendRefused          as BrokerRefused, from the result backend's server
    ├── TimeoutError                ``AsyncResult.get`` waited longer than its timeout
    │                               (also a subclass of the builtin ``TimeoutError``)
    ├── TaskError                   a task failed and its exception could not be rebuilt
    ├── TaskRevokedError            the task was revoked or expired before it ran
    ├── ChordError                  a chord's header task failed: the chord's result
    ├── MaxRetriesExceededError     ``self.retry()`` past ``max_retries``
    └── TimeLimitExceeded / SoftTimeLimitExceeded

Control-flow signals are kept apart from errors because they are not failures:
``Retry`` is raised by ``task.retry()`` to ask for another attempt, ``Reject`` to
dead-letter the message on purpose. Neither derives from ``CeleriacError``.
"""

from __future__ import annotations

import builtins
import reprlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any


class CeleriacError(Exception):
    """The root of every celeriac error."""


class ConfigurationError(CeleriacError):
    """A setting is unknown or has a value that cannot work."""


class QueueNotFound(ConfigurationError, KeyError):
    """A task was sent to a queue ``task_queues`` does not declare, with
    ``task_create_missing_queues`` off."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "queue not found"


class SecurityError(CeleriacError):
    """Running as asked would be unsafe: a worker as root while it accepts pickle, a
    privilege drop that failed (Celery's ``SecurityError``)."""


class TaskNotRegistered(CeleriacError, KeyError):
    """No task is registered under this name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "task not registered"


class ValidationError(CeleriacError, TypeError):
    """Arguments (or a result) that do not fit the type hints of a ``validate=True`` task.

    A ``TypeError``, as a call the function cannot take is at send time, so code that
    catches a wrong call catches this one too; and a celeriac error, not pydantic's own:
    pydantic is an optional extra (its error cannot be caught without importing it), and
    its text spans lines, where this one is a single line naming each field path first
    (``order.lines.0.qty: Input should be a valid integer (str given)``), fit for a log
    line and a dead-letter reason. ``paths`` are the field paths, ``errors`` pydantic's
    error dicts without the inputs: task arguments may be personal data, so only their
    types are shown, and pydantic's error (whose text shows the inputs) is not chained.
    """

    def __init__(self, message: str, paths: tuple[str, ...] = (),
                 errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.paths = paths
        self.errors = errors or []


class MessageError(CeleriacError):
    """A message could not be built or read."""


class MessageTooLarge(MessageError):
    """The encoded message is larger than the configured limit."""


class ContentDisallowed(MessageError):
    """The message uses a serializer that is not in ``accept_content``."""


class DecodeError(MessageError):
    """The bytes are not a message this version of celeriac can read."""


class BrokerError(CeleriacError):
    """The broker failed to carry out an operation."""


class BrokerUnavailable(BrokerError):
    """The broker could not be reached within the timeout."""


class BrokerRefused(BrokerError):
    """The broker's server refused the connection for a reason retrying cannot fix.

    Authentication failures, TLS verification errors and unknown vhosts or databases
    are raised at once, with the server's own words, instead of being retried until a
    timeout hides them.
    """


class BrokerAuthenticationError(BrokerRefused):
    """The broker's server rejected the user name or password in ``broker_url``.

    Raised at once by producers; a worker waits for the credentials to be fixed on the
    server, retrying with a capped backoff (``celeriac.worker.startup``). The message
    never contains the password.
    """


def refused_error(refused: type[CeleriacError], authentication: bool,
                  message: str) -> CeleriacError:
    """``refused(message)``, or ``BrokerAuthenticationError`` for a broker's refusal
    that is a rejected login (``authentication``)."""
    if authentication and issubclass(BrokerAuthenticationError, refused):
        return BrokerAuthenticationError(message)
    return refused(message)


class BackendError(CeleriacError):
    """The result backend failed to carry out an operation."""


class BackendRefused(BackendError):
    """The result backend's server refused the connection for good (see BrokerRefused)."""


class TimeoutError(CeleriacError, builtins.TimeoutError):
    """Waiting for a result took longer than the timeout."""


class TaskError(CeleriacError):
    """A task failed with an exception that could not be rebuilt in this process.

    ``exc_type`` is the qualified name of the original exception type, ``exc_message``
    its message, and ``remote_traceback`` the traceback text from the worker.
    """

    def __init__(self, exc_type: str, exc_message: str, remote_traceback: str | None = None):
        super().__init__(f"{exc_type}: {exc_message}")
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.remote_traceback = remote_traceback


class TaskRevokedError(CeleriacError):
    """The task was revoked, or expired, before it could run."""


class ChordError(CeleriacError):
    """A task in a chord's header failed (or was revoked), so its body will never run.

    Stored as the result of the chord's body (and of whatever was to follow it) as soon
    as the first header task fails; the message names that task and its error.
    """


class MaxRetriesExceededError(CeleriacError):
    """The task asked to retry after using up ``max_retries``."""


class TimeLimitExceeded(CeleriacError):
    """The task ran past its hard time limit and was stopped."""


class SoftTimeLimitExceeded(CeleriacError):
    """Raised inside a task when it runs past its soft time limit."""

    # The worker raises it in the task's thread by class, so it needs a default message.
    def __init__(self, message: str = "soft time limit exceeded") -> None:
        super().__init__(message)


class Retry(Exception):
    """Raised by ``task.retry()``: schedule another attempt of this task.

    ``when`` is the absolute time of the next attempt; ``exc`` the error that caused it;
    ``changes`` what the next attempt's message changes (args, kwargs, queue, priority).
    """

    def __init__(self, exc: BaseException | None = None, when: datetime | None = None,
                 changes: Mapping[str, Any] | None = None):
        super().__init__(f"Retry in the future: {exc!r}" if exc else "Retry")
        self.exc = exc
        self.when = when
        self.changes = dict(changes or {})


class Reject(Exception):
    """Raised by a task to dead-letter its message on purpose, with a reason."""

    def __init__(self, reason: str = "rejected by the task", requeue: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.requeue = requeue


def describe(exc: BaseException) -> str:
    """An exception as one readable line, for log lines, dead-letter reasons and the CLI.

    celeriac's own errors are written for their reader and come as they are; any other
    exception is named by its type when its text does not say it (``KeyError: 'x'``), and
    by its type alone when its text is empty or cannot be read, so no line is ever
    blank. A cause that adds something (``raise ... from exc``) follows in parentheses.
    """
    text = _describe_one(exc)
    cause = exc.__cause__
    if cause is not None:
        cause_text = _text(cause).strip()
        if cause_text and cause_text not in text:
            text = f"{text} ({_describe_one(cause)})"
    return " ".join(text.split())  # one line


_UNREADABLE = "(its text could not be read)"

# Shows a few levels and items of a value: a message's fields are untrusted, and a plain
# repr of a list nested a thousand deep raises RecursionError (found by tests/fuzz).
_BRIEF = reprlib.Repr()  # (Python 3.11's takes no arguments)
_BRIEF.maxlevel = 3
_BRIEF.maxtuple = _BRIEF.maxlist = _BRIEF.maxdict = _BRIEF.maxset = 4
_BRIEF.maxstring = _BRIEF.maxother = 60
_BRIEF.maxlong = 40


def brief(value: Any, width: int = 60) -> str:
    """A value as an error message shows it: its repr, bounded in depth and ``width``."""
    try:
        text = _BRIEF.repr(value)
    except Exception:  # a repr that raises: its type says enough
        return f"<{type(value).__name__}>"
    return text if len(text) <= width else text[:width - 3] + "..."


def _describe_one(exc: BaseException) -> str:
    name = type(exc).__name__
    text = _text(exc).strip()
    if not text:
        return name
    if text == _UNREADABLE:
        return f"{name} {text}"
    if isinstance(exc, CeleriacError) or name in text:
        return text
    return f"{name}: {text}"


def _text(exc: BaseException) -> str:
    """``str(exc)``, even for an exception whose ``__str__`` raises."""
    try:
        return str(exc)
    except Exception:
        return _UNREADABLE
