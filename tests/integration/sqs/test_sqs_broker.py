"""What the SQS broker adds to the broker contract (tests/contract runs that on it too).

Celery's URL forms and transport options; a stale receipt refused by the server when
another process took the message over; an eta beyond what one SQS delay covers; FIFO
queues; messages sent into the queues by something else; and no bus.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqs_server

from celeriac.brokers import Broker, Outgoing, QueueStats, create_broker
from celeriac.brokers import sqs_messages as wire
from celeriac.brokers.sqs import SQSBroker
from celeriac.errors import ConfigurationError

pytestmark = pytest.mark.timeout(60)


def message(queue: str = "q", priority: int = 0, eta: float | None = None) -> Outgoing:
    id_ = uuid.uuid4().hex
    return Outgoing(id_, queue, id_.encode(), priority, eta)


@pytest.fixture
def options() -> Iterator[dict[str, Any]]:
    with sqs_server.namespace(polling_interval=0.1, lease_seconds=1) as found:
        yield found


def make(options: dict[str, Any], **more: Any) -> SQSBroker:
    broker = create_broker(sqs_server.broker_url(), {**options, **more})
    assert isinstance(broker, SQSBroker)
    return broker


# -- URL and options ----------------------------------------------------------------------


def test_celery_url_forms_and_options() -> None:
    plain = SQSBroker("sqs://")
    assert (plain.settings.endpoint_url, plain.settings.access_key) == (None, None)
    assert plain.settings.region == "us-east-1"
    keys = SQSBroker("sqs://AKIA:se%2Fcret@", {"region": "eu-west-1"})
    assert (keys.settings.access_key, keys.settings.secret_key) == ("AKIA", "se/cret")
    assert keys.settings.region == "eu-west-1"
    local = SQSBroker("sqs://a:b@localhost:4566")
    assert local.settings.endpoint_url == "http://localhost:4566"
    secure = SQSBroker("sqs://a:b@sqs.example:443", {"is_secure": True})
    assert secure.settings.endpoint_url == "https://sqs.example:443"
    by_option = SQSBroker("sqs://", {"endpoint_url": "http://127.0.0.1:9324/"})
    assert by_option.settings.endpoint_url == "http://127.0.0.1:9324"
    # Celery's visibility_timeout is the lease; SQS counts whole seconds (rounded up)
    assert SQSBroker("sqs://", {"visibility_timeout": 60}).lease_seconds == 60.0
    assert SQSBroker("sqs://", {"lease_seconds": 0.5}).lease_seconds == 1.0
    assert SQSBroker("sqs://", {"lease_seconds": 30, "visibility_timeout": 30}).lease_seconds \
        == 30.0


@pytest.mark.parametrize(("url", "options", "match"), [
    ("sqs://", {"lease_seconds": 10, "visibility_timeout": 30}, "contradict"),
    ("sqs://", {"polling_intervall": 1}, "polling_interval"),
    ("sqs://", {"queue_name_prefix": "a.b"}, "queue_name_prefix"),
    ("sqs://", {"priority_bands": [1, 5]}, "priority_bands"),
    ("sqs://", {"visibility_timeout": 0}, "visibility_timeout"),
    ("sqs://", {"predefined_queues": {"q": {"url": "u", "access_key_id": "k"}}},
     "per-queue credentials"),
    ("sqs://a:b@localhost:1", {"endpoint_url": "http://other:2"}, "give one"),
    ("sqs://onlykey@", {}, "both"),
    ("sqs:///queue", {}, "no path"),
])
def test_bad_settings_are_refused_naming_the_setting(url: str, options: dict[str, Any],
                                                      match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SQSBroker(url, options)


def test_celerys_long_polling_option_is_not_used_and_a_warning_says_why(
        caplog: pytest.LogCaptureFixture) -> None:
    SQSBroker("sqs://", {"wait_time_seconds": 20})
    assert "wait_time_seconds=20 is not used" in caplog.text
    assert "polling_interval" in caplog.text


def test_a_secret_never_appears_in_errors() -> None:
    with pytest.raises(ConfigurationError) as caught:
        SQSBroker("sqs://AKIA:topsecret@localhost:1", {"endpoint_url": "http://x:2"})
    assert "topsecret" not in str(caught.value)


def test_queue_names_sqs_cannot_hold_are_escaped_and_too_long_ones_refused(
        options: dict[str, Any]) -> None:
    broker = make(options)

    async def run() -> None:
        try:
            sent = [message("tasks.io"), message("a-b")]
            await broker.publish(sent)
            got = await broker.fetch(["tasks.io", "a-b"], 10, timeout=1)
            assert [(d.id, d.queue) for d in got] == [(m.id, m.queue) for m in sent]
            assert {s.queue for s in await broker.queue_stats()} == {"tasks.io", "a-b"}
            with pytest.raises(ValueError, match="too long"):
                await broker.publish([message("x" * 80)])
        finally:
            await broker.close()

    asyncio.run(run())


def test_predefined_queues_are_used_as_given_and_never_made(options: dict[str, Any]) -> None:
    sqs = sqs_server.client()
    try:
        url = sqs.create_queue(QueueName=f"{options['queue_name_prefix']}made-elsewhere")[
            "QueueUrl"]
    finally:
        sqs.close()
    broker = make(options, predefined_queues={"work": {"url": url}})

    async def run() -> None:
        try:
            sent = [message("work", priority=p) for p in (1, 8)]
            await broker.publish(sent)
            got = await broker.fetch(["work"], 10, timeout=1)
            assert [d.id for d in got] == [sent[1].id, sent[0].id]
            with pytest.raises(ValueError, match="delay_url"):
                await broker.publish([message("work", eta=time.time() + 60)])
            assert [s.queue for s in await broker.queue_stats()] == ["work"]
        finally:
            await broker.close()

    asyncio.run(run())


def test_queues_deleted_behind_its_back_are_made_again(options: dict[str, Any]) -> None:
    broker = make(options)

    async def run() -> None:
        try:
            await broker.publish([message()])
            sqs_server.delete_queues(options["queue_name_prefix"])
            sent = message()
            await broker.publish([sent])  # SQS says the queue is gone: made again
            assert [d.id for d in await broker.fetch(["q"], 10, timeout=1)] == [sent.id]
        finally:
            await broker.close()

    asyncio.run(run())


# -- leases across processes --------------------------------------------------------------


def test_a_stale_receipt_from_another_process_is_refused_by_the_server(
        options: dict[str, Any]) -> None:
    # Two broker objects: two worker processes, each knowing only its own receipts
    paused, other = make(options), make(options)

    async def run() -> None:
        try:
            await paused.publish([message()])
            [stale] = await paused.fetch(["q"], 10, timeout=1)
            # the first worker is paused past its lease; the other takes the message
            [current] = await other.fetch(["q"], 10, timeout=3)
            assert (current.id, current.delivery_count) == (stale.id, 2)

            assert await paused.extend([stale]) == [False]
            await paused.ack([stale])
            await paused.requeue([stale])
            await paused.dead_letter([(stale, "too late")])

            assert await other.extend([current]) == [True]
            assert await other.queue_stats(["q"]) == [QueueStats("q", 0, 0, 1)]
            assert await other.dead_letters() == []
            await other.ack([current])
            assert await other.queue_stats(["q"]) == [QueueStats("q", 0, 0, 0)]
        finally:
            await paused.close()
            await other.close()

    asyncio.run(run())


def test_a_lease_that_ran_out_is_lost_to_extend_but_may_still_be_acked(
        options: dict[str, Any]) -> None:
    broker = make(options)

    async def run() -> None:
        try:
            await broker.publish([message()])
            [held] = await broker.fetch(["q"], 10, timeout=1)
            assert broker.holds(held)
            await asyncio.sleep(broker.lease_seconds + 0.2)  # nobody fetches meanwhile

            assert not broker.holds(held)
            assert await broker.extend([held]) == [False]
            await broker.ack([held])
            assert await broker.queue_stats(["q"]) == [QueueStats("q", 0, 0, 0)]
        finally:
            await broker.close()

    asyncio.run(run())


def test_requeue_keeps_the_delivery_count_so_far(options: dict[str, Any]) -> None:
    broker = make(options)

    async def run() -> None:
        try:
            await broker.publish([message()])
            await broker.fetch(["q"], 1, timeout=1)
            [second] = await broker.fetch(["q"], 1, timeout=3)  # after the lease ran out
            assert second.delivery_count == 2
            await broker.requeue([second])
            [again] = await broker.fetch(["q"], 1, timeout=0)
            assert again.delivery_count == 2
        finally:
            await broker.close()

    asyncio.run(run())


# -- eta beyond one SQS delay -------------------------------------------------------------


def test_a_delayed_message_surfacing_early_waits_again_until_its_eta(
        options: dict[str, Any]) -> None:
    # An eta beyond SQS's 900 s surfaces after 900 s, still early: sent as SQS would
    # hand it back then, due 2.5 s from now and visible at once
    broker = make(options)
    due = time.time() + 2.5
    sent = message()

    async def run() -> None:
        try:
            await broker.publish([message(eta=time.time() + 60)])  # makes the queues
            delay_url = (await broker.queues.of("q")).delay
            early = wire.entry(sent.id, wire.encode_body(sent.body), 5, wire.order_key(),
                               due=due)
            sqs = sqs_server.client()
            try:
                sqs.send_message(QueueUrl=delay_url, **early)
            finally:
                sqs.close()

            assert await broker.fetch(["q"], 10, timeout=1) == []  # sent back, not held
            assert (await broker.queue_stats(["q"]))[0].scheduled == 2
            [got] = await broker.fetch(["q"], 10, timeout=5)
            assert (got.id, got.priority, got.delivery_count) == (sent.id, 5, 1)
            assert due <= time.time() < due + 0.5
        finally:
            await broker.close()

    asyncio.run(run())


# -- FIFO queues --------------------------------------------------------------------------


def test_fifo_queues_keep_order_drop_a_repeated_id_and_take_requeues_and_etas(
        options: dict[str, Any]) -> None:
    broker = make(options, fifo=True)

    async def run() -> None:
        try:
            sent = [message() for _ in range(5)]
            await broker.publish(sent)
            await broker.publish([sent[0]])  # the same id again: SQS keeps one
            later = message(eta=time.time() + 0.5)
            await broker.publish([later])
            got = await broker.fetch(["q"], 10, timeout=1)
            assert [d.id for d in got] == [m.id for m in sent]
            await broker.requeue(got[:1])
            await broker.ack(got[1:])
            again = await broker.fetch(["q"], 10, timeout=3)
            assert [d.id for d in again] == [sent[0].id]
            await broker.ack(again)
            assert [d.id for d in await broker.fetch(["q"], 10, timeout=3)] == [later.id]
            names = [url.rsplit("/", 1)[-1] for url in (await broker.queues.of("q")).bands.values()]
            assert all(name.endswith(".fifo") for name in names)
        finally:
            await broker.close()

    asyncio.run(run())


# -- others' messages, one band, blocking publish, no bus ---------------------------------


def test_a_message_sent_by_something_else_comes_out_with_its_problem(
        options: dict[str, Any]) -> None:
    broker = make(options)

    async def run() -> None:
        try:
            await broker.publish([message()])
            [first] = await broker.fetch(["q"], 1, timeout=1)
            await broker.ack([first])
            band_url = (await broker.queues.of("q")).bands[0]
            sqs = sqs_server.client()
            try:
                sqs.send_message(QueueUrl=band_url, MessageBody="hello!")
            finally:
                sqs.close()
            [odd] = await broker.fetch(["q"], 10, timeout=1)
            assert odd.problem is not None
            assert "celeriac_id" in odd.problem
            await broker.dead_letter([(odd, odd.problem)])
            [dead] = await broker.dead_letters()
            assert (dead.queue, dead.body, dead.reason) == ("q", b"hello!", odd.problem)
        finally:
            await broker.close()

    asyncio.run(run())


def test_one_band_holds_every_priority_and_a_fetch_still_orders_them(
        options: dict[str, Any]) -> None:
    broker = make(options, priority_bands=[0])

    async def run() -> None:
        try:
            sent = [message(priority=p) for p in (0, 9, 3)]
            await broker.publish(sent)
            got = await broker.fetch(["q"], 10, timeout=1)
            assert [d.priority for d in got] == [9, 3, 0]
            assert len((await broker.queues.of("q")).bands) == 1
        finally:
            await broker.close()

    asyncio.run(run())


def test_a_sync_producer_publishes_without_an_event_loop(options: dict[str, Any]) -> None:
    producer, consumer = make(options), make(options)
    sent = [message(priority=7), message()]
    try:
        producer.publish_blocking(sent)
    finally:
        producer.close_blocking()

    async def run() -> list[str]:
        try:
            return [d.id for d in await consumer.fetch(["q"], 10, timeout=1)]
        finally:
            await consumer.close()

    assert asyncio.run(run()) == [m.id for m in sent]


def test_there_is_no_bus_and_it_says_so() -> None:
    broker: Broker = SQSBroker("sqs://")
    with pytest.raises(NotImplementedError, match="SQS"):
        broker.bus()
