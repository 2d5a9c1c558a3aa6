"""The exporter's view of the cluster, from the events (``monitor.cluster``)."""

from __future__ import annotations

from celeriac.monitor.cluster import ClusterView


def beat(kind: str, at: float, **fields: object) -> dict[str, object]:
    return {"type": kind, "hostname": "w@h", "timestamp": at, "freq": 2.0, **fields}


def test_a_node_is_up_until_it_misses_three_heartbeats_or_says_goodbye() -> None:
    view = ClusterView()
    view.apply(beat("worker-online", 100.0))
    view.apply(beat("worker-heartbeat", 102.0, active=3, processed=40,
                    loadavg=[0.5, 0.25, 1]))
    (worker,) = view.workers()
    assert (worker.active, worker.processed, worker.loadavg) == (3, 40, (0.5, 0.25, 1.0))
    assert worker.up(107.9)  # 3 heartbeats of 2 s may be missed
    assert not worker.up(108.1)
    view.apply(beat("worker-offline", 103.0))
    assert not view.workers()[0].up(103.5)


def test_outcomes_are_counted_by_task_name() -> None:
    view = ClusterView()
    for kind in ("task-received", "task-started", "task-succeeded", "task-failed",
                 "task-retried", "task-rejected", "task-revoked", "task-succeeded"):
        view.apply({"type": kind, "uuid": "1", "name": "proj.add"})
    assert view.outcomes() == {("proj.add", "succeeded"): 2, ("proj.add", "failed"): 1,
                               ("proj.add", "retried"): 1, ("proj.add", "rejected"): 1,
                               ("proj.add", "revoked"): 1}
