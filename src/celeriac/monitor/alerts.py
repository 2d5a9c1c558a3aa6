"""Queue alerts: ``queue_alerts`` thresholds checked against queue readings.

``AlertChecker`` is what ``celeriac monitor`` runs, and what the exporter and the
dashboard embed: ``check_once(now)`` reads the queues once and returns what changed,
``run()`` does it every ``queue_alerts_interval`` seconds, and ``firing`` is the state
(every alert firing now, with its latest value) for a metric or a table.

Each (queue, metric) pair is an alert: ``length`` (ready messages) against
``max_length``, ``age`` (seconds the oldest ready message has waited) against
``max_age``. It fires when the value is above the threshold on a check, and resolves
when the value is at or below ``recover_at`` (0.8 by default) times the threshold
(``celeriac.monitor.rules``): between the two it keeps its state, so a queue hovering
at its threshold does not flap. Each change goes to the log (firing at ERROR, resolved
at WARNING, with queue, value and threshold) and to every ``alert_webhooks`` URL as a
JSON POST (``celeriac.monitor.webhooks``), shaped by ``AlertChange.payload``.

An age the broker cannot tell (RabbitMQ cannot peek without redelivering) is not
checked while messages are ready; an empty queue's age is 0.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from celeriac.errors import BrokerError, describe
from celeriac.logs import FIELDS
from celeriac.monitor.queues import read_queues
from celeriac.monitor.rules import (
    EVERY_QUEUE,
    METRICS,
    QueueRule,
    check_queue_alerts,
    rule_of,
    rules_for,
)
from celeriac.monitor.webhooks import WebhookSender
from celeriac.routing import default_queues
from celeriac.urls import safe_url

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.brokers.base import QueueStats

logger = logging.getLogger("celeriac.monitor")

Status = Literal["firing", "resolved"]


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert firing now: since when, and the value its last check measured."""

    queue: str
    metric: str  # "length" or "age"
    value: float
    threshold: float
    since: float  # Unix time it fired


@dataclass(frozen=True, slots=True)
class AlertChange:
    """An alert that fired or resolved on a check."""

    status: Status
    queue: str
    metric: str
    value: float
    threshold: float
    at: float  # Unix time of the check
    recover_at: float = 0.8

    def describe(self) -> str:
        """One line for the log and a chat message."""
        limit = METRICS[self.metric]
        what = f"queue {self.queue!r} {self.metric} {_shown(self.metric, self.value)}"
        if self.status == "firing":
            return f"{what} is above its {limit} {_shown(self.metric, self.threshold)}"
        back = _shown(self.metric, self.threshold * self.recover_at)
        return (f"{what} is back at or below {back} ({self.recover_at:.0%} of its {limit} "
                f"{_shown(self.metric, self.threshold)})")

    def payload(self, app: str, broker: str) -> dict[str, Any]:
        """The webhook JSON; ``broker`` is a display URL (no password)."""
        exact = self.metric == "length"  # counts are whole numbers, ages seconds
        return {"status": self.status, "queue": self.queue, "metric": self.metric,
                "value": int(self.value) if exact else round(self.value, 3),
                "threshold": self.threshold,
                "at": datetime.fromtimestamp(self.at, UTC).isoformat(),
                "timestamp": self.at, "app": app, "broker": broker,
                # Chat webhooks (Slack, Mattermost) show a "text" field as it is.
                "text": f"[{self.status.upper()}] {app}: {self.describe()}"}


class AlertChecker:
    """Checks an app's ``queue_alerts`` against its broker's queues."""

    def __init__(self, app: App, *, rules: Mapping[str, Mapping[str, float]] | None = None,
                 webhooks: Sequence[str] | None = None, interval: float | None = None,
                 sender: WebhookSender | None = None) -> None:
        self.app = app
        self.rules: dict[str, QueueRule] = rules_for(  # given rules are checked as settings
            app.conf.queue_alerts if rules is None else check_queue_alerts("rules", rules))
        self.interval = app.conf.queue_alerts_interval if interval is None else interval
        self.sender = sender or WebhookSender(
            app.conf.alert_webhooks if webhooks is None else webhooks)
        self.broker_display = safe_url(app.conf.effective_broker_url)
        self._firing: dict[tuple[str, str], Alert] = {}

    @property
    def firing(self) -> dict[tuple[str, str], Alert]:
        """Every alert firing now, by (queue, metric)."""
        return dict(self._firing)

    def watched_queues(self) -> list[str]:
        """The queues read on every check (with ``"*"``, every queue the broker knows too)."""
        declared = default_queues(self.app.conf.task_queues, self.app.conf.task_default_queue)
        named = [queue for queue in self.rules if queue != EVERY_QUEUE]
        firing = [queue for queue, _ in self._firing]  # read until they resolve
        return list(dict.fromkeys([*named, *declared, *firing]))

    async def check_once(self, now: float | None = None) -> list[AlertChange]:
        """Read the queues once; log and post what fired or resolved, and return it."""
        broker = await self.app._connected_broker()
        stats = await read_queues(broker, self.watched_queues(),
                                  every=EVERY_QUEUE in self.rules)
        return self.evaluate(stats, time.time() if now is None else now)

    def evaluate(self, stats: Iterable[QueueStats], now: float,
                 announce: bool = True) -> list[AlertChange]:
        """Apply readings taken elsewhere (the exporter's, the dashboard's) to the alerts;
        with ``announce`` off the changes are only returned (a live table shows them),
        not logged nor posted. Call it on a running event loop (webhooks are queued
        there)."""
        changes: list[AlertChange] = []
        for reading in stats:
            rule = rule_of(self.rules, reading.queue)
            if rule is None:
                continue
            for metric in METRICS:
                change = self._check(rule, reading, metric, now)
                if change is not None:
                    changes.append(change)
        for change in changes if announce else ():
            self._announce(change)
        return changes

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Check every ``interval`` seconds until ``stop`` is set (or the task cancelled):
        the one loop of ``celeriac monitor`` and the exporter (``run_until``). A
        broker that cannot be read is logged and tried again on the next check; so is a
        check that fails for any other reason (with its traceback: a bug)."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.check_once()
            except BrokerError as exc:
                logger.warning("cannot read the queues on %s: %s; next check in %.1f s",
                               self.broker_display, describe(exc), self.interval)
            except Exception:
                logger.exception("the queue alert check failed; next check in %.1f s",
                                 self.interval)
            left = self.interval - (time.monotonic() - started)
            if left > 0:
                try:
                    async with asyncio.timeout(left):
                        await stop.wait()
                except TimeoutError:
                    pass

    def run_until(self, stopping: threading.Event) -> None:
        """``run`` on the app's own loop (where its connections and the webhooks' client
        live), blocking this thread until ``stopping`` is set, from another thread or a
        signal handler: how ``celeriac monitor`` and the exporter check."""
        loop = self.app._bridge.loop
        stopped = asyncio.Event()
        running = asyncio.run_coroutine_threadsafe(self.run(stopped), loop)
        stopping.wait()
        loop.call_soon_threadsafe(stopped.set)
        running.result()

    async def aclose(self, flush: float = 0.0) -> None:
        """Stop posting webhooks, after up to ``flush`` seconds for those still queued."""
        if flush > 0:
            await self.sender.flush(flush)
        await self.sender.aclose()

    def _check(self, rule: QueueRule, reading: QueueStats, metric: str,
               now: float) -> AlertChange | None:
        threshold = rule.threshold(metric)
        key = (reading.queue, metric)
        if threshold is None:
            return None
        value = _value(reading, metric)
        if value is None:  # the broker cannot tell: keep the state as it is
            return None
        alert = self._firing.get(key)
        if alert is None:
            if not rule.fires(value, threshold):
                return None
            self._firing[key] = Alert(reading.queue, metric, value, threshold, now)
            return AlertChange("firing", reading.queue, metric, value, threshold, now,
                               rule.recover_at)
        if not rule.resolves(value, threshold):
            self._firing[key] = Alert(reading.queue, metric, value, threshold, alert.since)
            return None
        del self._firing[key]
        return AlertChange("resolved", reading.queue, metric, value, threshold, now,
                           rule.recover_at)

    def _announce(self, change: AlertChange) -> None:
        fields = {FIELDS: {"alert": change.status, "queue": change.queue,
                           "metric": change.metric, "value": change.value,
                           "threshold": change.threshold}}  # for JSON log lines
        if change.status == "firing":
            logger.error("ALERT %s", change.describe(), extra=fields)
        else:
            logger.warning("RESOLVED %s", change.describe(), extra=fields)
        if self.sender.urls:
            self.sender.post(change.payload(self.app.main, self.broker_display))


def _value(reading: QueueStats, metric: str) -> float | None:
    if metric == "length":
        return float(reading.ready)
    if reading.ready == 0:
        return 0.0
    return reading.oldest_age


def _shown(metric: str, value: float) -> str:
    if metric == "age":
        return f"{value:,.1f} s"
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"  # 80% of 2: 1.6
