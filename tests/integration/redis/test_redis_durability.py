"""Data loss on Redis is never silent (issue 10, part 4).

- At connect, the broker and the result backend read the server's persistence and
  eviction settings and log a WARNING naming each way their data can be lost, or refuse
  to start with ``require_noeviction`` when the server could evict it.
- A worker whose server lost its data (a restart without persistence, keys deleted or
  evicted) logs an ERROR naming the data loss and how many leased messages it lost,
  and goes on consuming.

Every test runs a redis-server of its own (``RedisServer``), configured to lose data.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_harness import RedisDeployment, RedisServer
from worker_harness import wait_until

from celeriac.backends import create_backend
from celeriac.brokers import Outgoing, create_broker
from celeriac.errors import BackendRefused, BrokerRefused

LEASE_SECONDS = 2.0
NO_PERSISTENCE = ("--appendonly", "no", "--save", "")
LOSS = re.compile(r"Redis data loss at .*? held (\d+) leased message")


@pytest.fixture
def bare_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with no persistence at all (no AOF, no RDB)."""
    directory = tmp_path / "bare"
    directory.mkdir()
    server = RedisServer(directory, NO_PERSISTENCE)
    try:
        yield server
    finally:
        server.kill()


def connect_broker(url: str, **options: object) -> None:
    broker = create_broker(url, {"lease_seconds": LEASE_SECONDS, **options})

    async def run() -> None:
        try:
            await broker.connect()
        finally:
            await broker.close()

    asyncio.run(run())


def connect_backend(url: str) -> None:
    backend = create_backend(url, {})

    async def run() -> None:
        try:
            await backend.connect()
        finally:
            await backend.close()

    asyncio.run(run())


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "celeriac.brokers.redis"]


# -- at connect ---------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_no_persistence_is_a_warning_at_connect(
    bare_server: RedisServer, redis_server: RedisServer, caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a server without persistence
    caplog.set_level(logging.WARNING, "celeriac.brokers.redis")
    # When a broker and a backend connect to it
    connect_broker(bare_server.url)
    connect_backend(bare_server.url)
    # Then each warns that its data is lost on a restart, naming the settings
    broker_warning, backend_warning = warnings_of(caplog)
    assert "Redis broker at 127.0.0.1" in broker_warning
    assert 'no persistence (appendonly no, save "")' in broker_warning
    assert "all queued tasks are lost when it restarts" in broker_warning
    assert "Redis result backend" in backend_warning
    assert "all results are lost when it restarts" in backend_warning

    # And a server with the append-only file on and no eviction gets no warning at all
    caplog.clear()
    connect_broker(redis_server.url)
    connect_backend(redis_server.url)
    assert warnings_of(caplog) == []


@pytest.mark.timeout(30)
def test_rdb_only_is_a_warning_at_connect(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "celeriac.brokers.redis")
    admin = redis_server.client()
    admin.config_set("appendonly", "no")
    admin.config_set("save", "3600 1")
    admin.close()
    connect_broker(redis_server.url)
    [warning] = warnings_of(caplog)
    assert 'RDB snapshots only (appendonly no, save "3600 1")' in warning
    assert "lost if it crashes" in warning


@pytest.mark.timeout(60)
def test_an_evicting_server_is_a_warning_at_a_workers_connect_and_refused_on_request(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a server that evicts any key when its small memory limit is reached
    admin = redis_server.client()
    admin.config_set("maxmemory", "4mb")
    admin.config_set("maxmemory-policy", "allkeys-lru")
    world = RedisDeployment(tmp_path, redis_server.url, LEASE_SECONDS)
    try:
        # When a worker starts on it
        worker = world.start_worker("-c", "1").wait_ready()
        # Then its log warns, at connect, that queued tasks and results can be evicted
        worker.wait_for_log("Redis result backend at")
        log = worker.log()
        assert re.search(r"WARNING.*Redis broker at .*maxmemory is 4194304 bytes with "
                         r"maxmemory-policy allkeys-lru: when memory runs short the server "
                         r"deletes keys, queued tasks included", log), log
        assert re.search(r"WARNING.*Redis result backend at .*allkeys-lru.*results "
                         r"included", log), log

        # And with require_noeviction, connecting is refused at once, with the reason
        started = time.monotonic()
        with pytest.raises(BrokerRefused, match="require_noeviction is set, but maxmemory "
                                                "is 4194304 bytes with maxmemory-policy "
                                                "allkeys-lru"):
            connect_broker(redis_server.url, require_noeviction=True)
        with pytest.raises(BackendRefused, match="allkeys-lru"):
            connect_backend(f"{redis_server.url}?require_noeviction=true")
        assert time.monotonic() - started < 2

        # A volatile-* policy evicts only keys with a TTL: results, never queued tasks
        admin.config_set("maxmemory-policy", "volatile-lru")
        caplog.set_level(logging.WARNING, "celeriac.brokers.redis")
        connect_broker(redis_server.url, require_noeviction=True)
        with pytest.raises(BackendRefused, match="volatile-lru"):
            connect_backend(f"{redis_server.url}?require_noeviction=true")
        assert warnings_of(caplog) == []
    finally:
        world.close()
        admin.close()


@pytest.mark.timeout(30)
def test_a_server_without_config_is_checked_through_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a server whose CONFIG command is renamed away (as managed services do)
    directory = tmp_path / "noconfig"
    directory.mkdir()
    server = RedisServer(directory, ("--rename-command", "CONFIG", "", *NO_PERSISTENCE,
                                     "--maxmemory", "8mb", "--maxmemory-policy",
                                     "allkeys-random"))
    try:
        caplog.set_level(logging.WARNING, "celeriac.brokers.redis")
        # When a broker connects
        connect_broker(server.url)
        # Then its warning reads the settings INFO has, and says what it could not check
        [warning] = warnings_of(caplog)
        assert "CONFIG GET is not available to this client" in warning
        assert "the append-only file is off and the RDB schedule could not be read" in warning
        assert "maxmemory is 8388608 bytes with maxmemory-policy allkeys-random" in warning
        with pytest.raises(BrokerRefused, match="allkeys-random"):
            connect_broker(server.url, require_noeviction=True)
    finally:
        server.kill()


# -- lost while running -------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_restart_without_persistence_is_an_error_naming_the_lost_leases(
    bare_server: RedisServer, tmp_path: Path,
) -> None:
    # Given a busy worker on a server without persistence, 300 tasks queued
    world = RedisDeployment(tmp_path, bare_server.url, LEASE_SECONDS)
    try:
        worker = world.start_worker("-c", "2").wait_ready(2)
        sent = [f"before-{n}" for n in range(300)]
        for tag in sent:
            world.tasks.sleepy.delay(tag, 0.05)
        world.ledger.wait_for_count(20)

        # When the server goes down without saving, and comes back empty
        bare_server.shutdown(save=False)
        ran_before = len(world.ledger.entries())
        bare_server.start()

        # Then each worker process logs an ERROR naming the data loss, the new run id,
        # and how many leased messages it lost
        wait_until(lambda: len(LOSS.findall(worker.log())) >= 2, 20,
                   "both worker processes to report the data loss")
        log = worker.log()
        lines = [line for line in log.splitlines() if "Redis data loss" in line]
        assert all("ERROR" in line and "restarted without its data (run id" in line
                   for line in lines), lines
        lost_leases = sum(int(n) for n in LOSS.findall(log))
        # Each process leases its prefetch budget (4 here) plus the finished tasks whose
        # acks wait for the flush (a few at most); it held some
        assert 1 <= lost_leases <= 2 * 8, lines
        assert len(lines) == 2, lines  # once per process, not once per lease check

        # And the worker goes on: a task sent now runs, and so do the leased messages
        # it held (finished from memory); only what waited on the server is lost
        assert world.tasks.record.delay("after").get(timeout=20) == "after"
        done = set(world.ledger.tags("done"))
        assert len(done & set(sent)) >= ran_before - 8
        assert worker.running
        print(f"{len(sent)} sent, {ran_before} started before the restart, "
              f"{lost_leases} leased messages reported lost, "
              f"{len(set(sent) - set(world.ledger.tags()))} never ran")
    finally:
        world.close()


@pytest.mark.timeout(30)
def test_a_stream_deleted_under_held_leases_is_an_error(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture,
) -> None:
    broker = create_broker(redis_server.url, {"lease_seconds": LEASE_SECONDS})
    admin = redis_server.client()
    caplog.set_level(logging.ERROR, "celeriac.brokers.redis")

    async def scenario() -> None:
        # Given a broker that holds three leases in queue q
        await broker.connect()
        await broker.publish([Outgoing(f"m{n}", "q", b"body") for n in range(3)])
        held = await broker.fetch(["q"], 10, timeout=1)
        assert len(held) == 3
        # When the stream is deleted (as an eviction or a stray DEL would)
        admin.delete(broker.stream_key("q", 0))  # type: ignore[attr-defined]
        # Then the next lease extension reports it, once, with the count; the worker
        # may finish what it holds
        assert await broker.extend(held) == [True] * 3
        assert await broker.extend(held) == [True] * 3
        # And the queue works again
        await broker.ack(held)
        await broker.publish([Outgoing("next", "q", b"body")])
        assert [d.id for d in await broker.fetch(["q"], 10, timeout=1)] == ["next"]
        await broker.close()

    asyncio.run(scenario())
    admin.close()
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "Redis data loss" in error
    assert "vanished" in error
    assert "held 3 leased message(s)" in error


@pytest.mark.timeout(30)
def test_a_stream_deleted_under_an_idle_worker_is_an_error(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture,
) -> None:
    broker = create_broker(redis_server.url, {"lease_seconds": LEASE_SECONDS})
    admin = redis_server.client()
    caplog.set_level(logging.ERROR, "celeriac.brokers.redis")

    async def scenario() -> None:
        # Given an idle broker waiting on queue q, with two messages published
        await broker.connect()
        assert await broker.fetch(["q"], 10, timeout=0.2) == []
        # When the stream, two messages waiting in it, is deleted (a DEL, an eviction)
        await broker.publish([Outgoing(f"m{n}", "q", b"body") for n in range(2)])
        admin.delete(broker.stream_key("q", 0))  # type: ignore[attr-defined]
        # Then the next fetch reports it (nothing was leased), and the queue works again
        assert await broker.fetch(["q"], 10, timeout=0.5) == []
        await broker.publish([Outgoing("next", "q", b"body")])
        assert [d.id for d in await broker.fetch(["q"], 10, timeout=1)] == ["next"]
        await broker.close()

    asyncio.run(scenario())
    admin.close()
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "Redis data loss" in error
    assert "q:q:* or their consumer group vanished" in error
    assert "held 0 leased message(s)" in error


@pytest.mark.timeout(60)
def test_tasks_evicted_under_allkeys_lru_are_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a server that evicts any key past 3 MB, and a broker holding leases on it
    directory = tmp_path / "evicting"
    directory.mkdir()
    server = RedisServer(directory, (*NO_PERSISTENCE, "--maxmemory", "3mb",
                                     "--maxmemory-policy", "allkeys-lru"))
    broker = create_broker(server.url, {"lease_seconds": LEASE_SECONDS})
    queues = ["q0", "q1", "q2"]
    caplog.set_level(logging.ERROR, "celeriac.brokers.redis")

    async def scenario() -> tuple[int, int]:
        await broker.connect()
        held = await broker.fetch(queues, 10, timeout=0.1)
        # When 3,000 tasks of 2 kB (twice the memory limit) are published
        for n in range(3000):
            await broker.publish([Outgoing(f"m{n}", queues[n % 3], b"x" * 2000)])
            if n % 500 == 0:  # a worker's fetches and lease extensions meanwhile
                held += await broker.fetch(queues, 4, timeout=0.05)
                await broker.extend(held)
        fetched = 0
        while batch := await broker.fetch(queues, 500, timeout=0.3):
            fetched += len(batch)
            await broker.ack(batch)
        await broker.close()
        return fetched, len(held)

    try:
        fetched, held = asyncio.run(scenario())
    finally:
        server.kill()
    # Then most were evicted, and it was not silent: the broker logged the data loss
    assert fetched + held < 3000
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("Redis data loss" in e for e in errors), errors
