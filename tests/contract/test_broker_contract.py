"""The broker contract (see ``celeriac.brokers.base``), run on every implementation.

Time is only slept on where time is the behaviour under test (leases running out,
ETAs coming due); everything else waits on the broker itself.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from celeriac.brokers import Broker, Delivery, Outgoing, QueueStats, create_broker
from celeriac.brokers.sqlite import SQLiteBroker
from celeriac.errors import BrokerError, ConfigurationError

# Slack for timers on a busy machine: an event due at t must have happened by t + SLACK.
SLACK = 0.25


def message(queue: str = "q", priority: int = 0, eta: float | None = None,
            body: bytes | None = None) -> Outgoing:
    id_ = uuid.uuid4().hex
    return Outgoing(id_, queue, body if body is not None else id_.encode(), priority, eta)


async def publish_each(broker: Broker, messages: Sequence[Outgoing]) -> None:
    for out in messages:
        await broker.publish([out])


async def stats(broker: Broker, queue: str = "q") -> QueueStats:
    [found] = await broker.queue_stats([queue])
    return found


def ids(deliveries: Sequence[Delivery]) -> list[str]:
    return [d.id for d in deliveries]


# -- publish and fetch ------------------------------------------------------------------


async def test_round_trip_keeps_bytes_and_fields(broker: Broker) -> None:
    sent = message(queue="q", priority=3, body=bytes(range(256)) * 4)
    await broker.publish([sent])

    [got] = await broker.fetch(["q"], 10, timeout=1)

    assert (got.id, got.queue, got.body, got.priority) == (sent.id, "q", sent.body, 3)
    assert got.delivery_count == 1


async def test_fifo_within_a_priority(broker: Broker) -> None:
    one_by_one = [message() for _ in range(10)]
    batch = [message() for _ in range(10)]
    await publish_each(broker, one_by_one)
    await broker.publish(batch)

    got = await broker.fetch(["q"], 7, timeout=1)
    got += await broker.fetch(["q"], 100, timeout=1)

    assert ids(got) == ids(one_by_one + batch)


async def test_higher_priority_first_then_oldest(broker: Broker) -> None:
    sent = [message(priority=p) for p in (0, 9, 5, 9, 1, 5)]
    await publish_each(broker, sent)

    got = await broker.fetch(["q"], 10, timeout=1)

    expected = sorted(sent, key=lambda m: -m.priority)  # stable: oldest first within one
    assert ids(got) == ids(expected)


async def test_queues_are_drained_in_the_order_given(broker: Broker) -> None:
    b_msgs = [message("b") for _ in range(3)]
    a_msgs = [message("a") for _ in range(2)]
    await broker.publish(b_msgs + a_msgs)

    first = await broker.fetch(["a", "b"], 3, timeout=1)
    rest = await broker.fetch(["a", "b"], 10, timeout=1)

    assert ids(first) == ids(a_msgs + b_msgs[:1])
    assert ids(rest) == ids(b_msgs[1:])


async def test_fetch_takes_no_more_than_limit_and_only_named_queues(broker: Broker) -> None:
    await broker.publish([message("q") for _ in range(5)] + [message("other")])

    got = await broker.fetch(["q"], 2, timeout=1)

    assert len(got) == 2
    assert {d.queue for d in got} == {"q"}
    assert (await stats(broker, "other")).ready == 1


async def test_fetch_times_out_empty_without_spinning(broker: Broker) -> None:
    wall, cpu = time.monotonic(), time.process_time()

    got = await broker.fetch(["q"], 10, timeout=0.4)

    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    assert got == []
    assert 0.35 <= wall < 0.4 + SLACK
    assert cpu < 0.2 * wall, f"waiting used {cpu:.3f}s of CPU in {wall:.3f}s"


async def test_waiting_fetch_wakes_on_publish_from_same_loop(broker: Broker) -> None:
    waiting = asyncio.create_task(broker.fetch(["q"], 10, timeout=5))
    await asyncio.sleep(0.05)  # let the fetch find the queue empty and start waiting
    sent = message()

    started = time.monotonic()
    await broker.publish([sent])
    got = await waiting

    assert ids(got) == [sent.id]
    assert time.monotonic() - started < SLACK


async def test_waiting_fetch_wakes_on_publish_from_another_thread(broker: Broker) -> None:
    await fetch_wakes_on_publish_from_another_thread(
        broker, lambda sent: asyncio.run(broker.publish(sent)))


async def fetch_wakes_on_publish_from_another_thread(
        broker: Broker, publish: Callable[[list[Outgoing]], None]) -> None:
    """A fetch waiting on an empty queue wakes soon after another thread's ``publish``."""
    sent = message()
    published_at: list[float] = []

    def produce() -> None:
        time.sleep(0.05)  # let the fetch find the queue empty and start waiting
        publish([sent])
        published_at.append(time.monotonic())

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        got = await broker.fetch(["q"], 10, timeout=5)
        woke = time.monotonic()
    finally:
        thread.join()

    assert ids(got) == [sent.id]
    assert woke - published_at[0] < SLACK


# -- sync producers (brokers with supports_blocking_publish) ---------------------------


def blocking(broker: Broker) -> Broker:
    if not broker.supports_blocking_publish:
        pytest.skip(f"{broker.scheme} serves sync producers through the app's bridge")
    return broker


async def test_blocking_publish_is_fetched_as_publish_would_store_it(broker: Broker) -> None:
    broker = blocking(broker)
    one_by_one = [message(priority=p, body=bytes(range(256)) * 2) for p in (0, 5, 0)]
    batch = [message(priority=p) for p in (0, 9, 5)] + [message(eta=time.time() + 60)]
    for out in one_by_one:
        broker.publish_blocking([out])
    broker.publish_blocking(batch)

    got = await broker.fetch(["q"], 100, timeout=1)

    # The same order as published with publish(): priority, then oldest first
    expected = sorted(one_by_one + batch[:3], key=lambda m: -m.priority)
    assert ids(got) == ids(expected)
    assert [(d.body, d.priority, d.delivery_count) for d in got] == [
        (m.body, m.priority, 1) for m in expected]
    # and a message with an eta waits in the broker
    assert await stats(broker) == QueueStats("q", ready=0, scheduled=1, in_flight=6)


async def test_blocking_publish_from_another_thread_wakes_a_waiting_fetch(
        broker: Broker) -> None:
    broker = blocking(broker)
    try:
        await fetch_wakes_on_publish_from_another_thread(broker, broker.publish_blocking)
    finally:
        broker.close_blocking()


# -- eta --------------------------------------------------------------------------------


async def test_eta_waits_in_the_broker_until_due(broker: Broker) -> None:
    due = time.time() + 1.5  # room for a loaded machine between publish and fetch
    later = message(eta=due)
    await broker.publish([later])

    early = await broker.fetch(["q"], 10, timeout=0)
    assert early == []
    assert await stats(broker) == QueueStats("q", ready=0, scheduled=1, in_flight=0)

    got = await broker.fetch(["q"], 10, timeout=3)

    assert ids(got) == [later.id]
    assert due <= time.time() < due + SLACK


async def test_past_eta_is_ready_at_once(broker: Broker) -> None:
    sent = message(eta=time.time() - 10)
    await broker.publish([sent])

    assert ids(await broker.fetch(["q"], 10, timeout=0)) == [sent.id]


async def test_due_messages_keep_their_priority(broker: Broker) -> None:
    due = time.time() + 0.2
    low, high = message(priority=1, eta=due), message(priority=8, eta=due)
    await broker.publish([low, high])

    got = await broker.fetch(["q"], 10, timeout=3)

    assert ids(got) == [high.id, low.id]


# -- leases -----------------------------------------------------------------------------


async def test_held_lease_is_not_handed_out_twice(broker: Broker) -> None:
    await broker.publish([message()])
    [held] = await broker.fetch(["q"], 10, timeout=1)

    # Keep extending for three lease lengths; nobody else may get the message.
    until = time.monotonic() + 3 * broker.lease_seconds
    while time.monotonic() < until:
        assert await broker.extend([held]) == [True]
        assert await broker.fetch(["q"], 10, timeout=broker.lease_seconds / 4) == []

    assert await stats(broker) == QueueStats("q", ready=0, scheduled=0, in_flight=1)


async def test_expired_lease_is_delivered_again(broker: Broker) -> None:
    sent = message()
    await broker.publish([sent])
    [first] = await broker.fetch(["q"], 10, timeout=1)
    leased_at = time.monotonic()

    # No publish happens: the waiting fetch must wake for the lease expiry by itself.
    [again] = await broker.fetch(["q"], 10, timeout=broker.lease_seconds * 4)

    assert again.id == sent.id
    assert again.delivery_count == 2
    assert broker.lease_seconds * 0.9 <= time.monotonic() - leased_at < broker.lease_seconds + SLACK
    assert again.receipt != first.receipt


async def test_stale_receipt_cannot_ack_extend_requeue_or_dead_letter(broker: Broker) -> None:
    await broker.publish([message()])
    [stale] = await broker.fetch(["q"], 10, timeout=1)
    [current] = await broker.fetch(["q"], 10, timeout=broker.lease_seconds * 4)

    await broker.ack([stale])
    await broker.requeue([stale])
    await broker.dead_letter([(stale, "too late")])
    assert await broker.extend([stale, current]) == [False, True]

    assert await stats(broker) == QueueStats("q", ready=0, scheduled=0, in_flight=1)
    assert await broker.dead_letters() == []
    await broker.ack([current])
    assert await stats(broker) == QueueStats("q", ready=0, scheduled=0, in_flight=0)


async def test_extend_keeps_the_lease_past_its_first_end(broker: Broker) -> None:
    await broker.publish([message()])
    [held] = await broker.fetch(["q"], 10, timeout=1)

    await asyncio.sleep(broker.lease_seconds * 0.6)
    assert await broker.extend([held]) == [True]
    await asyncio.sleep(broker.lease_seconds * 0.6)  # past the first lease's end

    assert await broker.fetch(["q"], 10, timeout=0) == []
    await broker.ack([held])
    assert await stats(broker) == QueueStats("q", ready=0, scheduled=0, in_flight=0)


async def test_ack_removes_for_good(broker: Broker) -> None:
    await broker.publish([message(), message()])
    got = await broker.fetch(["q"], 10, timeout=1)

    await broker.ack(got)

    assert await stats(broker) == QueueStats("q", ready=0, scheduled=0, in_flight=0)
    assert await broker.fetch(["q"], 10, timeout=broker.lease_seconds * 1.5) == []


async def test_requeue_gives_back_at_once_without_counting(broker: Broker) -> None:
    first, second = message(), message()
    await broker.publish([first, second])
    got = await broker.fetch(["q"], 1, timeout=1)

    await broker.requeue(got)
    again = await broker.fetch(["q"], 10, timeout=0)

    assert ids(again) == [first.id, second.id]  # back at its place, not behind younger ones
    assert [d.delivery_count for d in again] == [1, 1]


# -- dead letters -----------------------------------------------------------------------


async def test_dead_letter_moves_out_of_the_queue_with_its_reason(broker: Broker) -> None:
    await broker.purge_dead_letters()
    first, second, kept = message(), message(), message()
    await broker.publish([first, second, kept])
    got = await broker.fetch(["q"], 3, timeout=1)
    before = time.time()

    await broker.dead_letter([(got[0], "undecodable")])
    await broker.dead_letter([(got[1], "unknown task")])

    dead = await broker.dead_letters()
    assert [(d.id, d.queue, d.body, d.reason) for d in dead] == [
        (second.id, "q", second.body, "unknown task"),  # newest first
        (first.id, "q", first.body, "undecodable"),
    ]
    assert all(before - 1 <= d.dead_at <= time.time() + 1 for d in dead)
    assert [d.id for d in await broker.dead_letters(limit=1)] == [second.id]
    assert await stats(broker) == QueueStats("q", ready=0, scheduled=0, in_flight=1)
    await broker.ack([got[2]])
    assert await broker.fetch(["q"], 10, timeout=broker.lease_seconds * 1.5) == []  # gone for good
    assert await broker.purge_dead_letters() == 2
    assert await broker.dead_letters() == []


async def test_chosen_dead_letters_are_removed_and_the_others_stay(broker: Broker) -> None:
    messages = [Outgoing(uuid.uuid4().hex, "q", f"m{n}".encode()) for n in range(3)]
    await broker.publish(messages)
    got = await broker.fetch(["q"], 3, timeout=1)
    await broker.dead_letter([(delivery, "unknown task") for delivery in got])

    removed = await broker.remove_dead_letters([messages[0].id, messages[2].id, "no-such-id"])

    assert removed == 2
    assert [d.id for d in await broker.dead_letters()] == [messages[1].id]
    assert await broker.remove_dead_letters([]) == 0


# -- stats and purge --------------------------------------------------------------------


async def test_queue_stats_count_ready_scheduled_and_in_flight(broker: Broker) -> None:
    later = time.time() + 60
    await broker.publish([message() for _ in range(3)] + [message(eta=later) for _ in range(2)])
    await broker.publish([message("other")])
    await broker.fetch(["q"], 1, timeout=1)

    assert await broker.queue_stats(["q", "other", "unknown"]) == [
        QueueStats("q", ready=2, scheduled=2, in_flight=1),
        QueueStats("other", ready=1, scheduled=0, in_flight=0),
        QueueStats("unknown", ready=0, scheduled=0, in_flight=0),
    ]
    every = {s.queue: s for s in await broker.queue_stats(None)}
    assert every["q"] == QueueStats("q", ready=2, scheduled=2, in_flight=1)
    assert every["other"] == QueueStats("other", ready=1, scheduled=0, in_flight=0)


async def test_queue_stats_lists_a_queue_with_only_scheduled_messages(broker: Broker) -> None:
    await broker.publish([message("later", eta=time.time() + 60)])

    every = {s.queue: s for s in await broker.queue_stats()}

    assert every["later"] == QueueStats("later", ready=0, scheduled=1, in_flight=0)


async def test_purge_deletes_waiting_messages_and_counts_them(broker: Broker) -> None:
    later = time.time() + 60
    await broker.publish([message() for _ in range(4)] + [message(eta=later) for _ in range(2)])
    await broker.publish([message("other")])
    [held] = await broker.fetch(["q"], 1, timeout=1)

    assert await broker.purge(["q"]) == 5

    assert await stats(broker) == QueueStats("q", ready=0, scheduled=0, in_flight=1)
    assert await stats(broker, "other") == QueueStats("other", ready=1, scheduled=0, in_flight=0)
    await broker.ack([held])  # the in-flight message was left to its worker
    assert await stats(broker) == QueueStats("q", ready=0, scheduled=0, in_flight=0)
    assert await broker.purge(["q"]) == 0


# -- sqlite only ------------------------------------------------------------------------

PRODUCERS = 4
PER_PRODUCER = 2000
CONSUMERS = 2


def _produce(url: str, index: int) -> None:
    async def main() -> None:
        broker = create_broker(url)
        try:
            for n in range(PER_PRODUCER):  # one transaction per send, as delay() does
                await broker.publish([Outgoing(f"{index}-{n}", "q", b"x", priority=n % 3)])
        finally:
            await broker.close()

    asyncio.run(main())


def _consume(url: str, results: multiprocessing.Queue[list[str]], stop: Event) -> None:
    async def main() -> None:
        broker = create_broker(url, {"lease_seconds": 30})
        try:
            while not stop.is_set():
                got = await broker.fetch(["q"], 100, timeout=0.2)
                if got:
                    await broker.ack(got)
                    results.put(ids(got))
        finally:
            await broker.close()

    asyncio.run(main())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("broker_url", ["sqlite"], indirect=True)
def test_many_processes_consume_every_message_exactly_once(broker_url: str) -> None:
    # Given a file shared by 4 producer and 2 consumer processes
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[list[str]] = ctx.Queue()
    stop = ctx.Event()
    consumers = [ctx.Process(target=_consume, args=(broker_url, results, stop))
                 for _ in range(CONSUMERS)]
    producers = [ctx.Process(target=_produce, args=(broker_url, i)) for i in range(PRODUCERS)]

    # When every producer sends its messages one by one while the consumers drain
    for process in consumers + producers:
        process.start()
    seen: list[str] = []
    deadline = time.monotonic() + 45
    try:
        while len(seen) < PRODUCERS * PER_PRODUCER and time.monotonic() < deadline:
            seen += results.get(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        stop.set()
        for process in producers + consumers:
            process.join(10)
        results.close()

    # Then every message was consumed exactly once
    assert [p.exitcode for p in producers + consumers] == [0] * (PRODUCERS + CONSUMERS)
    expected = {f"{i}-{n}" for i in range(PRODUCERS) for n in range(PER_PRODUCER)}
    assert len(seen) == len(expected)
    assert set(seen) == expected


def test_sqlite_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    relative = SQLiteBroker("sqlite:///data/queue.db")
    absolute = SQLiteBroker(f"sqlite:///{tmp_path}/abs.db")  # "sqlite:////tmp/..."

    assert relative.path == str(tmp_path / "data" / "queue.db")
    assert absolute.path == str(tmp_path / "abs.db")
    for bad in ("sqlite://", "sqlite:///", "sqlite://host/queue.db", "sqlite:///:memory:",
                "sqlite:///queue.db?mode=ro"):
        with pytest.raises(ConfigurationError):
            SQLiteBroker(bad)


async def test_sqlite_refuses_a_file_of_another_schema_version(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    first = SQLiteBroker(url)
    await first.connect()
    await first.close()
    with sqlite3.connect(tmp_path / "old.db") as conn:
        conn.execute("UPDATE celeriac_schema SET version = 999 WHERE component = 'broker'")
    conn.close()

    second = SQLiteBroker(url)
    with pytest.raises(BrokerError, match="schema version 999"):
        await second.connect()


def _publish_in_forked_child(broker: Broker, sent: Outgoing) -> None:
    asyncio.run(broker.publish([sent]))


async def test_sqlite_broker_survives_fork(tmp_path: Path) -> None:
    # Given a broker whose connection is open in the parent
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/fork.db")
    await broker.connect()
    sent = message()
    try:
        # When a forked child uses the same object (it must open its own connection)
        child = multiprocessing.get_context("fork").Process(
            target=_publish_in_forked_child, args=(broker, sent))
        child.start()
        child.join(10)

        # Then the child's message arrives and the parent's connection still works
        assert child.exitcode == 0
        assert ids(await broker.fetch(["q"], 10, timeout=1)) == [sent.id]
    finally:
        await broker.close()
