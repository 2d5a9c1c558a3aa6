"""Counting what happened to every task the demo sent, from the stores, never by guessing.

A task is accounted for when the result backend holds its final state (SUCCESS or
FAILURE) or the broker holds it as a dead letter. Each poll reads the results of all
the tasks not yet accounted for with one ``load_many``, the dead letters with one call,
and the queue's counts with one more.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field

from celeriac import states
from celeriac.app import App
from celeriac.brokers.base import QueueStats
from celeriac.outcome import Outcome

RATE_WINDOW = 2.0  # seconds of history behind the "tasks/s now" figure


@dataclass(slots=True)
class Sent:
    kind: str
    sent_at: float
    eta: float | None


@dataclass
class Tally:
    """What happened to the tasks of one kind."""

    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0  # tasks retried at least once, whatever their end
    dead: int = 0
    early: int = 0  # tasks that started before their ETA (should stay 0)
    latencies: list[float] = field(default_factory=list)  # sent -> final, seconds

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.dead

    def add(self, other: Tally) -> None:
        self.sent += other.sent
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.retried += other.retried
        self.dead += other.dead
        self.early += other.early
        self.latencies += other.latencies

    def median_latency(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None


class Tracker:
    def __init__(self, app: App, kinds: list[str]) -> None:
        self.app = app
        self.tallies = {kind: Tally() for kind in kinds}
        self.pending: dict[str, Sent] = {}
        self.queue = QueueStats(app.conf.task_default_queue, 0, 0, 0)
        self.first_sent: float | None = None
        self.last_done: float | None = None
        self._retried: set[str] = set()
        self._history: deque[tuple[float, int]] = deque()

    # -- the totals the display shows -----------------------------------------------------

    @property
    def total(self) -> Tally:
        total = Tally()
        for tally in self.tallies.values():
            total.add(tally)
        return total

    @property
    def done(self) -> int:
        return sum(tally.done for tally in self.tallies.values())

    @property
    def finished(self) -> bool:
        return not self.pending

    def rate_now(self) -> float:
        """Tasks accounted for per second over the last few seconds."""
        if len(self._history) < 2:
            return 0.0
        (t0, done0), (t1, done1) = self._history[0], self._history[-1]
        return (done1 - done0) / (t1 - t0) if t1 > t0 else 0.0

    # -- recording ------------------------------------------------------------------------

    def sent(self, task_id: str, kind: str, eta: float | None) -> None:
        now = time.time()
        if self.first_sent is None:
            self.first_sent = now
        self.pending[task_id] = Sent(kind, now, eta)
        self.tallies[kind].sent += 1

    async def poll(self) -> None:
        """Read the stores once and account for every task that has finished since."""
        broker = await self.app._connected_broker()
        if self.pending:
            await self._poll_results()
        if self.pending:
            await self._poll_dead_letters()
        self.queue = (await broker.queue_stats([self.queue.queue]))[0]
        self._remember_rate()

    async def _poll_results(self) -> None:
        backend = await self.app._connected_backend()
        for task_id, data in (await backend.load_many(list(self.pending))).items():
            self._record_outcome(task_id, self.app.decode_outcome(data))

    def _record_outcome(self, task_id: str, outcome: Outcome) -> None:
        sent = self.pending[task_id]
        tally = self.tallies[sent.kind]
        if (outcome.state == states.RETRY or outcome.retries) and task_id not in self._retried:
            self._retried.add(task_id)
            tally.retried += 1
        if not outcome.ready:
            return
        if outcome.state == states.SUCCESS:
            tally.succeeded += 1
            if sent.eta is not None and isinstance(outcome.result, float) \
                    and outcome.result < sent.eta:
                tally.early += 1  # send_reminder returns the time it started
        else:
            tally.failed += 1
        self._finish(task_id, tally, outcome.date_done or time.time())

    async def _poll_dead_letters(self) -> None:
        broker = await self.app._connected_broker()
        limit = max(100, sum(tally.sent for tally in self.tallies.values()))
        for letter in await broker.dead_letters(limit):
            if letter.id in self.pending:
                tally = self.tallies[self.pending[letter.id].kind]
                tally.dead += 1
                self._finish(letter.id, tally, letter.dead_at)

    def _finish(self, task_id: str, tally: Tally, done_at: float) -> None:
        sent = self.pending.pop(task_id)
        self._retried.discard(task_id)
        tally.latencies.append(max(0.0, done_at - sent.sent_at))
        self.last_done = max(self.last_done or done_at, done_at)

    def _remember_rate(self) -> None:
        now = time.monotonic()
        self._history.append((now, self.done))
        while len(self._history) > 2 and now - self._history[0][0] > RATE_WINDOW:
            self._history.popleft()
