"""Messages as SQS stores them: a base64 body and celeriac's fields as message attributes.

SQS keeps text bodies only (a subset of Unicode), so the opaque body bytes travel as
base64 (a third larger; the size limit applies to that). celeriac's fields are message
attributes (SQS allows ten):

- ``celeriac_id``: the message id (SQS's own ``MessageId`` changes with every copy);
- ``celeriac_priority``: 0-9, exact (a band queue holds several levels);
- ``celeriac_order``: publish time and a per-process count, so that a fetch can hand out
  what it took oldest first (SQS standard queues keep no order) and a requeued copy
  goes back to its place among what the same fetch takes;
- ``celeriac_prior``: deliveries before this copy was made (a requeue or a move from
  the delay queue starts SQS's ``ApproximateReceiveCount`` again at 0);
- ``celeriac_due``: the eta, on messages in a delay queue;
- on dead letters: ``celeriac_queue``, ``celeriac_reason``, ``celeriac_dead_at`` and
  ``celeriac_count`` (deliveries before it died).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ID = "celeriac_id"
PRIORITY = "celeriac_priority"
ORDER = "celeriac_order"
PRIOR = "celeriac_prior"
DUE = "celeriac_due"
QUEUE = "celeriac_queue"
REASON = "celeriac_reason"
DEAD_AT = "celeriac_dead_at"
COUNT = "celeriac_count"

_sequence = itertools.count()


def order_key() -> str:
    """Sorts as publish order: nanoseconds, then this process's count within one."""
    return f"{time.time_ns():020d}{next(_sequence) % 1_000_000:06d}"


def _text(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def _number(value: float) -> dict[str, str]:
    return {"DataType": "Number", "StringValue": repr(value) if isinstance(value, float)
            else str(value)}


def entry(id_: str, body: str, priority: int, order: str, *, prior: int = 0,
          due: float | None = None, delay: int = 0,
          extra: Mapping[str, str | float] | None = None) -> dict[str, Any]:
    """A SendMessageBatch entry (its batch ``Id`` is set by the caller)."""
    attributes = {ID: _text(id_), PRIORITY: _number(priority), ORDER: _text(order)}
    if prior:
        attributes[PRIOR] = _number(prior)
    if due is not None:
        attributes[DUE] = _number(float(due))
    for name, value in (extra or {}).items():
        attributes[name] = _text(value) if isinstance(value, str) else _number(value)
    found: dict[str, Any] = {"MessageBody": body, "MessageAttributes": attributes}
    if delay:
        found["DelaySeconds"] = delay
    return found


def encode_body(body: bytes) -> str:
    return base64.b64encode(body).decode("ascii")


def size(found: Mapping[str, Any]) -> int:
    """The bytes SQS counts against its size limit: body, attribute names, types, values."""
    total = len(found["MessageBody"].encode())
    for name, value in found["MessageAttributes"].items():
        total += len(name) + len(value["DataType"]) + len(value["StringValue"].encode())
    return total


@dataclass(frozen=True, slots=True)
class Received:
    """One message a ReceiveMessage returned, its celeriac fields read."""

    handle: str  # the receipt handle of this receive
    sqs_id: str  # SQS's MessageId: the same for every receive of this copy
    id: str
    priority: int
    order: str
    prior: int
    count: int  # ApproximateReceiveCount
    body: bytes
    due: float | None
    attributes: Mapping[str, str]  # every message attribute, as text
    problem: str | None = None

    @property
    def delivery_count(self) -> int:
        return self.prior + self.count


def decode(message: Mapping[str, Any], low_priority: int) -> Received:
    """A received message; what cannot be read is named in ``problem``, with stand-ins
    (SQS's MessageId, the band's lowest priority, the raw body) in its fields."""
    attributes = {name: str(value.get("StringValue", ""))
                  for name, value in (message.get("MessageAttributes") or {}).items()}
    problems = []
    id_ = attributes.get(ID, "")
    if not id_:
        problems.append(f"message attribute {ID} is missing")
        id_ = str(message["MessageId"])
    priority = _int(attributes.get(PRIORITY), 0, 9)
    if priority is None:
        problems.append(f"message attribute {PRIORITY} is not a priority 0-9: "
                        f"{attributes.get(PRIORITY)!r}")
        priority = low_priority
    prior = _int(attributes.get(PRIOR, "0"), 0, 1 << 31) or 0
    due = None
    if DUE in attributes:
        try:
            due = float(attributes[DUE])
        except ValueError:
            problems.append(f"message attribute {DUE} is not a time: {attributes[DUE]!r}")
    raw = str(message.get("Body", ""))
    try:
        body = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        problems.append("the body is not base64")
        body = raw.encode()
    system = message.get("Attributes") or {}
    return Received(
        handle=str(message["ReceiptHandle"]), sqs_id=str(message["MessageId"]), id=id_,
        priority=priority, order=attributes.get(ORDER, ""), prior=prior,
        count=int(system.get("ApproximateReceiveCount", "1")), body=body, due=due,
        attributes=attributes, problem="; ".join(problems) or None)


def _int(text: str | None, low: int, high: int) -> int | None:
    try:
        value = int(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and low <= value <= high else None
