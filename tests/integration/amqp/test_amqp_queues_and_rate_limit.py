"""task_queues on RabbitMQ (durable and transient queues as declared), and a global rate
limit with the RabbitMQ broker, whose token buckets live on the result backend (SQLite)
because RabbitMQ has no server-side counters."""

from __future__ import annotations

from rabbit_harness import Rabbit, RabbitDeployment
from rate_check import BUSIEST_AT_20, run_rate_check

from celeriac import App, Queue
from celeriac.brokers.buckets_sqlite import SQLiteBuckets
from celeriac.ratelimit import shared_buckets


def _durability(rabbit: Rabbit) -> dict[str, bool]:
    out = rabbit.ctl("list_queues", "-p", rabbit.vhost, "--no-table-headers", "--quiet",
                     "name", "durable")
    rows = (line.split() for line in out.splitlines() if line.strip())
    return {name: durable == "true" for name, durable in rows}


def test_task_queues_declare_durable_and_transient_queues_on_the_server(
    rabbit: Rabbit,
) -> None:
    # Given queues declared the Celery way, one of them transient
    app = App("proj", broker=rabbit.url(), backend="memory://",
              task_queues=[Queue("kept"), Queue("volatile", durable=False)])

    @app.task
    def noop() -> None: ...

    try:
        # When a task is sent to each
        noop.apply_async(queue="kept")
        noop.apply_async(queue="volatile")
        # Then RabbitMQ holds the one durable and the other not
        found = _durability(rabbit)
        assert found["kept"] is True
        assert found["volatile"] is False
    finally:
        app.close()


def test_a_global_rate_limit_holds_on_rabbitmq_through_the_result_backend(
    deployment: RabbitDeployment,
) -> None:
    # Given the RabbitMQ broker with SQLite results: the buckets are the backend's
    assert isinstance(shared_buckets(deployment.app), SQLiteBuckets)
    # When two worker processes run a backlog limited to 20/s
    report = run_rate_check(deployment, rate=20, seconds=5.0, workers=2)
    # Then the two together started 100 of them in 5 s, within 10%
    print(f"RabbitMQ + SQLite results, 2 processes: {report}")
    assert report.error <= 0.10, report
    assert report.busiest_second <= BUSIEST_AT_20, report
    assert len(report.pids) == 2, report
