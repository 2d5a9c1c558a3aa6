"""One periodic task: ``Entry`` (name, task, schedule, args, kwargs, options, missed).

Entries come from two places: ``beat_schedule`` in the configuration (with Celery's
shape, the static base) and ``app.beat.add`` (stored on the server, ``beat.dynamic``).
Both are checked here, the same way, when they are given: a wrong task option, a
schedule that never fires or arguments a dynamic entry cannot store are errors at once,
not at the first run.

``missed`` says what happens to runs missed while no beat ran (``beat.scheduler``):
``"skip"`` (the default) drops them, ``"run_once"`` sends one run for all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from typing import Any

import orjson

from celeriac.beat.schedules import Schedule, as_schedule, schedule_from_dict
from celeriac.config import suggest
from celeriac.errors import ConfigurationError
from celeriac.task import SEND_OPTION_NAMES

MISSED_POLICIES = ("skip", "run_once")
ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "missed",
                        "relative"})
# Send options that make no sense for a run beat sends (it makes the id itself).
BEAT_OWNED_OPTIONS = frozenset({"task_id", "eta", "countdown"})


@dataclass(frozen=True)
class Entry:
    """A periodic task: send ``task`` with ``args``/``kwargs``/``options`` on ``schedule``."""

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    missed: str = "skip"
    dynamic: bool = False  # stored on the server (app.beat.add), not from configuration

    @property
    def key(self) -> str:
        """What must stay the same for the entry's run history to carry on: its schedule.
        (A change of arguments or options applies from the next run.)"""
        return self.schedule.key

    def to_json(self) -> bytes:
        """The entry as stored on the server (dynamic entries only)."""
        try:
            return orjson.dumps({
                "task": self.task, "schedule": self.schedule.to_dict(),
                "args": list(self.args), "kwargs": self.kwargs, "options": self.options,
                "missed": self.missed})
        except TypeError as exc:
            raise ConfigurationError(f"periodic task {self.name!r}: a dynamic entry is "
                                     f"stored as JSON, and {exc}") from None

    @classmethod
    def from_json(cls, name: str, data: bytes) -> Entry:
        value = orjson.loads(data)
        return make_entry(name, value["task"], schedule_from_dict(value["schedule"]),
                          value.get("args"), value.get("kwargs"), value.get("options"),
                          value.get("missed", "skip"), dynamic=True)


def make_entry(name: str, task: Any, schedule: Any, args: Any = None, kwargs: Any = None,
               options: Any = None, missed: Any = "skip", *, dynamic: bool = False,
               zone: tzinfo = UTC) -> Entry:
    """A checked entry; ``ConfigurationError`` saying what is wrong with it."""
    where = f"periodic task {name!r}"
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a periodic task's name must be a non-empty string, "
                                 f"not {name!r}")
    if not isinstance(task, str) or not task:
        raise ConfigurationError(f"{where}: 'task' must be a task name, not {task!r}")
    try:
        checked = as_schedule(schedule)
        checked.next_after(0.0, 0.0, zone)  # a crontab matching no day says so now
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    if args is None:
        args = ()
    if isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise ConfigurationError(f"{where}: 'args' must be a list or tuple, not {args!r}")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, Mapping):
        raise ConfigurationError(f"{where}: 'kwargs' must be a mapping, not {kwargs!r}")
    options = {} if options is None else options
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"{where}: 'options' must be a mapping, not {options!r}")
    for option in options:
        if option in BEAT_OWNED_OPTIONS:
            raise ConfigurationError(
                f"{where}: option {option!r} is beat's own (each run gets its due time and "
                f"an id made from it); 'expires' limits how late a run may start")
        if option not in SEND_OPTION_NAMES:
            raise ConfigurationError(f"{where}: unknown option {option!r}"
                                     f"{suggest(str(option), SEND_OPTION_NAMES)}")
    if missed not in MISSED_POLICIES:
        raise ConfigurationError(f"{where}: 'missed' must be one of "
                                 f"{', '.join(MISSED_POLICIES)}, not {missed!r}")
    return Entry(name, task, checked, tuple(args), dict(kwargs), dict(options), missed,
                 dynamic)


def entry_from_config(name: str, value: Any, zone: tzinfo = UTC) -> Entry:
    """An entry of ``beat_schedule``, in Celery's shape."""
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"beat_schedule[{name!r}] must be a mapping with 'task' "
                                 f"and 'schedule', not {value!r}")
    unknown = sorted(set(value) - ENTRY_KEYS)
    if unknown:
        raise ConfigurationError(f"beat_schedule[{name!r}]: unknown key {unknown[0]!r}"
                                 f"{suggest(unknown[0], ENTRY_KEYS)}")
    for required in ("task", "schedule"):
        if required not in value:
            raise ConfigurationError(f"beat_schedule[{name!r}] needs {required!r}")
    if value.get("relative"):
        raise ConfigurationError(
            f"beat_schedule[{name!r}]: relative=True is not supported: celeriac anchors an "
            f"interval on the server when the entry is first scheduled; use crontab(...) "
            f"for runs on round times")
    return make_entry(name, value["task"], value["schedule"], value.get("args"),
                      value.get("kwargs"), value.get("options"),
                      value.get("missed", "skip"), zone=zone)


def check_beat_schedule(value: Any) -> dict[str, Any]:
    """The ``beat_schedule`` setting's check: every entry is valid."""
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"beat_schedule must be a mapping of names to entries, "
                                 f"not {value!r}")
    for name, entry in value.items():
        entry_from_config(name, entry)
    return dict(value)


def static_entries(beat_schedule: Mapping[str, Any], zone: tzinfo = UTC) -> dict[str, Entry]:
    return {name: entry_from_config(name, value, zone)
            for name, value in beat_schedule.items()}
