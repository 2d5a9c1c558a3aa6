"""What each worker process tells its node about itself, in shared memory.

A worker node is one supervisor and its processes. Node-wide answers (a heartbeat's
active and processed counts, ``stats``, readiness, the autoscaler's "are all slots
busy?") need every process's numbers, exactly, without asking each one over a pipe. So
each process owns one entry of a shared-memory array that the supervisor created
(``StatusBoard``), and rewrites it a few times a second from its event loop: a handful
of stores to memory, no system call and nothing per task.

Fields are written by one thread only (the process's event loop) and are machine words,
so a reader sees each one whole; a reader may see one field of a newer snapshot than
another, which for counters read a few times a second is harmless.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from multiprocessing.context import SpawnContext
from typing import Any

# How often a process rewrites its entry; readiness and liveness checks allow for it.
PUBLISH_INTERVAL = 0.5


class StatusEntry(ctypes.Structure):
    _fields_ = [
        ("pid", ctypes.c_int64),
        ("slots", ctypes.c_int64),  # tasks it can run at once
        ("active", ctypes.c_int64),  # running now
        ("reserved", ctypes.c_int64),  # fetched, waiting for a slot
        ("processed", ctypes.c_int64),  # finished since the process started
        ("consuming", ctypes.c_int64),  # 1 once it reached its broker and consumes
        ("beat", ctypes.c_double),  # time.monotonic() of its last write: its loop runs
    ]


@dataclass(frozen=True, slots=True)
class ProcessSnapshot:
    index: int
    pid: int
    slots: int
    active: int
    reserved: int
    processed: int
    consuming: bool
    beat: float  # time.monotonic() of the last write; 0.0 if it never wrote
    retiring: bool = False  # shrunk away: it drains and exits (set by the supervisor)

    @property
    def busy(self) -> bool:
        return self.slots > 0 and self.active >= self.slots


class StatusSlot:
    """A worker process's own entry (picklable at spawn); written by its loop only."""

    def __init__(self, entries: Any, index: int) -> None:
        self._entries = entries  # a multiprocessing RawArray of StatusEntry
        self.index = index

    def publish(self, *, pid: int, slots: int, active: int, reserved: int, processed: int,
                consuming: bool) -> None:
        entry = self._entries[self.index]
        entry.pid = pid
        entry.slots = slots
        entry.active = active
        entry.reserved = reserved
        entry.processed = processed
        entry.consuming = int(consuming)
        entry.beat = time.monotonic()

    def clear(self) -> None:
        ctypes.memset(ctypes.addressof(self._entries[self.index]), 0,
                      ctypes.sizeof(StatusEntry))

    def read(self) -> ProcessSnapshot:
        entry = self._entries[self.index]
        return ProcessSnapshot(self.index, entry.pid, entry.slots, entry.active,
                               entry.reserved, entry.processed, bool(entry.consuming),
                               entry.beat)


class StatusBoard:
    """The supervisor's array: one entry per process index, up to ``capacity``."""

    def __init__(self, context: SpawnContext | None, capacity: int) -> None:
        """Shared with spawned processes through ``context``; in this process only
        (a solo worker) without one."""
        self.capacity = capacity
        self._entries: Any = (context.RawArray(StatusEntry, capacity) if context is not None
                              else (StatusEntry * capacity)())

    def slot(self, index: int) -> StatusSlot:
        if not 0 <= index < self.capacity:
            raise ValueError(f"process index {index} is outside 0..{self.capacity - 1}")
        return StatusSlot(self._entries, index)

    def read(self, indices: list[int]) -> list[ProcessSnapshot]:
        return [self.slot(index).read() for index in indices]
