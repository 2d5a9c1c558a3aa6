"""When a periodic task is due: ``schedule`` (every N seconds) and ``crontab``.

Both answer one question, ``next_after(moment, anchor, zone)``: the first due time
strictly after ``moment`` (Unix times). The scheduler keeps the last due time it decided
on the server and asks for the next one, so a due time is a value that every beat
process computes alike, never "now plus an interval" (which would drift, and differ
between a leader and its successor).

**Intervals** (``schedule(30)``, ``30.0``, ``timedelta(seconds=30)``) are anchored: the
due times are ``anchor + k * every`` for k = 1, 2, ..., where the anchor is the moment the
entry was first scheduled (stored on the server). They count real seconds and ignore
time zones and daylight saving.

**crontab** has Celery's fields and string syntax (``*``, ``*/15``, ``9-17``, ``1-10/2``,
``22-2`` wrapping around, lists ``1,15,30-45``, day names ``mon-fri``, month names
``jan-mar``; Sunday is 0), and ``crontab.from_string("*/15 9-17 * * mon-fri")`` reads the
five fields of a crontab line. As in Celery, a day must match ``day_of_week`` *and*
``day_of_month`` *and* ``month_of_year`` (cron(8) takes either day field). Its times are
wall-clock times in the schedule's zone: ``timezone`` (else UTC with ``enable_utc``, else
this machine's zone).

**Daylight saving** (the rule, in one place):

- A wall-clock time that does not exist (02:30 on a spring-forward day in
  Europe/Berlin) runs at the first instant after the gap (03:00 CEST). Several such times
  (02:00, 02:15, ... with ``minute="*/15"``) are one run at that instant, together with
  a run due at 03:00 itself.
- A wall-clock time that occurs twice (02:30 on a fall-back day) runs once, at its first
  occurrence (02:30 CEST). An hourly crontab therefore does not run again during the
  repeated hour; use an interval schedule to count real time.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

# A crontab that matches no day within this many years never fires (e.g. February 30).
SEARCH_YEARS = 8

DAY_NAMES = {name: number for number, names in enumerate((
    ("sun", "sunday"), ("mon", "monday"), ("tue", "tues", "tuesday"),
    ("wed", "wednesday"), ("thu", "thur", "thurs", "thursday"), ("fri", "friday"),
    ("sat", "saturday"))) for name in names}
MONTH_NAMES = {name: number for number, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    start=1)}


class Schedule:
    """What every schedule answers; see the module docstring."""

    def next_after(self, moment: float, anchor: float, zone: tzinfo) -> float:
        raise NotImplementedError

    @property
    def key(self) -> str:
        """A canonical text of the schedule: when it changes, the entry starts afresh."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The schedule as JSON-able data (dynamic entries are stored so)."""
        raise NotImplementedError

    @property
    def text(self) -> str:
        """The schedule as a person reads it (``every 10s``, ``*/15 9-17 * * mon-fri``)."""
        raise NotImplementedError


@dataclass(frozen=True)
class schedule(Schedule):
    """Every ``run_every`` seconds (a number or a timedelta), anchored on the server."""

    run_every: float

    def __init__(self, run_every: float | timedelta) -> None:
        seconds = run_every.total_seconds() if isinstance(run_every, timedelta) \
            else run_every
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
                or not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"an interval schedule needs a number of seconds > 0, "
                             f"not {run_every!r}")
        object.__setattr__(self, "run_every", float(seconds))

    @property
    def seconds(self) -> float:
        return self.run_every

    def next_after(self, moment: float, anchor: float, zone: tzinfo) -> float:
        # Always anchor + k * run_every, computed the same way for every k, so that each
        # beat process gets the very same float (and so the same run id) for a run.
        steps = max(math.floor((moment - anchor) / self.run_every) + 1, 1)
        while anchor + steps * self.run_every <= moment:  # rounding: strictly after
            steps += 1
        while steps > 1 and anchor + (steps - 1) * self.run_every > moment:
            steps -= 1  # rounding the other way: the first one after, not the second
        return anchor + steps * self.run_every

    @property
    def key(self) -> str:
        return f"every {self.run_every!r}s"

    def to_dict(self) -> dict[str, Any]:
        return {"every": self.run_every}

    @property
    def text(self) -> str:
        return f"every {self.run_every:g}s"

    def __repr__(self) -> str:
        return f"<freq: {self.run_every:g}s>"


class crontab(Schedule):
    """Celery's crontab: minute, hour, day_of_week, day_of_month, month_of_year."""

    def __init__(self, minute: Any = "*", hour: Any = "*", day_of_week: Any = "*",
                 day_of_month: Any = "*", month_of_year: Any = "*") -> None:
        self.fields = {"minute": _text(minute), "hour": _text(hour),
                       "day_of_week": _text(day_of_week),
                       "day_of_month": _text(day_of_month),
                       "month_of_year": _text(month_of_year)}
        self.minute = _expand("minute", minute, 0, 59)
        self.hour = _expand("hour", hour, 0, 23)
        self.day_of_week = _expand("day_of_week", day_of_week, 0, 6, DAY_NAMES, wrap7=True)
        self.day_of_month = _expand("day_of_month", day_of_month, 1, 31)
        self.month_of_year = _expand("month_of_year", month_of_year, 1, 12, MONTH_NAMES)
        # Minutes of the day it fires at, in order.
        self._times = sorted(h * 60 + m for h in self.hour for m in self.minute)

    @classmethod
    def from_string(cls, line: str) -> crontab:
        """The five fields of a crontab line: minute hour day-of-month month day-of-week."""
        parts = line.split()
        if len(parts) != 5:
            raise ValueError(f"a crontab line has five fields (minute hour day_of_month "
                             f"month_of_year day_of_week), not {len(parts)}: {line!r}")
        minute, hour, day_of_month, month_of_year, day_of_week = parts
        return cls(minute, hour, day_of_week, day_of_month, month_of_year)

    def __repr__(self) -> str:
        f = self.fields
        return (f"<crontab: {f['minute']} {f['hour']} {f['day_of_week']} "
                f"{f['day_of_month']} {f['month_of_year']} (m/h/dM/MY/d)>")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, crontab) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def key(self) -> str:
        sets = (self.minute, self.hour, self.day_of_week, self.day_of_month,
                self.month_of_year)
        return "crontab " + " ".join(",".join(map(str, sorted(s))) for s in sets)

    def to_dict(self) -> dict[str, Any]:
        return {"crontab": dict(self.fields)}

    @property
    def text(self) -> str:
        """The fields in a crontab line's order: minute hour day-of-month month weekday."""
        f = {name: value if isinstance(value, str | int) else ",".join(map(str, value))
             for name, value in self.fields.items()}
        return (f"{f['minute']} {f['hour']} {f['day_of_month']} {f['month_of_year']} "
                f"{f['day_of_week']}")

    def _day_matches(self, day: date) -> bool:
        return (day.month in self.month_of_year and day.day in self.day_of_month
                and day.isoweekday() % 7 in self.day_of_week)

    def next_after(self, moment: float, anchor: float, zone: tzinfo) -> float:
        local = datetime.fromtimestamp(moment, UTC).astimezone(zone)
        day = local.date()
        # Wall times up to an offset change (at most a few hours) before ``moment``'s
        # local time may still map to instants after it; look from a little earlier.
        start = bisect.bisect_left(self._times, local.hour * 60 + local.minute - 180)
        last_day = day + timedelta(days=366 * SEARCH_YEARS)
        while day <= last_day:
            if self._day_matches(day):
                for minutes in self._times[start:]:
                    wall = datetime(day.year, day.month, day.day, minutes // 60,
                                    minutes % 60)
                    instant = wall_instant(wall, zone)
                    if instant > moment:
                        return instant
            start = 0
            day += timedelta(days=1)
        raise ValueError(f"{self!r} matches no day in {SEARCH_YEARS} years")


def wall_instant(wall: datetime, zone: tzinfo) -> float:
    """The Unix time of a naive wall-clock time in ``zone``, by the DST rule above:
    the first occurrence of a repeated time, the end of the gap for a skipped one."""
    first = wall.replace(tzinfo=zone, fold=0)
    instant = first.timestamp()
    if datetime.fromtimestamp(instant, zone).replace(tzinfo=None) == wall:
        return instant  # exists (fold=0 is its first occurrence if it repeats)
    # In a gap: fold=0 read it with the offset from before the gap, fold=1 with the
    # one after; the gap's end (the transition) lies between the two instants.
    low = wall.replace(tzinfo=zone, fold=1).timestamp()
    low, high = min(low, instant), max(low, instant)
    after = _offset(high, zone)
    while high - low > 0.5:
        middle = (low + high) / 2
        if _offset(middle, zone) == after:
            high = middle
        else:
            low = middle
    return float(math.ceil(high))  # transitions are on whole seconds


def _offset(instant: float, zone: tzinfo) -> timedelta | None:
    return datetime.fromtimestamp(instant, zone).utcoffset()


def as_schedule(value: Any) -> Schedule:
    """What a ``schedule`` value of an entry means: a number of seconds, a timedelta, or
    a schedule object (``crontab``, ``schedule``)."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, timedelta) or (isinstance(value, int | float)
                                        and not isinstance(value, bool)):
        return schedule(value)
    raise TypeError(f"a schedule is a number of seconds, a timedelta, crontab(...) or "
                    f"schedule(...), not {value!r}")


def schedule_from_dict(data: Any) -> Schedule:
    """The inverse of ``Schedule.to_dict``."""
    if isinstance(data, dict) and "every" in data:
        return schedule(data["every"])
    if isinstance(data, dict) and isinstance(data.get("crontab"), dict):
        return crontab(**data["crontab"])
    raise ValueError(f"not a stored schedule: {data!r}")


def _text(value: Any) -> Any:
    """A field as given, in a form JSON keeps (sets and ranges become lists)."""
    if isinstance(value, int | str):
        return value
    if isinstance(value, Iterable):
        return sorted(value)
    return value


def _expand(field: str, value: Any, low: int, high: int,
            names: dict[str, int] | None = None, wrap7: bool = False) -> frozenset[int]:
    """A crontab field as the set of values it matches (Celery's crontab_parser rules)."""
    if isinstance(value, bool):
        raise TypeError(f"crontab {field} must be an int, a string or a list, not {value!r}")
    if isinstance(value, int):
        found = {value}
    elif isinstance(value, str):
        found = set()
        for part in value.lower().replace(" ", "").split(","):
            if not part:
                raise ValueError(f"crontab {field} {value!r} has an empty part")
            found |= _expand_part(field, part, low, high, names)
    elif isinstance(value, Iterable):
        found = set()
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int):
                raise TypeError(f"crontab {field} lists whole numbers, not {item!r}")
            found.add(item)
    else:
        raise TypeError(f"crontab {field} must be an int, a string or a list, not {value!r}")
    if wrap7:
        found = {0 if v == 7 else v for v in found}  # cron's 7 is Sunday too
    bad = [v for v in found if not low <= v <= high]
    if bad:
        raise ValueError(f"crontab {field} {value!r}: {bad[0]} is outside {low}-{high}")
    if not found:
        raise ValueError(f"crontab {field} {value!r} matches nothing")
    return frozenset(found)


def _expand_part(field: str, part: str, low: int, high: int,
                 names: dict[str, int] | None) -> set[int]:
    span, _, step_text = part.partition("/")
    step = 1
    if step_text or part.endswith("/"):
        if not step_text.isdigit() or int(step_text) < 1:
            raise ValueError(f"crontab {field} {part!r}: the step must be a number >= 1")
        step = int(step_text)
    if span == "*":
        values = list(range(low, high + 1))
    else:
        first_text, dash, last_text = span.partition("-")
        first = _number(field, first_text, names, high)
        if not dash:
            if step_text:  # "5/15": from 5 to the end, as cron reads it
                values = list(range(first, high + 1))
            else:
                return {first}
        else:
            last = _number(field, last_text, names, high)
            if last < first:  # "22-2": wraps around, as in Celery
                values = list(range(first, high + 1)) + list(range(low, last + 1))
            else:
                values = list(range(first, last + 1))
    return set(values[::step])


def _number(field: str, text: str, names: dict[str, int] | None, high: int) -> int:
    if text.isdigit():
        return int(text)
    if names is not None and text in names:
        return names[text]
    if not text:
        raise ValueError(f"crontab {field}: a range needs numbers on both sides of '-'")
    kind = "a day name (mon..sun)" if names is DAY_NAMES else (
        "a month name (jan..dec)" if names is MONTH_NAMES else "a number")
    raise ValueError(f"crontab {field}: {text!r} is not {kind} (0-{high})")
