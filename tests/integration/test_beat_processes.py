"""Beat on real processes, on SQLite, Redis and RabbitMQ (state on a Redis backend).

- Three ``celeriac beat`` processes run a 1-second schedule while the leader is killed
  with SIGKILL twice; then one beat is started again after they all stopped. A worker
  runs every sent run, and the ledger of executions must hold each due time from the
  first to the last exactly once, with the task id made from it: none repeated (not even
  by the restarted beat), none skipped.
- A schedule added, paused, resumed and removed through ``app.beat`` and through
  ``celeriac beat add|pause|resume|remove`` takes effect on the running leader within a
  second.

Redis: DB 14 under a key prefix of the test's own; RabbitMQ: a namespace of its own.
Both are deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from worker_harness import APPS_DIR, wait_until

from celeriac import App
from celeriac.beat.scheduler import run_id
from celeriac.beat.store import RunState

sys.path.insert(0, str(APPS_DIR))
from beat_app import BEAT_SCHEDULE, LEDGER_ENV, TASK

REDIS = "redis://127.0.0.1:6379/14"
AMQP = "amqp://guest:guest@127.0.0.1:5672//"
KINDS = ["sqlite", "redis", "amqp"]


class Process:
    """``python -m celeriac -A beat_app <args>`` in its own session, logging to a file."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log_path = log
        self._log: IO[bytes] = log.open("wb")
        self.popen = subprocess.Popen([sys.executable, "-m", "celeriac", "-A", "beat_app",
                                       *args], env=env, cwd=cwd, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.popen.send_signal(signal.SIGTERM)
        self.popen.wait(15)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(10)
        self._log.close()


class World:
    """One test's broker, backend, ledger, producer-side app and processes."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind, self.root = kind, root
        self.ledger = root / "ledger.jsonl"
        self.ledger.touch()
        tag = uuid.uuid4().hex[:10]
        self.prefix = f"beattest:{tag}:"
        self.namespace = f"beattest.{tag}."
        settings: dict[str, Any]
        if kind == "sqlite":
            url = f"sqlite:///{root / 'broker.db'}"
            settings = {"broker_url": url, "result_backend": url}
        elif kind == "redis":
            settings = {"broker_url": REDIS, "result_backend": f"{REDIS}?key_prefix="
                        f"{self.prefix}r:", "broker_transport_options": {
                            "key_prefix": self.prefix}}
        else:
            settings = {"broker_url": AMQP, "result_backend": f"{REDIS}?key_prefix="
                        f"{self.prefix}", "broker_transport_options": {
                            "namespace": self.namespace}}
        self.settings = settings
        self.app = App("beat_app", beat_schedule=BEAT_SCHEDULE, **settings)
        self.processes: list[Process] = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERIAC_",
                                                                          "CELERY_"))}
        env["PYTHONPATH"] = os.pathsep.join([str(APPS_DIR), os.environ.get("PYTHONPATH",
                                                                            "")])
        env[LEDGER_ENV] = str(self.ledger)
        for name, value in self.settings.items():
            env[f"CELERIAC_{name.upper()}"] = json.dumps(value)
        return env

    def start(self, *args: str) -> Process:
        log = self.root / f"{args[0]}-{len(self.processes)}.log"
        process = Process([*args, "-l", "INFO"] if args[0] == "worker" else
                          [args[0], "-l", "INFO", *args[1:]], self.env(), self.root, log)
        self.processes.append(process)
        return process

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "celeriac", "-A", "beat_app", "beat",
                               *args], env=self.env(), cwd=self.root, capture_output=True,
                              text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def state(self, entry: str) -> RunState | None:
        return self.app.beat.store.states().get(entry)

    def leader_pid(self) -> int | None:
        leader = self.app.beat.leader()
        return None if leader is None else int(leader.holder.split(":")[-2])

    def executions(self) -> list[dict[str, Any]]:
        lines = self.ledger.read_bytes().split(b"\n")[:-1]
        return [json.loads(line) for line in lines]

    def close(self) -> None:
        for process in self.processes:
            process.kill()
        self.app.beat.close()
        self.app.close()
        if self.kind != "sqlite":
            import redis

            client = redis.Redis.from_url(REDIS)
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
        if self.kind == "amqp":
            import asyncio

            from celeriac.brokers import create_broker

            async def delete() -> None:
                broker = create_broker(AMQP, {"namespace": self.namespace})
                try:
                    await broker.delete_namespace()  # type: ignore[attr-defined]
                finally:
                    await broker.close()

            asyncio.run(delete())

    def logs(self) -> str:
        return "\n".join(f"----- {p.popen.args}\n{p.log()[-6000:]}" for p in self.processes)


def _server_running(kind: str) -> None:
    import socket

    port = {"redis": 6379, "amqp": 5672}.get(kind)
    needed = [6379] if kind != "sqlite" else []
    needed += [port] if port is not None and port not in needed else []
    for number in needed:
        try:
            socket.create_connection(("127.0.0.1", number), timeout=2).close()
        except OSError:
            if os.environ.get("CI"):
                pytest.fail(f"no server on 127.0.0.1:{number} for the {kind} beat tests")
            pytest.skip(f"no server on 127.0.0.1:{number}")


@pytest.fixture(params=KINDS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    _server_running(request.param)
    created = World(request.param, tmp_path)
    try:
        yield created
    except BaseException:
        print(created.logs())
        raise
    finally:
        created.close()


def _sent_at_least(world: World, count: int, after: float) -> None:
    """Wait until the tick entry's last sent run is ``count`` runs past ``after``."""
    def enough() -> bool:
        state = world.state("tick")
        return state is not None and state.last_due is not None and \
            state.last_due >= after + count
    wait_until(enough, 15, f"{count} more runs of tick")


def test_three_beats_with_the_leader_killed_twice_send_every_run_once(world: World) -> None:
    worker = world.start("worker", "-P", "threads", "-c", "4")
    beats = [world.start("beat") for _ in range(3)]
    leaders: list[int] = []
    takeovers: list[float] = []
    killed_at = None
    for _ in range(3):
        pid = wait_until(lambda: (p := world.leader_pid()) not in (None, *leaders) and p,
                         15, "a new leader")
        if killed_at is not None:
            takeovers.append(time.monotonic() - killed_at)
        leaders.append(pid)
        _sent_at_least(world, 3, time.time())
        if len(leaders) < 3:
            next(b for b in beats if b.pid == pid).kill()  # SIGKILL: no goodbye
            killed_at = time.monotonic()
    assert len(set(leaders)) == 3
    print(f"takeover after SIGKILL: {', '.join(f'{t:.2f}s' for t in takeovers)}")
    assert max(takeovers) < 5.0  # the lease (3 s) runs out, a follower tries each 0.5 s
    for beat in beats:
        if beat.popen.poll() is None:
            beat.stop()
    # A beat started again after a stop goes on where the others left off.
    stopped = world.state("tick")
    assert stopped is not None
    assert stopped.last_due is not None
    restarted = world.start("beat")
    _sent_at_least(world, 3, stopped.last_due)
    restarted.stop()
    final = world.state("tick")
    assert final is not None
    assert final.last_due is not None
    assert final.pending is None
    count = round(final.last_due - final.anchor)
    expected = [final.anchor + k * 1.0 for k in range(1, count + 1)]
    assert count >= 15
    wait_until(lambda: len(world.executions()) >= count, 30, f"{count} executions")
    world.app._run_sync(world.app.connect_broker())  # closed with the app
    wait_until(lambda: world.app._run_sync(world.app.broker.queue_stats(["celeriac"]))[0]
               .ready == 0, 15, "the queue to drain")
    runs = world.executions()
    dues = sorted(run["due"] for run in runs)
    assert dues == expected, worker.log()[-3000:]  # each once; none skipped
    assert all(run["id"] == run_id("tick", run["due"]) and run["entry"] == "tick"
               for run in runs)


def _check_changes(world: World, name: str, add: Any, pause: Any, resume: Any,
                   remove: Any) -> None:
    """Add, pause, resume, remove ``name`` (every 1 s) while a beat leads."""
    add()
    added = time.time()
    state = wait_until(lambda: world.state(name), 5, f"{name} scheduled")
    print(f"{name}: added, picked up after {state.anchor - added:.3f}s")
    assert state.anchor - added < 1.0  # the leader picked it up within a second
    wait_until(lambda: (s := world.state(name)) is not None and s.last_due, 5,
               f"a run of {name}")

    pause()
    paused = time.time()

    def skipped_since_pause() -> bool:
        current = world.state(name)
        return current is not None and current.cursor > paused + 0.5 \
            and current.pending is None
    wait_until(skipped_since_pause, 5, f"{name} skipping runs while paused")
    current = world.state(name)
    assert current is not None
    assert current.last_due is not None
    assert current.last_due <= paused  # no run recorded after pause() returned

    resume()
    resumed = time.time()
    wait_until(lambda: (s := world.state(name)) is not None and s.last_due is not None
               and s.last_due > resumed, 5, f"{name} running again")
    current = world.state(name)
    assert current is not None
    assert current.last_due is not None
    assert current.last_due - resumed < 2.0  # picked up within a second, due within one

    remove()
    assert world.state(name) is None  # its runs are gone with it
    assert name not in {info.name for info in world.app.beat.list()}


def test_schedule_changes_reach_the_running_leader_within_a_second(world: World) -> None:
    beat = world.start("beat")
    wait_until(world.leader_pid, 15, "a leader")
    beat_api = world.app.beat
    _check_changes(world, "api", lambda: beat_api.add("api", TASK, 1.0),
                   lambda: beat_api.pause("api"), lambda: beat_api.resume("api"),
                   lambda: beat_api.remove("api"))
    _check_changes(world, "cli", lambda: world.cli("add", "cli", TASK, "--every", "1"),
                   lambda: world.cli("pause", "cli"), lambda: world.cli("resume", "cli"),
                   lambda: world.cli("remove", "cli"))
    listed = world.cli("list")
    assert "tick" in listed
    assert f"leader: {world.app.beat.leader().holder}" in listed  # type: ignore[union-attr]
    # Nothing removed comes back, even from a leader that read the entry just before.
    time.sleep(1.0)
    assert world.state("api") is None
    assert world.state("cli") is None
    beat.stop()


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_worker_dash_b_runs_beat_and_hands_over_when_its_node_stops(tmp_path: Path,
                                                                     pool: str) -> None:
    world = World("sqlite", tmp_path)
    try:
        nodes = [world.start("worker", "-B", "-P", pool) for _ in range(2)]
        leader = wait_until(world.leader_pid, 15, "a -B node leading")
        assert leader in {node.pid for node in nodes}  # the supervisor (or solo) process
        _sent_at_least(world, 3, time.time())
        first = next(node for node in nodes if node.pid == leader)
        first.stop()  # a warm shutdown: beat gives the lease up
        stopped = time.time()
        other = wait_until(lambda: (p := world.leader_pid()) not in (None, leader) and p,
                           10, "the other node leading")
        # Well before the lease (3 s, extended every second) could have run out.
        assert time.time() - stopped < 1.5
        assert "released its lease" in first.log()
        second = next(node for node in nodes if node.pid == other)
        _sent_at_least(world, 2, time.time())
        second.stop()
        final = world.state("tick")
        assert final is not None
        assert final.last_due is not None
        count = round(final.last_due - final.anchor)
        # A run the last leader sent as it stopped may still wait in the queue, with no
        # consumer left: a plain worker (no beat, so no new runs) runs what is queued.
        world.start("worker", "-P", pool, "-n", "drain@%h")
        wait_until(lambda: len(world.executions()) >= count, 15, f"{count} executions")
        assert sorted(run["due"] for run in world.executions()) == [
            final.anchor + k * 1.0 for k in range(1, count + 1)]
    except BaseException:
        print(world.logs())
        raise
    finally:
        world.close()
