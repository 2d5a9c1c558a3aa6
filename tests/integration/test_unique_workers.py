"""Unique jobs with real processes, on SQLite, Redis and RabbitMQ (with its result backend).

- Many producers, one key: 8 threads in 2 producer processes send the same key 1,000
  times in all, over about half a second, while a worker runs a task that takes 50 ms.
  Every execution is in the ledger: no two overlap (one task per lifetime of the key),
  each task runs once, every id a send returned is a task that ran, the key was held
  and freed several times over, and once the last task ended it is free again (a new
  send runs).
- A worker killed (SIGKILL) mid-task: the key stays held until its ``unique_for`` runs
  out, then a new send is accepted. The killed task's message comes back after its
  lease and runs again under its old id, beside the new task (docs/unique-jobs.md: the
  deadline is the guard), and releasing its key then does not free the new task's.

Redis: database 15 with a key prefix of the test's own; RabbitMQ: a vhost of the test's
own (``Rabbit``), both deleted afterwards.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE / "redis"), str(HERE / "amqp")]

from rabbit_harness import Rabbit, RabbitDeployment  # noqa: E402
from redis_harness import RedisDeployment, delete_prefix, ping  # noqa: E402
from worker_harness import APPS_DIR, LEASE_SECONDS, Deployment, wait_until  # noqa: E402

from celeriac.uniqueness import unique_keys  # noqa: E402

REDIS = "redis://127.0.0.1:6379/15"
WORK = 0.05  # seconds each execution takes
PRODUCERS, THREADS, SENDS = 2, 4, 125  # 2 x 4 x 125 = 1,000 sends
PAUSE = 0.004  # between one thread's sends: they span about 0.5 s, many lifetimes


@pytest.fixture
def make_world(tmp_path: Path) -> Iterator[Callable[[str], Deployment]]:
    """Makes the deployment of a kind: sqlite, redis, amqp+redis, amqp+sqlite."""
    cleanups: list[Callable[[], None]] = []

    def make(kind: str) -> Deployment:
        root = tmp_path / kind
        root.mkdir()
        prefix = f"test-unique:{uuid.uuid4().hex[:12]}:"
        if "redis" in kind:
            if not ping(REDIS):
                pytest.skip(f"Redis is not running at {REDIS}")
            cleanups.append(lambda: delete_prefix(REDIS, prefix))
        redis_url = f"{REDIS}?key_prefix={prefix}"
        world: Deployment
        if kind == "sqlite":
            world = Deployment(root)
        elif kind == "redis":
            world = RedisDeployment(root, redis_url, LEASE_SECONDS)
        else:
            rabbit = Rabbit()
            cleanups.append(rabbit.close)
            backend = redis_url if kind == "amqp+redis" else f"sqlite:///{root / 'r.db'}"
            world = RabbitDeployment(root, rabbit, backend)
        cleanups.append(world.close)
        return world

    try:
        yield make
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


def holder(world: Deployment, key: str) -> str | None:
    return world.app._run_sync(unique_keys(world.app).holder(key))


@pytest.mark.parametrize("kind", ["sqlite", "redis", "amqp+redis"])
def test_many_producers_one_key_one_execution_per_lifetime(
        kind: str, make_world: Callable[[str], Deployment], tmp_path: Path) -> None:
    world = make_world(kind)
    key = f"storm-{uuid.uuid4().hex[:8]}"
    world.start_worker("-P", "threads", "-c", "4").wait_ready()
    go = tmp_path / f"go-{kind}"
    outs = [tmp_path / f"sends-{kind}-{n}.jsonl" for n in range(PRODUCERS)]
    producers = [subprocess.Popen(
        [sys.executable, str(APPS_DIR / "unique_producer.py"), key, str(THREADS),
         str(SENDS), str(WORK), "30", str(PAUSE), str(out), str(go)],
        env=world.env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for out in outs]
    try:
        wait_until(lambda: all(Path(f"{out}.ready").exists() for out in outs), 30,
                   "the producers to be ready")
        go.touch()
        for producer in producers:
            output, _ = producer.communicate(timeout=60)
            assert producer.returncode == 0, output.decode(errors="replace")
    finally:
        for producer in producers:
            producer.kill()
    sends = [json.loads(line) for out in outs for line in out.read_text().splitlines()]
    assert len(sends) == PRODUCERS * THREADS * SENDS
    returned = {send["id"] for send in sends}

    # Every task a send returned runs, once; then nothing else runs.
    done = world.ledger.wait_for_count(len(returned), "done", timeout=30)
    starts = [entry for entry in world.ledger.entries("start") if entry.tag == "unique"]
    assert sorted(entry.id for entry in starts) == sorted(returned)
    # One execution per lifetime of the key: each starts after the one before ended.
    ends = {entry.id: entry.t for entry in done}
    ordered = sorted(starts, key=lambda entry: entry.t)
    for before, after in itertools.pairwise(ordered):
        assert after.t >= ends[before.id], (before, after)
    # Many sends share a task, and the key was held and freed several times over.
    assert 2 <= len(returned) < len(sends) / 10, len(returned)

    # Once the last one ended, the key is free again: a new send runs.
    wait_until(lambda: holder(world, key) is None, 10, "the key released")
    again = world.tasks.sleepy.apply_async(("again", 0.0), unique_key=key, unique_for=30)
    assert again.id not in returned
    assert again.get(timeout=20) == "again"


@pytest.mark.parametrize("kind", ["sqlite", "redis", "amqp+sqlite"])
def test_a_killed_workers_key_is_freed_by_its_deadline(
        kind: str, make_world: Callable[[str], Deployment]) -> None:
    world = make_world(kind)
    key, hold = f"kill-{uuid.uuid4().hex[:8]}", 3.0
    worker = world.start_worker("-c", "1").wait_ready()
    # hang_once hangs the first time it runs, and is quick when its message comes back.
    sent = time.time()
    first = world.tasks.hang_once.apply_async(("killed",), unique_key=key, unique_for=hold)
    world.ledger.wait_for("killed")
    worker.kill_all()
    assert world.tasks.record.apply_async(("refused",), unique_key=key,
                                          unique_for=hold).id == first.id
    wait_until(lambda: holder(world, key) is None, hold + 10, "the hold to run out")
    assert time.time() - sent >= hold - 0.1  # freed by the deadline, not before
    second = world.tasks.record.apply_async(("second",), unique_key=key, unique_for=30)
    assert second.id != first.id

    # A new worker runs the new task, and the killed one's message after its lease.
    world.start_worker("-c", "2").wait_ready(2)
    assert second.get(timeout=20) == "second"
    assert first.get(timeout=20) == "killed"
    assert [entry.id for entry in world.ledger.of("killed")] == [first.id, first.id]
    assert world.ledger.of("refused") == []
    # The old task's release left the new one's hold alone; the new one's freed it.
    wait_until(lambda: holder(world, key) is None, 10, "the key released")
