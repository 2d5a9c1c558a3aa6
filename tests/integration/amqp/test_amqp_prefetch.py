"""Consuming: the prefetch follows the budget the worker asks for, and deliveries reach
the link's handler directly."""

from __future__ import annotations

import asyncio

import aiormq
from aiormq.abc import DeliveredMessage
from rabbit_harness import Rabbit

from celeriac.brokers import Outgoing, create_broker
from celeriac.brokers.amqp_link import Handler, deliver_directly, prefetch_for


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


def test_direct_deliveries_arrive_in_order_in_the_reader_and_a_failure_keeps_the_channel(
        rabbit: Rabbit) -> None:
    async def scenario() -> None:
        connection = aiormq.Connection(rabbit.url())
        await connection.connect()
        try:
            channel = await connection.channel()
            handlers: dict[str, Handler] = {}
            assert deliver_directly(channel, handlers)
            await channel.queue_declare("direct")
            await channel.queue_declare("plain")
            got: list[bytes] = []
            tasks: set[asyncio.Task[object] | None] = set()
            plain: list[bytes] = []
            done, plain_done = asyncio.Event(), asyncio.Event()

            def handle(message: DeliveredMessage) -> None:
                tasks.add(asyncio.current_task())
                if message.body == b"boom":
                    raise RuntimeError("a bug in the handler")
                got.append(message.body)
                if len(got) == 50:
                    done.set()

            async def never(message: DeliveredMessage) -> None:
                raise AssertionError("a direct delivery went through aiormq's task")

            async def plain_handler(message: DeliveredMessage) -> None:
                plain.append(message.body)
                plain_done.set()

            # Given a direct consumer and an ordinary one on the same channel
            handlers["direct-tag"] = handle
            await channel.basic_consume("direct", never, no_ack=True, consumer_tag="direct-tag")
            await channel.basic_consume("plain", plain_handler, no_ack=True)
            # When messages arrive, one of which makes the direct handler fail
            await channel.basic_publish(b"boom", routing_key="direct")
            for i in range(50):
                await channel.basic_publish(str(i).encode(), routing_key="direct")
            await channel.basic_publish(b"p", routing_key="plain")
            await asyncio.wait_for(done.wait(), 5)
            # Then every other message reached the handler, in order, all in one task
            # (the channel's reader: no task per delivery), on a channel still open
            assert got == [str(i).encode() for i in range(50)]
            assert len(tasks) == 1
            assert not channel.is_closed
            # And the ordinary consumer got its message as before
            await asyncio.wait_for(plain_done.wait(), 5)
            assert plain == [b"p"]
        finally:
            await connection.close()

    asyncio.run(scenario())
