"""The rate-limit capability of every broker: declared as a flag, kept on its server.

A broker that declares ``supports_rate_limit`` hands out token-bucket stores that all
see the same buckets (every worker process gets its own store object); one that does
not (RabbitMQ) hands out none, and the buckets go to the result backend instead.
"""

from __future__ import annotations

from celeriac.brokers import Broker


async def test_the_flag_says_whether_the_broker_keeps_buckets(broker: Broker) -> None:
    buckets = broker.token_buckets()
    assert (buckets is not None) is broker.supports_rate_limit
    if buckets is not None:
        await buckets.close()


async def test_every_store_of_a_broker_shares_its_buckets(broker: Broker) -> None:
    if not broker.supports_rate_limit:  # RabbitMQ: the result backend keeps them
        assert broker.token_buckets() is None
        return
    one, two = broker.token_buckets(), broker.token_buckets()
    assert one is not None
    assert two is not None
    try:
        first = await one.reserve("contract.task", 1.0, 60.0)
        second = await two.reserve("contract.task", 1.0, 60.0)
        await one.set_override("contract.task", "5/m")
        assert first.delay == 0.0
        # (less than 1 s by the time between the two reservations: up to a few tenths
        # on a loaded machine)
        assert 0.5 < second.delay <= 1.0
        assert await two.overrides() == {"contract.task": "5/m"}
        # The override started the bucket afresh, for both
        assert (await two.reserve("contract.task", 12.0, 60.0)).delay == 0.0
    finally:
        await one.close()
        await two.close()
