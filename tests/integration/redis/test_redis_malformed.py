"""Stream entries that are not in celeriac's layout never wedge a queue (issue 10, part 2).

Any process with access to Redis can XADD to a queue's stream. An entry whose
broker-level fields cannot be read (a message id that is not UTF-8, a field missing,
repeated or unknown) is dead-lettered by the broker with the field and what is wrong
with it, settled (XACK'd and deleted, so it is never reclaimed again), and the valid
task behind it runs within a second. Before the fix such an entry made every fetch
fail and stayed leased forever.

The entries are written straight into the stream with redis-py, while a real worker
waits on it (its blocking read gets them) and before a worker starts (its fetch script
gets them), and one as a lease a dead consumer left behind (the reclaim pass gets it).
"""

from __future__ import annotations

import time

import pytest
import redis
from redis_harness import RedisDeployment
from worker_harness import QUEUE, wait_until

from celeriac.brokers.redis import GROUP, RedisBroker

# Hand-written entries and the words their dead letter's reason must contain.
MALFORMED: list[tuple[str, list[tuple[bytes, bytes]], str]] = [
    ("id-not-utf8", [(b"i", b"\xff\xfeid"), (b"b", b"body")],
     "field i (the message id) is not valid UTF-8"),
    ("id-missing", [(b"b", b"body")], "field i (the message id) is missing"),
    ("id-empty", [(b"i", b""), (b"b", b"body")], "field i (the message id) is empty"),
    ("body-missing", [(b"i", b"some-id")], "field b (the message body) is missing"),
    ("unknown-field", [(b"i", b"x"), (b"b", b"body"), (b"z", b"1")],
     'field "z" is not part of the entry layout'),
]
RUNS_WITHIN = 1.0  # the valid task behind a malformed entry starts within this
SLACK = 1.0  # scheduling on a loaded machine (2 cores shared by several test runs)


def xadd_raw(client: redis.Redis, stream: str, fields: list[tuple[bytes, bytes]]) -> str:
    """XADD with fields in this order and repeats kept (redis-py's xadd takes a dict)."""
    args: list[bytes] = []
    for name, value in fields:
        args += [name, value]
    entry = client.execute_command("XADD", stream, "*", *args)
    return entry.decode() if isinstance(entry, bytes) else str(entry)


def check_settled(client: redis.Redis, stream: str, entries: list[str]) -> None:
    """Nothing leased in the stream, and none of the entries is still in it.

    A result is stored before its message is acked, so the valid task whose result the
    test has just read may still be pending for a moment: its ack is awaited, bounded.
    """
    wait_until(lambda: client.xpending(stream, GROUP)["pending"] == 0, 5,
               f"no pending entry in {stream}")
    left = {e[0].decode() for e in client.xrange(stream)}
    assert not left & set(entries), left


def check_dead_letters(world: RedisDeployment, expected: dict[str, str]) -> None:
    """One dead letter per malformed entry, whose reason names the field and the fault."""
    letters = world.probe.dead_letters()
    reasons = [letter.reason for letter in letters]
    for name, words in expected.items():
        assert any(words in reason for reason in reasons), (name, reasons)
    assert len(letters) == len(expected), reasons


@pytest.mark.timeout(60)
def test_malformed_entries_reaching_a_waiting_worker_are_dead_lettered(
    deployment: RedisDeployment,
) -> None:
    # Given a worker idle in its blocking read on the queue
    world = deployment
    broker = world.probe.broker
    assert isinstance(broker, RedisBroker)
    stream = broker.stream_key(QUEUE, 0)
    worker = world.start_worker("-c", "1").wait_ready()
    assert world.tasks.record.delay("warm").get(timeout=10) == "warm"
    client = redis.Redis.from_url(broker.settings.url, socket_timeout=5)
    entries = []
    try:
        for name, fields, _ in MALFORMED:
            # When a malformed entry is written into the stream, then a valid task sent
            entries.append(xadd_raw(client, stream, fields))
            sent = time.time()
            assert world.tasks.record.delay(name).get(timeout=10) == name
            # Then the valid task ran within a second
            [run] = world.ledger.of(name)
            assert run.t - sent < RUNS_WITHIN + SLACK, (name, run.t - sent)
        # And every malformed entry was dead-lettered with its reason, and settled
        check_dead_letters(world, {name: words for name, _, words in MALFORMED})
        check_settled(client, stream, entries)
        assert "cannot be read as a celeriac message" in worker.log()
        assert worker.running
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_malformed_entries_queued_or_left_leased_are_dead_lettered(
    deployment: RedisDeployment,
) -> None:
    # Given malformed entries waiting in the stream before any worker runs, one of
    # them leased by a consumer that died (the state such an entry was wedged in)
    world = deployment
    broker = world.probe.broker
    assert isinstance(broker, RedisBroker)
    stream = broker.stream_key(QUEUE, 0)
    client = redis.Redis.from_url(broker.settings.url, socket_timeout=5)
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        stuck = xadd_raw(client, stream, [(b"i", b"\xc3\x28"), (b"b", b"body")])
        client.xreadgroup(GROUP, "a-dead-worker", {stream: ">"}, count=1)
        entries = [stuck] + [xadd_raw(client, stream, fields) for _, fields, _ in MALFORMED]
        world.tasks.record.delay("behind")

        # When a worker starts on the queue
        started = time.time()
        worker = world.start_worker("-c", "1")

        # Then the valid task behind them runs, and everything malformed is
        # dead-lettered once the dead consumer's lease (2 s) has run out
        assert world.ledger.wait_for("behind")[0].t - started < 20
        expected = {name: words for name, _, words in MALFORMED}
        expected["stuck"] = "field i (the message id) is not valid UTF-8"
        deadline = time.monotonic() + 15
        while len(world.probe.dead_letters()) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.05)
        check_dead_letters(world, expected)
        check_settled(client, stream, entries)
        # The dead letter keeps the message id as it was written
        assert any(letter.id == "\\xc3(" for letter in world.probe.dead_letters())
        assert worker.running
    finally:
        client.close()
