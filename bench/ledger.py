"""The execution ledger: every run of a benchmark task appends one line to a file.

The runner counts executions from the ledger, duplicates included, without trusting
the system under test to count itself. Each process appends to its own file with one
unbuffered ``write`` per execution (a few microseconds), so a worker process that ends
with ``os._exit`` loses nothing. A line is ``<task id> <Unix time of the execution>``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

# The directory the ledger files go to; the runner sets it for its worker processes.
LEDGER_ENV = "BENCH_LEDGER_DIR"


class LedgerWriter:
    """Appends executions to ``$BENCH_LEDGER_DIR/<pid>.log``; does nothing when unset."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._pid: int | None = None

    def record(self, task_id: str | None) -> None:
        fd = self._fd if self._pid == os.getpid() else self._open()
        if fd is not None:
            os.write(fd, f"{task_id} {time.time():.6f}\n".encode())

    def _open(self) -> int | None:
        directory = os.environ.get(LEDGER_ENV)
        self._pid = os.getpid()
        self._fd = None
        if directory:
            path = os.path.join(directory, f"{self._pid}.log")
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return self._fd


@dataclass(frozen=True, slots=True)
class LedgerSummary:
    executions: int  # lines: every execution, duplicates included
    distinct: int  # distinct task ids executed
    first: float | None  # Unix time of the earliest execution
    last: float | None  # Unix time of the latest execution

    @property
    def duplicates(self) -> int:
        return self.executions - self.distinct


def read_ledger(directory: Path, only: set[str] | None = None) -> LedgerSummary:
    """Sum up every ledger file in ``directory`` (only the ids in ``only``, if given)."""
    executions = 0
    seen: set[str] = set()
    first: float | None = None
    last: float | None = None
    for path in sorted(directory.glob("*.log")):
        for line in path.read_text().splitlines():
            task_id, _, stamp = line.partition(" ")
            if only is not None and task_id not in only:
                continue
            executions += 1
            seen.add(task_id)
            when = float(stamp)
            first = when if first is None else min(first, when)
            last = when if last is None else max(last, when)
    return LedgerSummary(executions, len(seen), first, last)


class LedgerCounter:
    """Counts the ledger's lines as they are written, reading only what is new.

    The runner polls this while a drain runs, so each look costs what was appended since
    the last one, not the whole ledger.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._offsets: dict[Path, int] = {}
        self.lines = 0

    def count(self) -> int:
        for path in self.directory.glob("*.log"):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as file:
                file.seek(offset)
                chunk = file.read()
            # Only whole lines: a line being written is counted on the next look.
            end = chunk.rfind(b"\n") + 1
            self.lines += chunk.count(b"\n", 0, end)
            self._offsets[path] = offset + end
        return self.lines
