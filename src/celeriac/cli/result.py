"""``celeriac -A proj result TASK_ID``: show a task's state, and its value or its error."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from celeriac import states
from celeriac.brokers.base import DeadLetter
from celeriac.cli.common import client_app, run
from celeriac.outcome import Outcome

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.cli.main import AppSpec

EXIT_FAILED = 1
EXIT_NOTHING_STORED = 3

STATE_COLOURS = {states.SUCCESS: "green", states.FAILURE: "red", states.RETRY: "yellow",
                 states.REVOKED: "magenta", states.STARTED: "cyan"}


@click.command("result", short_help="Show the state of a task and its result or error.")
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Wait until the task has finished.")
@click.option("--timeout", type=click.FloatRange(min=0),
              help="Wait at most this many seconds (implies --wait).")
@click.pass_obj
def result_command(spec: AppSpec, task_id: str, wait: bool, timeout: float | None) -> None:
    """Show the state of TASK_ID and its result, or its exception and traceback.

    Exit status: 0 when the task succeeded (or is still on its way), 1 when it failed,
    was revoked or was dead-lettered (never ran: the reason is shown), 3 when nothing is
    known of TASK_ID (an unknown or expired id, or a task not started yet), so that
    scripts can act on it.
    """
    with client_app(spec) as app:
        outcome = run(app, _load(app, task_id, wait or timeout is not None, timeout))
        letter = None if outcome is not None else run(app, _dead_letter(app, task_id))
        _show(task_id, outcome, letter)
        if timeout is not None and letter is None and (outcome is None or not outcome.ready):
            raise click.ClickException(f"task {task_id} did not finish within {timeout:g} s")
    if letter is not None:
        sys.exit(EXIT_FAILED)
    if outcome is None:
        sys.exit(EXIT_NOTHING_STORED)
    if outcome.state in (states.FAILURE, states.REVOKED):
        sys.exit(EXIT_FAILED)


DEAD_LETTER_SCAN = 1_000  # the most recent dead letters searched for an id


async def _dead_letter(app: App, task_id: str) -> DeadLetter | None:
    """The dead letter of ``task_id``, if it is among the most recent ones."""
    broker = await app._connected_broker()
    letters = await broker.dead_letters(DEAD_LETTER_SCAN)
    return next((letter for letter in letters if letter.id == task_id), None)


async def _load(app: App, task_id: str, wait: bool, timeout: float | None) -> Outcome | None:
    """The stored outcome (the final one when waiting), or None if nothing is stored."""
    backend = await app._connected_backend()
    if wait:
        data = await backend.wait(task_id, timeout, accept=app.result_is_final)
        if data is not None:
            return app.decode_outcome(data)
    # Not waiting, or the wait timed out: show whatever state is stored now.
    data = await backend.load(task_id)
    return None if data is None else app.decode_outcome(data)


def _show(task_id: str, outcome: Outcome | None, letter: DeadLetter | None) -> None:
    state = states.PENDING if outcome is None else outcome.state
    _field("id", task_id)
    if outcome is not None and outcome.task:
        _field("task", outcome.task)
    if letter is not None:  # it never ran: say why, rather than leave it "pending"
        _field("state", click.style("DEAD-LETTERED", fg="red", bold=True) + " (it never ran)")
        _field("queue", letter.queue)
        _field("reason", letter.reason)
        return
    _field("state", click.style(state, fg=STATE_COLOURS.get(state), bold=True))
    if outcome is None:
        click.echo("        (no result stored: queued, running, unknown, or expired)")
        return
    if outcome.retries:
        _field("retries", str(outcome.retries))
    if outcome.date_done is not None:
        _field("done at", datetime.fromtimestamp(outcome.date_done).astimezone()
               .isoformat(sep=" ", timespec="milliseconds"))
    if outcome.exc_type is not None:
        _field("error", f"{outcome.exc_type}: {outcome.exc_message}")
        if outcome.traceback:
            click.echo("traceback (on the worker):")
            click.echo(outcome.traceback.rstrip("\n"))
    elif state == states.SUCCESS:
        _field("result", _render(outcome.result))


def _field(label: str, value: str) -> None:
    click.echo(f"{label + ':':<8} {value}")


def _render(value: Any) -> str:
    """JSON where the value is JSON (so scripts can read it), else its repr."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)
