"""The Prometheus metrics of a worker node, in prometheus-client's exposition format.

Names (all ``celeriac_``):

- ``tasks_total{task, outcome}``: tasks finished by this node, by name and outcome
  (succeeded, failed, retried, rejected (dead-lettered), revoked), exact across its
  processes, replaced ones included (``monitor.tally``);
- ``task_runtime_seconds{task}``: a histogram of how long tasks ran;
- ``messages_refused_total{reason}``: messages a worker with signing on refused before
  decoding them (``unsigned``, ``bad_signature``, ``replay``; celeriac.security), all
  three reasons always present, so that an alert on a rate needs no ``absent()``;
- ``tasks_running``, ``tasks_prefetched``, ``worker_processes``, ``worker_slots``,
  ``worker_ready`` (1 while ``/readyz`` says ready): the node now, from shared memory;
- per queue the node consumes (``monitor.probe``, read from the broker at scrape time):
  ``queue_ready``, ``queue_scheduled``, ``queue_in_flight``, ``queue_dead_letters``,
  ``queue_oldest_age_seconds`` (on brokers that know it), and ``broker_up``;
- the exporter adds ``queue_alert_firing{queue, metric}`` for the ``queue_alerts`` it
  checks, and from the events (``monitor.cluster``) ``workers_online``,
  ``worker_up{worker}``, ``worker_tasks_active{worker}``,
  ``worker_tasks_processed{worker}`` and ``cluster_tasks_total{task, outcome}``.

Queue numbers are the broker's, so every node that consumes a queue reports the same
value: aggregate them with ``max by (queue)``, not ``sum``.

prometheus-client is an optional extra (``pip install 'celeriac[metrics]'``): this
module imports it only when metrics are asked for, and ``require_prometheus`` turns its
absence into one line that names the extra.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from celeriac.errors import ConfigurationError
from celeriac.monitor.health import readiness
from celeriac.monitor.tally import RUNTIME_BUCKETS, TaskTally
from celeriac.security.signing import REFUSALS

if TYPE_CHECKING:
    from celeriac.monitor.alerts import Alert
    from celeriac.monitor.cluster import ClusterView
    from celeriac.monitor.probe import QueuesSnapshot
    from celeriac.node.base import NodeSnapshot

PREFIX = "celeriac_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def require_prometheus(what: str) -> None:
    """Raise one clear line when prometheus-client is missing (``what`` needs it)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigurationError(f"{what} needs the prometheus-client library, which is not "
                                 "installed: pip install 'celeriac[metrics]'") from None


def task_families(tally: TaskTally) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    tasks = CounterMetricFamily(f"{PREFIX}tasks", "Tasks finished, by name and outcome "
                                "(succeeded, failed, retried, rejected, revoked).",
                                labels=["task", "outcome"])
    for (task, outcome), count in sorted(tally.tasks.items()):
        tasks.add_metric([task, outcome], count)
    yield tasks
    runtime = HistogramMetricFamily(f"{PREFIX}task_runtime_seconds",
                                    "How long tasks ran, by name.", labels=["task"])
    bounds = [*(repr(float(b)) for b in RUNTIME_BUCKETS), "+Inf"]
    for task, runtimes in sorted(tally.runtimes.items()):
        cumulative, buckets = 0, []
        for bound, count in zip(bounds, runtimes.buckets, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        runtime.add_metric([task], buckets, runtimes.total)
    yield runtime
    refused = CounterMetricFamily(f"{PREFIX}messages_refused", "Messages refused unread by "
                                  "a worker that runs only signed messages, by reason "
                                  "(unsigned, bad_signature, replay).", labels=["reason"])
    for reason in REFUSALS:
        refused.add_metric([reason], tally.refused.get(reason, 0))
    yield refused


def node_families(node: NodeSnapshot) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    yield GaugeMetricFamily(f"{PREFIX}tasks_running", "Tasks running now.", node.active)
    yield GaugeMetricFamily(f"{PREFIX}tasks_prefetched",
                            "Tasks fetched and waiting for a free slot.", node.reserved)
    yield GaugeMetricFamily(f"{PREFIX}worker_processes", "Live worker processes.",
                            len(node.processes))
    yield GaugeMetricFamily(f"{PREFIX}worker_slots", "Tasks the node can run at once.",
                            node.slots)
    yield GaugeMetricFamily(f"{PREFIX}worker_ready",
                            "1 while every process consumes (as /readyz).",
                            int(readiness(node).ok))


def queue_families(queues: QueuesSnapshot) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    yield GaugeMetricFamily(f"{PREFIX}broker_up",
                            "1 if the last read of the queues from the broker succeeded.",
                            int(queues.broker_up))
    families = {
        "ready": GaugeMetricFamily(f"{PREFIX}queue_ready", "Messages ready to be fetched.",
                                   labels=["queue"]),
        "scheduled": GaugeMetricFamily(f"{PREFIX}queue_scheduled",
                                       "Messages waiting for their ETA or countdown.",
                                       labels=["queue"]),
        "in_flight": GaugeMetricFamily(f"{PREFIX}queue_in_flight",
                                       "Messages leased to a worker.", labels=["queue"]),
        "dead_letters": GaugeMetricFamily(f"{PREFIX}queue_dead_letters",
                                          "Dead-lettered messages of the queue.",
                                          labels=["queue"]),
    }
    age = GaugeMetricFamily(f"{PREFIX}queue_oldest_age_seconds",
                            "How long the oldest ready message has waited.", labels=["queue"])
    for reading in queues.queues:
        for field, family in families.items():
            family.add_metric([reading.queue], getattr(reading, field))
        if reading.oldest_age is not None:
            age.add_metric([reading.queue], reading.oldest_age)
        elif reading.ready == 0:
            age.add_metric([reading.queue], 0.0)  # nothing waits: no latency
    yield from families.values()
    yield age


def alert_families(firing: Iterable[Alert]) -> Iterator[Any]:
    """The queue alerts firing now (``queue_alerts``, checked by the exporter)."""
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(f"{PREFIX}queue_alert_firing",
                               "1 for each queue alert firing now (queue_alerts), by queue "
                               "and metric (length, age).", labels=["queue", "metric"])
    for alert in sorted(firing, key=lambda a: (a.queue, a.metric)):
        family.add_metric([alert.queue, alert.metric], 1)
    yield family


def cluster_families(view: ClusterView, now: float) -> Iterator[Any]:
    """The workers and task outcomes the events told the exporter (``monitor.cluster``)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    workers = view.workers()
    yield GaugeMetricFamily(f"{PREFIX}workers_online", "Worker nodes heard from lately "
                            "(heartbeats) and not gone offline.",
                            sum(w.up(now) for w in workers))
    families = {
        "up": GaugeMetricFamily(f"{PREFIX}worker_up", "1 while the node sends heartbeats.",
                                labels=["worker"]),
        "active": GaugeMetricFamily(f"{PREFIX}worker_tasks_active",
                                    "Tasks the node ran at its last heartbeat.",
                                    labels=["worker"]),
        "processed": GaugeMetricFamily(f"{PREFIX}worker_tasks_processed",
                                       "Tasks the node finished since it started, at its "
                                       "last heartbeat.", labels=["worker"]),
    }
    for worker in workers:
        families["up"].add_metric([worker.hostname], int(worker.up(now)))
        families["active"].add_metric([worker.hostname], worker.active)
        families["processed"].add_metric([worker.hostname], worker.processed)
    yield from families.values()
    outcomes = CounterMetricFamily(f"{PREFIX}cluster_tasks", "Task outcomes seen in the "
                                   "events since the exporter started, by name and outcome.",
                                   labels=["task", "outcome"])
    for (task, outcome), count in sorted(view.outcomes().items()):
        outcomes.add_metric([task, outcome], count)
    yield outcomes


class Collector:
    """A prometheus-client collector over functions producing families at scrape time."""

    def __init__(self, *sources: Callable[[], Iterable[Any]]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Any]:
        for source in self._sources:
            yield from source()

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only (no describe-time broker reads)


def render(collector: Collector) -> bytes:
    """The exposition text of ``collector`` (a fresh registry: nothing process-wide)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
