"""``celeriac -A proj queues``: what waits in each queue; ``--dead`` lists the dead letters."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING

import click
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from celeriac.brokers.base import DeadLetter, QueueStats
from celeriac.cli.common import client_app, parse_queues, run
from celeriac.urls import safe_url

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.cli.main import AppSpec

# The broker interface lists dead letters but does not count them; counting scans at
# most this many, and the table says so when there are more.
DEAD_LETTER_SCAN = 10_000


@click.command("queues", short_help="Show what waits in each queue; --dead lists dead letters.")
@click.option("-Q", "--queues", "names", help="Only these comma-separated queues.")
@click.option("--dead", is_flag=True, help="List the dead letters and why they died.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="With --dead: how many of the newest to list.")
@click.pass_obj
def queues_command(spec: AppSpec, names: str | None, dead: bool, limit: int) -> None:
    """Show each queue: ready, scheduled, in flight and dead-lettered messages."""
    console = Console(highlight=False)
    with client_app(spec) as app:
        url = safe_url(app.conf.effective_broker_url)
        if dead:
            letters = run(app, _dead_letters(app, limit))
            console.print(_dead_list(app, letters, url), soft_wrap=True)
            return
        stats, letters = run(app, _stats(app, parse_queues(names) or None))
        if not stats and not letters:
            console.print(f"No queues yet on {url}.", markup=False, soft_wrap=True)
            return
        console.print(_stats_table(stats, letters, url, filtered=names is not None))


async def _stats(app: App, names: list[str] | None
                 ) -> tuple[list[QueueStats], list[DeadLetter]]:
    broker = await app._connected_broker()
    return await broker.queue_stats(names), await broker.dead_letters(DEAD_LETTER_SCAN)


async def _dead_letters(app: App, limit: int) -> list[DeadLetter]:
    broker = await app._connected_broker()
    return await broker.dead_letters(limit)


def _stats_table(stats: list[QueueStats], letters: list[DeadLetter], url: str,
                 filtered: bool) -> Table:
    dead = Counter(letter.queue for letter in letters)
    more = "+" if len(letters) >= DEAD_LETTER_SCAN else ""  # the scan stopped early
    rows = {s.queue: s for s in stats}
    if not filtered:  # a queue may be known only from its dead letters
        for queue in dead.keys() - rows.keys():
            rows[queue] = QueueStats(queue, 0, 0, 0)
    table = Table(title=f"Queues on {url}", title_justify="left")
    table.add_column("Queue")
    for heading in ("Ready", "Scheduled", "In flight", "Dead letters"):
        table.add_column(heading, justify="right")
    for name in sorted(rows):
        row = rows[name]
        table.add_row(Text(name), f"{row.ready:,}", f"{row.scheduled:,}",
                      f"{row.in_flight:,}", _dead_cell(dead[name], more))
    return table


def _dead_cell(count: int, more: str) -> Text:
    return Text(f"{count:,}{more}", style="red" if count else "")


def _dead_list(app: App, letters: list[DeadLetter], url: str) -> Group:
    """One entry per letter rather than a table: reasons are long and must read whole."""
    lines = [Text(f"Dead letters on {url}: {len(letters)} shown, newest first"
                  if letters else f"No dead letters on {url}.", style="italic")]
    for letter in letters:
        when = datetime.fromtimestamp(letter.dead_at).astimezone()
        lines.append(Text.assemble("\n", (letter.id, "bold"), "  ",
                                   (_task_name(app, letter), "cyan")))
        lines.append(Text(f"  queue {letter.queue}, dead since {when:%Y-%m-%d %H:%M:%S}",
                          style="dim"))
        lines.append(Text(f"  {letter.reason}", style="red"))
    return Group(*lines)


def _task_name(app: App, letter: DeadLetter) -> str:
    """The task a dead letter was for; many were dead-lettered for not decoding."""
    try:
        return app.decode_message(letter.body).task
    except Exception:  # any failure to read it is itself the answer
        return "(undecodable)"
