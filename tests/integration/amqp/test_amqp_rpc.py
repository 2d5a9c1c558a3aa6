"""The ``rpc://`` result backend: results come back to the caller over RabbitMQ."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import aiormq
import pytest
from aiormq.exceptions import ChannelNotFoundEntity
from fault_proxy import FaultProxy
from rabbit_harness import Deploy
from worker_harness import LedgerTasks, register, wait_until

from celeriac import App
from celeriac.backends.rpc import RPCBackend
from celeriac.errors import TimeoutError


def test_results_come_back_to_the_caller(deploy: Deploy) -> None:
    # Given a worker and a producer that both use rpc:// results
    deployment = deploy(backend="rpc://")
    deployment.start_worker("-c", "2").wait_ready(2)
    tasks = deployment.tasks

    # When the producer sends tasks and waits for them
    results = [tasks.add.delay(n, n) for n in range(50)]

    # Then each result comes back, and its state reads as in any backend
    assert [r.get(timeout=20) for r in results] == [2 * n for n in range(50)]
    assert results[0].state == "SUCCESS"
    assert results[0].successful()
    # A task that retries reports its final result to the caller too (the retry message
    # keeps the reply queue)
    assert tasks.flaky.delay("shaky", 2).get(timeout=20) == "shaky"


def test_only_the_caller_can_read_its_results(deploy: Deploy) -> None:
    # Given a task sent and finished by one producer
    deployment = deploy(backend="rpc://")
    deployment.start_worker("-c", "1").wait_ready()
    result = deployment.tasks.add.delay(20, 22)
    assert result.get(timeout=20) == 42

    # When another client asks for the same task id
    other = deployment.make_app(backend="rpc://")
    register(other)

    # Then it never sees the result: rpc results are the caller's own
    with pytest.raises(TimeoutError):
        other.AsyncResult(result.id).get(timeout=0.5)


def test_callers_waiting_in_threads_and_on_a_loop_each_get_their_own_result(
        deploy: Deploy) -> None:
    # Given tasks that are still running when their callers start to wait
    deployment = deploy(backend="rpc://")
    deployment.start_worker("-c", "4").wait_ready(4)
    tasks = deployment.tasks
    results = [tasks.sleepy.delay(f"t{n}", 0.3) for n in range(8)]

    # When four threads wait with get() and a coroutine waits with aget() for the others
    async def on_a_loop() -> list[str]:
        return await asyncio.gather(*(r.aget(timeout=20) for r in results[4:]))

    with ThreadPoolExecutor(4) as pool:
        in_threads = pool.map(lambda r: r.get(timeout=20), results[:4])
        awaited = asyncio.run(on_a_loop())

    # Then every caller is woken with the result it waits for
    assert [*in_threads, *awaited] == [f"t{n}" for n in range(8)]


def test_a_sync_get_gives_up_at_its_timeout(deploy: Deploy) -> None:
    # Given a task that runs longer than its caller will wait
    deployment = deploy(backend="rpc://")
    deployment.start_worker("-c", "1").wait_ready()
    result = deployment.tasks.sleepy.delay("slow", 3)

    # When the caller waits half a second, then it gets TimeoutError after about that
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        result.get(timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 2.0
    # And the result still comes later
    assert result.get(timeout=20) == "slow"


def test_the_reply_listener_comes_back_after_a_cut_and_after_a_silent_connection(
        deploy: Deploy, proxy: FaultProxy) -> None:
    # Given a producer whose rpc results come through a proxy, with 1 s heartbeats
    deployment = deploy(backend="rpc://")
    deployment.start_worker("-c", "1").wait_ready()
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/{deployment.rabbit.vhost}?heartbeat=1"
    producer = App("ledger-tests", broker=url, backend="rpc://",
                   broker_transport_options={**deployment.transport_options,
                                             "connect_timeout": 0.5})
    try:
        check_recovery(register(producer), proxy)
    finally:
        proxy.thaw()
        producer.close()


def check_recovery(tasks: LedgerTasks, proxy: FaultProxy) -> None:
    assert tasks.add.delay(1, 1).get(timeout=20) == 2

    def answers(n: int) -> bool:
        # A result sent while the reply queue is being made again is lost (documented):
        # ask until one comes back.
        try:
            return bool(tasks.add.delay(n, 1).get(timeout=1) == n + 1)
        except TimeoutError:
            return False

    # When its connections are cut, then results come back again
    proxy.reset()
    wait_until(lambda: answers(2), 20, "results after the cut")

    # When the network goes silent (heartbeats stop), and comes back
    proxy.freeze()
    time.sleep(3.5)  # more than two heartbeats: the listener gives the connection up
    proxy.thaw()
    wait_until(lambda: answers(3), 30, "results after the silence")


def test_closing_the_app_stops_its_reply_listener(deploy: Deploy) -> None:
    # Given a producer that got a result over rpc://
    deployment = deploy(backend="rpc://")
    deployment.start_worker("-c", "1").wait_ready()
    producer = deployment.make_app(backend="rpc://")
    assert register(producer).add.delay(1, 2).get(timeout=20) == 3
    backend = producer.backend
    assert isinstance(backend, RPCBackend)
    listeners = [t for t in threading.enumerate() if t.name == "celeriac-rpc-replies"]

    # When the app is closed
    producer.close()

    # Then its listener thread has ended, and with its connection the reply queue
    assert listeners
    assert sum(t.is_alive() for t in listeners) < len(listeners)
    wait_until(lambda: not reply_queue_exists(deployment.url, backend.reply_queue), 10,
               "the reply queue to be deleted")


def reply_queue_exists(url: str, name: str) -> bool:
    async def check() -> bool:
        connection = aiormq.Connection(url)
        await connection.connect()
        try:
            channel = await connection.channel()
            await channel.queue_declare(name, passive=True)
            return True
        except ChannelNotFoundEntity:
            return False
        finally:
            await connection.close()

    return asyncio.run(check())
