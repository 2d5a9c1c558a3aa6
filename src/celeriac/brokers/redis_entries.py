"""Stream entries into deliveries: celeriac's entry layout, read and checked.

A queue's stream entry carries two fields, ``i`` (the message id, UTF-8 text) and ``b``
(the body). Anyone with access to the server can XADD to the stream, so an entry may
have a field missing, repeated or unknown, or an id that is not text. Such an entry is
not a delivery but a ``Malformed`` one, with the field and what is wrong with it: the
broker dead-letters it inside the fetch, so that it neither fails every fetch nor stays
leased forever (issue 10). Entries come from two places, read here:

- the fetch script's reply (``redis_scripts.FETCH``), which checks the layout in Lua
  (repeated fields show only there) and hands over a malformed entry's fields as they
  are;
- XREADGROUP's reply (the blocking read), as redis-py parses it: fields in a dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from celeriac.brokers.base import Delivery


class RedisReceipt(NamedTuple):
    """One delivery: the stream entry, and the lease (owner and PEL counter) it came with."""

    queue: str
    band: int
    entry: str
    consumer: str
    counter: int


class Malformed(NamedTuple):
    """A stream entry whose broker-level fields cannot be read, and what is wrong."""

    receipt: RedisReceipt
    message_id: bytes  # as written (possibly not UTF-8, possibly empty)
    body: bytes  # the body, or every field of the entry when its layout is wrong
    reason: str

    def as_delivery(self) -> Delivery:
        """A delivery to hand to the dead-letter script (its id is ``message_id``)."""
        receipt = self.receipt
        return Delivery("", receipt.queue, self.body, receipt.band, 0, receipt)


def read_fetched(reply: Sequence[Any], queues: Sequence[str], consumer: str,
                 ) -> tuple[list[Delivery], list[Malformed]]:
    """The deliveries of a fetch script reply (from index 3; see FETCH), and the
    malformed entries among them."""
    found: list[Delivery] = []
    malformed: list[Malformed] = []
    for i in range(3, len(reply), 8):
        index, band, entry, message_id, body, counter, count, problem = reply[i:i + 8]
        queue = queues[int(index)]
        receipt = RedisReceipt(queue, int(band), entry.decode(), consumer, int(counter))
        if problem:
            malformed.append(Malformed(receipt, message_id, _dump_fields(body),
                                       problem.decode(errors="backslashreplace")))
            continue
        text = _text_id(message_id)
        if text is None:
            malformed.append(Malformed(receipt, message_id, body, _bad_id(message_id)))
            continue
        found.append(Delivery(text, queue, body, int(band), int(count), receipt))
    return found, malformed


def read_streams(reply: Any, places: Mapping[bytes, tuple[int, int]],
                 queues: Sequence[str], consumer: str,
                 ) -> tuple[list[Delivery], list[Malformed]]:
    """The deliveries of an XREADGROUP reply (``places``: stream key -> queue index,
    band), and the malformed entries among them."""
    found: list[Delivery] = []
    malformed: list[Malformed] = []
    for stream, entries in reply or ():
        index, band = places[stream]
        queue = queues[index]
        for entry, fields in entries:
            receipt = RedisReceipt(queue, band, entry.decode(), consumer, 1)
            problem = _layout_problem(fields)
            if problem is not None:
                malformed.append(Malformed(receipt, fields.get(b"i", b""),
                                           _dump_fields(fields), problem))
                continue
            text = _text_id(fields[b"i"])
            if text is None:
                malformed.append(Malformed(receipt, fields[b"i"], fields[b"b"],
                                           _bad_id(fields[b"i"])))
                continue
            found.append(Delivery(text, queue, fields[b"b"], band, 1, receipt))
    return found, malformed


def entry_order(entry: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair (milliseconds, sequence)."""
    millis, _, seq = entry.partition("-")
    return int(millis), int(seq or 0)


def _text_id(raw: bytes) -> str | None:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def _bad_id(raw: bytes) -> str:
    try:
        raw.decode()
    except UnicodeDecodeError as exc:
        return (f"field i (the message id) is not valid UTF-8 ({exc.reason} at byte "
                f"{exc.start}): {raw[:100]!r}")
    return "field i (the message id) is valid"  # not reached: called for bad ids only


def _layout_problem(fields: Mapping[bytes, bytes]) -> str | None:
    """What is wrong with the layout of an entry read by XREADGROUP (as FETCH checks)."""
    for name in fields:
        if name not in (b"i", b"b"):
            # Quoted as the FETCH script's string.format('%q') does, so that an entry's
            # reason reads the same whichever path found it.
            shown = name.decode(errors="backslashreplace").replace("\\", "\\\\")
            shown = shown.replace('"', '\\"')
            return (f'field "{shown}" is not part of the entry layout '
                    "(i = message id, b = body)")
    if b"i" not in fields:
        return "field i (the message id) is missing"
    if not fields[b"i"]:
        return "field i (the message id) is empty"
    if b"b" not in fields:
        return "field b (the message body) is missing"
    return None


def _dump_fields(fields: Any) -> bytes:
    """Every field of a malformed entry, as one readable value for its dead letter."""
    pairs = list(fields.items()) if isinstance(fields, Mapping) \
        else list(zip(fields[::2], fields[1::2], strict=True))
    return b"\n".join(b"%s=%r" % (name, value) for name, value in pairs)
