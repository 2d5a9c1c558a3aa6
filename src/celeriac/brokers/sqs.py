"""The Amazon SQS broker: SQS queues per priority band, leases as visibility timeouts.

``sqs://`` (URL forms and transport options in ``sqs_settings``; queue names there too).
SQS keeps no results, no events and no broadcast: results go to any other backend, and
``bus()`` says there is none.

How the contract maps onto SQS:

- durability: a publish returns after SQS accepted every message (SendMessageBatch,
  ten at a time); SQS stores them redundantly. A batch of more than ten is not atomic:
  a partial failure is a BrokerError naming what was not stored.
- lease = visibility timeout, in whole seconds (a fractional ``lease_seconds`` is
  rounded up); ``extend`` is ChangeMessageVisibility. The delivery count is SQS's
  ``ApproximateReceiveCount`` plus the deliveries of earlier copies (``celeriac_prior``).
- stale receipts: every receive gets a new receipt handle. This process remembers the
  newest handle of each message and ignores older ones; when a lease may have run out
  (by this process's clock), an outcome first renews the visibility with its handle,
  which SQS refuses for a handle older than the message's newest receive, so a paused
  worker cannot ack over the worker that took its message over.
- ``requeue`` cannot give a message back without SQS counting a receive, so it sends a
  copy (with the delivery count so far and the original publish order) and deletes the
  original: the copy is not counted, and a fetch that takes it with younger messages
  hands it out first. It goes to the back of SQS's own queue.
- ``eta``: a delay queue per queue. A message waits there with ``DelaySeconds`` (at most
  900, SQS's limit) and its due time as an attribute; a fetch that finds one surfacing
  early sends it back with the next delay, holds one due within a second until its
  time, and moves due ones to their band queue (send, then delete: at least once).
- priorities: one SQS queue per band (``priority_bands``, 0-3/4-6/7-9 by default);
  a fetch reads the higher bands first and sorts what it took by exact priority, then
  publish order. Each band is one more ReceiveMessage per idle poll.
- waiting: SQS cannot wake a fetch, and a long poll cannot be cancelled without losing
  (for a visibility timeout) what it took meanwhile, so an idle fetch polls its queues
  every ``polling_interval`` seconds, and a publish or requeue in this process wakes
  the fetches of this process at once.
- dead letters: one standard queue per prefix, the reason, queue, time and delivery
  count as attributes. SQS cannot read a queue without receiving, so ``dead_letters``
  and ``remove_dead_letters`` receive every dead letter (ten per call), then make the
  ones they keep visible again: costs grow with the queue's length.
- ``purge``: ready messages are received and deleted (in-flight ones stay with their
  workers); the delay queue is purged with PurgeQueue, which AWS allows once a minute.

Messages sent into these queues by something else (no ``celeriac_id`` attribute, a
body that is not base64) come out as deliveries with ``problem`` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.brokers import sqs_inspect
from celeriac.brokers import sqs_messages as wire
from celeriac.brokers.base import (
    Broker,
    DeadLetter,
    Delivery,
    Outgoing,
    QueueStats,
    check_outgoing,
)
from celeriac.brokers.sqs_client import LOST_RECEIPT, QUEUE_MISSING, SqsClients, SqsError
from celeriac.brokers.sqs_queues import QueueDirectory, QueueUrls
from celeriac.brokers.sqs_settings import SqsSettings, escape
from celeriac.errors import BrokerError

if TYPE_CHECKING:
    from celeriac.bus.base import Bus

logger = logging.getLogger(__name__)

MAX_DELAY = 900  # SQS's longest DelaySeconds
# A delayed message is sent to surface a second or two before its eta (SQS delays are
# whole seconds), and one due within HOLD seconds is held by the fetch that took it and
# moved on its own timer; so a delay queue read every DELAY_POLL seconds or more often
# never makes an eta late, and a busy worker's rounds do not all read it.
EARLY = 1
HOLD = 2.0
DELAY_POLL = 0.5
DELAY_VISIBILITY = 10  # how long a fetch holds a delayed message it took
DELAY_READS = 10  # receives of one delay queue per round at most (the rest: next round)
# An outcome on a lease with less than this left (by this process's clock) first renews
# the visibility with its handle, so that a stale handle is refused by SQS.
SAFETY = 1.0
BATCH = 10  # SQS's most entries per batch call and messages per receive
MAX_BATCH_BYTES = 1024 * 1024
# A fetch holds at most this many receipt records before dropping those long expired.
MAX_RECORDS = 20_000


@dataclass(frozen=True, slots=True)
class Receipt:
    """One receive of one SQS message: its queue, handle, and what a copy needs."""

    url: str
    handle: str
    sqs_id: str
    order: str


@dataclass(frozen=True, slots=True)
class Held:
    """A delayed message this process took from a delay queue, due soon."""

    queue: str
    url: str
    message: wire.Received


class SQSBroker(Broker):
    """Messages in Amazon SQS queues (see the module docstring)."""

    scheme = "sqs"
    supports_delay = True
    supports_priority = True
    supports_blocking_publish = True

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.settings = SqsSettings.parse(url, self.options)
        self.lease_seconds = float(self.settings.lease)
        self._clients = SqsClients(self.settings, lambda: self.queues.forget())
        self.queues = QueueDirectory(self.settings, self._clients)
        self._lock = threading.Lock()
        self._deadlines: dict[str, float] = {}  # receipt handle -> lease end (monotonic)
        self._newest: dict[str, str] = {}  # SQS message id -> newest receipt handle
        self._held: list[tuple[float, Held]] = []  # (due, message)
        self._delay_polled: dict[str, float] = {}  # queue -> when its delay queue was read
        self._delay_poll = min(DELAY_POLL, self.settings.polling_interval)
        self._waiting: dict[asyncio.AbstractEventLoop, set[asyncio.Event]] = {}

    # -- connections and queues -----------------------------------------------------------

    async def connect(self) -> None:
        await self._clients.client()

    async def close(self) -> None:
        await self._clients.close()

    def close_blocking(self) -> None:
        self._clients.close_blocking()

    # -- publish --------------------------------------------------------------------------

    def _plan(self, messages: Sequence[Outgoing]) -> list[tuple[str, int | None, dict[str, Any]]]:
        """(queue, band or None for its delay queue, SendMessageBatch entry) of each
        message; raises ValueError, sending nothing, for one SQS cannot take."""
        check_outgoing(messages)
        now = time.time()
        plan = []
        for out in messages:
            if out.queue not in self.settings.predefined:
                self.queues.names(out.queue)  # a name too long for SQS is refused here
            body = wire.encode_body(out.body)
            due = out.eta if out.eta is not None and out.eta > now else None
            if due is None:
                band = self.settings.band_of(out.priority)
                found = wire.entry(out.id, body, out.priority, wire.order_key())
                if self.settings.fifo:
                    found.update(self._fifo_ids(out.queue, out.id))
            else:
                if out.queue in self.settings.predefined and \
                        self.settings.predefined[out.queue].delay_url is None:
                    raise ValueError(f"message {out.id}: queue {out.queue!r} is predefined "
                                     f"without a delay_url, so it cannot hold an eta")
                band = None
                found = wire.entry(out.id, body, out.priority, wire.order_key(), due=due,
                                   delay=_delay(due, now))
            size = wire.size(found)
            if size > self.settings.max_message_size:
                raise ValueError(f"message {out.id}: {size} bytes as SQS stores "
                                 f"it (base64 body and attributes), more than SQS takes "
                                 f"({self.settings.max_message_size}, max_message_size)")
            plan.append((out.queue, band, found))
        return plan

    def _fifo_ids(self, queue: str, id_: str, copy: bool = False) -> dict[str, str]:
        """A FIFO queue's group (one per queue: ordered, one in flight at a time) and
        deduplication id (the message id, so a repeated publish within SQS's five
        minutes is stored once; a copy gets an id of its own)."""
        dedup = hashlib.sha256(id_.encode()).hexdigest()
        if copy:
            dedup = uuid.uuid4().hex
        return {"MessageGroupId": "q-" + escape(queue)[:100],
                "MessageDeduplicationId": dedup}

    @staticmethod
    def _target(urls: QueueUrls, band: int | None) -> str:
        if band is None:
            assert urls.delay is not None  # _plan refused an eta for a queue without one
            return urls.delay
        return urls.bands[band]

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        plan = self._plan(messages)
        for attempt in (1, 2):  # a second time after SQS said a queue was deleted
            by_url: dict[str, list[dict[str, Any]]] = {}
            for queue, band, found in plan:
                by_url.setdefault(self._target(await self.queues.of(queue), band),
                                  []).append(found)
            try:
                await self._send(by_url)
                break
            except SqsError as exc:
                if exc.code not in QUEUE_MISSING or attempt == 2:
                    raise
        self._wake()

    def publish_blocking(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        plan = self._plan(messages)
        for attempt in (1, 2):  # a second time after SQS said a queue was deleted
            by_url: dict[str, list[dict[str, Any]]] = {}
            for queue, band, found in plan:
                by_url.setdefault(self._target(self.queues.of_blocking(queue), band),
                                  []).append(found)
            try:
                self._send_blocking(by_url)
                break
            except SqsError as exc:
                if exc.code not in QUEUE_MISSING or attempt == 2:
                    raise
        self._wake()

    def _send_blocking(self, by_url: Mapping[str, list[dict[str, Any]]]) -> None:
        failed = []
        for url, entries in by_url.items():
            for chunk in _chunks(entries):
                failed += _failures(self._clients.call_blocking(
                    "send_message_batch", QueueUrl=url, Entries=_numbered(chunk)), chunk)
        _raise_unsent(failed)

    async def _send(self, by_url: Mapping[str, list[dict[str, Any]]]) -> None:
        calls = [(url, chunk) for url, entries in by_url.items() for chunk in _chunks(entries)]
        results = await asyncio.gather(*(
            self._clients.call("send_message_batch", QueueUrl=url, Entries=_numbered(chunk))
            for url, chunk in calls))
        _raise_unsent([failure for (_, chunk), result in zip(calls, results, strict=True)
                       for failure in _failures(result, chunk)])

    # -- fetch ----------------------------------------------------------------------------

    def _wake(self) -> None:
        """A message arrived from this process: wake every fetch of this process."""
        for loop, events in list(self._waiting.items()):
            for event in list(events):
                with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                    loop.call_soon_threadsafe(event.set)

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        waiting = self._waiting.setdefault(loop, set())
        waiting.add(event)
        try:
            while True:
                event.clear()  # before looking: a publish during the look is kept
                taken, moved = await self._take(queues, limit)
                if taken:
                    return taken
                if moved:
                    continue  # due messages just reached their bands: take them now
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                sleep = min(remaining, self.settings.polling_interval)
                with self._lock:
                    if self._held:
                        sleep = min(sleep, max(0.001, min(self._held, key=_due)[0] - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), sleep)
        finally:
            waiting.discard(event)

    async def _take(self, queues: Sequence[str], limit: int) -> tuple[list[Delivery], bool]:
        """One round: lease up to ``limit`` from the band queues, higher bands first;
        beside it, move what came due in the delay queues, and read the bands once more
        if any moved. Also whether some moved that this round did not take."""
        if limit <= 0 or not queues:
            return [], False
        moving = asyncio.ensure_future(self._move_due(queues))
        taken: list[tuple[int, str, wire.Received, str]] = []
        failure: BrokerError | None = None
        try:
            await self._take_bands(queues, limit, taken)
        except BrokerError as exc:
            failure = exc
        except BaseException:
            moving.cancel()
            raise
        try:
            moved = await moving
            if moved and failure is None and len(taken) < limit:
                # The reads above may have seen some of what just moved and not the
                # rest (a higher band): read again, so one fetch orders them all.
                await self._take_bands(queues, limit, taken)
                moved = False
        except BrokerError as exc:
            moved, failure = False, failure or exc
        if failure is not None:
            if not taken:
                raise failure
            # What was leased is handed out, not left to its lease; the error comes
            # back on the next round if it lasts.
            logger.warning("SQS fetch: %s; handing out the %d message(s) taken before it",
                           failure, len(taken))
        taken.sort(key=lambda t: (t[0], -t[2].priority, t[2].order))
        return [Delivery(m.id, queue, m.body, m.priority, m.delivery_count,
                         Receipt(url, m.handle, m.sqs_id, m.order), problem=m.problem)
                for _, queue, m, url in taken], moved

    async def _take_bands(self, queues: Sequence[str], limit: int,
                          taken: list[tuple[int, str, wire.Received, str]]) -> None:
        for position, queue in enumerate(queues):
            urls = await self.queues.of(queue)
            for url in dict.fromkeys(urls.bands[band] for band in reversed(self.settings.bands)):
                while len(taken) < limit:
                    want = min(BATCH, limit - len(taken))
                    got = await self._receive(url, want, self.settings.lease)
                    taken += [(position, queue, message, url) for message in got]
                    if len(got) < want:
                        break

    async def _receive(self, url: str, count: int, visibility: int) -> list[wire.Received]:
        started = time.monotonic()
        result = await self._clients.call(
            "receive_message", QueueUrl=url, MaxNumberOfMessages=count,
            VisibilityTimeout=visibility, WaitTimeSeconds=0, MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["ApproximateReceiveCount"])
        low = self.settings.bands[0]
        got = [wire.decode(message, low) for message in result.get("Messages", [])]
        with self._lock:
            if len(self._deadlines) > MAX_RECORDS:
                self._forget_expired()
            for message in got:
                self._deadlines[message.handle] = started + visibility
                self._newest[message.sqs_id] = message.handle
        return got

    def _forget_expired(self) -> None:
        """Drop records of leases long over (their deliveries were dropped or lost)."""
        cutoff = time.monotonic() - 60
        stale = {handle for handle, end in self._deadlines.items() if end < cutoff}
        for handle in stale:
            del self._deadlines[handle]
        self._newest = {sqs_id: handle for sqs_id, handle in self._newest.items()
                        if handle not in stale}

    # -- delayed messages -----------------------------------------------------------------

    async def _move_due(self, queues: Sequence[str]) -> bool:
        """Take what surfaced in the delay queues: send back the early, hold the nearly
        due, and move the due (and held ones now due) to their band queues; whether any
        moved."""
        now = time.time()
        due: list[Held] = []
        later: list[Held] = []
        for queue in queues:
            urls = await self.queues.of(queue)
            polled = self._delay_polled.get(queue, -math.inf)
            if urls.delay is None or time.monotonic() - polled < self._delay_poll:
                continue
            self._delay_polled[queue] = time.monotonic()
            for _ in range(DELAY_READS):
                got = await self._receive(urls.delay, BATCH, DELAY_VISIBILITY)
                for message in got:
                    held = Held(queue, urls.delay, message)
                    when = message.due if message.due is not None else now
                    if when <= now:
                        due.append(held)
                    elif when - now <= HOLD:
                        with self._lock:
                            self._held.append((when, held))
                    else:
                        later.append(held)
                if len(got) < BATCH:
                    break
        with self._lock:
            ready = [held for when, held in self._held if when <= now and held.queue in queues]
            taken = {id(held) for held in ready}
            self._held = [(when, held) for when, held in self._held if id(held) not in taken]
        if ready:  # held a while: only those this process still holds are moved
            kept = await self._renew([(h.url, h.message.handle) for h in ready],
                                     DELAY_VISIBILITY)
            due += [held for held, ok in zip(ready, kept, strict=True) if ok]
        await self._delay_again(later, now)
        await self._move(due)
        return bool(due)

    async def _delay_again(self, later: list[Held], now: float) -> None:
        if not later:
            return
        by_url: dict[str, list[dict[str, Any]]] = {}
        for held in later:
            m = held.message
            assert m.due is not None
            by_url.setdefault(held.url, []).append(wire.entry(
                m.id, wire.encode_body(m.body), m.priority, m.order, prior=m.prior, due=m.due,
                delay=_delay(m.due, now)))
        await self._send(by_url)
        await self._delete([(h.url, h.message.handle) for h in later])

    async def _move(self, due: list[Held]) -> None:
        if not due:
            return
        by_url: dict[str, list[dict[str, Any]]] = {}
        broken: list[tuple[Delivery, str]] = []
        for held in due:
            m = held.message
            if m.problem:  # unreadable in the delay queue: straight to the dead letters
                broken.append((Delivery(m.id, held.queue, m.body, m.priority, m.count,
                                        Receipt(held.url, m.handle, m.sqs_id, m.order)),
                               m.problem))
                continue
            urls = await self.queues.of(held.queue)
            found = wire.entry(m.id, wire.encode_body(m.body), m.priority, m.order,
                               prior=m.prior)
            if self.settings.fifo:
                found.update(self._fifo_ids(held.queue, m.id))
            by_url.setdefault(urls.bands[self.settings.band_of(m.priority)], []).append(found)
        await self._send(by_url)
        await self._delete([(h.url, h.message.handle) for h in due if not h.message.problem])
        if broken:
            await self._bury(broken)

    # -- outcomes -------------------------------------------------------------------------

    def _current(self, deliveries: Iterable[Delivery]) -> list[Delivery]:
        """The deliveries no newer receive of their message (in this process) replaced."""
        found = []
        for delivery in deliveries:
            receipt = _receipt(delivery)
            with self._lock:
                newest = self._newest.get(receipt.sqs_id, receipt.handle)
            if newest == receipt.handle:
                found.append(delivery)
        return found

    async def _confirmed(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """The current deliveries still leased to this process: a lease near or past its
        end (by this clock) is renewed first, which SQS refuses for a stale handle."""
        current = self._current(deliveries)
        now = time.monotonic()
        with self._lock:
            doubtful = [d for d in current
                        if self._deadlines.get(_receipt(d).handle, 0) - now < SAFETY]
        if not doubtful:
            return current
        kept = await self._renew([(_receipt(d).url, _receipt(d).handle) for d in doubtful],
                                 self.settings.lease)
        lost = {id(d) for d, ok in zip(doubtful, kept, strict=True) if not ok}
        return [d for d in current if id(d) not in lost]

    def _forget(self, deliveries: Iterable[Delivery]) -> None:
        with self._lock:
            for delivery in deliveries:
                receipt = _receipt(delivery)
                self._deadlines.pop(receipt.handle, None)
                if self._newest.get(receipt.sqs_id) == receipt.handle:
                    del self._newest[receipt.sqs_id]

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        confirmed = await self._confirmed(deliveries)
        await self._delete([(_receipt(d).url, _receipt(d).handle) for d in confirmed])
        self._forget(confirmed)

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        confirmed = await self._confirmed(deliveries)
        if not confirmed:
            return
        by_url: dict[str, list[dict[str, Any]]] = {}
        for delivery in confirmed:
            receipt = _receipt(delivery)
            found = wire.entry(delivery.id, wire.encode_body(delivery.body), delivery.priority,
                               receipt.order, prior=delivery.delivery_count - 1)
            if self.settings.fifo:
                found.update(self._fifo_ids(delivery.queue, delivery.id, copy=True))
            by_url.setdefault(receipt.url, []).append(found)
        await self._send(by_url)
        await self._delete([(_receipt(d).url, _receipt(d).handle) for d in confirmed])
        self._forget(confirmed)
        self._wake()

    def holds(self, delivery: Delivery) -> bool:
        """False once this process's clock says the lease ran out, or a newer receive
        of the message (here) replaced it."""
        receipt = _receipt(delivery)
        with self._lock:
            if self._newest.get(receipt.sqs_id, receipt.handle) != receipt.handle:
                return False
            deadline = self._deadlines.get(receipt.handle)
        return deadline is None or deadline > time.monotonic()

    async def extend(self, deliveries: Sequence[Delivery]) -> list[bool]:
        if not deliveries:
            return []
        # A lease that ran out is lost, even while nobody received the message again
        # (SQS would still take its handle): so this clock is asked first.
        now = time.monotonic()
        with self._lock:
            ran_out = {id(d) for d in deliveries
                       if self._deadlines.get(_receipt(d).handle, math.inf) <= now}
        current = {id(d) for d in self._current(deliveries) if id(d) not in ran_out}
        asked = [d for d in deliveries if id(d) in current]
        kept = await self._renew([(_receipt(d).url, _receipt(d).handle) for d in asked],
                                 self.settings.lease)
        renewed = {id(d) for d, ok in zip(asked, kept, strict=True) if ok}
        return [id(d) in renewed for d in deliveries]

    async def dead_letter(self, deliveries: Sequence[tuple[Delivery, str]]) -> None:
        confirmed = {id(d) for d in await self._confirmed([d for d, _ in deliveries])}
        await self._bury([(d, reason) for d, reason in deliveries if id(d) in confirmed])

    async def _bury(self, deliveries: Sequence[tuple[Delivery, str]]) -> None:
        """Copy into the dead-letter queue, then delete the originals."""
        if not deliveries:
            return
        dead_url = await self.queues.url(self.settings.dead_letter_name())
        now = time.time()
        entries = [wire.entry(d.id, wire.encode_body(d.body), d.priority, _receipt(d).order,
                              extra={wire.QUEUE: d.queue, wire.REASON: reason or "-",
                                     wire.DEAD_AT: now, wire.COUNT: d.delivery_count})
                   for d, reason in deliveries]
        await self._send({dead_url: entries})
        await self._delete([(_receipt(d).url, _receipt(d).handle) for d, _ in deliveries])
        self._forget(d for d, _ in deliveries)

    # -- batch calls ----------------------------------------------------------------------

    async def _renew(self, handles: Sequence[tuple[str, str]], visibility: int) -> list[bool]:
        """ChangeMessageVisibility for each (url, handle): whether SQS took it."""
        started = time.monotonic()
        codes = await self._batch("change_message_visibility_batch", handles,
                                  {"VisibilityTimeout": visibility})
        with self._lock:
            for (_, handle), code in zip(handles, codes, strict=True):
                if code is None and handle in self._deadlines:
                    self._deadlines[handle] = started + visibility
        return [code is None for code in codes]

    async def _delete(self, handles: Sequence[tuple[str, str]]) -> None:
        """DeleteMessage for each (url, handle); a lost receipt is no error."""
        await self._batch("delete_message_batch", handles, {})

    async def _batch(self, action: str, handles: Sequence[tuple[str, str]],
                     fields: Mapping[str, Any]) -> list[str | None]:
        """One batch action over (url, handle) pairs: None for each that succeeded, else
        SQS's error code. Codes other than a lost receipt raise BrokerError."""
        by_url: dict[str, list[int]] = {}
        for n, (url, _) in enumerate(handles):
            by_url.setdefault(url, []).append(n)
        calls = [(url, chunk) for url, indexes in by_url.items() for chunk in _chunks(indexes)]
        results = await asyncio.gather(*(self._clients.call(
            action, QueueUrl=url,
            Entries=[{"Id": str(n), "ReceiptHandle": handles[n][1], **fields} for n in chunk])
            for url, chunk in calls))
        codes: list[str | None] = [None] * len(handles)
        for result in results:
            for failure in result.get("Failed", []):
                code = str(failure.get("Code", ""))
                if code not in LOST_RECEIPT:
                    raise BrokerError(f"{action} failed: {code}: {failure.get('Message', '')}")
                codes[int(failure["Id"])] = code
        return codes

    # -- looking and cleaning (celeriac.brokers.sqs_inspect) -----------------------------

    async def queue_stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        return await sqs_inspect.queue_stats(self, queues)

    async def purge(self, queues: Sequence[str]) -> int:
        removed = await sqs_inspect.purge(self, queues)
        with self._lock:
            self._held = [(when, h) for when, h in self._held if h.queue not in queues]
        return removed

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return await sqs_inspect.dead_letters(self, limit)

    async def purge_dead_letters(self) -> int:
        return await sqs_inspect.purge_dead_letters(self)

    async def remove_dead_letters(self, ids: Collection[str]) -> int:
        return await sqs_inspect.remove_dead_letters(self, ids)

    def bus(self) -> Bus:
        raise NotImplementedError(
            "the SQS broker carries no event or control topics: SQS has no broadcast "
            "and no way to read a topic from a position")


def _due(entry: tuple[float, Held]) -> float:
    return entry[0]


def _delay(due: float, now: float) -> int:
    """DelaySeconds surfacing a message up to EARLY + 1 s before ``due`` (and at most
    SQS's 15 minutes ahead: it is then sent back with the next delay)."""
    return min(MAX_DELAY, max(0, math.floor(due - now) - EARLY))


def _receipt(delivery: Delivery) -> Receipt:
    if not isinstance(delivery.receipt, Receipt):
        raise TypeError(f"delivery {delivery.id!r} did not come from an SQS broker")
    return delivery.receipt


def _chunks(items: Sequence[Any]) -> Iterable[list[Any]]:
    """Batches SQS takes: at most ten entries, and at most its bytes per request."""
    chunk: list[Any] = []
    size = 0
    for item in items:
        item_size = wire.size(item) if isinstance(item, dict) else 0
        if chunk and (len(chunk) == BATCH or size + item_size > MAX_BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    if chunk:
        yield chunk


def _numbered(chunk: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """SendMessageBatch entries with their batch ids: their places in the chunk."""
    return [{"Id": str(n), **entry} for n, entry in enumerate(chunk)]


def _failures(result: Mapping[str, Any], chunk: Sequence[dict[str, Any]]) -> list[str]:
    """The celeriac ids (and SQS's reasons) of the entries a SendMessageBatch refused."""
    found = []
    for failure in result.get("Failed", []):
        entry = chunk[int(failure["Id"])]
        found.append(f"{entry['MessageAttributes'][wire.ID]['StringValue']} "
                     f"({failure.get('Code', '')}: {failure.get('Message', '')})")
    return found


def _raise_unsent(failed: Sequence[str]) -> None:
    if failed:
        raise BrokerError(f"SQS did not store {len(failed)} message(s): {', '.join(failed)}")
