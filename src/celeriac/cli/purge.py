"""``celeriac -A proj purge``: delete the waiting messages of some or all queues."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from celeriac.brokers.base import QueueStats
from celeriac.cli.common import client_app, parse_queues, run
from celeriac.urls import safe_url

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.cli.main import AppSpec


@click.command("purge", short_help="Delete the waiting messages of some or all queues.")
@click.option("-Q", "--queues", "names",
              help="Comma-separated queues to purge (default: every queue).")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def purge_command(spec: AppSpec, names: str | None, force: bool) -> None:
    """Delete every waiting message (ready and scheduled) from the queues.

    Messages a worker is running stay, so that they can finish and be acked, and dead
    letters stay for inspection.
    """
    with client_app(spec) as app:
        stats = run(app, _stats(app, parse_queues(names) or None))
        queues = [s.queue for s in stats]
        waiting = sum(s.ready + s.scheduled for s in stats)
        where = f"{_plural(len(queues), 'queue')} ({', '.join(queues)})"
        if waiting == 0:
            click.echo(f"Nothing to purge: no messages wait in {where}." if queues
                       else "Nothing to purge: there are no queues yet.")
            return
        if not force:
            click.confirm(f"Delete {_plural(waiting, 'waiting message')} from {where} on "
                          f"{safe_url(app.conf.effective_broker_url)}? This cannot be "
                          "undone", abort=True)
        deleted = run(app, _purge(app, queues))
        click.echo(f"Purged {_plural(deleted, 'message')} from {where}.")


async def _stats(app: App, names: list[str] | None) -> list[QueueStats]:
    broker = await app._connected_broker()
    return await broker.queue_stats(names)


async def _purge(app: App, queues: list[str]) -> int:
    broker = await app._connected_broker()
    return await broker.purge(queues)


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
