"""``celeriac demo``: the embedded showcase, with nothing set up beforehand."""

from __future__ import annotations

import sys

import click
from rich.console import Console

from celeriac.demo.runner import DemoError, run_demo


@click.command("demo", short_help="Run a worker and a mixed workload on a throwaway SQLite file.")
@click.option("--tasks", "total", type=click.IntRange(min=1), default=10_000,
              show_default=True, help="How many tasks to send.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Worker processes.")
@click.option("--keep", is_flag=True,
              help="Keep the temporary SQLite file and worker log for inspection.")
def demo_command(total: int, workers: int, keep: bool) -> None:
    """Run a worker and a realistic mixed workload on a throwaway SQLite file.

    Needs no -A and no server: it starts `celeriac worker` on the demo's own tasks,
    sends quick, async, prioritised, delayed, retried, failing and rejected tasks,
    shows progress live, and ends with what happened to every one of them.
    """
    console = Console(highlight=False)
    try:
        ok = run_demo(total, workers, keep, console)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(0 if ok else 1)
