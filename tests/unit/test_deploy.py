"""deploy/: the Grafana dashboard, the Prometheus rules and the Kubernetes manifests use
the metric names celeriac serves, and the Deployment's timings fit the warm shutdown."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from celeriac.monitor.metrics import Collector, node_families, queue_families, render, task_families
from celeriac.monitor.probe import QueueReading, QueuesSnapshot
from celeriac.monitor.tally import TaskTally
from celeriac.node.base import NodeSnapshot

DEPLOY = Path(__file__).parents[2] / "deploy"
METRIC = re.compile(r"\bceleriac_[a-z_]+\b")
SUPERVISOR_KILL_MARGIN = 10  # supervisor.py: children get shutdown_timeout + 10 s


def served_names() -> set[str]:
    tally = TaskTally()
    tally.count("t", "succeeded")
    tally.observe("t", 0.1)
    text = render(Collector(
        lambda: task_families(tally),
        lambda: node_families(NodeSnapshot("w", 1, "prefork", 0.0, ())),
        lambda: queue_families(QueuesSnapshot((QueueReading("q", 1, 0, 0, 0, 1.0),), True,
                                              0.0)))).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def used_names(text: str) -> set[str]:
    return set(METRIC.findall(text))


def test_the_dashboard_and_the_rules_name_served_metrics() -> None:
    served = served_names()
    dashboard = (DEPLOY / "grafana" / "celeriac.json").read_text()
    json.loads(dashboard)
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    scaling = (DEPLOY / "k8s" / "scaledobject.yaml").read_text()
    for where, text in (("dashboard", dashboard), ("alerts", rules), ("KEDA", scaling)):
        unknown = used_names(text) - served
        assert not unknown, f"the {where} uses metrics celeriac does not serve: {unknown}"


def test_the_dashboard_shows_what_operators_ask_for() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "celeriac.json").read_text())
    exprs = " ".join(target["expr"] for panel in dashboard["panels"]
                     for target in panel["targets"])
    for needed in ("rate(celeriac_tasks_total", "histogram_quantile(0.95",
                   "histogram_quantile(0.5", "celeriac_queue_ready",
                   "celeriac_queue_oldest_age_seconds", "celeriac_worker_processes",
                   'outcome=~"failed|rejected"'):
        assert needed in exprs


def test_the_alert_rules_cover_queues_failures_and_workers() -> None:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    rules = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    for name in ("CeleriacQueueTooLong", "CeleriacQueueTooOld", "CeleriacHighFailureRate",
                 "CeleriacWorkerDown"):
        assert rules[name]["expr"]
        assert rules[name]["labels"]["severity"] in ("warning", "critical")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules_and_their_tests() -> None:
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run(["promtool", *args], cwd=DEPLOY / "prometheus",
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def _documents(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()))


def test_the_worker_deployment_fits_the_warm_shutdown_and_probes_the_metrics_port() -> None:
    worker = next(d for d in _documents("worker.yaml")
                  if d["metadata"]["name"] == "celeriac-worker")
    pod = worker["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    shutdown = float(env["CELERIAC_WORKER_SHUTDOWN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] >= shutdown + SUPERVISOR_KILL_MARGIN
    assert "preStop" not in container.get("lifecycle", {})  # nothing to drain (see file)
    command = container["command"]
    assert command[:2] == ["celeriac", "-A"]  # exec form: SIGTERM reaches the supervisor
    port = int(command[command.index("--metrics-port") + 1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["resources"]["requests"]["cpu"]


def test_keda_scales_the_worker_deployment_on_queue_length_and_age() -> None:
    (scaled,) = _documents("scaledobject.yaml")
    assert scaled["kind"] == "ScaledObject"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "celeriac-worker"
    queries = [t["metadata"]["query"] for t in scaled["spec"]["triggers"]
               if t["type"] == "prometheus"]
    assert any("celeriac_queue_ready" in q for q in queries)
    assert any("celeriac_queue_oldest_age_seconds" in q for q in queries)
