"""The benchmark runner: ``python -m bench.run`` (``--help`` for the options).

Runs W1 (send), W2 (drain) and W3 (round trip) on each target, ``--runs`` times, each
workload on fresh storage in a temporary directory; prints a table of every run and the
medians, and writes the same as JSON to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.targets import TARGETS, Target
from bench.workloads import (
    ROOT,
    BenchError,
    DrainResult,
    RoundTripResult,
    SendResult,
    drain,
    round_trip,
    send,
)

RESULTS = ROOT / "bench" / "results"

IDLE_BUSY = 0.10  # CPUs this busy or more before a run: somebody else is working
IDLE_SAMPLE = 1.0  # seconds each look at the CPUs lasts


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    unit: str
    goal: float | None = None  # the product's target (issue 2)
    higher_is_better: bool = True

    def meets(self, value: float) -> bool | None:
        if self.goal is None:
            return None
        return value >= self.goal if self.higher_is_better else value <= self.goal


METRICS = (
    Metric("w1_send_rate", "W1 send", "tasks/s", 5000),
    Metric("w2_drain_rate", "W2 drain", "tasks/s", 5000),
    Metric("w2_drain_rate_with_startup", "W2 drain + start-up", "tasks/s"),
    Metric("w3_p50_ms", "W3 round trip p50", "ms", 5.0, higher_is_better=False),
    Metric("w3_p99_ms", "W3 round trip p99", "ms", higher_is_better=False),
)


@dataclass
class TargetRuns:
    target: str
    runs: list[dict[str, float]] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(run[key] for run in self.runs)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(highlight=False)
    machine = describe_machine()
    console.print(f"[bold]celeriac bench[/] on {machine['cpu_model']} "
                  f"({machine['cpus']} CPUs), Python {machine['python']}, "
                  f"SQLite {machine['sqlite']}")
    results = [TargetRuns(name) for name in args.targets]
    try:
        for run in range(1, args.runs + 1):
            for target_runs in results:
                target = TARGETS[target_runs.target]()
                busy = wait_for_idle_cpus(args.wait_idle)
                console.print(f"run {run}/{args.runs}: {target.name} "
                              f"(CPUs {busy:.0%} busy before it) ...")
                measured = run_once(target, args)
                measured["cpu_busy_before"] = busy
                target_runs.runs.append(measured)
                console.print("  " + ", ".join(f"{m.key} {number(measured[m.key])}"
                                               for m in METRICS))
    except BenchError as exc:
        console.print("[bold red]benchmark failed:[/]")
        console.print(str(exc), markup=False)
        return 2
    for target_runs in results:
        console.print(results_table(target_runs))
        if args.markdown:
            print(markdown_table(target_runs))
    path = write_json(args, machine, results)
    console.print(f"results written to {path.relative_to(ROOT)}")
    missed = [f"{r.target} {m.label}" for r in results for m in METRICS
              if m.meets(r.median(m.key)) is False]
    if missed:
        console.print(f"[yellow]goals missed:[/] {', '.join(missed)}")
        return 1 if args.check else 0
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS),
                        help="what to measure (default: all)")
    parser.add_argument("--runs", type=int, default=3, help="runs of every workload (3)")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks in W1/W2 (20000)")
    parser.add_argument("--round-trips", type=int, default=1_000,
                        help="timed round trips in W3 (1000)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="untimed round trips before W3's timed ones (200)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="worker processes in W2 and W3 (2)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="seconds W2 may take before it is called failed (300)")
    parser.add_argument("--wait-idle", type=float, default=60.0, metavar="SECONDS",
                        help="before each run, wait up to this long for other processes "
                             f"to leave the CPUs below {IDLE_BUSY * 100:.0f}%% busy (60)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the tables as Markdown (for docs/benchmarks.md)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a median misses its goal")
    return parser.parse_args(argv)


def run_once(target: Target, args: argparse.Namespace) -> dict[str, float]:
    """W1 then W2 on one fresh database, W3 on another; the metrics of this run."""
    with tempfile.TemporaryDirectory(prefix="celeriac-bench-") as tmp:
        sent, drained = send_and_drain(target, Path(tmp) / "send-drain", args)
        trips = round_trips(target, Path(tmp) / "round-trip", args)
    return {
        "w1_send_rate": sent.rate,
        "w2_drain_rate": drained.rate,
        "w2_drain_rate_with_startup": drained.rate_with_startup,
        "w2_worker_startup_s": drained.startup,
        "w2_first_to_last_s": drained.first_to_last,
        "w3_p50_ms": trips.p50,
        "w3_p99_ms": trips.p99,
        "w3_mean_ms": trips.mean,
    }


def send_and_drain(target: Target, workdir: Path,
                   args: argparse.Namespace) -> tuple[SendResult, DrainResult]:
    ledger = workdir / "ledger"
    ledger.mkdir(parents=True)
    session = target.open(workdir, ledger)
    try:
        sent = send(session, args.tasks)
        return sent, drain(session, sent, workdir, ledger, args.concurrency,
                           args.drain_timeout)
    finally:
        session.close()


def round_trips(target: Target, workdir: Path, args: argparse.Namespace) -> RoundTripResult:
    ledger = workdir / "ledger"
    ledger.mkdir(parents=True)
    session = target.open(workdir, ledger)
    try:
        return round_trip(session, workdir, ledger, args.concurrency, args.round_trips,
                          args.warmup)
    finally:
        session.close()


# -- reporting ----------------------------------------------------------------------------

def results_table(target_runs: TargetRuns) -> Table:
    runs = len(target_runs.runs)
    table = Table(title=f"{target_runs.target}: medians of {runs} run(s)", title_justify="left")
    table.add_column("Workload")
    table.add_column("Median", justify="right", style="bold")
    for index in range(runs):
        table.add_column(f"Run {index + 1}", justify="right")
    table.add_column("Goal", justify="right")
    for metric in METRICS:
        median = target_runs.median(metric.key)
        table.add_row(
            f"{metric.label} ({metric.unit})", number(median),
            *(number(run[metric.key]) for run in target_runs.runs), goal_cell(metric, median))
    return table


def markdown_table(target_runs: TargetRuns) -> str:
    runs = range(1, len(target_runs.runs) + 1)
    lines = [f"| {target_runs.target} | median | {' | '.join(f'run {i}' for i in runs)} "
             "| goal |",
             "|---|---:|" + "---:|" * len(runs) + "---|"]
    for metric in METRICS:
        median = target_runs.median(metric.key)
        met = metric.meets(median)
        goal = "" if met is None else (
            f"{'≥' if metric.higher_is_better else '≤'} {number(metric.goal or 0)}: "
            + ("met" if met else "**missed**"))
        cells = " | ".join(number(run[metric.key]) for run in target_runs.runs)
        lines.append(f"| {metric.label} ({metric.unit}) | **{number(median)}** | {cells} "
                     f"| {goal} |")
    return "\n".join(lines)


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def goal_cell(metric: Metric, median: float) -> str:
    met = metric.meets(median)
    if met is None:
        return ""
    sign = ">=" if metric.higher_is_better else "<="
    return f"{sign} {number(metric.goal or 0)} " + ("[green]met[/]" if met else "[red]MISSED[/]")


def write_json(args: argparse.Namespace, machine: dict[str, Any],
               results: list[TargetRuns]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = RESULTS / f"bench-{stamp}.json"
    document = {
        "command": shlex.join([Path(sys.executable).name, "-m", "bench.run",
                               *sys.argv[1:]]),
        "settings": {"tasks": args.tasks, "round_trips": args.round_trips,
                     "warmup": args.warmup, "concurrency": args.concurrency,
                     "runs": args.runs},
        "machine": machine,
        # Settings given to the runner and its workers through the environment.
        "environment": {k: v for k, v in os.environ.items() if k.startswith("CELERIAC_")},
        "metrics": {m.key: {"label": m.label, "unit": m.unit, "goal": m.goal,
                            "higher_is_better": m.higher_is_better} for m in METRICS},
        "targets": {r.target: {"median": {key: r.median(key) for key in r.runs[0]},
                               "runs": r.runs} for r in results},
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def wait_for_idle_cpus(patience: float) -> float:
    """Wait until the CPUs are nearly idle (other work skews a run); return how busy.

    Gives up after ``patience`` seconds and returns the last reading, which the results
    record for every run.
    """
    deadline = time.monotonic() + patience
    while True:
        busy = cpu_busy(IDLE_SAMPLE)
        if busy < IDLE_BUSY or time.monotonic() >= deadline:
            return busy


def cpu_busy(seconds: float) -> float:
    """The fraction of all CPUs' time spent busy over the next ``seconds`` (Linux)."""
    def sample() -> tuple[int, int]:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except OSError:
            return 0, 0
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    busy_before, total_before = sample()
    time.sleep(seconds)
    busy_after, total_after = sample()
    elapsed = total_after - total_before
    return (busy_after - busy_before) / elapsed if elapsed > 0 else 0.0


def describe_machine() -> dict[str, Any]:
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "celeriac": version("celeriac"),
        "git": git_revision(),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_revision() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty.strip() else "")


if __name__ == "__main__":
    sys.exit(main())
