"""``celeriac -A proj beat``: run beat; ``beat list|add|remove|pause|resume``: change the
periodic tasks kept on the server (``app.beat``), picked up by the leader within a
second.

Any number of ``celeriac beat`` processes (and ``worker -B`` nodes) may run: one leads,
the others wait to take over (docs/periodic-tasks.md). SIGTERM or SIGINT stops beat
cleanly: it gives its lease up, so a follower takes over at once.
"""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from celeriac import __version__
from celeriac.beat.dynamic import EntryInfo
from celeriac.beat.scheduler import Scheduler
from celeriac.beat.schedules import Schedule, crontab
from celeriac.cli.call import _json_array, _json_object
from celeriac.cli.common import client_app
from celeriac.logs import configure_logging
from celeriac.urls import display_url

if TYPE_CHECKING:
    from celeriac.cli.main import AppSpec


@click.group("beat", invoke_without_command=True)
@click.option("-l", "--loglevel", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                                case_sensitive=False))
@click.option("--max-interval", type=click.FloatRange(min=0, min_open=True),
              help="Longest sleep between passes (beat_max_loop_interval).")
@click.pass_context
def beat_command(ctx: click.Context, loglevel: str, max_interval: float | None) -> None:
    """Run beat: send periodic tasks when due (or manage them, with a subcommand)."""
    if ctx.invoked_subcommand is not None:
        return
    spec: AppSpec = ctx.obj
    configure_logging(loglevel)
    app = spec.load()
    scheduler = Scheduler(app, max_interval=max_interval)
    click.echo(f"celeriac {__version__} beat {scheduler.leadership.holder}\n"
               f"  app:      {app.main} ({spec.spec})\n"
               f"  broker:   {display_url(app.conf.effective_broker_url)}\n"
               f"  state:    {scheduler.store.where}\n"
               f"  entries:  {len(scheduler.static)} in beat_schedule", err=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    try:
        scheduler.run(stop)
    finally:
        app.close()


def _schedule(every: float | None, cron: str | None) -> Schedule | float:
    if (every is None) == (cron is None):
        raise click.UsageError("give the schedule as --every SECONDS or --crontab "
                               "'MIN HOUR DAY_OF_MONTH MONTH DAY_OF_WEEK' (one of them)")
    if cron is not None:
        try:
            return crontab.from_string(cron)
        except (ValueError, TypeError) as exc:
            raise click.BadParameter(str(exc), param_hint="--crontab") from None
    assert every is not None
    return every


@beat_command.command("add")
@click.argument("name")
@click.argument("task")
@click.option("--every", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Run every this many seconds.")
@click.option("--crontab", "cron", metavar="'M H DoM MoY DoW'",
              help="Run at these wall-clock times, e.g. '*/15 9-17 * * mon-fri'.")
@click.option("-a", "--args", "args", default="[]", callback=_json_array,
              help="Positional arguments as a JSON array.")
@click.option("-k", "--kwargs", "kwargs", default="{}", callback=_json_object,
              help="Keyword arguments as a JSON object.")
@click.option("--queue", help="Send to this queue.")
@click.option("--priority", type=click.IntRange(0, 255), help="Message priority.")
@click.option("--expires", type=click.FloatRange(min=0),
              help="Revoke a run that has not started within this many seconds.")
@click.option("--missed", type=click.Choice(["skip", "run_once"]), default="skip",
              show_default=True, help="Runs missed while no beat ran: skip, or one run.")
@click.pass_obj
def add_command(spec: AppSpec, name: str, task: str, every: float | None, cron: str | None,
                args: list[Any], kwargs: dict[str, Any], queue: str | None,
                priority: int | None, expires: float | None, missed: str) -> None:
    """Add (or replace) the periodic task NAME sending TASK."""
    schedule = _schedule(every, cron)
    options = {key: value for key, value in
               (("queue", queue), ("priority", priority), ("expires", expires))
               if value is not None}
    with client_app(spec) as app:
        entry = app.beat.add(name, task, schedule, args, kwargs, options, missed)
        click.echo(f"added {entry.name}: {entry.task} {entry.schedule.text}")


@beat_command.command("remove")
@click.argument("name")
@click.pass_obj
def remove_command(spec: AppSpec, name: str) -> None:
    """Remove the dynamic periodic task NAME."""
    with client_app(spec) as app:
        if not app.beat.remove(name):
            raise click.ClickException(f"there is no dynamic periodic task named {name!r}")
        click.echo(f"removed {name}")


@beat_command.command("pause")
@click.argument("name")
@click.pass_obj
def pause_command(spec: AppSpec, name: str) -> None:
    """Stop sending NAME's runs until resumed."""
    with client_app(spec) as app:
        app.beat.pause(name)
        click.echo(f"paused {name}")


@beat_command.command("resume")
@click.argument("name")
@click.pass_obj
def resume_command(spec: AppSpec, name: str) -> None:
    """Send NAME's runs again, from its next due time."""
    with client_app(spec) as app:
        app.beat.resume(name)
        click.echo(f"resumed {name}")


@beat_command.command("list")
@click.pass_obj
def list_command(spec: AppSpec) -> None:
    """Every periodic task, its schedule, last run and next due time."""
    with client_app(spec) as app:
        infos = app.beat.list()
        leader = app.beat.leader()
        click.echo(f"leader: {leader.holder} (token {leader.token})" if leader
                   else "leader: none (no beat is running)")
        for info in infos:
            click.echo(_line(info))


def _line(info: EntryInfo) -> str:
    state = info.state
    last = _time(state.last_due) if state is not None and state.last_due else "never"
    status = "paused" if info.paused else f"next {_time(info.next_due)}"
    return (f"{info.name}  {info.entry.task}  {info.entry.schedule.text}  [{info.source}]  "
            f"last {last}  {status}")


def _time(moment: float | None) -> str:
    if moment is None:
        return "-"
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")
