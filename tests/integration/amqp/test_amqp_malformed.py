"""A delivery RabbitMQ hands over whose broker-level fields cannot be read.

Anyone with credentials can publish straight onto a queue: a message id that is not
UTF-8, or a header celeriac reads (its delivery count, eta, first-publish time) of the
wrong type. Such a delivery is dead-lettered with a reason naming the field, it is
settled, the consumer's connection stays up, and the next valid task runs at once.
(Before: a non-UTF-8 id ended the consumer connection at every delivery, forever.)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiormq
import pytest
from pamqp import commands as spec
from rabbit_harness import QUEUE, RabbitDeployment

PLACEHOLDER = "ID-TO-BREAK!"  # replaced, bytes for bytes, by BAD_ID on the wire
BAD_ID = b"\xff\xfe not utf-8"


class _BrokenId(spec.Basic.Properties):
    """Properties whose message id is written as bytes that are not UTF-8."""

    def marshal(self) -> bytes:
        data = super().marshal()
        placeholder = bytes([len(PLACEHOLDER)]) + PLACEHOLDER.encode()
        assert data.count(placeholder) == 1
        assert len(BAD_ID) == len(PLACEHOLDER)
        return data.replace(placeholder, bytes([len(BAD_ID)]) + BAD_ID)


def publish_raw(deployment: RabbitDeployment, body: bytes, *, message_id: str,
                headers: dict[str, Any], broken_id: bool = False) -> None:
    """Publish one message onto the work queue with aiormq, as any client could."""
    queue = deployment.probe.broker.topology.queue(QUEUE)  # type: ignore[attr-defined]

    async def send() -> None:
        connection = await aiormq.connect(deployment.url)
        try:
            channel = await connection.channel()
            kind = _BrokenId if broken_id else spec.Basic.Properties
            properties = kind(message_id=message_id, headers=headers, delivery_mode=2)
            await channel.basic_publish(body, routing_key=queue, properties=properties,
                                        mandatory=True)
        finally:
            await connection.close()

    asyncio.run(send())


CASES = {
    "message id not UTF-8": ({}, True, "message-id is not valid UTF-8"),
    "delivery count a string": ({"x-celeriac-deliveries": "three"}, False,
                                "x-celeriac-deliveries is 'three'"),
    "eta a string": ({"x-celeriac-eta": "soon"}, False, "x-celeriac-eta is 'soon'"),
    "first publish time negative": ({"x-celeriac-sent": -5}, False,
                                    "x-celeriac-sent is -5"),
}


@pytest.mark.parametrize("case", CASES)
def test_an_unreadable_delivery_is_dead_lettered_and_the_next_task_runs_at_once(
    deployment: RabbitDeployment, case: str,
) -> None:
    headers, broken_id, reason = CASES[case]
    # Given a worker that has run a task
    worker = deployment.start_worker("-c", "1").wait_ready()
    assert deployment.tasks.record.delay("before").get(timeout=10) == "before"

    # When a message with a valid task body but an unreadable broker-level field
    # arrives, followed by a valid task
    _, bad = deployment.app.prepare("ledger.record", ("bad",), {}, {},
                                    deployment.tasks.record)
    publish_raw(deployment, bad.body, headers=headers, broken_id=broken_id,
                message_id=PLACEHOLDER if broken_id else bad.id)
    sent = time.time()
    after = deployment.tasks.record.delay("after")

    # Then the valid task runs within a second
    assert after.get(timeout=10) == "after"
    [run] = deployment.ledger.of("after")
    assert run.t - sent < 1.0
    # And the bad one never ran: it is dead-lettered once, with a reason naming its field
    [letter] = deployment.probe.dead_letters()
    assert reason in letter.reason, letter.reason
    assert letter.body == bad.body
    if not broken_id:
        assert letter.id == bad.id
    assert "bad" not in deployment.ledger.tags()
    # And it was settled, on a connection that stayed up all along
    deployment.wait_for_queue(ready=0, in_flight=0)
    log = worker.log()
    assert "dead-lettered: " + reason.split(" is ")[0] in log or reason in log
    assert "connection to RabbitMQ" not in log, log
