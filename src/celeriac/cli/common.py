"""What the client commands (``call``, ``result``, ``queues``, ``purge``) share.

They talk to the broker and the result backend, not to a worker, so they need no tasks:
without ``-A`` they use a default ``App()``, as Celery's commands fall back to its default
app. With no broker named that is the embedded SQLite file in the working directory (or
``CELERIAC_BROKER_URL``), and a note on stderr says so, because reading the wrong store
would otherwise look like an empty one.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from celeriac.app import App
from celeriac.urls import safe_url

if TYPE_CHECKING:
    from celeriac.cli.main import AppSpec

T = TypeVar("T")


@contextmanager
def client_app(spec: AppSpec) -> Iterator[App]:
    """The app ``-A`` names (or the default one), closed when the command ends.

    celeriac errors (a bad module, an unreachable broker) reach ``main``, which prints
    them as one line instead of a traceback: they are the user's to fix, not bugs.
    """
    app = spec.load() if spec.spec is not None else _default_app()
    try:
        yield app
    finally:
        app.close()


def _default_app() -> App:
    app = App("celeriac")
    click.echo(f"celeriac: no -A given; using the broker at "
               f"{safe_url(app.conf.effective_broker_url)}", err=True)
    return app


def run(app: App, coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on the app's own loop, where its connections live."""
    return app._run_sync(coro)


def parse_queues(value: str | None) -> list[str]:
    """``-Q a,b`` as a list; empty when not given."""
    if not value:
        return []
    return [name.strip() for name in value.split(",") if name.strip()]

