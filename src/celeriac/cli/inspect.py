"""``celeriac inspect``, ``celeriac control`` and ``celeriac status``: ask the live workers.

As Celery's commands of the same names: ``inspect active`` (and ping, reserved,
scheduled, registered, stats, active_queues, conf, revoked) shows each node's answer;
``control pool_grow 2`` (and pool_shrink, rate_limit, time_limit, add_consumer,
cancel_consumer, shutdown) asks them to act; ``status`` lists the nodes that answer a
ping. Rich tables for people, ``--json`` for scripts (``{node: reply}``). A command
nobody answered within the timeout exits 1 with one line, as does one that a node
refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from celeriac.cli.common import client_app, run
from celeriac.control.mailbox import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.cli.main import AppSpec

INSPECT_COMMANDS = ("ping", "active", "reserved", "scheduled", "registered", "stats",
                    "active_queues", "conf", "revoked")
# command -> (how many arguments it needs, its arguments' names and converters)
CONTROL_COMMANDS: dict[str, tuple[int, tuple[tuple[str, Any], ...]]] = {
    "pool_grow": (0, (("n", int),)),
    "pool_shrink": (0, (("n", int),)),
    "rate_limit": (2, (("task_name", str), ("rate_limit", str))),
    "time_limit": (2, (("task_name", str), ("soft", float), ("hard", float))),
    "add_consumer": (1, (("queue", str),)),
    "cancel_consumer": (1, (("queue", str),)),
    "shutdown": (0, ()),
    "ping": (0, ()),
}


def _destination(value: str | None) -> list[str] | None:
    names = [name.strip() for name in (value or "").split(",") if name.strip()]
    return names or None


def _ask(app: App, command: str, arguments: dict[str, Any], destination: list[str] | None,
         timeout: float) -> dict[str, Any]:
    replies = run(app, app.control.abroadcast(command, arguments, destination, reply=True,
                                              timeout=timeout))
    merged: dict[str, Any] = {}
    for item in replies or []:
        merged.update(item)
    if not merged:
        raise click.ClickException(f"no worker node replied within {timeout:g}s"
                                   + (f" (asked {', '.join(destination)})"
                                      if destination else ""))
    return dict(sorted(merged.items()))


_destination_option = click.option(
    "-d", "--destination", metavar="NAMES", help="Only these comma-separated node names.")
_timeout_option = click.option(
    "-t", "--timeout", type=click.FloatRange(min=0.05), default=DEFAULT_TIMEOUT,
    show_default=True, help="Seconds to wait for replies.")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")


@click.command("inspect", short_help="Ask the live workers what they do (active, stats...).")
@click.argument("command", type=click.Choice(INSPECT_COMMANDS))
@_destination_option
@_timeout_option
@_json_option
@click.option("--with-defaults", is_flag=True, help="conf: all settings, not only changed.")
@click.pass_obj
def inspect_command(spec: AppSpec, command: str, destination: str | None, timeout: float,
                    as_json: bool, with_defaults: bool) -> None:
    """Ask every live worker node (or those of -d) and show each one's reply."""
    arguments: dict[str, Any] = {"with_defaults": True} if (
        command == "conf" and with_defaults) else {}
    with client_app(spec) as app:
        replies = _ask(app, command, arguments, _destination(destination), timeout)
    _show(command, replies, as_json)


@click.command("control", short_help="Ask the live workers to act (pool_grow 2, shutdown...).")
@click.argument("command", type=click.Choice(sorted(CONTROL_COMMANDS)))
@click.argument("args", nargs=-1)
@_destination_option
@_timeout_option
@_json_option
@click.pass_obj
def control_command(spec: AppSpec, command: str, args: tuple[str, ...],
                    destination: str | None, timeout: float, as_json: bool) -> None:
    """Send a command to every live worker node (or those of -d); show each reply.

    \b
    pool_grow N / pool_shrink N      processes (prefork) or slots (threads, async)
    rate_limit TASK RATE             e.g. rate_limit tasks.add 10/s (0: no limit)
    time_limit TASK SOFT [HARD]      seconds, for later runs
    add_consumer QUEUE / cancel_consumer QUEUE
    shutdown                         a warm shutdown
    """
    arguments = _arguments(command, args)
    with client_app(spec) as app:
        if command == "rate_limit":  # kept for every worker, those started later too
            try:
                app.control.rate_limit(arguments["task_name"], arguments["rate_limit"])
            except ValueError as exc:
                raise click.UsageError(f"rate_limit: {exc}") from None
        replies = _ask(app, command, arguments, _destination(destination), timeout)
    _show(command, replies, as_json)
    if any(isinstance(reply, dict) and "error" in reply for reply in replies.values()):
        raise SystemExit(1)


def _arguments(command: str, args: Sequence[str]) -> dict[str, Any]:
    required, wanted = CONTROL_COMMANDS[command]
    if not required <= len(args) <= len(wanted):
        usage = " ".join(name.upper() if i < required else f"[{name.upper()}]"
                         for i, (name, _) in enumerate(wanted))
        raise click.UsageError(f"{command} takes {usage or 'no arguments'}")
    arguments: dict[str, Any] = {}
    for (name, convert), text in zip(wanted, args, strict=False):
        try:
            arguments[name] = convert(text)
        except ValueError:
            raise click.UsageError(f"{command}: {name} must be a number, not {text!r}") \
                from None
    return arguments


@click.command("status", short_help="List the worker nodes online.")
@_timeout_option
@_json_option
@click.pass_obj
def status_command(spec: AppSpec, timeout: float, as_json: bool) -> None:
    """List the worker nodes that answer a ping (exit 1 when none does)."""
    with client_app(spec) as app:
        try:
            replies = _ask(app, "ping", {}, None, timeout)
        except click.ClickException:
            raise click.ClickException("no nodes replied within time constraint "
                                       f"({timeout:g}s)") from None
    if as_json:
        click.echo(json.dumps(sorted(replies)))
        return
    for node in replies:
        click.echo(f"->  {node}: OK")
    count = len(replies)
    click.echo(f"\n{count} {'node' if count == 1 else 'nodes'} online.")


# -- showing replies -----------------------------------------------------------------------


def _show(command: str, replies: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(replies, default=repr))
        return
    Console(highlight=False).print(_table(command, replies), soft_wrap=True)


def _table(command: str, replies: dict[str, Any]) -> Table:
    if command in ("active", "reserved", "scheduled"):
        return _tasks_table(command, replies)
    if command == "stats":
        return _stats_table(replies)
    table = Table(title=command, title_justify="left")
    table.add_column("node", style="bold")
    table.add_column("reply", overflow="fold")
    for node, reply in replies.items():
        table.add_row(node, _text(command, reply))
    return table


def _text(command: str, reply: Any) -> str:
    if isinstance(reply, dict) and len(reply) == 1 and ("ok" in reply or "error" in reply):
        key, value = next(iter(reply.items()))
        return str(value) if key == "ok" else f"[red]error:[/red] {value}"
    if command == "active_queues" and isinstance(reply, list):
        return ", ".join(str(queue.get("name")) for queue in reply) or "(none)"
    if isinstance(reply, list):
        return "\n".join(str(item) for item in reply) or "(none)"
    if isinstance(reply, dict):
        return "\n".join(f"{key} = {value!r}" for key, value in reply.items()) or "(none)"
    return str(reply)


def _tasks_table(command: str, replies: dict[str, Any]) -> Table:
    table = Table(title=command, title_justify="left")
    for column in ("node", "task id", "name", "args", "running for", "pid", "queue"):
        table.add_column(column, overflow="fold")
    now = time.time()
    for node, tasks in replies.items():
        if isinstance(tasks, dict):  # an error
            table.add_row(node, _text(command, tasks), "", "", "", "", "")
            continue
        if not tasks:
            table.add_row(node, "(none)", "", "", "", "", "")
        for task in tasks:
            started = task.get("time_start")
            table.add_row(node, str(task.get("id")), str(task.get("name")),
                          f"{task.get('args')} {task.get('kwargs')}",
                          f"{now - started:.1f}s" if started else "-",
                          str(task.get("worker_pid")),
                          str((task.get("delivery_info") or {}).get("routing_key")))
    return table


def _stats_table(replies: dict[str, Any]) -> Table:
    table = Table(title="stats", title_justify="left")
    for column in ("node", "pid", "pool", "processes", "slots", "processed", "uptime",
                   "broker"):
        table.add_column(column, overflow="fold")
    for node, stats in replies.items():
        if not isinstance(stats, dict) or "error" in stats:
            table.add_row(node, _text("stats", stats), "", "", "", "", "", "")
            continue
        pool = stats.get("pool") or {}
        table.add_row(node, str(stats.get("pid")), str(pool.get("implementation")),
                      str(len(pool.get("processes") or [])),
                      str(pool.get("max-concurrency")), str(stats.get("processed")),
                      f"{float(stats.get('uptime') or 0):.0f}s",
                      str((stats.get("broker") or {}).get("url")))
    return table
