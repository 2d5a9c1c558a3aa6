"""``celeriac -A proj queues``: what waits in each queue; ``--dead`` lists the dead letters,
and ``--dead --requeue``/``--purge`` send chosen ones back or delete them; ``--watch``
is a live table (``cli/watch.py``)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING

import click
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from celeriac import dead_letters
from celeriac.brokers.base import DeadLetter, QueueStats
from celeriac.cli.common import client_app, parse_queues, run
from celeriac.cli.watch import watch_queues
from celeriac.routing import default_queues
from celeriac.urls import safe_url

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.cli.main import AppSpec

# The broker interface lists dead letters but does not count them; counting scans at
# most this many, and the table says so when there are more.
DEAD_LETTER_SCAN = dead_letters.DEAD_LETTER_SCAN


@click.command("queues", short_help="Show what waits in each queue; --dead lists dead letters.")
@click.option("-Q", "--queues", "names", help="Only these comma-separated queues.")
@click.option("--dead", is_flag=True, help="List the dead letters and why they died.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="With --dead: how many of the newest to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
@click.option("--requeue", is_flag=True,
              help="With --dead: send the chosen dead letters back to their queues.")
@click.option("--purge", is_flag=True, help="With --dead: delete the chosen dead letters.")
@click.option("--id", "ids", multiple=True, metavar="TASK_ID",
              help="With --requeue/--purge: this dead letter (repeatable).")
@click.option("--task", "task_name", metavar="NAME",
              help="With --requeue/--purge: every dead letter of this task.")
@click.option("--all", "every", is_flag=True,
              help="With --requeue/--purge: every dead letter.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--watch", is_flag=True,
              help="A live table, with the oldest message's age and the alert state.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              metavar="SECONDS", help="With --watch: seconds between refreshes.")
@click.pass_obj
def queues_command(spec: AppSpec, names: str | None, dead: bool, limit: int, as_json: bool,
                   requeue: bool, purge: bool, ids: tuple[str, ...], task_name: str | None,
                   every: bool, force: bool, watch: bool, interval: float) -> None:
    """Show each queue: ready, scheduled, in flight and dead-lettered messages.

    Every queue the app declares is shown, empty ones too. With --dead, the dead letters
    and why they died; --requeue or --purge then act on those chosen with --id, --task
    or --all.
    """
    if (requeue or purge) and not dead:
        raise click.UsageError("--requeue and --purge act on dead letters: add --dead")
    if requeue and purge:
        raise click.UsageError("choose --requeue or --purge, not both")
    if (requeue or purge) and (bool(ids) + (task_name is not None) + every) != 1:
        raise click.UsageError("choose the dead letters with one of --id, --task or --all")
    if watch and (dead or as_json):
        raise click.UsageError("--watch shows the live table: leave out --dead and --json")
    console = Console(highlight=False)
    with client_app(spec) as app:
        if watch:
            watch_queues(app, parse_queues(names), interval, console)
            return
        url = safe_url(app.conf.effective_broker_url)
        if requeue or purge:
            _act_on_dead_letters(app, url, requeue, set(ids), task_name, force)
            return
        if dead:
            letters = run(app, _dead_letters(app, limit))
            if as_json:
                click.echo(json.dumps([_letter_json(app, letter) for letter in letters]))
            else:
                console.print(_dead_list(app, letters, url), soft_wrap=True)
            return
        chosen = parse_queues(names) or None
        stats, letters = run(app, _stats(app, chosen))
        rows = _rows(stats, letters, chosen or _declared(app), filtered=chosen is not None)
        if as_json:
            click.echo(json.dumps([{"queue": name, "ready": row.ready,
                                    "scheduled": row.scheduled, "in_flight": row.in_flight,
                                    "dead_letters": dead_count,
                                    "oldest_age": row.oldest_age}
                                   for name, (row, dead_count) in sorted(rows.items())]))
            return
        more = "+" if len(letters) >= DEAD_LETTER_SCAN else ""  # the scan stopped early
        console.print(_stats_table(rows, url, more))


def _declared(app: App) -> list[str]:
    """The queues the app declares (task_queues, or the default queue)."""
    return list(default_queues(app.conf.task_queues, app.conf.task_default_queue))


def _rows(stats: list[QueueStats], letters: list[DeadLetter], known: list[str],
          filtered: bool) -> dict[str, tuple[QueueStats, int]]:
    """Each queue's counts and dead letters; known queues are shown even when empty."""
    dead = Counter(letter.queue for letter in letters)
    rows = {s.queue: s for s in stats}
    extra = set(known) if filtered else set(known) | set(dead)  # a queue may be known
    for queue in extra - rows.keys():                           # only from dead letters
        rows[queue] = QueueStats(queue, 0, 0, 0)
    # The broker's own count when it keeps one (exact), else the scan's.
    return {name: (row, dead[name] if row.dead_letters is None else row.dead_letters)
            for name, row in rows.items()}


def _act_on_dead_letters(app: App, url: str, requeue: bool, ids: set[str],
                         task_name: str | None, force: bool) -> None:
    choice = dead_letters.Choice(frozenset(ids), task_name, not ids and task_name is None)

    async def chosen_letters() -> list[DeadLetter]:
        return await dead_letters.choose(app, await app._connected_broker(), choice)

    chosen = run(app, chosen_letters())
    verb = "Requeue" if requeue else "Delete"
    if not chosen:
        click.echo("No dead letter matches: nothing to do.")
        return
    if not force:
        click.confirm(f"{verb} {_plural(len(chosen), 'dead letter')} on {url}?", abort=True)
    if requeue:
        run(app, _requeue(app, chosen))
        click.echo(f"Requeued {_plural(len(chosen), 'dead letter')} to their queues.")
    else:
        removed = run(app, _remove(app, chosen))
        click.echo(f"Deleted {_plural(removed, 'dead letter')}.")


async def _requeue(app: App, letters: list[DeadLetter]) -> None:
    await dead_letters.requeue(app, await app._connected_broker(), letters)


async def _remove(app: App, letters: list[DeadLetter]) -> int:
    return await dead_letters.remove(await app._connected_broker(),
                                     [letter.id for letter in letters])


def _letter_json(app: App, letter: DeadLetter) -> dict[str, object]:
    return {"id": letter.id, "queue": letter.queue, "task": dead_letters.task_name(app, letter),
            "reason": letter.reason, "dead_at": letter.dead_at, "size": len(letter.body)}


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


async def _stats(app: App, names: list[str] | None
                 ) -> tuple[list[QueueStats], list[DeadLetter]]:
    broker = await app._connected_broker()
    return await broker.queue_stats(names), await broker.dead_letters(DEAD_LETTER_SCAN)


async def _dead_letters(app: App, limit: int) -> list[DeadLetter]:
    broker = await app._connected_broker()
    return await broker.dead_letters(limit)


def _stats_table(rows: dict[str, tuple[QueueStats, int]], url: str, more: str) -> Table:
    table = Table(title=f"Queues on {url}", title_justify="left")
    table.add_column("Queue")
    for heading in ("Ready", "Scheduled", "In flight", "Dead letters"):
        table.add_column(heading, justify="right")
    for name in sorted(rows):
        row, dead = rows[name]
        table.add_row(Text(name), f"{row.ready:,}", f"{row.scheduled:,}",
                      f"{row.in_flight:,}", _dead_cell(dead, more))
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
                                   (dead_letters.task_name(app, letter), "cyan")))
        lines.append(Text(f"  queue {letter.queue}, dead since {when:%Y-%m-%d %H:%M:%S}",
                          style="dim"))
        lines.append(Text(f"  {letter.reason}", style="red"))
    return Group(*lines)
