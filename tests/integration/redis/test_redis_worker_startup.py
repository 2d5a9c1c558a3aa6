"""A worker started while its Redis is down or refuses it (issue 10, "errors say what is
wrong, at once"): it waits inside the process, one log line per attempt with the real
cause, and consumes once the server lets it in; a missing client library, which no
server can fix, stops it with one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import redis
from redis_harness import RedisDeployment, RedisServer

from celeriac.worker.child import EXIT_REFUSED


def test_a_worker_waits_for_a_redis_that_is_down_then_runs_its_tasks(
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    # Given a Redis server that is down when the worker starts
    redis_server.kill()
    world = RedisDeployment(tmp_path, redis_server.url, lease_seconds=2.0)
    try:
        started = time.monotonic()
        worker = world.start_worker("-c", "2")

        # Then, watched over 10 s, each process says once per attempt which server it
        # cannot reach and why, and nothing else: no traceback, no restarted process
        worker.wait_for_log("(attempt 2)", 2, timeout=30)
        time.sleep(max(0.0, started + 10.0 - time.monotonic()))  # the window watched
        log = worker.log()
        assert f"cannot reach the broker {redis_server.url} (attempt 1)" in log
        attempts = re.findall(r"\[[^]]*/(worker-\d)\] celeriac\.worker: cannot reach .*"
                              r"\(attempt (\d+)\)", log)
        assert len(attempts) == len(set(attempts))  # one line per attempt and process
        assert {process for process, _ in attempts} == {"worker-0", "worker-1"}
        assert "Traceback" not in log
        assert "died" not in log  # no process crashed and was restarted
        assert len(worker.children()) == 2  # no more processes than slots

        # When the server comes up, the worker reaches it by itself and runs tasks
        redis_server.start()
        result = world.tasks.sleepy.delay("after-the-outage", 0.0)
        assert result.get(timeout=20) == "after-the-outage"
        assert "reached the broker" in worker.log()
    finally:
        world.close()


def test_a_worker_refused_by_redis_says_so_and_starts_once_the_password_is_right(
    tmp_path: Path,
) -> None:
    # Given a Redis that requires a password the worker does not have (yet)
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    try:
        server.client().config_set("requirepass", "s3cret-pw")
        url = server.url.replace("redis://", "redis://:wrong-pw@")
        world = RedisDeployment(tmp_path, url, lease_seconds=2.0)
        try:
            # When the worker starts
            worker = world.start_worker("-c", "2")

            # Then each process says, once per attempt, that it was refused and why,
            # with the password masked, and no process crashes or is restarted
            worker.wait_for_log("(attempt 2)", 2, timeout=30)
            log = worker.log()
            assert "refused by the broker redis://:***@" in log
            assert "Traceback" not in log
            assert "wrong-pw" not in log
            assert "died" not in log
            assert len(worker.children()) == 2

            # When the operator fixes the password on the server, the worker goes on
            admin = redis.Redis.from_url(server.url, password="s3cret-pw", socket_timeout=5)
            admin.config_set("requirepass", "wrong-pw")
            admin.close()
            result = world.tasks.sleepy.delay("after-the-fix", 0.0)
            assert result.get(timeout=20) == "after-the-fix"
        finally:
            world.close()
    finally:
        server.kill()


def test_without_retry_on_startup_a_worker_stops_with_one_line(
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    # Given a Redis that is down, and a worker told not to wait for it
    redis_server.kill()
    world = RedisDeployment(tmp_path, redis_server.url, lease_seconds=2.0)
    try:
        worker = world.start_worker("-c", "2", broker_connection_retry_on_startup=False)

        # Then it stops with one line saying why, and the exit code of a refusal
        assert worker.wait(30) == EXIT_REFUSED
        log = worker.log()
        assert "broker_connection_retry_on_startup is off" in log
        assert "Traceback" not in log
        assert "(attempt 2)" not in log
    finally:
        world.close()


def test_a_worker_without_the_client_library_says_what_to_install(tmp_path: Path) -> None:
    # Given an app on an amqp:// broker, with "aiormq" not importable in the worker
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "aiormq.py").write_text("raise ModuleNotFoundError(name='aiormq')\n")
    (tmp_path / "amqp_app.py").write_text(
        "from celeriac import App\n"
        "app = App('x', broker='amqp://guest:hunter2@127.0.0.1:5672/', backend='memory://')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(blocker), str(tmp_path), os.environ.get("PYTHONPATH", "")])}

    # When the worker starts
    run = subprocess.run(
        [sys.executable, "-m", "celeriac", "-A", "amqp_app", "worker", "-P", "solo"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)

    # Then it stops with one line naming the extra to install, and no password
    assert run.returncode == EXIT_REFUSED, run.stderr
    assert "pip install 'celeriac[amqp]'" in run.stderr
    assert "Traceback" not in run.stderr
    assert "hunter2" not in run.stderr
