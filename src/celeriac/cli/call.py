"""``celeriac -A proj call NAME --args '[2, 3]'``: send a task by name, print its id."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from celeriac.cli.common import client_app
from celeriac.config import SERIALIZERS
from celeriac.priorities import MAX_ACCEPTED

if TYPE_CHECKING:
    from celeriac.cli.main import AppSpec


def _json_array(ctx: click.Context, param: click.Parameter, value: str) -> list[Any]:
    parsed = _json(value, param)
    if not isinstance(parsed, list):
        raise click.BadParameter(f"{value!r} is JSON, but not an array", param=param)
    return parsed


def _json_object(ctx: click.Context, param: click.Parameter, value: str) -> dict[str, Any]:
    parsed = _json(value, param)
    if not isinstance(parsed, dict):
        raise click.BadParameter(f"{value!r} is JSON, but not an object", param=param)
    return parsed


def _json(value: str, param: click.Parameter) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{value!r} is not valid JSON: {exc}", param=param) from exc


def _iso_datetime(ctx: click.Context, param: click.Parameter,
                  value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date and time (for example "
                                 "2030-01-31T09:30:00+00:00)", param=param) from None
    # A time without a zone on the command line means the user's local time.
    return moment if moment.tzinfo is not None else moment.astimezone()


@click.command("call")
@click.argument("name")
@click.option("-a", "--args", "args", default="[]", callback=_json_array,
              help="Positional arguments as a JSON array, e.g. '[2, 3]'.")
@click.option("-k", "--kwargs", "kwargs", default="{}", callback=_json_object,
              help="""Keyword arguments as a JSON object, e.g. '{"x": 1}'.""")
@click.option("--queue", help="Send to this queue instead of the task's routed one.")
@click.option("--countdown", type=click.FloatRange(min=0),
              help="Run no sooner than this many seconds from now.")
@click.option("--eta", callback=_iso_datetime, help="Run no sooner than this ISO 8601 time.")
@click.option("--expires", type=click.FloatRange(min=0),
              help="Revoke the task if it has not started within this many seconds.")
@click.option("--priority", type=click.IntRange(0, MAX_ACCEPTED),
              help="0 to 255, higher first; above 9 counts as 9.")
@click.option("--serializer", type=click.Choice(SERIALIZERS), help="Message serializer.")
@click.pass_obj
def call_command(spec: AppSpec, name: str, args: list[Any], kwargs: dict[str, Any],
                 queue: str | None, countdown: float | None, eta: datetime | None,
                 expires: float | None, priority: int | None, serializer: str | None) -> None:
    """Send the task NAME with JSON arguments and print its id.

    The task need not be importable here; when it is (-A names its module), the
    arguments are checked against its signature before anything is sent.
    """
    if countdown is not None and eta is not None:
        raise click.UsageError("give --countdown or --eta, not both")
    options: dict[str, Any] = {"queue": queue, "countdown": countdown, "eta": eta,
                               "expires": expires, "priority": priority,
                               "serializer": serializer}
    send_options = {key: value for key, value in options.items() if value is not None}
    with client_app(spec) as app:
        try:
            result = app.send_task(name, args, kwargs, **send_options)
        except (TypeError, ValueError) as exc:  # wrong arguments for the task's signature
            raise click.ClickException(f"not sent: {exc}") from exc
        click.echo(result.id)
