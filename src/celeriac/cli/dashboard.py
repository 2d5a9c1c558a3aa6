"""``celeriac -A proj dashboard``: the web dashboard (``celeriac.dashboard``).

Options parse into an ``AuthConfig`` and a bind address; the dashboard itself is built
and served by ``celeriac.dashboard.app`` and ``.server``. Secrets may come from the
environment instead of the command line (where ``ps`` shows them to every user):
``CELERIAC_DASHBOARD_BASIC_AUTH``, ``CELERIAC_DASHBOARD_AUTH_TOKEN``,
``CELERIAC_DASHBOARD_AUTH_HEADER`` and ``CELERIAC_DASHBOARD_SECRET``.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import click

from celeriac.cli.common import client_app
from celeriac.dashboard.auth import AuthConfig, check_bind
from celeriac.logs import configure_logging
from celeriac.urls import safe_url

if TYPE_CHECKING:
    from celeriac.cli.main import AppSpec


@click.command("dashboard", short_help="Serve the web dashboard (tasks, workers, queues).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to serve on; another than loopback needs authentication "
                   "(or --insecure).")
@click.option("--port", type=click.IntRange(1, 65535), default=5555, show_default=True,
              help="The port to serve on.")
@click.option("--basic-auth", envvar="CELERIAC_DASHBOARD_BASIC_AUTH", metavar="USER:PASSWORD",
              help="HTTP Basic authentication (env CELERIAC_DASHBOARD_BASIC_AUTH).")
@click.option("--auth-token", envvar="CELERIAC_DASHBOARD_AUTH_TOKEN", metavar="TOKEN",
              help="Accept 'Authorization: Bearer TOKEN' (env CELERIAC_DASHBOARD_AUTH_TOKEN).")
@click.option("--auth-header", envvar="CELERIAC_DASHBOARD_AUTH_HEADER", metavar="NAME",
              help="Reverse-proxy mode: trust the user an authenticating proxy puts in this "
                   "header. Only safe when the proxy is the only way in.")
@click.option("--secret", envvar="CELERIAC_DASHBOARD_SECRET", metavar="TEXT",
              help="The CSRF tokens' key, shared by dashboards behind one address "
                   "(default: random per process).")
@click.option("--insecure", is_flag=True,
              help="Serve a non-loopback address without authentication.")
@click.option("-l", "--loglevel", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="The level of the log lines.")
@click.option("--access-log", is_flag=True, help="Log every request.")
@click.pass_obj
def dashboard_command(spec: AppSpec, host: str, port: int, basic_auth: str | None,
                      auth_token: str | None, auth_header: str | None, secret: str | None,
                      insecure: bool, loglevel: str, access_log: bool) -> None:
    """Serve the dashboard: tasks and their history, workers, queues, dead letters,
    scheduled tasks, and the operator's actions on them; a JSON API (OpenAPI at
    /api/openapi.json) and /metrics. Stops on SIGTERM or Ctrl-C.
    """
    from celeriac.dashboard.app import Dashboard
    from celeriac.dashboard.server import serve

    extra = {"secret": hashlib.sha256(secret.encode()).digest()} if secret else {}
    auth = AuthConfig(basic=basic_auth or None, token=auth_token or None,
                      header=auth_header or None, loopback_hosts_only=not insecure, **extra)
    check_bind(host, auth, insecure)  # before anything connects: one line, exit 2
    configure_logging(loglevel)
    with client_app(spec) as app:
        dashboard = Dashboard(app, auth)
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"celeriac dashboard: http://{shown}:{port}/ ({auth.describe()}; "
                   f"broker {safe_url(app.conf.effective_broker_url)}, history "
                   f"{dashboard.store.where})", err=True)
        serve(dashboard.asgi, host, port, access_log)
