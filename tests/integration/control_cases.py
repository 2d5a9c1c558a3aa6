"""Inspect and control on real worker processes, the same scenarios on every broker.

``tests/integration/test_control_workers.py`` (SQLite), ``redis/test_redis_control.py``
and ``amqp/test_amqp_control.py`` run these on their own deployments
(``worker_harness.Deployment`` and its Redis and RabbitMQ kinds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from worker_harness import Deployment, WorkerProcess, wait_until

from celeriac.worker.child import EXIT_REFUSED

SECRET = "hunter2-not-for-your-eyes"


def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"alpha-{tag}@%h", f"beta-{tag}@%h"


def node(template: str) -> str:
    from celeriac.worker.options import expand_nodename

    return expand_nodename(template)


def _within(seconds: float, call: Any) -> Any:
    began = time.monotonic()
    value = call()
    assert time.monotonic() - began < seconds + 0.5, "the replies took too long"
    return value


def wait_reachable(world: Deployment, processes: dict[str, int]) -> None:
    """Wait until each node's processes all answer (a worker logs that it consumes a
    moment before its control listener reads)."""
    def answered() -> bool:
        stats = world.app.control.inspect(list(processes), timeout=0.3).stats() or {}
        return all(len(stats.get(name, {}).get("pool", {}).get("processes", [])) == count
                   for name, count in processes.items())
    wait_until(answered, 20, f"{processes} answering remote control")


def two_nodes_answer_and_obey(world: Deployment) -> None:
    """ping, active, registered, stats, active_queues within 1 s from two nodes; then
    pool_grow/pool_shrink (prefork), add_consumer/cancel_consumer, rate_limit, conf."""
    a_name, b_name = names()
    a, b = node(a_name), node(b_name)
    # A secret in a URL, where no broker looks at it (a queue name a route gives).
    routes = {"ledger.never": {"queue": f"https://user:{SECRET}@hooks.example/x"}}
    alpha = world.start_worker("-n", a_name, "-c", "1", task_routes=routes)
    beta = world.start_worker("-n", b_name, "-P", "threads", "-c", "2")
    alpha.wait_ready()
    beta.wait_ready()
    wait_reachable(world, {a: 1, b: 1})
    inspect = world.app.control.inspect(timeout=1.0)

    # Both answer, within the 1 s timeout.
    assert _within(1.0, inspect.ping) == {a: {"ok": "pong"}, b: {"ok": "pong"}}
    running = world.tasks.sleepy.delay("busy", 20)
    world.ledger.wait_for("busy")
    active = _within(1.0, inspect.active)
    assert set(active) == {a, b}
    shown = [task for tasks in active.values() for task in tasks]
    assert [(t["id"], t["name"], t["args"]) for t in shown] == [
        (running.id, "ledger.sleepy", "('busy', 20)")]
    assert shown[0]["worker_pid"] in {e.pid for e in world.ledger.of("busy")}
    registered = _within(1.0, inspect.registered)
    assert all("ledger.sleepy" in registered[name] for name in (a, b))
    stats = _within(1.0, inspect.stats)
    assert stats[a]["pool"]["implementation"] == "prefork"
    assert stats[a]["pid"] == alpha.pid
    assert stats[b]["pool"]["max-concurrency"] == 2
    queues = _within(1.0, inspect.active_queues)
    assert {name: [q["name"] for q in qs] for name, qs in queues.items()} == {
        a: ["celeriac"], b: ["celeriac"]}

    # Asked by name, the nodes say which processes answer: no need to wait the timeout.
    began = time.monotonic()
    assert set(world.app.control.inspect([a, b], timeout=5).active_queues()) == {a, b}
    assert time.monotonic() - began < 1.0

    # conf: no secret, whatever the setting
    conf = inspect.conf(with_defaults=True)
    assert conf is not None
    assert SECRET not in json.dumps(conf)
    assert "user:***@hooks.example" in json.dumps(conf[a]["task_routes"])
    broker_url = conf[a]["broker_url"]  # RabbitMQ's has a password (guest)
    assert "@" not in broker_url or ":***@" in broker_url

    _pool_grows_and_shrinks(world, alpha, a)
    _consumers_change(world, a, b)
    _rate_limit_takes_effect(world, a, b)
    world.app.control.revoke(running.id, terminate=True)


def _pool_grows_and_shrinks(world: Deployment, alpha: WorkerProcess, a: str) -> None:
    control = world.app.control
    assert control.pool_grow(2, destination=[a], reply=True) == [
        {a: {"ok": "pool will grow to 3"}}]
    wait_until(lambda: len(alpha.children()) == 3, 20, "3 processes after pool_grow")
    wait_until(lambda: len((control.inspect([a]).stats() or {}).get(a, {}).get(
        "pool", {}).get("processes", [])) == 3, 20, "stats showing 3 processes")
    assert control.pool_shrink(2, destination=[a], reply=True) == [
        {a: {"ok": "pool will shrink to 1"}}]
    wait_until(lambda: len(alpha.children()) == 1, 30, "1 process after pool_shrink")


def _consumers_change(world: Deployment, a: str, b: str) -> None:
    control = world.app.control
    extra = world.tasks.record.apply_async(("extra-1",), queue="extra")
    assert control.add_consumer("extra", destination=[b], reply=True) == [
        {b: {"ok": "add consumer extra"}}]
    assert extra.get(timeout=10) == "extra-1"
    queues = control.inspect([b]).active_queues()
    assert [q["name"] for q in queues[b]] == ["celeriac", "extra"]
    assert control.cancel_consumer("extra", destination=[b], reply=True) == [
        {b: {"ok": "no longer consuming from extra"}}]
    assert [q["name"] for q in control.inspect([b]).active_queues()[b]] == ["celeriac"]
    left = world.tasks.record.apply_async(("extra-2",), queue="extra")
    time.sleep(1.0)  # what nobody consumes stays put: give a wrong worker time to take it
    assert world.ledger.of("extra-2") == []
    assert left.state == "PENDING"
    stats = world.probe.stats("extra")  # ready, not held (prefetched) by anyone
    assert (stats.ready, stats.in_flight) == (1, 0), stats


def _rate_limit_takes_effect(world: Deployment, a: str, b: str) -> None:
    control = world.app.control
    replies = control.rate_limit("ledger.add", "4/s", reply=True)
    assert replies is not None
    assert dict(item for reply in replies for item in reply.items()) == {
        a: {"ok": "new rate limit set successfully"},
        b: {"ok": "new rate limit set successfully"}}
    results = [world.tasks.add.delay(i, 0) for i in range(9)]
    assert [r.get(timeout=20) for r in results] == list(range(9))
    starts = sorted(entry.t for entry in world.ledger.entries() if entry.task == "ledger.add")
    # 4 a second, after the bucket's first token: 9 tasks take at least about 2 s.
    assert starts[-1] - starts[0] >= 1.5, starts
    control.rate_limit("ledger.add", None)


def duplicate_name_is_refused(world: Deployment) -> None:
    name, _ = names()
    first = world.start_worker("-n", name, "-P", "threads", "-c", "1")
    first.wait_ready()
    wait_reachable(world, {node(name): 1})
    second = world.start_worker("-n", name, "-P", "solo")
    assert second.wait(30) == EXIT_REFUSED
    log = second.log()
    assert f"a live worker node is already named {node(name)}" in log
    assert "-n other@%h" in log
    assert first.running


def cli_json_shapes(world: Deployment) -> None:
    name, _ = names()
    worker = world.start_worker("-n", name, "-P", "threads", "-c", "2")
    worker.wait_ready()
    me = node(name)
    wait_reachable(world, {me: 1})

    def celeriac(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "celeriac", "-A", "ledger_app", *args],
                              env={**world.env(), "LEDGER_PATH": os.devnull}, cwd=world.root,
                              capture_output=True, text=True, timeout=60, check=False)

    status = celeriac("status", "--json")
    assert status.returncode == 0, status.stderr
    assert me in json.loads(status.stdout)
    ping = celeriac("inspect", "ping", "-d", me, "--json")
    assert json.loads(ping.stdout) == {me: {"ok": "pong"}}
    stats = json.loads(celeriac("inspect", "stats", "-d", me, "--json").stdout)
    assert stats[me]["pool"]["max-concurrency"] == 2
    grow = celeriac("control", "pool_grow", "1", "-d", me, "--json")
    assert json.loads(grow.stdout) == {me: {"ok": "pool will grow to 3"}}
    table = celeriac("inspect", "active_queues", "-d", me)
    assert me in table.stdout
    assert "celeriac" in table.stdout
    nobody = celeriac("inspect", "ping", "-d", "nobody@nowhere", "-t", "0.3")
    assert nobody.returncode == 1
    assert nobody.stderr.strip().splitlines() == [
        "Error: no worker node replied within 0.3s (asked nobody@nowhere)"]
