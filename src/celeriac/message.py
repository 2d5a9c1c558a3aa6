"""The task message: what a producer sends and a worker runs. See docs/protocol.md.

A ``Message`` is a frozen value. ``to_payload`` turns it into plain data for a
serializer; ``from_payload`` checks that plain data and builds the message back,
raising ``DecodeError`` for anything that is not a well-formed version-1 message.
"""

from __future__ import annotations

import dataclasses
import operator
import time
from dataclasses import dataclass, field
from typing import Any

from celeriac.errors import DecodeError

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
        if not isinstance(payload, dict):
            raise DecodeError(f"a message is a mapping, not {type(payload).__name__}")
        version = payload.get("v")
        if version != PROTOCOL_VERSION:
            raise DecodeError(f"message protocol version {version!r} is not supported")
        try:
            return cls(
                id=_typed(payload, "id", str),
                task=_typed(payload, "task", str),
                args=tuple(_typed(payload, "args", list | tuple)),
                kwargs=_typed(payload, "kwargs", dict),
                queue=_typed(payload, "queue", str),
                sent_at=float(payload.get("sent_at", 0.0)),
                **{name: _optional(payload, name, default)
                   for name, default in _OPTIONAL_DEFAULTS.items()},
            )
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"malformed message: {exc}") from exc


_OPTIONAL_DEFAULTS: dict[str, Any] = {
    "priority": 0, "eta": None, "expires": None, "retries": 0, "root_id": None,
    "parent_id": None, "group_id": None, "ignore_result": False, "result_serializer": None,
    "callbacks": (), "errbacks": (), "headers": {},
    "time_limit": None, "soft_time_limit": None,
}


_OPTIONAL_NAMES = tuple(_OPTIONAL_DEFAULTS)
_OPTIONAL_VALUES = tuple(_OPTIONAL_DEFAULTS.values())
_optional_values = operator.attrgetter(*_OPTIONAL_NAMES)


def _typed(payload: dict[str, Any], name: str, kind: Any) -> Any:
    if name not in payload:
        raise DecodeError(f"malformed message: no {name!r} field")
    value = payload[name]
    if not isinstance(value, kind):
        raise DecodeError(f"malformed message: {name!r} is a {type(value).__name__}")
    return value


def _optional(payload: dict[str, Any], name: str, default: Any) -> Any:
    value = payload.get(name, default)
    if isinstance(default, tuple):
        return tuple(value)
    return value
