"""The brokers side by side: one column per celeriac target of a suite.

``bench.run``'s main table compares celeriac with Celery; a suite that runs celeriac on
several brokers in one run (``engines``: PostgreSQL, SQS, Kafka beside Redis, as issue
16 asks) needs each broker's medians next to the others' instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:
    from bench.run import SuiteResult, TargetRuns


def celeriac_targets(result: SuiteResult) -> list[TargetRuns]:
    return [t for t in result.targets if t.target.framework == "celeriac"]


def _broker(runs: TargetRuns) -> str:
    return runs.target.name.split("/", 1)[-1]  # "celeriac/sqs" -> "sqs"


def _cells(result: SuiteResult) -> list[tuple[str, list[str]]]:
    from bench.run import METRICS, optional

    targets = celeriac_targets(result)
    found = []
    for metric in METRICS:
        cells = [optional(t.median(metric.key)) for t in targets]
        if any(cells):
            found.append((f"{metric.label} ({metric.unit})", cells))
    return found


def engines_table(result: SuiteResult) -> Table:
    targets = celeriac_targets(result)
    runs = max(len(t.runs) for t in targets)
    table = Table(title=f"{result.suite}: celeriac on each broker, medians of {runs} run(s)",
                  title_justify="left")
    table.add_column("Workload")
    for target in targets:
        table.add_column(_broker(target), justify="right")
    for label, cells in _cells(result):
        table.add_row(label, *cells)
    return table


def engines_markdown(result: SuiteResult) -> str:
    targets = celeriac_targets(result)
    runs = max(len(t.runs) for t in targets)
    lines = [f"| {result.suite}, medians of {runs} | "
             + " | ".join(_broker(t) for t in targets) + " |",
             "|---|" + "---:|" * len(targets)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in _cells(result)]
    return "\n".join(lines)
