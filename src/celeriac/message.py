"""The task message: what a producer sends and a worker runs. See docs/protocol.md.

A ``Message`` is a frozen value. ``to_payload`` turns it into plain data for a
serializer; ``from_payload`` checks that plain data and builds the message back,
raising ``DecodeError`` for anything that is not a well-formed version-1 message.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celeriac.errors import DecodeError, brief
from celeriac.serialization.serializers import SERIALIZERS

MIN_PRIORITY, MAX_PRIORITY = 0, 9

PROTOCOL_VERSION = 1


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str = "celeriac"
    priority: int = 0
    eta: float | None = None  # Unix time before which the task must not run
    expires: float | None = None  # Unix time after which the task is revoked, not run
    time_limit: float | None = None  # seconds; this call's hard limit (else the task's)
    soft_time_limit: float | None = None  # seconds; this call's soft limit
    retries: int = 0
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    ignore_result: bool = False
    result_serializer: str | None = None
    callbacks: tuple[dict[str, Any], ...] = ()  # signatures run with the result (link)
    errbacks: tuple[dict[str, Any], ...] = ()  # signatures run on failure (link_error)
    headers: dict[str, Any] = field(default_factory=dict)  # room for extensions
    unique_key: str | None = None  # the key this task holds while queued or running
    unique_for: float | None = None  # seconds the key is held at most (celeriac.uniqueness)
    sent_at: float = field(default_factory=time.time)

    def replace(self, **changes: Any) -> Message:
        return dataclasses.replace(self, **changes)

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": self.id, "task": self.task,
                                   "args": self.args, "kwargs": self.kwargs,
                                   "queue": self.queue, "sent_at": self.sent_at}
        # Optional fields are left out at their defaults: smaller messages, faster codecs.
        values = _optional_values(self)
        if values != _OPTIONAL_VALUES:  # most messages set none: one comparison
            for name, default, value in zip(_OPTIONAL_NAMES, _OPTIONAL_VALUES, values,
                                            strict=True):
                if value is not default and value != default:
                    payload[name] = value
        return payload

    @classmethod
    def from_payload(cls, payload: Any) -> Message:
        """The message ``payload`` describes; DecodeError naming the first bad field.

        Every field is checked for its type and range here, once, so that nothing later
        in a worker (the slots, the flush) meets a value it cannot handle. Keys this
        version does not know are ignored: a later version may add optional fields
        without changing ``v`` (docs/protocol.md, Compatibility).
        """
        if not isinstance(payload, dict):
            raise DecodeError(f"malformed message: a message is a mapping, not "
                              f"{_describe(payload)}")
        version = payload.get("v")
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise _unsupported(version)
        try:
            id_, task, args, kwargs = (payload["id"], payload["task"], payload["args"],
                                       payload["kwargs"])
            queue, sent_at = payload["queue"], payload["sent_at"]
        except KeyError as missing:
            raise DecodeError(f"malformed message: no {missing.args[0]!r} field") from None
        # The common message: exact built-in types, checked with one comparison each.
        if type(id_) is not str or not id_:
            raise _wrong("id", "a non-empty string", id_)
        if type(task) is not str or not task:
            raise _wrong("task", "a non-empty string", task)
        if type(args) is not list and type(args) is not tuple:
            raise _wrong("args", "a list", args)
        if type(kwargs) is not dict:
            raise _wrong("kwargs", "a mapping", kwargs)
        if kwargs:
            _check_keys("kwargs", kwargs)
        if type(queue) is not str:
            raise _wrong("queue", "a string", queue)
        if (type(sent_at) is not float and type(sent_at) is not int) \
                or not math.isfinite(sent_at):
            raise _wrong("sent_at", "a finite number (Unix time)", sent_at)
        if len(payload) == len(_REQUIRED_NAMES):  # no optional field: the usual case
            return cls(id_, task, tuple(args), kwargs, queue, sent_at=sent_at)
        options = {name: check(name, payload[name])
                   for name, check in _OPTIONAL_CHECKS.items() if name in payload}
        return cls(id_, task, tuple(args), kwargs, queue, sent_at=sent_at, **options)


_OPTIONAL_DEFAULTS: dict[str, Any] = {
    "priority": 0, "eta": None, "expires": None, "retries": 0, "root_id": None,
    "parent_id": None, "group_id": None, "ignore_result": False, "result_serializer": None,
    "callbacks": (), "errbacks": (), "headers": {},
    "time_limit": None, "soft_time_limit": None,
    "unique_key": None, "unique_for": None,
}


_OPTIONAL_NAMES = tuple(_OPTIONAL_DEFAULTS)
_OPTIONAL_VALUES = tuple(_OPTIONAL_DEFAULTS.values())
_optional_values = operator.attrgetter(*_OPTIONAL_NAMES)


_REQUIRED_NAMES = ("v", "id", "task", "args", "kwargs", "queue", "sent_at")


def _unsupported(version: Any) -> DecodeError:
    if version is None:
        return DecodeError("malformed message: no 'v' field (the protocol version)")
    return DecodeError(f"message protocol version {version!r} is not supported "
                       f"(this reads {PROTOCOL_VERSION})")


def _describe(value: Any) -> str:
    """A value as an error shows it: a short repr (bounded in depth too) and its type."""
    return f"{brief(value)} ({type(value).__name__})"


def _wrong(name: str, expected: str, value: Any) -> DecodeError:
    return DecodeError(f"malformed message: {name!r} must be {expected}, "
                       f"not {_describe(value)}")


def _check_keys(name: str, mapping: dict[Any, Any]) -> None:
    for key in mapping:
        if type(key) is not str:
            raise DecodeError(f"malformed message: the keys of {name!r} must be strings, "
                              f"not {_describe(key)}")


def _number(value: Any) -> bool:
    """An int or float that is finite (bool is an int in Python, but not a number here)."""
    return (type(value) is float or type(value) is int) and math.isfinite(value)


def _priority(name: str, value: Any) -> int:
    if type(value) is not int or not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise _wrong(name, f"an integer {MIN_PRIORITY}-{MAX_PRIORITY}", value)
    return value


def _moment(name: str, value: Any) -> float | None:
    if value is None or _number(value):
        return value  # type: ignore[no-any-return]
    raise _wrong(name, "a finite number (Unix time) or null", value)


def _limit(name: str, value: Any) -> float | None:
    if value is None or (_number(value) and value > 0):
        return value  # type: ignore[no-any-return]
    raise _wrong(name, "a finite number of seconds > 0, or null", value)


def _count(name: str, value: Any) -> int:
    if type(value) is not int or value < 0:
        raise _wrong(name, "an integer >= 0", value)
    return value


def _text_or_none(name: str, value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    raise _wrong(name, "a string or null", value)


def _key(name: str, value: Any) -> str | None:
    if value is None or (type(value) is str and value):
        return value
    raise _wrong(name, "a non-empty string or null", value)


def _flag(name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise _wrong(name, "true or false", value)
    return value


def _serializer(name: str, value: Any) -> str | None:
    if value is None or (type(value) is str and value in SERIALIZERS):
        return value
    raise _wrong(name, f"one of {', '.join(SERIALIZERS)}, or null", value)


def _signatures(name: str, value: Any) -> tuple[dict[str, Any], ...]:
    if type(value) is not list and type(value) is not tuple:
        raise _wrong(name, "a list of signatures (mappings)", value)
    for index, item in enumerate(value):
        if type(item) is not dict:
            raise _wrong(f"{name}[{index}]", "a signature (a mapping)", item)
        _check_keys(f"{name}[{index}]", item)
    return tuple(value)


def _headers(name: str, value: Any) -> dict[str, Any]:
    if type(value) is not dict:
        raise _wrong(name, "a mapping", value)
    _check_keys(name, value)
    return value


# How each optional field is checked (and converted: lists become tuples).
_OPTIONAL_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "priority": _priority, "eta": _moment, "expires": _moment, "retries": _count,
    "root_id": _text_or_none, "parent_id": _text_or_none, "group_id": _text_or_none,
    "ignore_result": _flag, "result_serializer": _serializer,
    "callbacks": _signatures, "errbacks": _signatures, "headers": _headers,
    "time_limit": _limit, "soft_time_limit": _limit,
    "unique_key": _key, "unique_for": _limit,
}
assert _OPTIONAL_CHECKS.keys() == _OPTIONAL_DEFAULTS.keys()
