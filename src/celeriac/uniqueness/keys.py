"""Unique jobs: which key a send holds, and for how long (docs/unique-jobs.md).

A send is unique when it has a ``unique_for`` (seconds; from the call's options, else
the task's ``@app.task(unique_for=...)`` or ``task_annotations``). Its key is the call's
``unique_key`` when given, else one derived from the task's name and arguments: the
arguments bound to the task function's parameters (so ``add(1, 2)``, ``add(1, y=2)``
and ``add(x=1, y=2)`` are the same call), with its defaults filled in, written as
canonical JSON (sorted keys, no spaces) and hashed with SHA-256. Arguments that JSON
cannot write (bytes, datetimes, objects) are a ``TypeError`` naming them: the key must
be the same in every producer, so nothing is guessed; pass ``unique_key=`` instead.

``unique_for=0`` on a call (or a task) means "not unique": a way to send one copy of a
unique task regardless of the others.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.task import Task

# A key is stored on the server as it is (with a prefix); bound its length so that a
# key built from a large value by mistake is refused instead of stored.
MAX_KEY_LENGTH = 1024

DERIVED_PREFIX = "task:"  # derived keys: "task:<name>:<sha256 hex>"; given ones as given


def check_unique_for(value: Any, where: str = "unique_for") -> float:
    """``value`` as seconds (>= 0; 0: not unique), or ValueError/TypeError naming it."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{where} must be a number of seconds or a timedelta, not "
                        f"{value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{where} must be a finite number of seconds >= 0 (0: not "
                         f"unique), not {value!r}")
    return seconds


def check_unique_key(value: Any) -> str:
    """A key given with ``unique_key=``: a non-empty string of at most MAX_KEY_LENGTH."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"unique_key must be a non-empty string, not {value!r}")
    if len(value) > MAX_KEY_LENGTH:
        raise ValueError(f"unique_key is {len(value)} characters long; at most "
                         f"{MAX_KEY_LENGTH} (hash a longer value yourself)")
    return value


def derive_key(name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
               task: Task[Any, Any] | None = None) -> str:
    """The key of a call: ``task:<name>:<sha256 of its arguments as canonical JSON>``.

    With the task known, the arguments are bound to its parameters first, defaults
    filled in, so that equal calls written differently share a key. Without it (a task
    sent by name from a process that does not register it) they are taken as given.
    """
    arguments: Any
    if task is not None:
        bound = task._signature.bind(*args, **kwargs)  # checked by the caller already
        bound.apply_defaults()
        arguments = dict(bound.arguments)
    else:
        arguments = [list(args), dict(kwargs)]
    try:
        text = json.dumps(arguments, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False, default=_refuse)
    except ValueError as exc:  # NaN or infinity: no canonical form
        raise TypeError(f"unique_for: the arguments of {name} have no canonical JSON form "
                        f"({exc}); pass unique_key= to name the key yourself") from None
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"{DERIVED_PREFIX}{name}:{digest}"


def _refuse(value: Any) -> Any:
    raise TypeError(f"unique_for derives the key from the task's arguments as JSON, and "
                    f"{value!r:.80} ({type(value).__name__}) is not JSON; pass unique_key= "
                    f"to name the key yourself")


def resolve(name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
            task: Task[Any, Any] | None, key: Any, seconds: Any) -> tuple[str, float] | None:
    """The (key, seconds) a send holds, or None when it is not unique.

    ``key``: the call's ``unique_key`` (None: derived); ``seconds``: the call's
    ``unique_for``, else the task's (None: neither set one).
    """
    if seconds is None:
        if key is not None:
            raise TypeError("unique_key needs unique_for: how long the key may be held at "
                            "most (a worker that dies mid-task frees it only then); give "
                            "it with the call or the task")
        return None
    duration = check_unique_for(seconds)
    if duration == 0:
        if key is not None:
            raise ValueError("unique_key needs unique_for > 0 (0 means not unique)")
        return None
    if key is not None:
        return check_unique_key(key), duration
    return derive_key(name, args, kwargs, task), duration
