"""Looking into an SQS broker's queues: their counts, purging, the dead letters.

The administrative side of ``SQSBroker`` (``celeriac inspect``, ``celeriac purge``,
``celeriac dead-letters``, the queue alerts and the metrics), apart from the broker
module because none of it is on the path of a task: each function is given the broker
whose queues it reads. The broker's methods of the same names call them.

SQS shows a queue only by receiving from it, so reading the dead letters receives them
all (hidden for ``SCAN_VISIBILITY`` meanwhile), then deletes the chosen ones and makes
the others visible again; counts are SQS's ``Approximate*`` queue attributes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from celeriac.brokers import sqs_messages as wire
from celeriac.brokers.base import DeadLetter, QueueStats

if TYPE_CHECKING:
    from celeriac.brokers.sqs import SQSBroker

BATCH = 10  # SQS's most messages per receive
SCAN_VISIBILITY = 30  # seconds a dead letter is hidden while a scan reads past it


async def _attributes(broker: SQSBroker, url: str) -> dict[str, int]:
    result = await broker._clients.call("get_queue_attributes", QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed"])
    return {name: int(value) for name, value in result.get("Attributes", {}).items()}


async def _known_queues(broker: SQSBroker) -> list[str]:
    """The celeriac queues whose SQS queues carry the broker's prefix (and predefined)."""
    names: set[str] = set()
    params: dict[str, Any] = {"QueueNamePrefix": broker.settings.prefix, "MaxResults": 1000}
    while True:
        result = await broker._clients.call("list_queues", **params)
        for url in result.get("QueueUrls", []):
            queue = broker.settings.queue_of(url.rsplit("/", 1)[-1])
            if queue:
                names.add(queue)
        if not result.get("NextToken"):
            break
        params["NextToken"] = result["NextToken"]
    return sorted(names | set(broker.settings.predefined))


async def queue_stats(broker: SQSBroker,
                      queues: Sequence[str] | None = None) -> list[QueueStats]:
    names = list(queues) if queues is not None else await _known_queues(broker)
    return list(await asyncio.gather(*(_stats(broker, name) for name in names)))


async def _stats(broker: SQSBroker, queue: str) -> QueueStats:
    urls = await broker.queues.existing(queue)
    if urls is None:
        return QueueStats(queue, 0, 0, 0)
    bands = await asyncio.gather(*(_attributes(broker, url)
                                   for url in dict.fromkeys(urls.bands.values())))
    delay = await _attributes(broker, urls.delay) if urls.delay else {}
    return QueueStats(
        queue, ready=sum(b.get("ApproximateNumberOfMessages", 0) for b in bands),
        scheduled=sum(delay.values()),  # waiting, surfaced but not moved, or held
        in_flight=sum(b.get("ApproximateNumberOfMessagesNotVisible", 0) for b in bands))


async def purge(broker: SQSBroker, queues: Sequence[str]) -> int:
    """Receive and delete the ready messages (in-flight ones stay with their workers);
    empty the delay queues with PurgeQueue (once a minute per queue on AWS)."""
    removed = 0
    for queue in queues:
        urls = await broker.queues.existing(queue)
        if urls is None:
            continue
        for url in dict.fromkeys(urls.bands.values()):
            while got := await broker._receive(url, BATCH, broker.settings.lease):
                await broker._delete([(url, m.handle) for m in got])
                removed += len(got)
        if urls.delay is not None:
            waiting = sum((await _attributes(broker, urls.delay)).values())
            if waiting:
                await broker._clients.call("purge_queue", QueueUrl=urls.delay)
                removed += waiting
    return removed


async def _scan_dead(broker: SQSBroker) -> tuple[str, list[wire.Received]]:
    """Receive every dead letter (hidden meanwhile); the caller deletes or shows them."""
    url = await broker.queues.url(broker.settings.dead_letter_name())
    found: list[wire.Received] = []
    while got := await broker._receive(url, BATCH, SCAN_VISIBILITY):
        found += got
    return url, found


async def _show_again(broker: SQSBroker, url: str, messages: Sequence[wire.Received]) -> None:
    await broker._renew([(url, m.handle) for m in messages], 0)


async def dead_letters(broker: SQSBroker, limit: int = 100) -> list[DeadLetter]:
    url, found = await _scan_dead(broker)
    await _show_again(broker, url, found)
    letters = [_dead_letter(m) for m in found]
    letters.sort(key=lambda d: d.dead_at, reverse=True)
    return letters[:limit]


async def purge_dead_letters(broker: SQSBroker) -> int:
    url, found = await _scan_dead(broker)
    await broker._delete([(url, m.handle) for m in found])
    return len(found)


async def remove_dead_letters(broker: SQSBroker, ids: Collection[str]) -> int:
    wanted = set(ids)
    if not wanted:
        return 0
    url, found = await _scan_dead(broker)
    chosen = [m for m in found if m.id in wanted]
    await broker._delete([(url, m.handle) for m in chosen])
    await _show_again(broker, url, [m for m in found if m.id not in wanted])
    return len(chosen)


def _dead_letter(message: wire.Received) -> DeadLetter:
    attributes = message.attributes
    try:
        dead_at = float(attributes.get(wire.DEAD_AT, "0"))
        count: int | None = int(attributes[wire.COUNT]) if wire.COUNT in attributes else None
    except ValueError:
        dead_at, count = 0.0, None
    return DeadLetter(message.id, attributes.get(wire.QUEUE, ""), message.body,
                      attributes.get(wire.REASON, ""), dead_at, count)
