"""Workers that die: their tasks run again, and a task that keeps killing them is set aside.

Every task here writes to a ledger, so the tests count executions exactly. Leases are
2 s, so a dead process's tasks come back within seconds.
"""

from __future__ import annotations

from collections import Counter

from lease_cases import a_paused_workers_task_runs_elsewhere_and_its_late_result_is_refused
from worker_harness import LEASE_SECONDS, Deployment, kill_pid, wait_until

from celeriac import states


def test_a_task_whose_process_is_killed_runs_again_in_a_replacement(
    deployment: Deployment,
) -> None:
    # Given a prefork worker with two processes, running a task that hangs the first time
    # (acks late, the default: at-least-once)
    worker = deployment.start_worker("-c", "2").wait_ready(2)
    children = {child.pid for child in worker.children()}
    result = deployment.tasks.hang_once.delay("victim")
    first = deployment.ledger.wait_for("victim")[0]
    assert first.pid in children

    # When the process running it is killed with SIGKILL, mid-task
    kill_pid(first.pid)

    # Then the task runs again in another process, and its result arrives
    assert result.get(timeout=20) == "victim"
    runs = deployment.ledger.of("victim")
    assert [run.delivery for run in runs] == [1, 2]
    assert runs[1].pid != first.pid
    # And the supervisor replaced the dead process: two live children, the dead one gone
    wait_until(lambda: len(live := {c.pid for c in worker.children()}) == 2
               and first.pid not in live, 10, "a replacement worker process")
    assert worker.running


def test_a_task_of_a_killed_worker_runs_on_a_new_worker(deployment: Deployment) -> None:
    # Given a worker running a task that hangs the first time, and other tasks queued
    first_worker = deployment.start_worker("-c", "2").wait_ready(2)
    result = deployment.tasks.hang_once.delay("victim")
    deployment.ledger.wait_for("victim")
    queued = [deployment.tasks.record.delay(f"queued-{n}") for n in range(10)]

    # When the whole worker (supervisor and children) is killed with SIGKILL
    first_worker.kill_all()
    # and a new worker is started
    deployment.start_worker("-c", "2").wait_ready(2)

    # Then the interrupted task runs again there and its result arrives; nothing is lost
    assert result.get(timeout=20) == "victim"
    assert [r.get(timeout=20) for r in queued] == [f"queued-{n}" for n in range(10)]
    assert [run.delivery for run in deployment.ledger.of("victim")] == [1, 2]


def test_an_early_acked_task_is_not_run_again_after_its_process_dies(
    deployment: Deployment,
) -> None:
    # Given a worker running a task with acks_late=False (at-most-once), hanging
    worker = deployment.start_worker("-c", "1").wait_ready()
    result = deployment.tasks.hang_once_acks_early.delay("once")
    [first] = deployment.ledger.wait_for("once")
    # Its message left the broker before it ran, so no worker can ever get it again
    deployment.wait_for_queue(ready=0, in_flight=0, timeout=5)

    # When its process is killed mid-task
    kill_pid(first.pid)

    # Then a replacement process works on, but the task does not run again
    assert deployment.tasks.record.delay("after").get(timeout=20) == "after"
    assert deployment.ledger.tags() == ["once", "after"]
    deployment.wait_for_queue(ready=0, in_flight=0)
    assert result.state == states.PENDING
    assert worker.running


def test_a_task_that_kills_its_process_every_time_is_dead_lettered(
    deployment: Deployment,
) -> None:
    # Given a worker with a delivery limit of 3
    worker = deployment.start_worker("-c", "2", task_delivery_limit=3).wait_ready(2)

    # When a task that kills its own process is sent, among ordinary tasks
    poison = deployment.tasks.suicide.delay("poison")
    others = [deployment.tasks.record.delay(f"ok-{n}") for n in range(20)]

    # Then the ordinary tasks complete while the poison keeps killing processes
    assert [r.get(timeout=30) for r in others] == [f"ok-{n}" for n in range(20)]
    # And after three deliveries the poison is dead-lettered, saying why
    dead = wait_until(lambda: [d for d in deployment.probe.dead_letters() if d.id == poison.id],
                      30, "the poison message in the dead letters")
    assert "delivery limit" in dead[0].reason
    assert f"Message {poison.id} dead-lettered: delivery limit exceeded" in worker.log()
    assert [run.delivery for run in deployment.ledger.of("poison")] == [1, 2, 3]
    assert poison.state == states.PENDING  # never finished: no result, but not lost either
    # And nothing else was dead-lettered or run twice, and the worker keeps working
    assert [d.id for d in deployment.probe.dead_letters()] == [poison.id]
    assert deployment.tasks.record.delay("after").get(timeout=20) == "after"
    executions = Counter(deployment.ledger.tags())
    assert {tag: n for tag, n in executions.items() if n > 1} == {"poison": 3}
    deployment.wait_for_queue(ready=0, in_flight=0)
    assert worker.running


def test_a_paused_workers_task_runs_elsewhere_and_its_late_result_is_refused(
    deployment: Deployment,
) -> None:
    a_paused_workers_task_runs_elsewhere_and_its_late_result_is_refused(
        deployment, LEASE_SECONDS)
