"""Metrics without a worker: the per-process tally and its files, the node's sum, the
health answers, the exposition text, settings, and life without prometheus-client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from celeriac import App
from celeriac.errors import ConfigurationError
from celeriac.message import Message
from celeriac.monitor.health import liveness, readiness
from celeriac.monitor.metrics import Collector, node_families, queue_families, render, task_families
from celeriac.monitor.probe import QueueReading, QueuesSnapshot
from celeriac.monitor.tally import RUNTIME_BUCKETS, TallyReader, TallyWriter, TaskTally
from celeriac.node.base import NodeSnapshot
from celeriac.outcome import Outcome
from celeriac.worker.executor import Action, Verdict
from celeriac.worker.status import StatusBoard


def _message(task: str) -> Message:
    return Message(id="id-1", task=task, args=(), kwargs={})


def test_verdicts_are_counted_under_their_outcomes() -> None:
    tally = TaskTally()
    message = _message("proj.add")
    tally.count_verdict(Verdict(Action.ACK, Outcome("SUCCESS", 3), message=message))
    tally.count_verdict(Verdict(Action.ACK, Outcome("FAILURE", None), message=message))
    tally.count_verdict(Verdict(Action.ACK, Outcome("REVOKED", None), message=message))
    tally.count_verdict(Verdict(Action.RETRY, message=message))
    tally.count_verdict(Verdict(Action.DEAD_LETTER, reason="undecodable"))
    tally.count_verdict(Verdict(Action.DEFER, message=message))  # runs later: not yet
    tally.count_verdict(Verdict(Action.REQUEUE, message=message))
    tally.fold()
    assert dict(tally.tasks) == {("proj.add", "succeeded"): 1, ("proj.add", "failed"): 1,
                                 ("proj.add", "revoked"): 1, ("proj.add", "retried"): 1,
                                 ("unknown", "rejected"): 1}


def test_run_times_fall_in_inclusive_buckets() -> None:
    tally = TaskTally()
    tally.observe("t", RUNTIME_BUCKETS[0])  # le is inclusive
    tally.observe("t", 0.0007)
    tally.observe("t", 10_000.0)  # +Inf
    buckets = tally.runtimes["t"].buckets
    assert (buckets[0], buckets[1], buckets[-1], sum(buckets)) == (1, 1, 1, 3)


def test_the_node_sums_live_and_replaced_processes_exactly(tmp_path: Path) -> None:
    first, second = TaskTally(), TaskTally()
    first_file, second_file = TallyWriter(first, tmp_path), TallyWriter(second, tmp_path)
    assert first_file.path != second_file.path  # same pid, still one file each
    for _ in range(3):
        first.count("a", "succeeded")
    first.observe("a", 0.002)
    second.count("a", "succeeded")
    first_file.write(final=True)  # replaced: its last write
    second_file.write()
    reader = TallyReader(tmp_path)
    assert reader.read().tasks[("a", "succeeded")] == 4
    assert not first_file.path.exists()  # folded into the node's running total
    second.count("a", "failed")
    second_file.write()
    total = reader.read()
    assert (total.tasks[("a", "succeeded")], total.tasks[("a", "failed")]) == (4, 1)
    assert total.runtimes["a"].count == 1
    assert [p.suffix for p in tmp_path.iterdir()] == [".json"]  # no temporary left


def test_an_idle_process_does_not_rewrite_its_file(tmp_path: Path) -> None:
    tally = TaskTally()
    writer = TallyWriter(tally, tmp_path)
    tally.count("a", "succeeded")
    writer.write()
    stamp = os.stat(writer.path).st_mtime_ns
    os.utime(writer.path, ns=(0, 0))
    writer.write()
    assert os.stat(writer.path).st_mtime_ns == 0 != stamp


def _node(*, consuming: bool) -> NodeSnapshot:
    board = StatusBoard(None, 2)
    for index in (0, 1):
        board.slot(index).publish(pid=100 + index, slots=1, active=index, reserved=2,
                                  processed=5, consuming=consuming)
    return NodeSnapshot("w@h", 1, "prefork", 0.0, tuple(board.read([0, 1])), 7)


def test_ready_means_every_process_consumes() -> None:
    assert readiness(_node(consuming=True)).status == 200
    answer = readiness(_node(consuming=False))
    assert answer.status == 503
    assert answer.reason.startswith("not ready: process(es) 0, 1 not consuming")
    empty = NodeSnapshot("w@h", 1, "prefork", 0.0, ())
    assert readiness(empty).status == 503


def test_live_until_a_process_loop_stalls() -> None:
    node = _node(consuming=False)  # waiting for its broker is not a liveness failure
    now = node.processes[0].beat
    assert liveness(node, now + 1).status == 200
    stalled = liveness(node, now + 31)
    assert stalled.status == 503
    assert "event loop of process 0 (pid 100" in stalled.reason


def test_the_exposition_names_and_values() -> None:
    tally = TaskTally()
    tally.count("proj.add", "succeeded")
    tally.count("proj.add", "succeeded")
    tally.observe("proj.add", 0.003)
    queues = QueuesSnapshot((QueueReading("celeriac", 5, 1, 2, 3, 12.5),
                             QueueReading("idle", 0, 0, 0, 0, None)), True, 0.0)
    text = render(Collector(lambda: task_families(tally),
                            lambda: node_families(_node(consuming=True)),
                            lambda: queue_families(queues))).decode()
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(text) for s in family.samples}
    assert found[("celeriac_tasks_total", (("outcome", "succeeded"), ("task", "proj.add")))] == 2
    assert found[("celeriac_task_runtime_seconds_bucket",
                  (("le", "0.001"), ("task", "proj.add")))] == 0
    assert found[("celeriac_task_runtime_seconds_bucket",
                  (("le", "0.005"), ("task", "proj.add")))] == 1
    assert found[("celeriac_task_runtime_seconds_count", (("task", "proj.add"),))] == 1
    assert found[("celeriac_tasks_running", ())] == 1
    assert found[("celeriac_tasks_prefetched", ())] == 4
    assert found[("celeriac_worker_processes", ())] == 2
    assert found[("celeriac_worker_ready", ())] == 1
    assert found[("celeriac_queue_ready", (("queue", "celeriac"),))] == 5
    assert found[("celeriac_queue_scheduled", (("queue", "celeriac"),))] == 1
    assert found[("celeriac_queue_in_flight", (("queue", "celeriac"),))] == 2
    assert found[("celeriac_queue_dead_letters", (("queue", "celeriac"),))] == 3
    assert found[("celeriac_queue_oldest_age_seconds", (("queue", "celeriac"),))] == 12.5
    assert found[("celeriac_queue_oldest_age_seconds", (("queue", "idle"),))] == 0
    assert found[("celeriac_broker_up", ())] == 1


def test_the_metrics_settings_are_checked() -> None:
    app = App("t", worker_metrics_port=9808)
    assert (app.conf.worker_metrics_port, app.conf.worker_metrics_host) == (9808, "0.0.0.0")
    with pytest.raises(ConfigurationError, match="worker_metrics_port must be a TCP port"):
        App("t", worker_metrics_port=70000)


def test_celeriac_works_without_prometheus_client_and_says_which_extra(tmp_path: Path,
                                                                      ) -> None:
    (tmp_path / "proj.py").write_text("from celeriac import App\napp = App('proj')\n")
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import celeriac, celeriac.cli.main, celeriac.supervisor.supervisor\n"
        "sys.argv = ['celeriac', '-A', 'proj', 'worker', '--metrics-port', '9']\n"
        "celeriac.cli.main.main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path,
                          env={**os.environ, "CELERIAC_BROKER_URL": "memory://",
                               "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])})
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: --metrics-port (worker_metrics_port) needs the prometheus-client library, "
        "which is not installed: pip install 'celeriac[metrics]'")


def test_the_commands_and_options_are_in_the_help() -> None:
    from click.testing import CliRunner

    from celeriac.cli.main import cli

    assert "exporter" in CliRunner().invoke(cli, ["--help"]).output
    worker_help = CliRunner().invoke(cli, ["worker", "--help"]).output
    assert "--metrics-port" in worker_help
    assert "--metrics-host" in worker_help
