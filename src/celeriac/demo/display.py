"""What the demo draws: a live panel while it runs, a summary table when it ends."""

from __future__ import annotations

from dataclasses import dataclass

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from celeriac.demo.tracker import Tally, Tracker
from celeriac.demo.workload import KINDS


@dataclass(frozen=True, slots=True)
class Ending:
    """How the run ended, beyond the counts."""

    elapsed: float  # first send to last task accounted for (or to giving up)
    workers: int
    worker_exit: int | None  # None: the worker had to be killed
    gave_up: str | None = None  # why the demo stopped waiting, if it did


def live_view(tracker: Tracker, workers: int, elapsed: float) -> RenderableType:
    total = tracker.total
    sent = total.sent
    share = total.done / sent if sent else 0.0
    progress = Table.grid(padding=(0, 1))
    progress.add_row(ProgressBar(total=max(sent, 1), completed=total.done, width=40),
                     Text(f"{total.done:,}/{sent:,}", style="bold"), f"{share:4.0%}")
    speed = Text.assemble((f"{tracker.rate_now():,.0f}", "bold cyan"), " tasks/s now, ",
                          f"{elapsed:.1f} s elapsed")
    outcomes = Text.assemble(
        ("succeeded ", "dim"), (f"{total.succeeded:,}", "green"),
        ("  failed ", "dim"), (f"{total.failed:,}", "red"),
        ("  retried ", "dim"), (f"{total.retried:,}", "yellow"),
        ("  dead-lettered ", "dim"), (f"{total.dead:,}", "magenta"))
    queue = tracker.queue
    broker = Text(f"queue {queue.queue}: {queue.ready:,} ready, {queue.scheduled:,} "
                  f"scheduled, {queue.in_flight:,} in flight", style="dim")
    return Panel(Group(progress, speed, outcomes, broker), expand=False,
                 title=f"celeriac demo: {workers} worker processes on SQLite")


def summary(tracker: Tracker, ending: Ending) -> RenderableType:
    return Group(Text(), _table(tracker, ending), *_verdicts(tracker, ending))


def _table(tracker: Tracker, ending: Ending) -> Table:
    table = Table(title=f"celeriac demo: {tracker.total.sent:,} tasks, {ending.workers} "
                        "worker processes", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True, caption_justify="left",
                  caption="p50: median time from sending to the final state")
    table.add_column("Task")
    table.add_column("Kind", style="dim")
    for heading in ("Sent", "Succeeded", "Failed", "Retried", "Dead", "p50"):
        table.add_column(heading, justify="right")
    for kind in KINDS:
        table.add_row(kind.key, kind.description, *_cells(tracker.tallies[kind.key]))
    table.add_section()
    table.add_row("total", "", *_cells(tracker.total), style="bold")
    return table


def _cells(tally: Tally) -> list[str | Text]:
    median = tally.median_latency()
    return [f"{tally.sent:,}", Text(f"{tally.succeeded:,}", "green"),
            Text(f"{tally.failed:,}", "red" if tally.failed else ""),
            Text(f"{tally.retried:,}", "yellow" if tally.retried else ""),
            Text(f"{tally.dead:,}", "magenta" if tally.dead else ""),
            "-" if median is None else f"{median:.2f} s"]


def _verdicts(tracker: Tracker, ending: Ending) -> list[Text]:
    return [_accounting(tracker, ending), _throughput(tracker, ending), _priority(tracker),
            _countdowns(tracker), _worker(ending)]


def _accounting(tracker: Tracker, ending: Ending) -> Text:
    total = tracker.total
    if tracker.finished:
        return Text.assemble(("✔ ", "green"), (f"All {total.sent:,} tasks accounted for", "bold"),
                             "; none lost.")
    return Text.assemble(("✘ ", "red"),
                         (f"{len(tracker.pending):,} of {total.sent:,} tasks unaccounted for",
                          "bold red"), f" ({ending.gave_up}).")


def _throughput(tracker: Tracker, ending: Ending) -> Text:
    rate = tracker.done / ending.elapsed if ending.elapsed > 0 else 0.0
    return Text.assemble("  ", (f"{rate:,.0f} tasks/s", "bold cyan"),
                         f": the last result came {ending.elapsed:.2f} s after the first send.")


def _priority(tracker: Tracker) -> Text:
    urgent = tracker.tallies["alert"].median_latency()
    normal = tracker.tallies["thumbnail"].median_latency()
    if urgent is None or normal is None:
        return Text()
    return Text(f"  Median time to finish: {urgent:.2f} s for priority 9 alerts, "
                f"{normal:.2f} s for priority 0 thumbnails.")


def _countdowns(tracker: Tracker) -> Text:
    reminders = tracker.tallies["reminder"]
    if not reminders.succeeded:
        return Text()
    if reminders.early:
        return Text(f"  ✘ {reminders.early} of {reminders.succeeded} countdown reminders "
                    "started before their countdown ended.", style="bold red")
    return Text(f"  No countdown reminder started before its countdown ended "
                f"({reminders.succeeded:,} checked).")


def _worker(ending: Ending) -> Text:
    if ending.worker_exit == 0:
        return Text("  Worker stopped by SIGTERM (warm shutdown), exit code 0.")
    how = "had to be killed" if ending.worker_exit is None \
        else f"exited with code {ending.worker_exit}"
    return Text(f"  ✘ The worker {how}.", style="bold red")
