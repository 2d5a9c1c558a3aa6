"""Consuming: the prefetch follows the budget the worker asks for, and deliveries reach
the link's handler straight from celeriac's own reader (``amqp_wire``)."""

from __future__ import annotations

import asyncio
import gc

import aiormq
import pytest
from aiormq.exceptions import ChannelNotFoundEntity
from pamqp import commands as spec
from rabbit_harness import Rabbit

from celeriac.brokers import Outgoing, create_broker
from celeriac.brokers.amqp_blocking import Server
from celeriac.brokers.amqp_consume import prefetch_for
from celeriac.brokers.amqp_wire import Incoming, Wire


def _messages(prefix: str, count: int) -> list[Outgoing]:
    return [Outgoing(f"{prefix}{i}", "jobs", b"{}") for i in range(count)]


def test_a_shrunken_budget_leaves_the_rest_to_other_consumers(rabbit: Rabbit) -> None:
    async def scenario() -> None:
        quick = create_broker(rabbit.url(), {})
        other = create_broker(rabbit.url(), {})
        try:
            # Given a consumer that took 200 quick tasks in one fetch and finished them
            await quick.publish(_messages("a", 200))
            first = await quick.fetch(["jobs"], 200, 5)
            assert len(first) == 200
            await quick.ack(first)
            # When its budget falls to 2 (its tasks became slow) and 100 more arrive
            assert await quick.fetch(["jobs"], 2, 0.05) == []
            await quick.publish(_messages("b", 100))
            held = await quick.fetch(["jobs"], 2, 5)
            # Then it holds 2 of them, and another consumer gets the other 98
            assert len(held) == 2
            taken = await other.fetch(["jobs"], 100, 5)
            assert len(taken) == 98
            assert {d.id for d in held + taken} == {f"b{i}" for i in range(100)}
        finally:
            await quick.close()
            await other.close()

    asyncio.run(scenario())


def test_a_growing_budget_changes_the_prefetch_a_few_times_not_at_every_step() -> None:
    # Given a budget growing by one at every fetch, as a worker's does while its
    # tasks turn out quick, from 1 to 1,000
    changes, prefetch = 0, 0
    for target in range(1, 1001):
        wanted = prefetch_for(target, prefetch)
        # Then the prefetch always covers the target, within twice it above 32
        assert target <= wanted <= max(32, 2 * target)
        changes += wanted != prefetch
        prefetch = wanted
    # And the consumers restart about log2(1000) times above 32, not 968 times
    assert changes <= 32 + 6
    # And a target that falls to a quarter brings the prefetch down to it
    assert prefetch_for(4, 1024) == 4
    assert prefetch_for(300, 1024) == 1024


def test_deliveries_arrive_in_order_and_a_failing_handler_keeps_the_connection(
        rabbit: Rabbit) -> None:
    async def scenario() -> None:
        server = Server.from_url(rabbit.url(), "test consumer")
        publisher = aiormq.Connection(rabbit.url())
        await publisher.connect()
        wire = await Wire.open(server, 5, heartbeat=0, confirm=False)
        lost: list[BaseException] = []
        wire.on_lost = lost.append
        try:
            channel = await publisher.channel()
            await channel.queue_declare("direct")
            got: list[Incoming] = []
            done = asyncio.Event()

            def handle(message: Incoming) -> None:
                if message.body == b"boom":
                    raise RuntimeError("a bug in the handler")
                got.append(message)
                if len(got) == 50:
                    done.set()

            # Given a consumer on the wire
            await wire.consume("direct", "direct-tag", handle)
            # When messages arrive (one large enough for several body frames, one with
            # headers), one of which makes the handler fail
            await channel.basic_publish(b"boom", routing_key="direct")
            for i in range(49):
                await channel.basic_publish(str(i).encode(), routing_key="direct",
                                            properties=spec.Basic.Properties(
                                                message_id=f"m{i}", priority=i % 10,
                                                headers={"n": i}, delivery_mode=2))
            await channel.basic_publish(b"x" * 300_000, routing_key="direct")
            await asyncio.wait_for(done.wait(), 5)
            # Then every other message reached the handler, in order, whole, with the
            # properties it was sent with, on a connection still open
            assert [m.body for m in got[:49]] == [str(i).encode() for i in range(49)]
            assert [(m.message_id, m.priority, m.headers) for m in got[:3]] == [
                ("m0", 0, {"n": 0}), ("m1", 1, {"n": 1}), ("m2", 2, {"n": 2})]
            assert got[49].body == b"x" * 300_000
            assert not wire.is_closed
            # And acks settle them (all but the boom)
            for message in got:
                wire.ack(message.tag)
            ok = await wire.call(spec.Queue.Declare(queue="direct", passive=True),
                                 spec.Queue.DeclareOk)
            assert ok.message_count == 0
            # And a channel error (a missing queue) ends the wire, and says why, once
            with pytest.raises(ChannelNotFoundEntity):
                await wire.call(spec.Queue.Declare(queue="missing", passive=True),
                                spec.Queue.DeclareOk)
            assert wire.is_closed
            assert len(lost) == 1
            assert isinstance(lost[0], ChannelNotFoundEntity)
            # And what it held unacked goes back to the queue: the boom
            for _ in range(100):
                declared = await channel.queue_declare("direct", passive=True)
                if declared.message_count:
                    break
                await asyncio.sleep(0.02)
            assert declared.message_count == 1
        finally:
            await wire.close()
            await publisher.close()

    asyncio.run(scenario())


def test_closing_a_wire_is_a_polite_amqp_close_that_leaves_nothing_behind(
        rabbit: Rabbit) -> None:
    """``close()`` sends connection.close and gets RabbitMQ's close-ok, so the server logs
    a client close rather than a dropped connection, and no future is left failing
    unread (asyncio's "Future exception was never retrieved" at every worker stop)."""
    answers: list[object] = []

    class Recording(Wire):
        def _on_method(self, channel: int, frame: object) -> None:
            answers.append(frame)
            super()._on_method(channel, frame)

    async def scenario() -> list[dict[str, object]]:
        unhandled: list[dict[str, object]] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: unhandled.append(context))
        wire = await Recording.open(Server.from_url(rabbit.url(), "test close"), 5,
                                    heartbeat=0, confirm=True)
        await wire.close()
        assert wire.is_closed
        del wire
        gc.collect()
        await asyncio.sleep(0)
        return unhandled

    unhandled = asyncio.run(scenario())

    assert any(isinstance(frame, spec.Connection.CloseOk) for frame in answers)
    assert unhandled == []
