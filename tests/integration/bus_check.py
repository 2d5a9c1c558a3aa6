"""A bus round trip (publish one record, read it back), to check a bus connects."""

from __future__ import annotations

import time

from celeriac import App
from celeriac.bus import EVENTS


async def bus_round_trip(app: App) -> list[bytes]:
    """Publish one record on the events topic of the app's bus and read it back."""
    bus = app.broker.bus()
    try:
        await bus.connect()
        subscription = await bus.subscribe(EVENTS, since=0.0)
        await bus.publish(EVENTS, [b"over tls"])
        records: list[bytes] = []
        deadline = time.monotonic() + 10
        while not records and time.monotonic() < deadline:
            records = [record.payload for record in await subscription.read(1.0)]
        await subscription.close()
        return records
    finally:
        await bus.close()
