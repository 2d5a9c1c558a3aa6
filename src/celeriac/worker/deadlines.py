"""What a supervised worker process tells its supervisor about hard time limits.

Each worker process has one entry in a small shared-memory array that the supervisor
created (``celeriac.supervisor.deadlines``): the hard deadline of the task it runs that
must end soonest, with that task's id and name, or nothing. The process enforces its own
limits (``celeriac.worker.guard``); the entry is the supervisor's backstop for when it
cannot, because the process itself is stuck (an async task that blocks the event loop, a
C call that holds the GIL). Writing it is a few stores to memory: no system call, no
message, so a task with a limit costs the hot path next to nothing.

After a hard limit the process publishes an *exit* deadline instead (no task): it is
replacing itself, and the supervisor kills it if it has not gone by then.

Entries are written by the process's event loop thread only, and read by the supervisor
with a sequence number (odd while a write is under way) so that it never acts on a torn
entry. Times are ``time.monotonic()``, which is one clock for every process of a machine
on the platforms celeriac's supervisor runs on (Linux, macOS).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

TASK_ID_BYTES = 128
TASK_NAME_BYTES = 200


class Entry(ctypes.Structure):
    """One worker process's entry. ``deadline`` 0 means no deadline."""

    _fields_ = [
        ("seq", ctypes.c_uint64),
        ("deadline", ctypes.c_double),
        ("task_id", ctypes.c_char * TASK_ID_BYTES),
        ("task", ctypes.c_char * TASK_NAME_BYTES),
    ]


@dataclass(frozen=True, slots=True)
class Published:
    """An entry as the supervisor read it; ``task_id`` is None for an exit deadline."""

    deadline: float
    task_id: str | None
    task: str | None


class DeadlineSlot:
    """A worker process's own entry in the supervisor's array (picklable at spawn)."""

    def __init__(self, entries: Any, index: int) -> None:
        self._entries = entries  # a multiprocessing RawArray of Entry
        self.index = index

    def publish(self, deadline: float, task_id: str, task: str) -> None:
        """The running task that must end soonest, and when (``time.monotonic()``)."""
        tid, name = task_id.encode(), task.encode()
        if len(tid) >= TASK_ID_BYTES:  # too long to name: the supervisor can only kill
            tid = b""
        self._write(deadline, tid, name[:TASK_NAME_BYTES - 1])

    def publish_exit(self, deadline: float) -> None:
        """This process is replacing itself; kill it if it is still here at ``deadline``."""
        self._write(deadline, b"", b"")

    def clear(self) -> None:
        self._write(0.0, b"", b"")

    def read(self) -> Published | None:
        """The entry, or None if it is empty or being written right now."""
        entry = self._entries[self.index]
        seq = entry.seq
        if seq % 2:
            return None
        deadline, tid, name = entry.deadline, entry.task_id, entry.task
        if entry.seq != seq or not deadline:
            return None
        return Published(deadline, tid.decode() or None, name.decode() or None)

    def _write(self, deadline: float, task_id: bytes, task: bytes) -> None:
        entry = self._entries[self.index]
        entry.seq += 1  # odd: being written
        entry.deadline = deadline
        entry.task_id = task_id
        entry.task = task
        entry.seq += 1
