"""The beat loop with an injected clock: missed policies, leaders taking over (none
repeated, none skipped), a crash between recording and sending, a stale leader fenced
off, dynamic entries, and Celery's ``add_periodic_task``."""

from __future__ import annotations

import pytest
from beat_clock import Clock, Crash, Sends, drive, make_scheduler

from celeriac import App
from celeriac.beat.entry import Entry
from celeriac.beat.leader import Leadership
from celeriac.beat.scheduler import MISSED_AFTER, Scheduler, run_id
from celeriac.beat.store import MemoryStore, RunState
from celeriac.errors import BrokerError, ConfigurationError
from celeriac.schedules import crontab

START = 1_800_000_000.0  # a round Unix time


def _app(**entries: dict[str, object]) -> App:
    return App("t", broker="memory://", beat_schedule=entries)


def _every(seconds: float, **extra: object) -> dict[str, object]:
    return {"task": "t.tick", "schedule": seconds, **extra}


def test_an_interval_entry_runs_one_interval_after_it_starts_then_on_its_phase() -> None:
    clock = Clock(START)
    sends = Sends(clock)
    scheduler = make_scheduler(_app(tick=_every(10)), clock, MemoryStore(clock), sends)
    drive(scheduler, clock, START + 55)
    assert sends.dues() == [START + 10, START + 20, START + 30, START + 40, START + 50]
    assert [s.task_id for s in sends.items] == [run_id("tick", d) for d in sends.dues()]


@pytest.mark.parametrize("missed", ["skip", "run_once"])
def test_runs_missed_while_no_beat_ran_follow_the_missed_policy(missed: str) -> None:
    app = _app(tick=_every(60, missed=missed))
    clock = Clock(START)
    store = MemoryStore(clock)
    sends = Sends(clock)
    drive(make_scheduler(app, clock, store, sends), clock, START + 130)
    assert sends.dues() == [START + 60, START + 120]
    clock.now = START + 3600 + 5  # no beat for an hour; then one starts
    sends.items.clear()
    drive(make_scheduler(app, clock, store, sends, holder="b"), clock, START + 3600 + 130)
    if missed == "skip":
        expected = []
    else:  # one run, at once, keyed by the first missed due time
        expected = [START + 180]
        assert sends.items[0].at == START + 3605
    # Then the schedule goes on on its phase.
    assert sends.dues() == [*expected, START + 3660, START + 3720]


def test_runs_late_by_less_than_the_window_are_all_sent() -> None:
    # A beat stopped for a few seconds (a restart, a deploy) loses no run, whatever
    # the policy: only an outage longer than MISSED_AFTER counts as missed.
    app = _app(tick=_every(1))
    clock = Clock(START)
    store = MemoryStore(clock)
    sends = Sends(clock)
    drive(make_scheduler(app, clock, store, sends), clock, START + 5.5)
    clock.now = START + 5.5 + MISSED_AFTER - 2
    drive(make_scheduler(app, clock, store, sends, holder="b"), clock, START + 20.5)
    assert sends.dues() == [START + k for k in range(1, 21)]


def test_a_follower_takes_over_a_dead_leader_and_sends_every_run_once() -> None:
    app = _app(tick=_every(1))
    clock = Clock(START)
    store = MemoryStore(clock)
    sends = Sends(clock)
    beats = [make_scheduler(app, clock, store, sends, holder=h) for h in "abc"]
    alive = list(beats)
    leaders = []
    deaths = {START + 7.3, START + 15.1}
    while clock.now < START + 30:
        for beat in alive:
            beat.tick()
        leader = next((b for b in alive if b.leadership.token is not None), None)
        if leader is not None and (not leaders or leaders[-1] is not leader):
            leaders.append(leader)
        if leader is not None and any(abs(clock.now - d) < 0.05 for d in deaths):
            alive.remove(leader)  # SIGKILL: it neither releases nor sends again
        clock.now = round(clock.now + 0.1, 1)
    assert len(leaders) == 3
    dues = sends.dues()
    assert dues == [START + k for k in range(1, 30)]  # none twice, none skipped
    tokens = [b.leadership.token for b in leaders]
    assert tokens[-1] is not None
    assert tokens[-1] >= 3


def test_a_crash_between_recording_and_sending_is_sent_by_the_next_leader() -> None:
    app = _app(tick=_every(1))
    clock = Clock(START)
    store = MemoryStore(clock)
    sends = Sends(clock, crash_on={START + 3})
    first = make_scheduler(app, clock, store, sends, holder="a")
    with pytest.raises(Crash):
        drive(first, clock, START + 10)
    crashed_at = clock.now
    assert store.states()["tick"].pending == START + 3  # recorded, not sent
    second = make_scheduler(app, clock, store, sends, holder="b")
    while second.leadership.token is None:  # waits out the dead leader's lease
        second.tick()
        clock.now += 0.25
    drive(second, clock, START + 10.5)
    assert sends.dues() == [START + k for k in range(1, 11)]
    assert sends.items[2].task_id == run_id("tick", START + 3)  # the same id as recorded
    assert sends.items[2].at > crashed_at


def test_a_leader_whose_lease_passed_on_records_and_sends_nothing() -> None:
    app = _app(tick=_every(1))
    clock = Clock(START)
    store = MemoryStore(clock)
    sends = Sends(clock)
    old = make_scheduler(app, clock, store, sends, holder="old")
    drive(old, clock, START + 2.5)
    old_lease = old.leadership.lease
    clock.now += 10  # "old" is paused (GC, SIGSTOP) past its lease
    new = make_scheduler(app, clock, store, sends, holder="new")
    new.tick()
    assert new.leadership.token is not None
    assert old_lease is not None
    assert new.leadership.token > old_lease[1]
    state = store.states()["tick"]
    fenced = RunState(state.key, state.anchor, state.cursor + 1, pending=state.cursor + 1)
    assert not store.swap("tick", state, fenced, old_lease)  # the server refuses it
    before = len(sends.items)
    old.tick()  # wakes up: finds the lease taken, sends nothing
    assert old.leadership.token is None
    assert len(sends.items) == before


def test_a_cleanly_stopped_leader_hands_over_at_once() -> None:
    app = _app(tick=_every(1))
    clock = Clock(START)
    store = MemoryStore(clock)
    sends = Sends(clock)
    first = make_scheduler(app, clock, store, sends, holder="a")
    first.tick()
    first.leadership.release()
    second = make_scheduler(app, clock, store, sends, holder="b")
    second.tick()
    assert second.leadership.token is not None


def test_dynamic_entries_are_picked_up_paused_resumed_and_removed() -> None:
    app = _app()
    clock = Clock(START)
    store = MemoryStore(clock)
    app.beat._store = store
    sends = Sends(clock)
    scheduler = make_scheduler(app, clock, store, sends)
    scheduler.max_interval = 0.25
    drive(scheduler, clock, START + 1)
    app.beat.add("dyn", "t.tick", 2.0, args=[1], kwargs={"x": 2}, options={"queue": "q"})
    added = clock.now
    drive(scheduler, clock, START + 10)
    assert sends.dues("dyn")[0] == pytest.approx(added + 2, abs=0.26)  # picked up in a pass
    app.beat.pause("dyn")
    paused = clock.now
    drive(scheduler, clock, START + 20)
    assert all(due <= paused for due in sends.dues("dyn"))
    app.beat.resume("dyn")
    drive(scheduler, clock, START + 25)
    assert sends.dues("dyn")[-1] > START + 20
    assert app.beat.remove("dyn")
    removed = clock.now
    drive(scheduler, clock, START + 30)
    assert sends.dues("dyn")[-1] <= removed
    assert not app.beat.remove("dyn")


def test_list_shows_static_and_dynamic_entries_with_their_state() -> None:
    app = _app(tick=_every(5))
    clock = Clock(START)
    store = MemoryStore(clock)
    app.beat._store = store
    app.beat.add("nightly", "t.report", crontab(minute=0, hour=3))
    drive(make_scheduler(app, clock, store, Sends(clock)), clock, START + 6)
    listed = {info.name: info for info in app.beat.list()}
    assert listed["tick"].source == "beat_schedule"
    assert listed["tick"].state is not None
    assert listed["tick"].state.last_due == START + 5
    assert listed["tick"].next_due == START + 10
    assert listed["nightly"].source == "dynamic"
    with pytest.raises(ConfigurationError, match="is in beat_schedule"):
        app.beat.add("tick", "t.other", 1.0)
    with pytest.raises(ConfigurationError, match="no periodic task named"):
        app.beat.pause("nope")
    with pytest.raises(ConfigurationError, match="JSON"):
        app.beat.add("bad", "t.x", 1.0, args=[object()])


def test_add_periodic_task_on_after_configure_as_in_celerys_docs() -> None:
    app = App("proj", broker="memory://")

    @app.task
    def test(arg: str) -> str:
        return arg

    @app.on_after_configure.connect
    def setup_periodic_tasks(sender: App, **kwargs: object) -> None:
        sender.add_periodic_task(10.0, test.s("hello"), name="add every 10")
        sender.add_periodic_task(30.0, test.s("world"), expires=10)
        sender.add_periodic_task(crontab(hour=7, minute=30, day_of_week=1),
                                 test.s("Happy Mondays!"), missed="run_once")

    clock = Clock(START)
    sends = Sends(clock)
    make_scheduler(app, clock, MemoryStore(clock), sends)
    schedule = app.conf.beat_schedule
    assert schedule["add every 10"]["args"] == ("hello",)
    assert schedule["add every 10"]["task"] == test.name
    world = next(v for k, v in schedule.items() if "world" in k)
    assert world["options"] == {"expires": 10}
    monday = next(v for k, v in schedule.items() if "Mondays" in k)
    assert monday["missed"] == "run_once"


@pytest.mark.parametrize(("entry", "message"), [
    ({"task": "t.x"}, "needs 'schedule'"),
    ({"task": "t.x", "schedule": "often"}, "a schedule is a number"),
    ({"task": "t.x", "schedule": 5, "options": {"queu": "q"}}, 'did you mean "queue"'),
    ({"task": "t.x", "schedule": 5, "options": {"task_id": "x"}}, "beat's own"),
    ({"task": "t.x", "schedule": 5, "missed": "all"}, "'missed' must be one of"),
    ({"task": "t.x", "schedule": 5, "relative": True}, "relative=True"),
    ({"task": "t.x", "schedule": 5, "arg": [1]}, "unknown key 'arg'"),
])
def test_a_wrong_beat_schedule_entry_is_refused_when_set(entry: dict[str, object],
                                                         message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        App("t", broker="memory://", beat_schedule={"e": entry})


def test_rpc_results_with_rabbitmq_leave_beat_nowhere_to_keep_state() -> None:
    app = App("t", broker="amqp://guest:guest@127.0.0.1:5672//", backend="rpc://")
    with pytest.raises(ConfigurationError, match="set result_backend to a redis"):
        app.beat.list()


class FlakyStore(MemoryStore):
    """A memory store whose next confirmation of a sent run fails (a lost connection)."""

    fail_confirm = False

    def swap(self, entry: str, expected: RunState | None, new: RunState | None,
             lease: tuple[str, int] | None, *, running: bool = False,
             dynamic: bool = False) -> bool:
        confirming = expected is not None and expected.pending is not None \
            and new is not None and new.pending is None
        if confirming and self.fail_confirm:
            self.fail_confirm = False
            raise BrokerError("the server went away")
        return super().swap(entry, expected, new, lease, running=running, dynamic=dynamic)


def test_a_lost_confirmation_does_not_send_the_run_again() -> None:
    app = _app(tick=_every(1))
    clock = Clock(START)
    store = FlakyStore(clock)
    sends = Sends(clock)
    scheduler = make_scheduler(app, clock, store, sends)
    drive(scheduler, clock, START + 2.5)
    store.fail_confirm = True
    clock.now = START + 3
    with pytest.raises(BrokerError):
        scheduler.tick()  # sent, then the confirmation failed
    assert store.states()["tick"].pending == START + 3
    drive(scheduler, clock, START + 5.5)
    assert sends.dues() == [START + 1, START + 2, START + 3, START + 4, START + 5]


def test_a_failed_send_is_retried_with_the_same_id_and_backs_off() -> None:
    app = _app(tick=_every(1))
    clock = Clock(START)
    store = MemoryStore(clock)
    attempts: list[float] = []
    sends = Sends(clock)

    def flaky(entry: Entry, due: float, task_id: str) -> None:
        attempts.append(clock.now)
        if len(attempts) <= 2:
            raise BrokerError("broker down")
        sends(entry, due, task_id)

    leadership = Leadership(store, holder="a", ttl=3.0, monotonic=clock)
    scheduler = Scheduler(app, store, clock=clock, monotonic=clock, send=flaky,
                          leadership=leadership, max_interval=0.25)
    drive(scheduler, clock, START + 6.2)
    assert attempts[1] - attempts[0] >= 1.0  # not every pass: it backs off
    assert sends.dues() == [START + k for k in range(1, 7)]  # late, but none lost
    assert sends.items[0].task_id == run_id("tick", START + 1)


def test_a_run_waiting_for_a_retry_does_not_make_the_loop_spin() -> None:
    app = _app(tick=_every(1))
    clock = Clock(START)
    store = MemoryStore(clock)

    def down(entry: Entry, due: float, task_id: str) -> None:
        raise BrokerError("broker down")

    leadership = Leadership(store, holder="a", ttl=3.0, monotonic=clock)
    scheduler = Scheduler(app, store, clock=clock, monotonic=clock, send=down,
                          leadership=leadership, max_interval=0.25)
    drive(scheduler, clock, START + 1.0)  # the first run's send fails
    assert store.states()["tick"].pending == START + 1
    assert scheduler.tick() >= 0.2  # waits a loop interval, not 0


def test_a_long_catch_up_goes_on_in_the_next_pass_at_once() -> None:
    app = _app(tick=_every(0.01))
    clock = Clock(START)
    store = MemoryStore(clock)
    sends = Sends(clock)
    scheduler = make_scheduler(app, clock, store, sends)
    scheduler.tick()
    clock.now = START + 5  # 500 runs due: a leader took over late, within the window
    assert scheduler.tick() == 0.0  # a pass sends at most MAX_RUNS_PER_PASS of them
    while scheduler.tick() == 0.0:
        pass
    assert len(sends.items) == 500
