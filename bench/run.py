"""The benchmark runner: ``python -m bench.run --suite redis|amqp|sqlite|all``.

A suite runs celeriac and Celery on the same server (Redis or RabbitMQ) in one run, on
the same workloads, ``--runs`` times, alternating which framework goes first; then it
prints, per suite, the medians side by side with celeriac's advantage over Celery and
the goals of the issues, and writes every number to ``bench/results/`` as JSON. Each
workload runs in a session of fresh queues, after waiting for the CPUs to be idle.

Workloads: W1 send 20,000 no-op tasks one by one; W2 drain them with 2 worker
processes; W3 1,000 sequential ``delay().get()`` round trips; W4 2,000 tasks sleeping
10 ms on one I/O worker process with 100 slots; W5 1,000 tasks burning 5 ms of CPU on 2
processes, next to a bare two-process loop doing the same work; batch send of 20,000
no-op tasks. On RabbitMQ, also W1 for Celery with publisher confirms.
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
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from bench.engines import celeriac_targets, engines_markdown, engines_table
from bench.targets import SUITES, Session, Target, WorkerSpec, suite_targets
from bench.tasks import BURN, SLEEP
from bench.work import CPU_TASK_SECONDS, calibrate
from bench.workloads import (
    ROOT,
    bare_loop,
    batch_send,
    drain,
    queue_tasks,
    round_trip,
    send,
)

RESULTS = ROOT / "bench" / "results"

IDLE_BUSY = 0.10  # CPUs this busy or more before a workload: somebody else is working
IDLE_SAMPLE = 1.0  # seconds each look at the CPUs lasts
SLEEP_SECONDS = 0.010  # W4: each task sleeps 10 ms
IO_SLOTS = 100  # W4: one worker process with this many concurrent tasks
ATTEMPTS = 2  # a workload that fails (a server restarted under it) is tried once more

WORKLOADS = ("w1w2", "w3", "w4", "w5", "batch", "w1confirm")


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool = True


METRICS = (
    Metric("w1_send_rate", "W1 send, one by one", "tasks/s"),
    Metric("w1_confirm_send_rate", "W1 send, publisher confirms on both", "tasks/s"),
    Metric("w2_drain_rate", "W2 drain, 2 processes", "tasks/s"),
    Metric("w2_drain_rate_with_startup", "W2 drain with worker start-up", "tasks/s"),
    Metric("w3_p50_ms", "W3 round trip p50", "ms", higher_is_better=False),
    Metric("w3_p99_ms", "W3 round trip p99", "ms", higher_is_better=False),
    Metric("w4_sleep_rate", "W4 10 ms sleeps, I/O pool", "tasks/s"),
    Metric("w5_cpu_rate", "W5 5 ms CPU, 2 processes", "tasks/s"),
    Metric("batch_send_rate", "Batch send", "tasks/s"),
)
METRIC = {m.key: m for m in METRICS}
BARE = "w5_bare_rate"  # the bare two-process loop, measured once per run


@dataclass(frozen=True, slots=True)
class Goal:
    """A target of the issues: on celeriac's median, or on its ratio to a reference."""

    metric: str
    kind: Literal["ratio", "absolute", "bare"]  # vs Celery, absolute, vs the bare loop
    threshold: float

    def describe(self) -> str:
        metric = METRIC[self.metric]
        if self.kind == "ratio":
            return f"≥ {self.threshold:g}x Celery"
        if self.kind == "bare":
            return f"≥ {self.threshold:.0%} of the bare loop"
        sign = "≥" if metric.higher_is_better else "≤"
        return f"{sign} {number(self.threshold)} {metric.unit}"


GOALS: dict[str, tuple[Goal, ...]] = {
    "redis": (Goal("w1_send_rate", "ratio", 4), Goal("w2_drain_rate", "ratio", 10),
              Goal("w3_p50_ms", "absolute", 1.0), Goal("w4_sleep_rate", "ratio", 5),
              Goal("w5_cpu_rate", "bare", 0.9), Goal("batch_send_rate", "absolute", 50_000)),
    # Issue 4's "W1 send with confirms at least 2x": like for like, with Celery's confirms
    # on too (confirm_publish). celeriac confirms every send; no sender can do 2x an
    # unconfirmed one one by one while each waits ~0.35 ms for RabbitMQ's confirm here.
    "amqp": (Goal("w1_confirm_send_rate", "ratio", 2), Goal("w2_drain_rate", "ratio", 5),
             Goal("w3_p50_ms", "absolute", 1.0)),
    "postgresql": (Goal("w2_drain_rate", "absolute", 5000),),
    "sqs": (),  # measured, no goal: ministack's own speed bounds it (docs/brokers.md)
    "engines": (),  # every new broker beside Redis; PostgreSQL's goal is its own suite's
    "kafka": (),  # measured beside Redis; issue 16 sets no number for it
    "sqlite": (Goal("w1_send_rate", "absolute", 5000), Goal("w2_drain_rate", "absolute", 5000),
               Goal("w3_p50_ms", "absolute", 5.0)),
}


@dataclass
class TargetRuns:
    target: Target
    runs: list[dict[str, float]] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        values = [run[key] for run in self.runs if key in run]
        return statistics.median(values) if values else None


@dataclass
class SuiteResult:
    suite: str
    targets: list[TargetRuns]
    bare: list[float] = field(default_factory=list)  # every bare-loop tasks/s measured
    burn_iterations: int = 0
    notes: list[str] = field(default_factory=list)

    def by_framework(self, framework: str) -> TargetRuns | None:
        return next((t for t in self.targets if t.target.framework == framework), None)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(highlight=False, width=150)
    machine = describe_machine()
    console.print(f"[bold]celeriac bench[/] on {machine['cpu_model']} "
                  f"({machine['cpus']} CPUs), Python {machine['python']}, "
                  f"celeriac {machine['celeriac']}, Celery {machine['celery']}")
    suites = list(SUITES[:2]) if args.suite == "all" else [args.suite]
    results: list[SuiteResult] = []
    failed = False
    for suite in suites:
        try:
            results.append(run_suite(suite, args, console))
        except Exception as exc:  # report what was measured so far, then fail
            failed = True
            console.print(f"[bold red]suite {suite} failed:[/]")
            console.print("".join(traceback.format_exception(exc)), markup=False)
    for result in results:
        several_brokers = len(celeriac_targets(result)) > 1
        console.print(engines_table(result) if several_brokers else medians_table(result))
        console.print(runs_table(result))
        if args.markdown:
            print(engines_markdown(result) if several_brokers else markdown(result))
    if results:
        path = write_json(args, machine, results)
        console.print(f"results written to {path.relative_to(ROOT)}")
    missed = [f"{r.suite}: {METRIC[g.metric].label} {g.describe()}"
              for r in results for g in GOALS[r.suite] if goal_met(r, g) is False]
    if missed:
        console.print("[yellow]goals missed:[/] " + "; ".join(missed))
    if failed:
        return 2
    return 1 if missed and args.check else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=[*SUITES, "all"], default="all",
                        help="redis, amqp (celeriac and Celery), sqlite (celeriac only), "
                             "or all = redis then amqp (default)")
    parser.add_argument("--only", choices=["celeriac", "Celery"],
                        help="run one framework's targets only (no comparison)")
    parser.add_argument("--runs", type=int, default=3, help="runs of every workload (3)")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS),
                        help="which to run (default: all of them)")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks in W1/W2 (20000)")
    parser.add_argument("--round-trips", type=int, default=1_000,
                        help="timed round trips in W3 (1000)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="untimed round trips before W3's timed ones (200)")
    parser.add_argument("--sleep-tasks", type=int, default=2_000, help="tasks in W4 (2000)")
    parser.add_argument("--cpu-tasks", type=int, default=1_000, help="tasks in W5 (1000)")
    parser.add_argument("--batch-tasks", type=int, default=20_000,
                        help="tasks in the batch send (20000)")
    parser.add_argument("--confirm-tasks", type=int, default=5_000,
                        help="tasks in W1 with confirms, for Celery on RabbitMQ (5000)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="worker processes in W2, W3 and W5 (2)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="seconds a drain may take before it is called failed (300)")
    parser.add_argument("--wait-idle", type=float, default=60.0, metavar="SECONDS",
                        help="before each workload, wait up to this long for other "
                             f"processes to leave the CPUs below {IDLE_BUSY * 100:.0f}%% "
                             "busy (60)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the tables as Markdown (for docs/benchmarks.md)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a median misses its goal")
    return parser.parse_args(argv)


# -- running ------------------------------------------------------------------------------

def run_suite(suite: str, args: argparse.Namespace, console: Console) -> SuiteResult:
    targets = [t for t in suite_targets(suite)
               if args.only is None or t.framework == args.only]
    result = SuiteResult(suite, [TargetRuns(t) for t in targets])
    for target in targets:
        console.print(f"[bold]{target.name}[/]: {target.describe()}")
    if "w5" in args.workloads:
        wait_for_idle_cpus(args.wait_idle)
        result.burn_iterations = calibrate()
        console.print(f"W5: burn({result.burn_iterations}) takes {CPU_TASK_SECONDS * 1000:g} "
                      "ms on one CPU here")
    for target in targets:
        target.setup()
    try:
        for run in range(1, args.runs + 1):
            order = result.targets if run % 2 else result.targets[::-1]
            for target_runs in order:
                target_runs.runs.append(
                    run_target(target_runs.target, result, args, console, run))
    finally:
        for target in targets:
            target.teardown()
    return result


def run_target(target: Target, suite: SuiteResult, args: argparse.Namespace,
               console: Console, run: int) -> dict[str, float]:
    """Every chosen workload of one target, each in a session of fresh queues."""
    runner = TargetRun(target, suite, args, console, run)
    for name, work in (("w1w2", runner.w1w2), ("w3", runner.w3), ("w4", runner.w4),
                       ("w5", runner.w5), ("batch", runner.batch)):
        runner.step(name, work)
    confirming = confirm_variant(target)
    if confirming is not None:
        runner.step("w1confirm", runner.w1confirm, confirming)
    elif target.broker == "amqp" and "w1_send_rate" in runner.measured:
        # celeriac confirms every publish: its W1 is already the confirmed send.
        runner.measured["w1_confirm_send_rate"] = runner.measured["w1_send_rate"]
    runner.measured["cpu_busy_before_max"] = max(runner.busy, default=0.0)
    return runner.measured


Work = Callable[[Session, Path, Path], dict[str, float]]


class TargetRun:
    """One run of one target: the workloads, and what they measured."""

    def __init__(self, target: Target, suite: SuiteResult, args: argparse.Namespace,
                 console: Console, run: int) -> None:
        self.target = target
        self.suite = suite
        self.args = args
        self.console = console
        self.run = run
        self.prefork = WorkerSpec("prefork", args.concurrency)
        self.measured: dict[str, float] = {}
        self.busy: list[float] = []  # how busy the CPUs were before each workload

    def step(self, name: str, work: Work, on: Target | None = None) -> None:
        """Run ``work`` in a fresh session of ``on`` (the target), once more if it fails."""
        if name not in self.args.workloads:
            return
        target = on or self.target
        for attempt in range(1, ATTEMPTS + 1):
            self.busy.append(wait_for_idle_cpus(self.args.wait_idle))
            try:
                found = self._in_session(target, work)
            except Exception as exc:
                note = (f"run {self.run}, {target.name}, {name}, attempt {attempt}: "
                        f"{type(exc).__name__}: {exc}")
                self.suite.notes.append(note)
                self.console.print(f"  [red]{note}[/]", markup=True)
                if attempt == ATTEMPTS:
                    raise
                continue
            self.measured.update(found)
            self.console.print(f"  run {self.run}: {target.name} {name}: " + ", ".join(
                f"{key} {number(value)}" for key, value in found.items())
                + f" (CPUs {self.busy[-1]:.0%} busy before)")
            return

    @staticmethod
    def _in_session(target: Target, work: Work) -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="celeriac-bench-") as tmp:
            workdir = Path(tmp)
            ledger = workdir / "ledger"
            ledger.mkdir()
            session = target.open(workdir, ledger)
            try:
                return work(session, workdir, ledger)
            finally:
                session.close()

    def w1w2(self, session: Session, workdir: Path, ledger: Path) -> dict[str, float]:
        sent = send(session, self.args.tasks)
        drained = drain(session, sent, self.prefork, workdir, ledger,
                        self.args.drain_timeout, "worker-drain.log")
        return {"w1_send_rate": sent.rate, "w2_drain_rate": drained.rate,
                "w2_drain_rate_with_startup": drained.rate_with_startup,
                "w2_worker_startup_s": drained.startup,
                "w2_first_to_last_s": drained.first_to_last}

    def w3(self, session: Session, workdir: Path, ledger: Path) -> dict[str, float]:
        trips = round_trip(session, self.prefork, workdir, ledger, self.args.round_trips,
                           self.args.warmup)
        return {"w3_p50_ms": trips.p50, "w3_p99_ms": trips.p99, "w3_mean_ms": trips.mean}

    def w4(self, session: Session, workdir: Path, ledger: Path) -> dict[str, float]:
        queued = queue_tasks(session, SLEEP, (SLEEP_SECONDS,), self.args.sleep_tasks)
        drained = drain(session, queued, WorkerSpec("io", IO_SLOTS), workdir, ledger,
                        self.args.drain_timeout, "worker-sleep.log")
        return {"w4_sleep_rate": drained.rate, "w4_worker_startup_s": drained.startup}

    def w5(self, session: Session, workdir: Path, ledger: Path) -> dict[str, float]:
        # The yardstick first, right before the drain, so both see the same machine.
        bare = bare_loop(self.suite.burn_iterations, self.args.cpu_tasks,
                         self.args.concurrency)
        self.suite.bare.append(bare)
        queued = queue_tasks(session, BURN, (self.suite.burn_iterations,),
                             self.args.cpu_tasks)
        drained = drain(session, queued, self.prefork, workdir, ledger,
                        self.args.drain_timeout, "worker-cpu.log")
        return {BARE: bare, "w5_cpu_rate": drained.rate,
                "w5_worker_startup_s": drained.startup,
                "w5_first_to_last_s": drained.first_to_last,
                "w5_first_to_done_s": drained.first_to_done}

    def batch(self, session: Session, workdir: Path, ledger: Path) -> dict[str, float]:
        return {"batch_send_rate": batch_send(session, self.args.batch_tasks).rate}

    def w1confirm(self, session: Session, workdir: Path, ledger: Path) -> dict[str, float]:
        return {"w1_confirm_send_rate": send(session, self.args.confirm_tasks).rate}


def confirm_variant(target: Target) -> Target | None:
    """For Celery on RabbitMQ: the same target with ``confirm_publish`` on."""
    if target.framework != "Celery" or target.broker != "amqp":
        return None
    from bench.celery_target import CeleryAMQP

    return CeleryAMQP(confirm_publish=True)


def wait_for_idle_cpus(patience: float) -> float:
    """Wait until the CPUs are nearly idle (other work skews a run); return how busy.

    Gives up after ``patience`` seconds and returns the last reading, which the results
    record for every workload.
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
            fields = [int(v) for v in
                      Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except OSError:
            return 0, 0
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    busy_before, total_before = sample()
    time.sleep(seconds)
    busy_after, total_after = sample()
    elapsed = total_after - total_before
    return (busy_after - busy_before) / elapsed if elapsed > 0 else 0.0


# -- reporting ----------------------------------------------------------------------------

def advantage(metric: Metric, ours: float | None, theirs: float | None) -> float | None:
    """How many times better celeriac is: rates ours/theirs, latencies theirs/ours."""
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return None
    return ours / theirs if metric.higher_is_better else theirs / ours


def goal_value(result: SuiteResult, goal: Goal) -> float | None:
    ours = result.by_framework("celeriac")
    value = ours.median(goal.metric) if ours else None
    if goal.kind == "absolute":
        return value
    if goal.kind == "bare":
        bare = ours.median(BARE) if ours else None
        return None if value is None or not bare else value / bare
    theirs = result.by_framework("Celery")
    return advantage(METRIC[goal.metric], value, theirs.median(goal.metric) if theirs else None)


def goal_met(result: SuiteResult, goal: Goal) -> bool | None:
    value = goal_value(result, goal)
    if value is None:
        return None
    if goal.kind == "absolute" and not METRIC[goal.metric].higher_is_better:
        return value <= goal.threshold
    return value >= goal.threshold


def rows(result: SuiteResult) -> list[tuple[str, str, str, str, str, str]]:
    """(workload, celeriac, Celery, advantage, goal, verdict) per metric measured."""
    ours, theirs = result.by_framework("celeriac"), result.by_framework("Celery")
    goals = {g.metric: g for g in GOALS[result.suite]}
    found = []
    for metric in METRICS:
        mine = ours.median(metric.key) if ours else None
        other = theirs.median(metric.key) if theirs else None
        if mine is None and other is None:
            continue
        better = advantage(metric, mine, other)
        goal = goals.get(metric.key)
        verdict = ""
        if goal is not None:
            met = goal_met(result, goal)
            value = goal_value(result, goal)
            shown = "" if value is None else (
                f"{value:.2f}x" if goal.kind == "ratio" else
                f"{value:.0%}" if goal.kind == "bare" else number(value))
            verdict = "" if met is None else f"{'met' if met else 'MISSED'} ({shown})"
        found.append((f"{metric.label} ({metric.unit})", optional(mine), optional(other),
                      "" if better is None else f"{better:.2f}x",
                      goal.describe() if goal else "", verdict))
        if metric.key == "w5_cpu_rate" and result.bare:
            mine, other = (t.median(BARE) if t else None for t in (ours, theirs))
            found.append(("W5 bare two-process loop, run just before (tasks/s)",
                          optional(mine), optional(other), "", "", ""))
    return found


def medians_table(result: SuiteResult) -> Table:
    runs = max(len(t.runs) for t in result.targets)
    table = Table(title=f"{result.suite}: medians of {runs} run(s); advantage = celeriac/Celery "
                        "for rates, Celery/celeriac for latencies", title_justify="left")
    for column, justify in (("Workload", "left"), ("celeriac", "right"), ("Celery", "right"),
                            ("Advantage", "right"), ("Goal", "left"), ("", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows(result):
        table.add_row(*row)
    return table


def runs_table(result: SuiteResult) -> Table:
    table = Table(title=f"{result.suite}: every run", title_justify="left")
    table.add_column("Workload")
    for target_runs in result.targets:
        for index in range(len(target_runs.runs)):
            table.add_column(f"{target_runs.target.name} {index + 1}", justify="right")
    for metric in METRICS:
        cells = [optional(run.get(metric.key)) for t in result.targets for run in t.runs]
        if any(cells):
            table.add_row(f"{metric.label} ({metric.unit})", *cells)
    bare = [optional(run.get(BARE)) for t in result.targets for run in t.runs]
    if any(bare):
        table.add_row("W5 bare loop, just before (tasks/s)", *bare)
    return table


def markdown(result: SuiteResult) -> str:
    runs = max(len(t.runs) for t in result.targets)
    lines = [f"| {result.suite}, medians of {runs} | celeriac | Celery | advantage | goal | |",
             "|---|---:|---:|---:|---|---|"]
    for workload, mine, other, better, goal, verdict in rows(result):
        lines.append(f"| {workload} | **{mine}** | {other} | {better} | {goal} | {verdict} |")
    lines += ["", "| every run | " + " | ".join(
        f"{t.target.name} {i + 1}" for t in result.targets for i in range(len(t.runs)))
        + " |", "|---|" + "---:|" * sum(len(t.runs) for t in result.targets)]
    for metric in METRICS:
        cells = [optional(run.get(metric.key)) for t in result.targets for run in t.runs]
        if any(cells):
            lines.append(f"| {metric.label} ({metric.unit}) | " + " | ".join(cells) + " |")
    bare = [optional(run.get(BARE)) for t in result.targets for run in t.runs]
    if any(bare):
        lines.append("| W5 bare loop, just before (tasks/s) | " + " | ".join(bare) + " |")
    return "\n".join(lines)


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def optional(value: float | None) -> str:
    return "" if value is None else number(value)


def write_json(args: argparse.Namespace, machine: dict[str, Any],
               results: list[SuiteResult]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = RESULTS / f"bench-{stamp}.json"
    document = {
        "command": shlex.join([Path(sys.executable).name, "-m", "bench.run",
                               *sys.argv[1:]]),
        "settings": {key: value for key, value in vars(args).items()
                     if key not in ("markdown", "check")},
        "machine": machine,
        "environment": {k: v for k, v in os.environ.items() if k.startswith("CELERIAC_")},
        "metrics": {m.key: {"label": m.label, "unit": m.unit,
                            "higher_is_better": m.higher_is_better} for m in METRICS},
        "suites": {r.suite: {
            "goals": [{"metric": g.metric, "goal": g.describe(), "value": goal_value(r, g),
                       "met": goal_met(r, g)} for g in GOALS[r.suite]],
            "burn_iterations": r.burn_iterations,
            "bare_loop_rates": r.bare,
            "notes": r.notes,
            "targets": {t.target.name: {
                "describe": t.target.describe(),
                "median": {key: t.median(key) for key in sorted({k for run in t.runs
                                                                 for k in run})},
                "runs": t.runs} for t in r.targets},
        } for r in results},
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def describe_machine() -> dict[str, Any]:
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "celeriac": package_version("celeriac"),
        "celery": package_version("celery"),
        "kombu": package_version("kombu"),
        "redis-py": package_version("redis"),
        "aiormq": package_version("aiormq"),
        "gevent": package_version("gevent"),
        "git": git_revision(),
    }


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


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
