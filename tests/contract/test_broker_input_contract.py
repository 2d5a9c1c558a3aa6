"""The broker contract on bad input: a publish with an unreadable field stores nothing.

``publish`` refuses (TypeError/ValueError) a batch holding a message whose fields are
not what ``Outgoing`` says, before storing any of it, so that no stored message has a
field a fetch cannot read (``celeriac.brokers.base.check_outgoing``).
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest

from celeriac.brokers import Broker, Outgoing

BAD: list[tuple[str, dict[str, Any]]] = [
    ("priority-text", {"priority": "high"}),
    ("priority-range", {"priority": 10}),
    ("priority-bool", {"priority": True}),
    ("eta-text", {"eta": "later"}),
    ("eta-nan", {"eta": math.nan}),
    ("body-text", {"body": "text"}),
    ("id-empty", {"id": ""}),
    ("id-surrogate", {"id": "a\udcffb"}),
    ("queue-number", {"queue": 5}),
]



@pytest.mark.parametrize(("case", "fields"), BAD, ids=[case for case, _ in BAD])
async def test_publish_refuses_an_unreadable_field_and_stores_none_of_the_batch(
        broker: Broker, case: str, fields: dict[str, Any]) -> None:
    good = Outgoing(uuid.uuid4().hex, "q", b"good")
    bad = Outgoing(**{"id": uuid.uuid4().hex, "queue": "q", "body": b"bad", **fields})
    with pytest.raises((TypeError, ValueError)):
        await broker.publish([good, bad])
    assert await broker.fetch(["q"], 10, timeout=0.2) == []
