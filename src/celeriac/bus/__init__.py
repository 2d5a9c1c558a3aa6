"""Topics on the broker's own server, for events and remote control (see ``base``)."""

from celeriac.bus.base import (
    CONTROL,
    EVENTS,
    REPLIES,
    RETENTION,
    Bus,
    Record,
    Retention,
    Subscription,
)

__all__ = ["CONTROL", "EVENTS", "REPLIES", "RETENTION", "Bus", "Record", "Retention",
           "Subscription"]
