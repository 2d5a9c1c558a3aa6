"""The ``celeriac`` command: one group, one module per subcommand.

Subcommands parse their options into settings and call into the core; no behaviour
lives here.
"""

from __future__ import annotations

import os
import sys

import click

from celeriac.app import App
from celeriac.cli.beat import beat_command
from celeriac.cli.call import call_command
from celeriac.cli.dashboard import dashboard_command
from celeriac.cli.demo import demo_command
from celeriac.cli.events import events_command
from celeriac.cli.exporter import exporter_command
from celeriac.cli.inspect import control_command, inspect_command, status_command
from celeriac.cli.monitor import monitor_command
from celeriac.cli.purge import purge_command
from celeriac.cli.queues import queues_command
from celeriac.cli.result import result_command
from celeriac.cli.worker import worker_command
from celeriac.errors import CeleriacError, ConfigurationError, TaskNotRegistered, describe
from celeriac.loader import load_app


class AppSpec:
    """The ``-A`` option, loaded only when a subcommand asks for the app."""

    def __init__(self, spec: str | None) -> None:
        self.spec = spec
        self._app: App | None = None

    def load(self) -> App:
        if self.spec is None:
            raise click.UsageError("this command needs an app: celeriac -A proj ...")
        if self._app is None:
            self._app = load_app(self.spec)
        return self._app


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-A", "--app", "app_spec", envvar="CELERIAC_APP", metavar="MODULE[:ATTR]",
              help="The module holding your App (or MODULE:ATTR).")
@click.option("-b", "--broker", metavar="URL",
              help="The broker URL, over the app's (as CELERY_BROKER_URL does).")
@click.option("--result-backend", metavar="URL",
              help="The result backend URL, over the app's.")
@click.option("--traceback", is_flag=True,
              help="Show the traceback of an error instead of one line.")
@click.version_option(package_name="celeriac")
@click.pass_context
def cli(ctx: click.Context, app_spec: str | None, broker: str | None,
        result_backend: str | None, traceback: bool) -> None:
    """celeriac: a fast, safe-by-default distributed task queue."""
    # As Celery's -b: through the environment, so that it wins over the app's own
    # settings and reaches the worker processes the command spawns.
    for value, variable in ((broker, "broker_url"), (result_backend, "result_backend")):
        if value is not None:
            os.environ[f"CELERY_{variable.upper()}"] = value
            os.environ.pop(f"CELERIAC_{variable.upper()}", None)
    del traceback  # read by main(), which handles the errors after click is done
    ctx.obj = AppSpec(app_spec)


cli.add_command(worker_command)
cli.add_command(call_command)
cli.add_command(result_command)
cli.add_command(queues_command)
cli.add_command(purge_command)
cli.add_command(demo_command)
cli.add_command(events_command)
cli.add_command(inspect_command)
cli.add_command(control_command)
cli.add_command(status_command)
cli.add_command(monitor_command)
cli.add_command(exporter_command)
cli.add_command(beat_command)
cli.add_command(dashboard_command)


EXIT_USAGE = 2  # a user's mistake: a bad -A, setting, URL or option (as click's usage errors)


def main() -> None:
    traceback = "--traceback" in sys.argv[1:]
    try:
        cli(prog_name="celeriac", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CeleriacError as exc:
        # A user's mistake (an app that does not import, a bad setting, a refused
        # password) is one line, not a traceback, unless asked for.
        if traceback:
            raise
        click.echo(f"Error: {describe(exc)}", err=True)
        sys.exit(EXIT_USAGE if isinstance(exc, ConfigurationError | TaskNotRegistered) else 1)
