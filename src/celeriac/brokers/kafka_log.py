"""The Kafka broker's queue state: a deterministic replay of one partition's log.

A Kafka partition is an ordered log that cannot ack out of order and, on the servers we
test with, keeps no per-offset state (Tansu drops OffsetCommit metadata). So every
change a queue sees is itself a record in the queue's partition, after the messages:

- ``m``: a message (its body is the record value, its fields are headers);
- ``c``: a claim of some message offsets by one fetch, with the claimer's clock and the
  lease's end; the claim's own offset is the lease id;
- ``a`` / ``r`` / ``d`` / ``x``: ack, requeue, dead-letter, extend of ``[message, lease]``
  pairs; each acts only while the message's current lease is that lease;
- ``p``: purge of everything waiting (not leased) at the purger's clock;
- ``s``: a sync marker, so a reader knows it has read everything written before it.

Every process that consumes or inspects a queue reads its partitions from the group's
committed offset (the oldest unfinished message) and applies the records in log order.
The outcome of each record is a pure function of the records before it, so all readers
agree: two fetches that claim the same message race in the log, the first claim wins,
and the loser learns it when its reader reaches its own claim. Delivery counts, leases,
ETAs and priorities therefore survive any process's crash: they are in the log.

This module is that replay, with no I/O: ``PartitionState.apply`` takes records in
offset order; ``pick`` chooses what a fetch should try to claim next.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Header names on message records (short: they are on every record).
H_KIND = "k"
H_ID = "id"
H_QUEUE = "q"
H_PRIORITY = "p"
H_ETA = "eta"
H_AT = "at"  # the publisher's clock: the age users feel starts here
H_KEY = "key"  # apply_async's partition_key
H_NONCE = "n"  # unique per record sent: a record the producer sent twice is one message

# How many message nonces a replay remembers, to drop a record the producer appended
# twice (it retries a send whose reply was lost; Tansu has no idempotent producer).
SEEN_NONCES = 100_000

# Outcomes kept for the writers of state records to read (they read theirs at once, the
# others' are never asked for): far more than the records one read of the log applies.
MAX_OUTCOMES = 20_000


@dataclass(slots=True)
class Message:
    """One message of the partition, unfinished until acked, dead-lettered or purged."""

    offset: int
    id: str
    queue: str
    body: bytes
    priority: int
    eta: float  # 0.0 when none
    published_at: float
    problem: str | None = None
    key: str | None = None
    count: int = 0  # deliveries so far (claims, less requeues)
    lease: int | None = None  # the offset of the claim that holds it now
    deadline: float = 0.0  # when that lease ends
    done: bool = False


@dataclass(slots=True)
class Outcome:
    """What one state record did, for the process waiting on it."""

    valid: list[bool]
    count: int = 0  # purge: how many messages it removed
    dead: list[Message] = field(default_factory=list)  # dead-letter: the messages it took


@dataclass(slots=True)
class PartitionState:
    """The replayed state of one queue partition (see the module docstring)."""

    next_offset: int  # the offset of the next record to apply
    messages: dict[int, Message] = field(default_factory=dict)
    # (-priority, offset) of messages that may be claimable; checked when popped.
    _ready: list[tuple[int, int]] = field(default_factory=list)
    # (time, offset): when a message's eta comes or its lease ends, it may become claimable.
    _timers: list[tuple[float, int]] = field(default_factory=list)
    # Offsets this process is claiming now (its claim is on the way): not picked twice.
    pending: set[int] = field(default_factory=set)
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    # The unfinished messages of each partition key, oldest first: only the first of a
    # key may be claimed, so one key's messages run one at a time, in publish order.
    _lines: dict[str, list[int]] = field(default_factory=dict)
    _seen: dict[bytes, None] = field(default_factory=dict)  # nonces, oldest first
    # State records' nonces -> their offsets: a writer knows its record by its nonce.
    written: dict[str, int] = field(default_factory=dict)

    # -- applying the log ------------------------------------------------------------

    def apply(self, offset: int, headers: Sequence[tuple[str, bytes]], value: bytes | None,
              timestamp: float) -> None:
        """Apply the record at ``offset`` (records before ``next_offset`` are skipped)."""
        if offset < self.next_offset:
            return
        self.next_offset = offset + 1
        kind = _header(headers, H_KIND)
        if kind is None or kind == b"m":
            self._add_message(offset, headers, value or b"", timestamp)
            return
        try:
            data = json.loads(value or b"{}")
        except ValueError:
            return  # not ours: a state record nobody can read changes nothing
        if not isinstance(data, dict):
            return
        outcome = self._apply_state(offset, kind, data)
        if outcome is not None:
            self.outcomes[offset] = outcome
            if len(self.outcomes) > MAX_OUTCOMES:  # others' records: nobody asks for them
                del self.outcomes[next(iter(self.outcomes))]
        nonce = data.get("n")
        if isinstance(nonce, str):
            self.written[nonce] = offset  # where its writer finds it
            if len(self.written) > MAX_OUTCOMES:
                del self.written[next(iter(self.written))]

    def _add_message(self, offset: int, headers: Sequence[tuple[str, bytes]], body: bytes,
                     timestamp: float) -> None:
        nonce = _header(headers, H_NONCE)
        if nonce is not None:
            if nonce in self._seen:
                return  # the same send, appended again by a producer's retry
            self._seen[nonce] = None
            if len(self._seen) > SEEN_NONCES:
                del self._seen[next(iter(self._seen))]
        problems: list[str] = []
        id_ = _text(headers, H_ID, problems) or f"kafka-offset-{offset}"
        queue = _text(headers, H_QUEUE, problems) or ""
        priority = _number(headers, H_PRIORITY, problems, 0)
        if not (isinstance(priority, int) and 0 <= priority <= 9):
            problems.append(f"priority {priority!r} is not an int 0-9")
            priority = 0
        eta = float(_number(headers, H_ETA, problems, 0.0))
        published = float(_number(headers, H_AT, problems, timestamp))
        key_raw = _header(headers, H_KEY)
        key = key_raw.decode(errors="replace") if key_raw else None
        message = Message(offset, id_, queue, body, int(priority), eta, published,
                          "; ".join(problems) or None, key)
        self.messages[offset] = message
        if key is not None:
            self._lines.setdefault(key, []).append(offset)
        if eta:
            heapq.heappush(self._timers, (eta, offset))
        heapq.heappush(self._ready, (-message.priority, offset))

    def _apply_state(self, offset: int, kind: bytes, data: dict[str, object]) -> Outcome | None:
        at = _float(data.get("at"))
        if kind == b"c":
            until = _float(data.get("until"))
            return Outcome([self._claim(off, at, until, offset) for off in _ints(data.get("o"))])
        if kind == b"p":
            return self._purge(at)
        if kind == b"s":
            return Outcome([])
        pairs = _pairs(data.get("o"))
        outcome = Outcome([self._holds(m, lease) for m, lease in pairs])
        valid = outcome.valid
        for n, (m, _) in enumerate(pairs):
            if not valid[n]:
                continue
            message = self.messages[m]
            if kind in (b"a", b"d"):
                self._finish(message)
                if kind == b"d":
                    outcome.dead.append(message)
            elif kind == b"r":
                message.lease, message.deadline = None, 0.0
                message.count -= 1
                heapq.heappush(self._ready, (-message.priority, m))
            elif kind == b"x":
                if message.deadline <= at:  # ran out: extend reports it lost
                    valid[n] = False
                    continue
                message.deadline = _float(data.get("until"))
                heapq.heappush(self._timers, (message.deadline, m))
        return outcome

    def _finish(self, message: Message) -> None:
        message.done = True
        del self.messages[message.offset]
        if message.key is None:
            return
        line = self._lines[message.key]
        line.remove(message.offset)
        if not line:
            del self._lines[message.key]
        elif line[0] in self.messages:  # the next of the key may go now
            nxt = self.messages[line[0]]
            heapq.heappush(self._ready, (-nxt.priority, nxt.offset))

    def _first_of_key(self, message: Message) -> bool:
        return message.key is None or self._lines[message.key][0] == message.offset

    def _claim(self, offset: int, at: float, until: float, claim: int) -> bool:
        message = self.messages.get(offset)
        if message is None or not self._first_of_key(message):
            return False
        if message.eta > at or (message.lease is not None and message.deadline > at):
            return False
        message.lease, message.deadline = claim, until
        message.count += 1
        heapq.heappush(self._timers, (until, offset))
        return True

    def _purge(self, at: float) -> Outcome:
        gone = [m for m in self.messages.values() if m.lease is None or m.deadline <= at]
        for message in gone:
            self._finish(message)
        return Outcome([], len(gone))

    def _holds(self, offset: int, lease: int) -> bool:
        message = self.messages.get(offset)
        return message is not None and message.lease == lease

    # -- choosing and looking ----------------------------------------------------------

    def pick(self, limit: int, now: float) -> list[Message]:
        """Up to ``limit`` messages claimable now, higher priority then older first."""
        self._fire_timers(now)
        chosen: list[Message] = []
        skipped: list[tuple[int, int]] = []
        while self._ready and len(chosen) < limit:
            entry = heapq.heappop(self._ready)
            message = self.messages.get(entry[1])
            if message is None or entry[1] in self.pending:
                if message is not None:
                    skipped.append(entry)
                continue
            if message.eta > now:
                continue  # its timer brings it back
            if message.lease is not None and message.deadline > now:
                continue  # its lease's timer brings it back if it runs out
            if not self._first_of_key(message):
                continue  # the one before it of its key brings it back when it finishes
            chosen.append(message)
            skipped.append(entry)  # back in the heap until the claim is applied
        for entry in skipped:
            heapq.heappush(self._ready, entry)
        return chosen

    def _fire_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, offset = heapq.heappop(self._timers)
            message = self.messages.get(offset)
            if message is not None:
                heapq.heappush(self._ready, (-message.priority, offset))

    def next_timer(self) -> float | None:
        """When the next eta comes or lease ends (a fetch waits no longer than that)."""
        while self._timers and self._timers[0][1] not in self.messages:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def counts(self, queue: str, now: float) -> tuple[int, int, int, float | None]:
        """(ready, scheduled, in flight, oldest ready's age) of one queue."""
        ready = scheduled = held = 0
        oldest: float | None = None
        for message in self.messages.values():
            if message.queue != queue:
                continue
            if message.lease is not None and message.deadline > now:
                held += 1
            elif message.eta > now:
                scheduled += 1
            else:
                ready += 1
                since = max(message.published_at, message.eta)
                oldest = since if oldest is None else min(oldest, since)
        return ready, scheduled, held, None if oldest is None else max(0.0, now - oldest)

    def low_watermark(self) -> int:
        """The offset reading must start from to rebuild this state: the oldest message
        not yet finished (or the next record, when every message is)."""
        return min(self.messages, default=self.next_offset)

    def held(self, offset: int, lease: int, now: float) -> bool:
        message = self.messages.get(offset)
        return message is not None and message.lease == lease and message.deadline > now

    def scheduled(self, now: float) -> Iterable[Message]:
        return (m for m in self.messages.values()
                if m.eta > now and (m.lease is None or m.deadline <= now))


def state_record(kind: str, data: dict[str, object]) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The value and headers of a state record of ``kind``."""
    return json.dumps(data, separators=(",", ":")).encode(), [(H_KIND, kind.encode())]


def _header(headers: Sequence[tuple[str, bytes]], name: str) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _text(headers: Sequence[tuple[str, bytes]], name: str, problems: list[str]) -> str | None:
    raw = _header(headers, name)
    if raw is None:
        problems.append(f"header {name!r} is missing")
        return None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        problems.append(f"header {name!r} is not UTF-8 text")
        return None
    if not text:
        problems.append(f"header {name!r} is empty")
        return None
    return text


def _number(headers: Sequence[tuple[str, bytes]], name: str, problems: list[str],
            default: float) -> float:
    raw = _header(headers, name)
    if raw is None:
        return default
    try:
        number = float(raw) if name != H_PRIORITY else int(raw)
    except ValueError:
        problems.append(f"header {name!r} is not a number: {raw[:40]!r}")
        return default
    if number != number or number in (float("inf"), float("-inf")):
        problems.append(f"header {name!r} is not finite")
        return default
    return number


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _ints(value: object) -> list[int]:
    return [v for v in value if isinstance(v, int)] if isinstance(value, list) else []


def _pairs(value: object) -> list[tuple[int, int]]:
    if not isinstance(value, list):
        return []
    return [(v[0], v[1]) for v in value
            if isinstance(v, list) and len(v) == 2 and all(isinstance(n, int) for n in v)]
