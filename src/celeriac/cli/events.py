"""``celeriac -A proj events``: a live tail of the event stream, one line per event.

``--json`` prints each event as one JSON object per line, for machines; ``--since 5m``
reads back what the broker still keeps from that long ago first; ``--count`` and
``--timeout`` end the tail (for scripts and tests). Ctrl-C ends it too, with status 0.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click
import orjson

from celeriac.cli.common import client_app

if TYPE_CHECKING:
    from celeriac.cli.main import AppSpec

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

# Fields shown after the task name[id], per event type, in this order.
_KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "task-sent": ("args", "kwargs", "eta"),
    "task-received": ("args", "kwargs", "retries", "eta"),
    "task-succeeded": ("runtime", "result_size"),
    "task-failed": ("exception", "runtime"),
    "task-retried": ("exception", "countdown"),
    "task-rejected": ("reason", "dead_lettered"),
    "task-revoked": ("terminated", "expired"),
    "worker-online": ("processes", "sw_ver"),
    "worker-heartbeat": ("active", "processed", "processes", "loadavg"),
    "worker-offline": ("processed",),
}


def parse_duration(text: str) -> timedelta:
    """``90``, ``30s``, ``5m``, ``2h``, ``1d``, ``500ms`` as a timedelta."""
    match = _DURATION.match(text)
    if match is None:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 30s, 5m, 1h)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def format_event(event: dict[str, Any]) -> str:
    """One readable line: time, type, hostname, task name[id], key fields."""
    when = datetime.fromtimestamp(event.get("timestamp") or 0).strftime("%H:%M:%S.%f")[:-3]
    parts = [when, f"{event.get('type', '?'):<16}", str(event.get("hostname"))]
    if event.get("uuid") is not None:
        parts.append(f"{event.get('name') or '?'}[{event['uuid']}]")
    for key in _KEY_FIELDS.get(str(event.get("type")), ()):
        value = event.get(key)
        if value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.4f}" if key == "runtime" else f"{value:.2f}"
        parts.append(f"{key}={value}")
    return " ".join(parts)


@click.command("events", short_help="Tail the event stream (task and worker events).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--since", metavar="DURATION",
              help="Read back what the broker keeps from this long ago first (e.g. 5m).")
@click.option("--count", type=click.IntRange(min=1),
              help="Stop after this many events.")
@click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Stop after this many seconds without an event.")
@click.pass_obj
def events_command(spec: AppSpec, as_json: bool, since: str | None, count: int | None,
                   timeout: float | None) -> None:
    """Print the events of workers (and producers with task_send_sent_event) as they
    happen, one line each, until Ctrl-C."""
    start = parse_duration(since) if since is not None else None
    with client_app(spec) as app:
        stream = app.events.iter(since=start, timeout=timeout, limit=count)
        try:
            for event in stream:
                # (click.echo flushes: a machine reading a pipe gets each line at once)
                click.echo(orjson.dumps(event).decode() if as_json else format_event(event))
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a tail ends
        except BrokenPipeError:
            pass  # `celeriac events | head`: the reader has what it wanted
        finally:
            stream.close()
