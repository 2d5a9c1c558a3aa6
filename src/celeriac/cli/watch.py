"""``celeriac queues --watch``: a live table of the queues, refreshed every interval.

Each row: ready, scheduled, in flight, dead letters, the oldest ready message's age and
the queue's alert state under ``queue_alerts`` (the same ``AlertChecker`` as
``celeriac monitor``, without webhooks: watching a table must not page anyone).
Ctrl-C ends it with exit status 0. When the output is not a terminal (piped, or to a
file) each refresh prints a new table instead of redrawing one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from celeriac.cli.common import run
from celeriac.errors import BrokerError
from celeriac.monitor.alerts import AlertChecker
from celeriac.monitor.queues import read_queues
from celeriac.monitor.rules import rule_of

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.brokers.base import QueueStats


def watch_queues(app: App, names: list[str], interval: float, console: Console) -> None:
    """Refresh the table every ``interval`` seconds until Ctrl-C."""
    checker = AlertChecker(app, webhooks=())
    pause = threading.Event()  # never set: an interruptible sleep
    try:
        if not console.is_terminal:  # piped or to a file: one table per refresh, in order
            while True:
                started = time.monotonic()
                console.print(_frame(app, checker, names))
                console.file.flush()
                pause.wait(max(0.0, interval - (time.monotonic() - started)))
        with Live(Text("reading the queues..."), console=console, auto_refresh=False,
                  transient=False) as live:
            while True:
                started = time.monotonic()
                live.update(_frame(app, checker, names), refresh=True)
                pause.wait(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        pass  # the last table stays on screen; exit status 0
    finally:
        run(app, checker.aclose())


def _frame(app: App, checker: AlertChecker, names: list[str]) -> Table | Group:
    try:
        stats = run(app, _read(app, checker, names))
    except BrokerError as exc:  # shown in place of the table; the next refresh retries
        return Group(Text(f"cannot read the queues on {checker.broker_display}: {exc}",
                          style="red"))
    return _table(checker, stats)


async def _read(app: App, checker: AlertChecker, names: list[str]) -> list[QueueStats]:
    broker = await app._connected_broker()
    stats = await read_queues(broker, names or checker.watched_queues(),
                              every=not names, dead_letters=True)
    checker.evaluate(stats, time.time(), announce=False)  # log lines would tear the table
    return stats


def _table(checker: AlertChecker, stats: list[QueueStats]) -> Table:
    table = Table(title=f"Queues on {checker.broker_display}  "
                        f"({time.strftime('%H:%M:%S')}, Ctrl-C to stop)",
                  title_justify="left")
    table.add_column("Queue")
    for heading in ("Ready", "Scheduled", "In flight", "Dead letters", "Oldest"):
        table.add_column(heading, justify="right")
    table.add_column("Alert")
    firing = checker.firing
    for row in stats:
        table.add_row(Text(row.queue), f"{row.ready:,}", f"{row.scheduled:,}",
                      f"{row.in_flight:,}", _dead(row.dead_letters), _age(row),
                      _alert(checker, row.queue, firing))
    return table


def _dead(count: int | None) -> Text:
    if count is None:
        return Text("?", style="dim")
    return Text(f"{count:,}", style="red" if count else "")


def _age(row: QueueStats) -> Text:
    if row.oldest_age is None:
        return Text("-" if row.ready == 0 else "?", style="dim")
    return Text(f"{row.oldest_age:,.1f} s")


def _alert(checker: AlertChecker, queue: str, firing: Collection[tuple[str, str]]) -> Text:
    metrics = [metric for (name, metric) in firing if name == queue]
    if metrics:
        return Text("FIRING " + ", ".join(sorted(metrics)), style="bold red")
    if rule_of(checker.rules, queue) is None:
        return Text("-", style="dim")
    return Text("ok", style="green")
