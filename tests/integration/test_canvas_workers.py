"""Workflows on real worker processes (SQLite broker and backend), including a crash.

The tasks (apps/canvas_app.py) write every execution to the ledger, so these tests count
how often each task ran, in which process. Leases are 2 s, so a killed worker's tasks
come back within seconds.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from canvas_app import CanvasTasks, register
from worker_harness import Deployment, WorkerProcess, wait_until

from celeriac import ChordError, GroupResult, chain, chord, group

MEMBERS = 100
MEMBER_SECONDS = 0.15  # long enough that a killed process is always mid-task

pytestmark = pytest.mark.timeout(60)  # each test: well within a minute


class CanvasWorker(WorkerProcess):
    app_module = "canvas_app"


@pytest.fixture
def tasks(deployment: Deployment) -> CanvasTasks:
    deployment.worker_class = CanvasWorker
    return register(deployment.app)


def runs(deployment: Deployment, name: str, event: str = "start") -> Counter[tuple[Any, ...]]:
    """How often each call of task ``name`` ran (or finished), by its arguments."""
    return Counter(tuple(entry.tag[1:]) for entry in deployment.ledger.entries(event)
                   if isinstance(entry.tag, list) and entry.tag[0] == name)


def test_a_chord_of_100_on_two_workers_calls_back_once_when_one_is_killed(
    deployment: Deployment, tasks: CanvasTasks,
) -> None:
    # Given two workers of two processes each, running the members of a chord of 100
    doomed = deployment.start_worker("-c", "2").wait_ready(2)
    survivor = deployment.start_worker("-c", "2").wait_ready(2)
    doomed_pids = {child.pid for child in doomed.children()}
    result = chord(tasks.slow_add.s(i, i, MEMBER_SECONDS) for i in range(MEMBERS))(
        tasks.tsum.s())

    # When a third of the members have started, and the first worker is running one,
    # that whole worker is killed (SIGKILL: supervisor and processes, no goodbye)
    def mid_task() -> bool:
        started = deployment.ledger.entries("start")
        finished = {entry.id for entry in deployment.ledger.entries("done")}
        return len(started) >= MEMBERS // 3 and any(
            entry.pid in doomed_pids and entry.id not in finished for entry in started)

    wait_until(mid_task, 30, "a third of the members started, one running on the first worker")
    doomed.kill_all()
    finished_before = {entry.id for entry in deployment.ledger.entries("done")}
    interrupted = {tuple(entry.tag[1:]) for entry in deployment.ledger.entries("start")
                   if entry.pid in doomed_pids and entry.id not in finished_before}

    # Then the callback gets every member's result, once
    assert result.get(timeout=45) == sum(i + i for i in range(MEMBERS))
    deployment.wait_for_queue(ready=0, in_flight=0, timeout=20)  # duplicates settled too
    assert len(deployment.ledger.of("tsum")) == 1
    # And every member ran, those cut short by the kill again, on the other worker
    member_runs = runs(deployment, "slow_add")
    assert set(member_runs) == {(i, i) for i in range(MEMBERS)}
    assert interrupted
    assert all(member_runs[call] >= 2 for call in interrupted)
    assert set(runs(deployment, "slow_add", "done")) == set(member_runs)
    header = result.parent
    assert isinstance(header, GroupResult)
    assert header.completed_count() == MEMBERS
    assert survivor.running


def test_chain_group_and_nested_workflows_on_worker_processes(
    deployment: Deployment, tasks: CanvasTasks,
) -> None:
    deployment.start_worker("-c", "2").wait_ready(2)
    # A chain of 3, walked back through its parents
    chained = chain(tasks.add.s(4, 4), tasks.mul.s(8), tasks.mul.s(10)).delay()
    assert chained.get(timeout=20) == 640
    assert chained.parent.get(timeout=20) == 64
    assert chained.parent.parent.get(timeout=20) == 8
    # A group of 100
    grouped = group(tasks.add.s(i, 1) for i in range(100)).delay()
    assert grouped.get(timeout=20) == [i + 1 for i in range(100)]
    # A chain in a group in a chord, after a step and before another
    header = group(tasks.add.s(1), chain(tasks.add.s(2), tasks.mul.s(10)),
                   group(tasks.add.s(3), chain(tasks.add.s(4), tasks.add.s(1))))
    nested = (tasks.add.s(1, 1) | chord(header, tasks.tsum.s()) | tasks.mul.s(2)).delay()
    assert nested.get(timeout=20) == 2 * (3 + 40 + 5 + 7)
    deployment.wait_for_queue(ready=0, in_flight=0)
    assert len(deployment.ledger.of("tsum")) == 1


def test_a_chord_with_a_failing_member_fails_promptly_on_worker_processes(
    deployment: Deployment, tasks: CanvasTasks,
) -> None:
    # Given a chord with a member that fails and one that takes a minute
    deployment.start_worker("-c", "3").wait_ready(3)
    started = time.monotonic()
    result = chord([tasks.add.s(1, 1), tasks.fail.s(2), tasks.slow_add.s(3, 3, 60)],
                   tasks.tsum.s()).delay()
    # Then the chord fails with the member's error well before that minute is up
    with pytest.raises(ChordError, match="raised ValueError: member 2 failed"):
        result.get(timeout=30)
    assert time.monotonic() - started < 30
    assert not runs(deployment, "slow_add", "done")  # still running
    assert deployment.ledger.of("tsum") == []
