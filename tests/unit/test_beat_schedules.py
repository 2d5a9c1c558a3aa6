"""Schedules: crontab's Celery syntax, and runs across daylight-saving changes.

The DST tests drive the real scheduler with an injected clock (``beat_clock``) through
the spring-forward and fall-back days of Europe/Berlin and America/New_York, and check
each run's due time and the moment it was sent.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from beat_clock import Clock, Sends, at, drive, make_scheduler

from celeriac import App
from celeriac.beat.schedules import crontab, schedule, wall_instant
from celeriac.beat.store import MemoryStore
from celeriac.errors import ConfigurationError

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
UTC = ZoneInfo("UTC")
FOREVER = 10.0 ** 7  # a lease that never needs renewing within a test


# -- Celery's crontab syntax ---------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("minute", "*/15", {0, 15, 30, 45}),
    ("minute", "1,13,30-45,50-59/2", {1, 13, *range(30, 46), *range(50, 60, 2)}),
    ("minute", 7, {7}),
    ("minute", [0, 30], {0, 30}),
    ("hour", "*/4", {0, 4, 8, 12, 16, 20}),
    ("hour", "0,8-17/2", {0, 8, 10, 12, 14, 16}),
    ("hour", "22-2", {22, 23, 0, 1, 2}),  # wraps around, as in Celery
    ("day_of_week", "mon-fri", {1, 2, 3, 4, 5}),
    ("day_of_week", "sun,sat", {0, 6}),
    ("day_of_week", "fri-mon", {5, 6, 0, 1}),
    ("day_of_week", "monday", {1}),
    ("day_of_week", "*", set(range(7))),
    ("day_of_week", "7", {0}),
    ("day_of_month", "*/2", set(range(1, 32, 2))),
    ("day_of_month", "1-7,15-21", {*range(1, 8), *range(15, 22)}),
    ("month_of_year", "*/3", {1, 4, 7, 10}),
    ("month_of_year", "2-12/2", {2, 4, 6, 8, 10, 12}),
    ("month_of_year", "jan-mar", {1, 2, 3}),
])
def test_crontab_fields_expand_as_in_celery(field: str, value: object,
                                             expected: set[int]) -> None:
    assert getattr(crontab(**{field: value}), field) == expected


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"minute": "60"}, "outside 0-59"),
    ({"hour": "*/0"}, "step must be a number >= 1"),
    ({"day_of_week": "funday"}, "not a day name"),
    ({"minute": "1,,2"}, "empty part"),
    ({"day_of_month": "0"}, "outside 1-31"),
    ({"minute": True}, "must be an int"),
])
def test_crontab_refuses_bad_fields(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        crontab(**kwargs)  # type: ignore[arg-type]


def test_crontab_from_string_reads_a_crontab_line() -> None:
    parsed = crontab.from_string("*/15 9-17 * * mon-fri")
    assert parsed == crontab(minute="*/15", hour="9-17", day_of_week="mon-fri")
    with pytest.raises(ValueError, match="five fields"):
        crontab.from_string("* * *")


def test_day_fields_must_all_match_as_in_celery() -> None:
    # Mondays that are also among the first seven days: the first Monday of each month.
    first_monday = crontab(minute=0, hour=0, day_of_week="mon", day_of_month="1-7")
    moment = at(UTC, 2026, 1, 1)
    found = []
    for _ in range(3):
        moment = first_monday.next_after(moment, 0.0, UTC)
        found.append(moment)
    assert found == [at(UTC, 2026, 1, 5), at(UTC, 2026, 2, 2), at(UTC, 2026, 3, 2)]


def test_a_schedule_that_never_fires_is_refused_when_configured() -> None:
    with pytest.raises(ConfigurationError, match="matches no day"):
        App("t", broker="memory://", beat_schedule={
            "never": {"task": "t.x", "schedule": crontab(0, 0, day_of_month=30,
                                                         month_of_year=2)}})


def test_interval_due_times_are_anchored() -> None:
    every = schedule(timedelta(seconds=10))
    assert every.next_after(100.0, 100.0, UTC) == 110.0
    assert every.next_after(115.0, 100.0, UTC) == 120.0
    assert every.next_after(120.0, 100.0, UTC) == 130.0  # strictly after
    with pytest.raises(ValueError, match="> 0"):
        schedule(0)


# -- wall-clock times across DST -----------------------------------------------------------


def test_a_missing_wall_time_is_the_end_of_the_gap() -> None:
    # Berlin springs forward at 02:00 CET to 03:00 CEST on 2026-03-29.
    assert wall_instant(datetime(2026, 3, 29, 2, 30), BERLIN) == at(BERLIN, 2026, 3, 29, 3)
    # An existing time, and a repeated one (its first occurrence, CEST = UTC+2).
    assert wall_instant(datetime(2026, 3, 29, 3, 30), BERLIN) == at(BERLIN, 2026, 3, 29, 3,
                                                                    30)
    assert wall_instant(datetime(2026, 10, 25, 2, 30), BERLIN) == at(UTC, 2026, 10, 25, 0,
                                                                     30)


def _run(zone_name: str, beat_schedule: dict[str, dict[str, object]], start: float,
         end: float) -> Sends:
    app = App("t", broker="memory://", timezone=zone_name, beat_schedule=beat_schedule)
    clock = Clock(start)
    sends = Sends(clock)
    store = MemoryStore(clock)
    drive(make_scheduler(app, clock, store, sends, ttl=FOREVER), clock, end)
    # Every run was sent at its due time (the loop slept exactly until it).
    assert all(sent.at == pytest.approx(sent.due, abs=0.01) for sent in sends.items)
    return sends


def test_daily_0230_in_berlin_across_spring_forward_and_fall_back() -> None:
    daily = {"daily": {"task": "t.x", "schedule": crontab(minute=30, hour=2)}}
    spring = _run("Europe/Berlin", daily, at(BERLIN, 2026, 3, 27, 12),
                  at(BERLIN, 2026, 3, 31, 12))
    assert spring.dues() == [
        at(BERLIN, 2026, 3, 28, 2, 30),  # CET
        at(BERLIN, 2026, 3, 29, 3, 0),  # 02:30 does not exist: the end of the gap
        at(BERLIN, 2026, 3, 30, 2, 30),  # CEST
        at(BERLIN, 2026, 3, 31, 2, 30),
    ]
    autumn = _run("Europe/Berlin", daily, at(BERLIN, 2026, 10, 24, 12),
                  at(BERLIN, 2026, 10, 26, 12))
    assert autumn.dues() == [
        at(BERLIN, 2026, 10, 25, 2, 30),  # the first 02:30 (CEST), once
        at(BERLIN, 2026, 10, 26, 2, 30),
    ]
    assert autumn.dues()[0] == at(UTC, 2026, 10, 25, 0, 30)


def test_quarter_hours_in_new_york_across_spring_forward() -> None:
    # 02:00-02:59 does not exist on 2026-03-08: its four runs are one run at 03:00,
    # which is also the 03:00 run: nothing doubles, nothing after the gap is skipped.
    sends = _run("America/New_York",
                 {"q": {"task": "t.x", "schedule": crontab(minute="*/15", hour="1-3")}},
                 at(NEW_YORK, 2026, 3, 8, 0), at(NEW_YORK, 2026, 3, 8, 4))
    assert sends.dues() == [
        at(NEW_YORK, 2026, 3, 8, 1, 0), at(NEW_YORK, 2026, 3, 8, 1, 15),
        at(NEW_YORK, 2026, 3, 8, 1, 30), at(NEW_YORK, 2026, 3, 8, 1, 45),
        at(NEW_YORK, 2026, 3, 8, 3, 0), at(NEW_YORK, 2026, 3, 8, 3, 15),
        at(NEW_YORK, 2026, 3, 8, 3, 30), at(NEW_YORK, 2026, 3, 8, 3, 45),
    ]


def test_hourly_in_new_york_across_fall_back_runs_each_wall_time_once() -> None:
    # 01:00-01:59 happens twice on 2026-11-01 (EDT, then EST): 01:30 runs once.
    sends = _run("America/New_York",
                 {"h": {"task": "t.x", "schedule": crontab(minute=30)}},
                 at(NEW_YORK, 2026, 11, 1, 0), at(NEW_YORK, 2026, 11, 1, 4))
    assert sends.dues() == [
        at(NEW_YORK, 2026, 11, 1, 0, 30),
        at(UTC, 2026, 11, 1, 5, 30),  # 01:30 EDT (UTC-4), the first occurrence
        at(NEW_YORK, 2026, 11, 1, 2, 30),  # EST
        at(NEW_YORK, 2026, 11, 1, 3, 30),
    ]


def test_intervals_count_real_seconds_across_dst() -> None:
    sends = _run("Europe/Berlin", {"i": {"task": "t.x", "schedule": 3600.0}},
                 at(BERLIN, 2026, 3, 29, 0), at(BERLIN, 2026, 3, 29, 6))
    dues = sends.dues()
    assert len(dues) == 5  # 6 hours of wall clock are 5 hours of real time that day
    assert all(b - a == 3600.0 for a, b in itertools.pairwise(dues))


def test_crontab_honours_enable_utc_without_a_timezone() -> None:
    app = App("t", broker="memory://", beat_schedule={
        "noon": {"task": "t.x", "schedule": crontab(minute=0, hour=12)}})
    clock = Clock(at(UTC, 2026, 6, 1, 11))
    sends = Sends(clock)
    drive(make_scheduler(app, clock, MemoryStore(clock), sends, ttl=FOREVER), clock,
          at(UTC, 2026, 6, 1, 13))
    assert sends.dues() == [at(UTC, 2026, 6, 1, 12)]


@pytest.mark.parametrize("every", [0.01, 0.3, 1.0, 7.7])
def test_interval_due_times_are_exactly_anchor_plus_k_intervals(every: float) -> None:
    # Every beat process must compute the very same float for a run (its id is made
    # from it): walking from due time to due time never drifts off anchor + k * every.
    anchor = 1_800_000_000.123
    interval = schedule(every)
    moment = anchor
    for k in range(1, 2001):
        moment = interval.next_after(moment, anchor, UTC)
        assert moment == anchor + k * every
    # From any moment, the first due time after it, not the second.
    for offset in (0.0, every / 3, every * 999.999, every * 1000):
        due = interval.next_after(anchor + offset, anchor, UTC)
        assert anchor + offset < due <= anchor + offset + every


def test_solar_is_refused_with_what_to_use() -> None:
    from celeriac.schedules import solar

    with pytest.raises(ConfigurationError, match="no solar schedules; use crontab"):
        solar("sunset", -37.81753, 144.96715)


def test_the_schedule_zone_follows_timezone_then_enable_utc_then_the_machine(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from celeriac.timezones import schedule_zone

    assert schedule_zone(True, "Europe/Berlin") == BERLIN
    assert schedule_zone(False, "Europe/Berlin") == BERLIN
    assert schedule_zone(True, None) == UTC or str(schedule_zone(True, None)) == "UTC"
    monkeypatch.setenv("TZ", "America/New_York")
    local = schedule_zone(False, None)
    # This machine's zone with its rules, not just today's offset.
    assert wall_instant(datetime(2026, 3, 8, 2, 30), local) == at(NEW_YORK, 2026, 3, 8, 3)
