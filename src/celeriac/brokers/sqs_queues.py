"""Where each celeriac queue lives on SQS: the URLs of its band and delay queues.

A celeriac queue is several SQS queues (names in ``sqs_settings``). Their URLs are
looked up once per broker object and kept; a queue is made on first use (CreateQueue
is idempotent: it answers the existing queue's URL), with the lease as its default
visibility timeout and SQS's longest retention. Predefined queues (Celery's
``predefined_queues``) are used as given and never made. When SQS says a queue is gone
(deleted behind this process's back), ``forget`` drops what was kept, so that the next
use makes it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celeriac.brokers.sqs_client import QUEUE_MISSING, SqsClients, SqsError
from celeriac.brokers.sqs_settings import SqsSettings

RETENTION = "1209600"  # 14 days, SQS's longest: nothing expires quietly within a weekend
# CreateQueue's answers for a queue that exists with other attributes (made elsewhere).
EXISTS = ("QueueAlreadyExists", "QueueNameExists")


@dataclass(frozen=True, slots=True)
class QueueUrls:
    """The SQS queues of one celeriac queue: band -> URL, and its delay queue."""

    bands: Mapping[int, str]
    delay: str | None


class QueueDirectory:
    """The SQS queue URLs of a broker's celeriac queues, made as they are first used."""

    def __init__(self, settings: SqsSettings, clients: SqsClients) -> None:
        self.settings = settings
        self._clients = clients
        self._urls: dict[str, str] = {}  # SQS queue name -> its URL
        self._queues: dict[str, QueueUrls] = {}  # celeriac queue -> its SQS queues

    def forget(self) -> None:
        """SQS says a queue is gone: look every URL up (and make the queues) again."""
        self._urls.clear()
        self._queues.clear()

    def names(self, queue: str) -> tuple[dict[int, str], str]:
        """The SQS names of a queue's bands and delay queue (ValueError if too long)."""
        return ({band: self.settings.band_name(queue, band) for band in self.settings.bands},
                self.settings.delay_name(queue))

    def _create_params(self, name: str) -> dict[str, Any]:
        attributes = {"MessageRetentionPeriod": RETENTION,
                      "VisibilityTimeout": str(self.settings.lease)}
        if name.endswith(".fifo"):
            attributes["FifoQueue"] = "true"
        return {"QueueName": name, "Attributes": attributes}

    async def url(self, name: str) -> str:
        """The URL of SQS queue ``name``, made now if need be."""
        found = self._urls.get(name)
        if found is None:
            try:
                found = (await self._clients.call("create_queue",
                                                  **self._create_params(name)))["QueueUrl"]
            except SqsError as exc:  # made before with other attributes: use it as it is
                if exc.code not in EXISTS:
                    raise
                found = (await self._clients.call("get_queue_url", QueueName=name))["QueueUrl"]
            self._urls[name] = found
        return found

    def url_blocking(self, name: str) -> str:
        found = self._urls.get(name)
        if found is None:
            try:
                found = self._clients.call_blocking("create_queue",
                                                    **self._create_params(name))["QueueUrl"]
            except SqsError as exc:
                if exc.code not in EXISTS:
                    raise
                found = self._clients.call_blocking("get_queue_url", QueueName=name)["QueueUrl"]
            self._urls[name] = found
        return found

    async def of(self, queue: str) -> QueueUrls:
        """The SQS queues of ``queue``, every one made now if need be."""
        found = self._queues.get(queue)
        if found is None:
            found = self._predefined(queue)
            if found is None:
                bands, delay = self.names(queue)
                urls = await asyncio.gather(*(self.url(name)
                                              for name in [*bands.values(), delay]))
                found = QueueUrls(dict(zip(bands, urls[:-1], strict=True)), urls[-1])
            self._queues[queue] = found
        return found

    def of_blocking(self, queue: str) -> QueueUrls:
        found = self._queues.get(queue)
        if found is None:
            found = self._predefined(queue)
            if found is None:
                bands, delay = self.names(queue)
                found = QueueUrls({band: self.url_blocking(name) for band, name in bands.items()},
                                  self.url_blocking(delay))
            self._queues[queue] = found
        return found

    def _predefined(self, queue: str) -> QueueUrls | None:
        spec = self.settings.predefined.get(queue)
        if spec is None:
            return None
        return QueueUrls({band: spec.url for band in self.settings.bands}, spec.delay_url)

    async def existing(self, queue: str) -> QueueUrls | None:
        """The SQS queues of ``queue`` if they exist, without making any."""
        found = self._queues.get(queue) or self._predefined(queue)
        if found is not None:
            return found
        bands, delay = self.names(queue)
        try:
            urls = await asyncio.gather(*(self._clients.call("get_queue_url", QueueName=name)
                                          for name in [*bands.values(), delay]))
        except SqsError as exc:
            if exc.code in QUEUE_MISSING:
                return None
            raise
        found = QueueUrls(dict(zip(bands, (u["QueueUrl"] for u in urls[:-1]), strict=True)),
                          urls[-1]["QueueUrl"])
        self._queues[queue] = found
        return found
