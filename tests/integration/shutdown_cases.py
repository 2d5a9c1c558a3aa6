"""Shutdown scenarios run on every broker (SQLite here, Redis and RabbitMQ in their folders).

The signal handling is broker-independent, but what "handed back" means is not (a
lease released, a stream entry put back, a copy republished), so each broker runs them.
"""

from __future__ import annotations

import signal
from collections import Counter

from worker_harness import Deployment


def group_sigterm_is_a_warm_shutdown(deployment: Deployment) -> None:
    """SIGTERM to the whole process group (systemd's KillMode=control-group, supervisord's
    stopasgroup, ``kill -TERM -PGID``) stops warmly, exactly as SIGTERM to the supervisor."""
    # Given a two-process worker running a slow task, with more tasks queued behind it
    worker = deployment.start_worker("-c", "2").wait_ready(2)
    tasks = deployment.tasks
    slow = tasks.sleepy.delay("slow", 2.0)
    deployment.ledger.wait_for("slow")
    queued = {f"queued-{n}": tasks.sleepy.delay(f"queued-{n}", 0.2) for n in range(12)}

    # When every process of the worker gets SIGTERM at once (each child gets it twice:
    # from the group signal and relayed by the supervisor)
    worker.signal_group(signal.SIGTERM)

    # Then the running task finishes within the grace period, and the worker exits 0
    assert worker.wait(30) == 0
    assert slow.get(timeout=5) == "slow"
    started, finished = deployment.ledger.tags("start"), deployment.ledger.tags("done")
    assert sorted(started) == sorted(finished)  # nothing was cut short
    # And its log tells what happened: a warm shutdown, no cold stop, no lost grace
    log = worker.log()
    assert "warm shutdown" in log
    # (whether a child logs "already shutting down warmly" depends on whether the kernel
    # merged the two SIGTERMs before the child read them: both are a warm shutdown)
    assert "cold shutdown" not in log
    assert "cold stop:" not in log  # the consumer cutting running tasks short
    assert "grace period; they will be delivered again" not in log
    # And every other task is back in the queue, not leased, and runs exactly once later
    deployment.wait_for_queue(ready=len(set(queued) - set(finished)), timeout=10)
    deployment.start_worker("-c", "2")
    assert {tag: r.get(timeout=30) for tag, r in queued.items()} == {t: t for t in queued}
    assert Counter(deployment.ledger.tags()) == Counter(["slow", *queued])


def sigquit_after_a_group_sigterm_is_a_cold_stop(deployment: Deployment) -> None:
    """A cold stop still takes an explicit second request to the supervisor."""
    # Given a worker warmly stopping (group SIGTERM) while a minute-long task runs
    worker = deployment.start_worker("-c", "1").wait_ready()
    result = deployment.tasks.hang_once.delay("long")
    deployment.ledger.wait_for("long")
    worker.signal_group(signal.SIGTERM)
    worker.wait_for_log("warm shutdown: finishing running tasks", 1, 10)
    # (and the supervisor has handled it: a second SIGTERM arriving before its handler
    # ran would merge with the first, as the kernel does with any pending signal)
    worker.wait_for_log("celeriac.supervisor: warm shutdown (SIGTERM)", 1, 10)
    assert worker.running  # still waiting for the task: the grace period holds

    # When the supervisor alone gets a second SIGTERM
    worker.signal(signal.SIGTERM)

    # Then the stop is cold: the worker exits now, the task goes back and runs again
    assert worker.wait(15) == 0
    assert "cold shutdown" in worker.log()
    deployment.start_worker("-c", "1")
    assert result.get(timeout=30) == "long"
    assert deployment.ledger.tags("done") == ["long"]
