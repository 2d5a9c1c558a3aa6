"""What order tasks come out in: priorities first, countdowns not before their time."""

from __future__ import annotations

import random
import time

from worker_harness import Deployment

from celeriac import states

COUNTDOWN = 5.0


def test_higher_priorities_run_first_and_fifo_within_a_priority(
    deployment: Deployment,
) -> None:
    # Given 40 tasks of mixed priorities, published while no worker runs
    priorities = [random.Random(4).randrange(10) for _ in range(40)]
    sent = [(priority, f"p{priority}-{n}") for n, priority in enumerate(priorities)]
    for priority, tag in sent:
        deployment.tasks.record.apply_async((tag,), priority=priority)

    # When a one-process worker that fetches one task at a time drains them
    deployment.start_worker("-c", "1", "--prefetch-multiplier", "1")
    executed = [entry.tag for entry in deployment.ledger.wait_for_count(len(sent))]

    # Then they ran highest priority first, and in sending order within a priority
    by_priority = sorted(sent, key=lambda pair: -pair[0])  # sorted() is stable: FIFO kept
    assert executed == [tag for _, tag in by_priority]


def test_a_countdown_task_does_not_run_early_nor_hold_a_worker_slot(
    deployment: Deployment,
) -> None:
    # Given a one-process worker that fetches one task at a time
    deployment.start_worker("-c", "1", "--prefetch-multiplier", "1").wait_ready()

    # When a task with a 5 s countdown is sent, then quick tasks after it
    sent_at = time.time()
    later = deployment.tasks.record.apply_async(("later",), countdown=COUNTDOWN)
    quick = [deployment.tasks.record.delay(f"quick-{n}") for n in range(10)]

    # Then the quick tasks all complete while the countdown task waits in the broker
    assert [r.get(timeout=COUNTDOWN - 1) for r in quick] == [f"quick-{n}" for n in range(10)]
    deployment.wait_for_queue(scheduled=1, ready=0, in_flight=0, timeout=1)
    assert time.time() < sent_at + COUNTDOWN  # all that, still before the ETA
    assert later.state == states.PENDING
    assert deployment.ledger.of("later") == []

    # And the countdown task runs, not before its ETA
    assert later.get(timeout=COUNTDOWN + 10) == "later"
    [run] = deployment.ledger.of("later")
    assert run.eta is not None
    assert run.eta >= sent_at + COUNTDOWN
    assert run.t >= run.eta

