"""Rate limits: parsing, which limit applies, and a worker keeping to them.

The workers here are in-process (``ThreadedWorker``) on the memory broker, whose token
buckets are shared by everything using the broker object; the stores of the SQLite and
Redis brokers are checked in test_rate_limit_buckets.py, and real worker processes in
tests/integration/test_rate_limit_workers.py. Times are the behaviour under test, so
they are measured and held to bounds with room for a loaded machine.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from celeriac import App, ConfigurationError, Task, TimeoutError
from celeriac.brokers.buckets import Grant, reserve
from celeriac.ratelimit import canonical, parse_rate
from celeriac.testing import ThreadedWorker
from celeriac.worker import ratelimit as worker_ratelimit


@pytest.fixture
def app() -> Iterator[App]:
    app = App("proj", broker="memory://", backend="memory://")
    yield app
    app.close()


class Starts:
    """When each call of a task started, recorded by the task itself."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.times: list[float] = []
        self.names: list[str] = []

    def add(self, name: str) -> None:
        with self._lock:
            self.times.append(time.monotonic())
            self.names.append(name)

    def clear(self) -> None:
        with self._lock:
            self.times.clear()
            self.names.clear()

    def gaps(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(sorted(self.times))]

    def assert_paced(self, interval: float, names: str = "") -> None:
        """No start ran ahead of the token schedule: the k-th is k intervals after the first.

        (One start may be late, on a busy machine, and the next on time: gaps alone would
        not say whether the limit held.)
        """
        times = sorted(t for t, name in zip(self.times, self.names, strict=True)
                       if name.startswith(names))
        early = [(k, round(t - times[0], 3)) for k, t in enumerate(times)
                 if t - times[0] < k * interval - 0.02]
        assert not early, f"started ahead of their tokens (index, seconds): {early}"


# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "tokens", "per", "shown"), [
    ("100/s", 100, 1, "100/s"),
    ("10/m", 10, 60, "10/m"),
    ("1000/h", 1000, 3600, "1000/h"),
    ("2.5/s", 2.5, 1, "2.5/s"),
    ("7", 7, 1, "7/s"),  # a bare number is per second, as in Celery
    (7, 7, 1, "7/s"),
    (0.5, 0.5, 1, "0.5/s"),
    (" 3 / m ", 3, 60, "3/m"),
])
def test_rates_are_read_as_in_celery(text: object, tokens: float, per: float,
                                     shown: str) -> None:
    rate = parse_rate(text)
    assert rate is not None
    assert (rate.tokens, rate.per, str(rate)) == (tokens, per, shown)
    assert rate.interval == pytest.approx(per / tokens)


@pytest.mark.parametrize("nothing", [None, 0, "0", "0/s", 0.0])
def test_zero_and_none_mean_no_limit(nothing: object) -> None:
    assert parse_rate(nothing) is None
    assert canonical(nothing) == "0"


@pytest.mark.parametrize(("bad", "message"), [
    ("10/d", "the unit must be s, m or h"),
    ("10/sec", "the unit must be s, m or h"),
    ("ten/s", "must start with a number"),
    ("-1/s", ">= 0"),
    ("inf/s", ">= 0"),
    (True, "is a string such as"),
    ([10], "is a string such as"),
])
def test_malformed_rates_are_refused(bad: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate(bad)


def test_a_bad_rate_is_an_error_where_it_is_written(app: App) -> None:
    with pytest.raises(ValueError, match="the unit must be s, m or h"):
        @app.task(rate_limit="5/x")
        def nope() -> None: ...

    with pytest.raises(ConfigurationError, match="task_default_rate_limit"):
        app.conf.task_default_rate_limit = "fast"
    with pytest.raises(ConfigurationError, match="annotation of 'proj.x'"):
        app.conf.task_annotations = {"proj.x": {"rate_limit": "1/d"}}


def test_a_bucket_hands_out_evenly_spaced_tokens_and_reserves_no_further_than_its_horizon(
) -> None:
    # Given an empty bucket of one token every 10 s
    tat, grant = reserve(None, 100.0, 10.0, 25.0)
    # Then the first token is free now, the next ones 10 and 20 s later
    assert (grant, tat) == (Grant(True, 0.0), 110.0)
    tat, grant = reserve(tat, 100.0, 10.0, 25.0)
    assert (grant, tat) == (Grant(True, 10.0), 120.0)
    tat, grant = reserve(tat, 101.0, 10.0, 25.0)
    assert (grant, tat) == (Grant(True, 19.0), 130.0)
    # and one 30 s ahead is past the horizon: not reserved; ask again when the
    # reservations reach only half the horizon (30 - 12.5 s from now)
    unchanged, grant = reserve(tat, 100.0, 10.0, 25.0)
    assert (grant, unchanged) == (Grant(False, 17.5), None)
    # A bucket left idle does not save tokens up: capacity one, no bursts
    tat, grant = reserve(130.0, 500.0, 10.0, 25.0)
    assert (grant, tat) == (Grant(True, 0.0), 510.0)


# -- on a worker --------------------------------------------------------------------------


def test_a_limited_task_starts_evenly_spaced(app: App) -> None:
    starts = Starts()

    @app.task(rate_limit="10/s")
    def ping(n: int) -> int:
        starts.add("ping")
        return n

    with ThreadedWorker(app, slots=4) as worker:
        results = [ping.delay(n) for n in range(12)]
        assert [r.get(timeout=10) for r in results] == list(range(12))
        assert worker.consumer is not None
        assert worker.consumer.stats.deferred >= 10
    starts.assert_paced(0.1)  # one token every 0.1 s, shared by the 4 slots
    assert sum(starts.gaps()) < 2.0, starts.gaps()


def test_a_backlog_over_its_limit_does_not_hold_up_other_tasks_on_a_one_slot_worker(
    app: App,
) -> None:
    # Given a one-slot worker and a backlog of a task limited to 2/s ahead of a free one
    starts = Starts()

    @app.task(rate_limit="2/s")
    def slow_api(n: int) -> int:
        starts.add(f"slow{n}")
        return n

    @app.task
    def free() -> str:
        starts.add("free")
        return "free"

    backlog = [slow_api.delay(n) for n in range(10)]
    unlimited = free.delay()
    with ThreadedWorker(app, slots=1):
        # When the worker runs them, the free task does not wait for the backlog's tokens
        assert unlimited.get(timeout=5) == "free"
        assert starts.names.index("free") <= 2, starts.names
        # and the backlog then runs at its limit
        backlog[2].get(timeout=10)
    assert [r.state for r in backlog[:3]] == ["SUCCESS"] * 3
    starts.assert_paced(0.5, "slow")


def test_the_default_rate_limit_applies_to_every_task_unless_it_says_zero(app: App) -> None:
    app.conf.task_default_rate_limit = "5/s"
    starts = Starts()

    @app.task
    def limited() -> None:
        starts.add("limited")

    @app.task(rate_limit="0")
    def exempt() -> None:
        starts.add("exempt")

    with ThreadedWorker(app, slots=2):
        for result in [limited.delay() for _ in range(3)]:
            result.get(timeout=5)
        free_started = time.monotonic()
        for result in [exempt.delay() for _ in range(20)]:
            result.get(timeout=5)
        assert time.monotonic() - free_started < 1.0
    starts.assert_paced(0.2, "limited")


def test_annotations_set_a_rate_limit_by_name_or_for_all(app: App) -> None:
    @app.task(rate_limit="100/s")
    def hello() -> None: ...

    @app.task
    def other() -> None: ...

    limiter = worker_ratelimit.RateLimiter(app)
    assert str(limiter.rate_for(hello)) == "100/s"
    assert limiter.rate_for(other) is None
    app.conf.task_annotations = {hello.name: {"rate_limit": "5/m"}, "*": {"rate_limit": "1/s"}}
    assert str(limiter.rate_for(hello)) == "5/m"
    assert str(limiter.rate_for(other)) == "1/s"


def test_worker_disable_rate_limits_turns_them_off(app: App) -> None:
    app.conf.worker_disable_rate_limits = True

    @app.task(rate_limit="1/m")
    def rare() -> int:
        return 1

    with ThreadedWorker(app, slots=1) as worker:
        assert [r.get(timeout=5) for r in [rare.delay() for _ in range(5)]] == [1] * 5
        assert worker.consumer is not None
        assert worker.consumer.stats.deferred == 0


# -- changed at run time ------------------------------------------------------------------


@pytest.fixture
def quick_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers read the run-time limits every 50 ms instead of every second."""
    monkeypatch.setattr(worker_ratelimit, "OVERRIDES_REFRESH", 0.05)


def seen_by(workers: list[ThreadedWorker], task: Task[..., object], expected: str | None,
            timeout: float = 5.0) -> None:
    """Wait until every worker applies ``expected`` (None: no limit) to ``task``."""
    deadline = time.monotonic() + timeout
    while True:
        rates = [w.consumer.rate_limits.rate_for(task) if w.consumer else "?" for w in workers]
        if all((None if rate is None else str(rate)) == expected for rate in rates):
            return
        assert time.monotonic() < deadline, f"workers still apply {rates}, not {expected}"
        time.sleep(0.01)


@pytest.mark.usefixtures("quick_refresh")
def test_control_rate_limit_limits_lifts_and_resets_for_every_worker(app: App) -> None:
    starts = Starts()

    @app.task(rate_limit="1/m")
    def job(n: int) -> int:
        starts.add(f"job{n}")
        return n

    with ThreadedWorker(app, slots=2) as one, ThreadedWorker(app, slots=2) as two:
        # Lifted at run time (None, as in Celery), the declared 1/m no longer holds
        app.control.rate_limit(job.name, None)
        seen_by([one, two], job, None)
        assert [r.get(timeout=5) for r in [job.delay(n) for n in range(10)]] == list(range(10))

        # Set to 5/s, it holds for both workers together
        starts.clear()
        app.control.rate_limit(job.name, "5/s")
        seen_by([one, two], job, "5/s")
        for result in [job.delay(n) for n in range(6)]:
            result.get(timeout=10)
        starts.assert_paced(0.2)

        # Reset, the declared limit applies again: one now, the next in a minute
        app.control.reset_rate_limit(job.name)
        seen_by([one, two], job, "1/m")
        first, second = job.delay(1), job.delay(2)
        assert first.get(timeout=5) == 1
        with pytest.raises(TimeoutError):
            second.get(timeout=0.5)


@pytest.mark.usefixtures("quick_refresh")
def test_a_lowered_limit_applies_to_tasks_already_handed_back(app: App) -> None:
    # Given tasks at 1/s, most of them handed back with a reserved token
    starts = Starts()

    @app.task(rate_limit="1/s")
    def job(n: int) -> int:
        starts.add(f"job{n}")
        return n

    with ThreadedWorker(app, slots=1):
        results = [job.delay(n) for n in range(8)]
        results[0].get(timeout=5)
        # When the limit drops to 1/m before their turn
        app.control.rate_limit(job.name, "1/m")
        # Then their reservations (made for 1/s) are not used: after the one token the
        # new bucket gives at once, the next is a minute away. At 1/s, the fifth task
        # would have started 4 s after the first (room for the change to reach the
        # worker, which reads limits about once a second, on a loaded machine).
        with pytest.raises(TimeoutError):
            results[4].get(timeout=4.5)
        assert len(starts.times) <= 3, starts.names


def test_run_time_limits_need_a_shared_store() -> None:
    app = App("proj", broker="amqp://guest:guest@127.0.0.1:5672/", backend="memory://")
    try:
        with pytest.raises(ConfigurationError, match="nowhere to keep rate limits"):
            app.control.rate_limit("proj.x", "1/s")
    finally:
        app.close()


def test_without_a_shared_store_each_worker_process_limits_itself_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given RabbitMQ (no server-side counters) with results that stay in one process
    app = App("proj", broker="amqp://guest:guest@127.0.0.1:5672/", backend="memory://")
    limiter = worker_ratelimit.RateLimiter(app)
    try:
        # Then the worker's buckets are its own, and its log says so once
        assert not limiter.store.shared

        async def two() -> list[float]:
            rate = parse_rate("2/s")
            assert rate is not None
            return [(await limiter._reserve("proj.x", rate)).delay for _ in range(2)]

        assert asyncio.run(two()) == [0.0, pytest.approx(0.5, abs=0.05)]
        warnings = [r for r in caplog.records if "enforced per worker process" in r.message]
        assert len(warnings) == 1
    finally:
        app.close()
