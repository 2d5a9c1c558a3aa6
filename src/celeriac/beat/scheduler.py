"""The beat loop: while this process leads, send every due run exactly once.

Each pass (``tick``) keeps the lease (``beat.leader``), picks up changed dynamic entries
and paused names (a version number read every pass), reads the run states and, for each
entry, decides its runs in due order:

1. **Record, then send, then confirm.** A run due at ``t`` is first recorded on the
   server as the entry's *pending* run, with the cursor moved to ``t``, by a
   compare-and-set guarded by the lease and its fencing token. Then it is sent, with a
   task id made from (entry, ``t``) (``run_id``), and the pending mark is cleared
   (confirmed). A run is never sent before it is recorded, so no two leaders can both
   decide to send it.
2. **A pending run is sent first.** A leader that finds a pending run (its predecessor
   died between recording and confirming, or a send failed) sends it again with the
   same task id before anything else. So a crash between recording and sending loses
   nothing; a crash in the few milliseconds between the broker accepting the message
   and the confirmation sends that run twice, with the same task id (the one window
   where a run can be sent twice; docs/periodic-tasks.md).
3. **Missed runs.** Runs whose due time passed while this process did not lead are
   sent in order when the oldest of them is less than ``MISSED_AFTER`` seconds late (a
   leader died and a follower took over: none is skipped). When it is older, no beat ran
   for a while, and the entry's ``missed`` policy decides: ``"skip"`` (the default)
   moves the cursor to now and sends nothing; ``"run_once"`` sends one run (with the
   due time of the first missed run) and moves the cursor to now.
4. **Paused entries** move their cursor past each due time without sending.

A new entry (or one whose schedule changed) starts at the first pass that sees it: its
anchor and cursor are that moment, so an interval's first run is one interval later (as
in Celery) and a crontab's is its next match.

The clock is injected (``clock``: Unix time, ``monotonic`` for the lease), so tests
run schedules across days and daylight-saving changes without waiting.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

from celeriac.beat.entry import Entry, static_entries
from celeriac.beat.leader import Leadership
from celeriac.beat.store import BeatStore, RunState, open_store
from celeriac.errors import describe
from celeriac.timezones import schedule_zone

if TYPE_CHECKING:
    from celeriac.app import App

logger = logging.getLogger("celeriac.beat")

MISSED_AFTER = 10.0  # seconds: a run later than this when first seen was missed
LATE_NOTE = 1.0  # seconds: a run sent this late says so in its log line
DEFAULT_LOOP_INTERVAL = 0.25  # seconds between passes (beat_max_loop_interval=0)
MAX_RUNS_PER_PASS = 100  # runs of one entry sent in one pass (a long catch-up continues)
ERROR_PAUSE = 1.0  # seconds after a pass failed on the server
SEND_RETRY_FIRST = 1.0  # seconds before sending a run whose send failed again, doubling
SEND_RETRY_MAX = 30.0

# The namespace of run ids: uuid5 of "<entry>\n<due>" (run_id).
RUN_NAMESPACE = uuid.UUID("5c1c5b1e-6f0a-4d67-9a55-0c0b3e7d1f2a")

Sender = Callable[[Entry, float, str], None]


def run_id(entry: str, due: float) -> str:
    """The task id of ``entry``'s run due at ``due``: the same in every beat process."""
    return str(uuid.uuid5(RUN_NAMESPACE, f"{entry}\n{due!r}"))


class Scheduler:
    """One beat process's scheduling loop (``run``), or one pass at a time (``tick``)."""

    def __init__(self, app: App, store: BeatStore | None = None, *,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 send: Sender | None = None, leadership: Leadership | None = None,
                 max_interval: float | None = None) -> None:
        app.finalize()  # on_after_configure: add_periodic_task receivers run now
        self.app = app
        self.zone: tzinfo = schedule_zone(app.conf.enable_utc, app.conf.timezone)
        self.static = static_entries(app.conf.beat_schedule, self.zone)
        self.store = store if store is not None else open_store(app)
        self.leadership = leadership or Leadership(self.store, monotonic=monotonic)
        self.clock = clock
        self._monotonic = monotonic
        self.send: Sender = send or self._send
        interval = app.conf.beat_max_loop_interval if max_interval is None else max_interval
        self.max_interval = interval or DEFAULT_LOOP_INTERVAL
        self.dynamic: dict[str, Entry] = {}
        self.paused: set[str] = set()
        self._version: int | None = None
        self.next_due: dict[str, float] = {}  # entry -> its next due time, after a pass
        self._unconfirmed: dict[str, float] = {}  # entry -> due time sent, not confirmed
        self._retry_at: dict[str, float] = {}  # entry -> monotonic time to send again
        self._retry_delay: dict[str, float] = {}

    @property
    def entries(self) -> dict[str, Entry]:
        """Static entries, and dynamic ones beside them (a static one wins a name)."""
        return {**self.dynamic, **self.static}

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Pass until ``stop`` is set; then give the lease up."""
        logger.info("beat %s starting: %d entr%s from beat_schedule, state in %s",
                    self.leadership.holder, len(self.static),
                    "y" if len(self.static) == 1 else "ies", self.store.where)
        try:
            while not stop.is_set():
                try:
                    pause = self.tick()
                except Exception as exc:  # the server is down: keep trying, never die
                    logger.warning("beat pass failed (retrying in %gs): %s", ERROR_PAUSE,
                                   describe(exc))
                    pause = ERROR_PAUSE
                stop.wait(pause)
        finally:
            self.leadership.release()
            self.store.close()

    def tick(self) -> float:
        """One pass; returns the seconds to wait before the next."""
        if not self.leadership.keep():
            return max(0.0, self.leadership.next_check() - self._monotonic())
        self._refresh()
        now = self.clock()
        states = self.store.states()
        behind = False  # an entry has more runs to catch up than one pass sends
        for name, entry in self.entries.items():
            if not self.leadership.valid():
                break
            behind |= self._advance(entry, states.get(name), now)
        if behind:
            return 0.0
        # Due times already past belong to runs waiting for a retry: not worth waking for.
        soonest = min((due for due in self.next_due.values() if due > now),
                      default=now + self.max_interval)
        lease_check = self.leadership.next_check() - self._monotonic()
        return max(0.0, min(soonest - self.clock(), lease_check, self.max_interval))

    def _refresh(self) -> None:
        """Read the dynamic entries and paused names again if they changed."""
        version = self.store.version()
        if version == self._version:
            return
        dynamic: dict[str, Entry] = {}
        for name, data in self.store.dynamic_entries().items():
            try:
                dynamic[name] = Entry.from_json(name, data)
            except Exception as exc:  # one bad stored entry must not stop the others
                logger.error("beat: dynamic entry %r cannot be read, skipping it: %s",
                             name, describe(exc))
        for name in set(dynamic) & set(self.static):
            logger.warning("beat: dynamic entry %r has the name of an entry in "
                           "beat_schedule, which wins", name)
        self.dynamic, self.paused, self._version = dynamic, self.store.paused(), version
        self.next_due = {name: due for name, due in self.next_due.items()
                         if name in self.entries}
        logger.info("beat: schedule now %d static and %d dynamic entries, %d paused",
                    len(self.static), len(dynamic), len(self.paused & set(self.entries)))

    # -- one entry ------------------------------------------------------------------------

    def _advance(self, entry: Entry, state: RunState | None, now: float) -> bool:
        """Decide ``entry``'s runs due by ``now``; True if more remain for the next pass."""
        lease = self.leadership.lease
        if lease is None:
            return False
        state = self._started(entry, state, now, lease)
        if state is not None and state.pending is not None:
            state = self._send_recorded(entry, state)
        for _ in range(MAX_RUNS_PER_PASS):
            if state is None:
                return False  # changed under us, or a send failed: a later pass retries
            due = entry.schedule.next_after(state.cursor, state.anchor, self.zone)
            self.next_due[entry.name] = due
            if due > now:
                return False
            new = self._decide(entry, state, due, now, lease[1])
            # A run is recorded only while the entry is (still) stored and not paused,
            # checked on the server in the same step: pause and remove act at once.
            if not self.leadership.valid() or not self.store.swap(
                    entry.name, state, new, lease, running=new.pending is not None,
                    dynamic=entry.dynamic):
                return False
            state = self._send_recorded(entry, new) if new.pending is not None else new
        return True

    def _started(self, entry: Entry, state: RunState | None, now: float,
                 lease: tuple[str, int]) -> RunState | None:
        """The entry's state; a new one (starting now) for a new or changed schedule."""
        if state is not None and state.key == entry.key:
            return state
        fresh = RunState(entry.key, anchor=now, cursor=now, token=lease[1])
        if not self.store.swap(entry.name, state, fresh, lease, dynamic=entry.dynamic):
            return None
        if state is not None:
            logger.info("beat: %s has a new schedule (%s); it starts now", entry.name,
                        entry.key)
        return fresh

    def _decide(self, entry: Entry, state: RunState, due: float, now: float,
                token: int) -> RunState:
        """The state after deciding the run due at ``due``: pending if it is to be sent."""
        if entry.name in self.paused:
            return dataclasses.replace(state, cursor=now, token=token)
        if now - due > MISSED_AFTER:
            send = entry.missed == "run_once"
            logger.warning("beat: %s missed its runs since %s (no beat ran); %s",
                           entry.name, _when(due), "sending one run now" if send
                           else "skipping them (missed='skip')")
            return dataclasses.replace(state, cursor=now, token=token,
                                       pending=due if send else None)
        return dataclasses.replace(state, cursor=due, pending=due, token=token)

    def _send_recorded(self, entry: Entry, state: RunState) -> RunState | None:
        """Send the pending run of ``state`` and confirm it; None if that failed."""
        due = state.pending
        assert due is not None
        if not self.leadership.valid():
            return None  # the lease may be a successor's by now: it sends this run
        if self._monotonic() < self._retry_at.get(entry.name, float("-inf")):
            return None  # its last send failed: wait before trying again
        task_id = run_id(entry.name, due)
        if self._unconfirmed.get(entry.name) != due:  # sent, but not yet confirmed
            try:
                self.send(entry, due, task_id)
            except Exception as exc:
                delay = min(SEND_RETRY_MAX, 2 * self._retry_delay.get(entry.name,
                                                                       SEND_RETRY_FIRST / 2))
                self._retry_delay[entry.name] = delay
                self._retry_at[entry.name] = self._monotonic() + delay
                logger.error("beat: sending %s (due %s) failed; retrying in %gs: %s",
                             entry.name, _when(due), delay, describe(exc))
                return None
            self._retry_delay.pop(entry.name, None)
            self._retry_at.pop(entry.name, None)
            # Remembered until confirmed: if the confirmation fails (the server is
            # unreachable), the next pass confirms without sending the run again.
            self._unconfirmed[entry.name] = due
        sent = dataclasses.replace(state, pending=None, last_due=due, sent_at=self.clock())
        # Not guarded by the lease: the run is sent, whoever leads now must know it.
        if not self.store.swap(entry.name, state, sent, None):
            self._unconfirmed.pop(entry.name, None)  # changed under us: read it again
            return None
        self._unconfirmed.pop(entry.name, None)
        late = sent.sent_at - due if sent.sent_at is not None else 0.0
        logger.info("beat: sent %s (%s) due %s, id %s%s", entry.name, entry.task,
                    _when(due), task_id,
                    f" ({late:.1f}s late: caught up)" if late >= LATE_NOTE else "")
        return sent

    def _send(self, entry: Entry, due: float, task_id: str) -> None:
        options: dict[str, Any] = dict(entry.options)
        options["headers"] = {**options.get("headers", {}), "beat_entry": entry.name,
                              "beat_due": due}
        self.app.send_task(entry.task, entry.args, entry.kwargs, task_id=task_id, **options)


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
