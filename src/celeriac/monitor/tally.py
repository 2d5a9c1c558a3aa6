"""Task counts and run times, counted in each worker process and summed by its node.

A prefork node is several processes; ``/metrics`` is served once, by the node (the
supervisor), and its counts must be exact across the processes, including those that
were recycled or replaced. Two ways were open: prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, one mmap file per process and metric) or an aggregation
of celeriac's own. celeriac does its own, for three reasons:

- cost: a task is a few microseconds on the W2 drain, and a prometheus-client call per
  task (a lock, a label lookup, an mmap write) would be a visible share of it. Here a task
  costs one dict increment (and a ``bisect`` for its run time); the totals go to the node
  about once a second;
- a histogram's buckets cannot be added to in bulk through prometheus-client's public
  API, and its multiprocess mode changes how *every* metric in the process behaves
  (the application's own too), through a process-wide environment variable;
- what the node serves from live processes (running, prefetched, processes) is already
  in shared memory (``worker.status``); only the counters need collecting.

So each process keeps a ``TaskTally`` (plain dicts) and rewrites one small JSON file of
its cumulative totals in a directory the node made (``TallyWriter``; atomically, by
rename, about once a second and at exit). The node sums the files of every process that
ever ran (``TallyReader``): a replaced process's last file still counts, and once it says
it was the last (``final``) the reader folds it into a running total and deletes it, so
a long-lived node with ``--max-tasks-per-child 1`` does not pile up files. Counts reach
``/metrics`` within about a second; what a process killed with SIGKILL counted in its
last second is lost with it (its tasks are delivered again and counted then).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import uuid
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celeriac import states

if TYPE_CHECKING:
    from celeriac.worker.executor import Verdict

# Upper bounds of the run-time histogram, in seconds: from the microsecond tasks of a
# drain to the minutes of a batch job. The last bucket (+Inf) is implicit.
RUNTIME_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                      0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
WRITE_INTERVAL = 1.0  # seconds between a process's writes of its totals

# The outcomes a task is counted under (label ``outcome``).
SUCCEEDED, FAILED, RETRIED, REJECTED, REVOKED = (
    "succeeded", "failed", "retried", "rejected", "revoked")
OUTCOMES = (SUCCEEDED, FAILED, RETRIED, REJECTED, REVOKED)
UNKNOWN_TASK = "unknown"  # a message that could not be decoded has no task name


@dataclass
class Runtimes:
    """One task's run-time histogram: counts per bucket (not cumulative) and their sum."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(RUNTIME_BUCKETS) + 1))
    total: float = 0.0

    def add(self, other: Runtimes) -> None:
        for index, count in enumerate(other.buckets):
            self.buckets[index] += count
        self.total += other.total

    @property
    def count(self) -> int:
        return sum(self.buckets)


class TaskTally:
    """A process's counts: written by its event loop only, a dict operation per task."""

    def __init__(self) -> None:
        self.tasks: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.runtimes: dict[str, Runtimes] = {}
        self.changes = 0
        # reason (unsigned, bad_signature, replay) -> messages refused (security.screen)
        self.refused: defaultdict[str, int] = defaultdict(int)
        # (task, Action, state) -> verdicts not yet folded into ``tasks``
        self._verdicts: defaultdict[tuple[str, Any, str | None], int] = defaultdict(int)

    def count(self, task: str, outcome: str) -> None:
        self.tasks[(task, outcome)] += 1
        self.changes += 1

    def refuse(self, reason: str) -> None:
        """Count a message refused before it was decoded (signing: security.screen)."""
        self.refused[reason] += 1
        self.changes += 1

    def count_verdict(self, verdict: Verdict) -> None:
        """Count a task's verdict; its outcome is worked out later, once per kind of
        verdict (``fold``), not once per task."""
        message, outcome = verdict.message, verdict.outcome
        self._verdicts[(message.task if message is not None else UNKNOWN_TASK,
                        verdict.action, outcome.state if outcome is not None else None)] += 1
        self.changes += 1

    def fold(self) -> None:
        """Move the counted verdicts into ``tasks`` under their outcomes. One deferred (over
        its rate limit) or handed back is not finished: it counts when it runs."""
        for (task, action, state), count in self._verdicts.items():
            kind = action.value
            if kind == "ack":
                outcome = (FAILED if state == states.FAILURE
                           else REVOKED if state == states.REVOKED else SUCCEEDED)
            elif kind == "retry":
                outcome = RETRIED
            elif kind == "dead_letter":
                outcome = REJECTED
            else:
                continue
            self.tasks[(task, outcome)] += count
        self._verdicts.clear()

    def observe(self, task: str, seconds: float) -> None:
        runtimes = self.runtimes.get(task)
        if runtimes is None:
            runtimes = self.runtimes[task] = Runtimes()
        runtimes.buckets[bisect_left(RUNTIME_BUCKETS, seconds)] += 1  # le: bound inclusive
        runtimes.total += seconds

    def add(self, other: TaskTally) -> None:
        for key, count in other.tasks.items():
            self.tasks[key] += count
        for task, runtimes in other.runtimes.items():
            self.runtimes.setdefault(task, Runtimes()).add(runtimes)
        for reason, count in other.refused.items():
            self.refused[reason] += count

    def to_json(self, final: bool) -> bytes:
        self.fold()
        return json.dumps({
            "final": final,
            "tasks": [[task, outcome, count] for (task, outcome), count in self.tasks.items()],
            "runtimes": [[task, r.buckets, r.total] for task, r in self.runtimes.items()],
            "refused": dict(self.refused),
        }).encode()

    @classmethod
    def from_json(cls, data: bytes) -> tuple[TaskTally, bool]:
        """The tally in a file, and whether its process wrote it last (at exit)."""
        raw: dict[str, Any] = json.loads(data)
        tally = cls()
        for task, outcome, count in raw["tasks"]:
            tally.tasks[(str(task), str(outcome))] = int(count)
        for task, buckets, total in raw["runtimes"]:
            if len(buckets) == len(RUNTIME_BUCKETS) + 1:  # written with the same buckets
                tally.runtimes[str(task)] = Runtimes([int(b) for b in buckets], float(total))
        for reason, count in raw.get("refused", {}).items():
            tally.refused[str(reason)] = int(count)
        return tally, bool(raw["final"])


class TallyWriter:
    """Writes a process's tally to its own file in the node's directory."""

    def __init__(self, tally: TaskTally, directory: str | Path) -> None:
        self.tally = tally
        # Unique per process ever started: a recycled process's pid may come back.
        self.path = Path(directory) / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.json"
        self._written = -1
        self._task: asyncio.Task[None] | None = None

    def write(self, final: bool = False) -> None:
        if not final and self._written == self.tally.changes:
            return  # nothing new: an idle process writes nothing
        self._written = self.tally.changes
        temporary = self.path.with_suffix(".tmp")
        try:
            temporary.write_bytes(self.tally.to_json(final))
            os.replace(temporary, self.path)  # readers see the old file or the new, whole
        except FileNotFoundError:
            pass  # the node removed its directory: it is stopping and reads no more

    def start(self) -> None:
        """Write about once a second on the running loop, until ``close``."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tally")

    def close(self) -> None:
        """The last write, once the process has counted its last task."""
        if self._task is not None:
            self._task.cancel()
        self.write(final=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(WRITE_INTERVAL)
            self.write()


class TallyReader:
    """The node's side: the sum of every process's file, including processes now gone."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._retired = TaskTally()  # folded from the final files of processes that ended
        self._lock = threading.Lock()  # scrapes may come in on several threads

    def read(self) -> TaskTally:
        with self._lock:
            total = TaskTally()
            total.add(self._retired)
            for path in sorted(self.directory.glob("*.json")):
                try:
                    tally, final = TaskTally.from_json(path.read_bytes())
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # replaced or removed while we looked; read next time
                if final:
                    self._retired.add(tally)
                    with contextlib.suppress(OSError):
                        path.unlink()
                total.add(tally)
            return total

