"""The CPU work of W5, shared by celeriac's task, Celery's task and the bare loop.

``burn(iterations)`` is a fixed amount of pure-Python arithmetic; the runner measures how
many iterations take ``CPU_TASK_SECONDS`` on this machine (``calibrate``) and passes that
number to every side, so all three do exactly the same work per task.
"""

from __future__ import annotations

import time

CPU_TASK_SECONDS = 0.005  # W5: each task burns 5 ms of CPU
CALIBRATION_ITERATIONS = 200_000


def burn(iterations: int) -> int:
    """Spin the CPU for ``iterations`` steps of integer arithmetic; returns a checksum."""
    total = 0
    for i in range(iterations):
        total = (total + i * i) % 1_000_003
    return total


def calibrate(seconds: float = CPU_TASK_SECONDS, tries: int = 7) -> int:
    """Iterations of ``burn`` that take ``seconds`` on one CPU of this machine.

    The fastest of ``tries`` timings is taken, as the least disturbed by other load.
    """
    best = min(_timed(CALIBRATION_ITERATIONS) for _ in range(tries))
    return max(1, round(CALIBRATION_ITERATIONS * seconds / best))


def _timed(iterations: int) -> float:
    started = time.perf_counter()
    burn(iterations)
    return time.perf_counter() - started
