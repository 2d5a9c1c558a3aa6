"""What a consumer holds and counts: its leased deliveries, its stop reasons, its numbers.

Plain data shared by the consumer (celeriac.worker.consumer) and the collaborators it
hands work to (celeriac.worker.flush, leases, handback), in a module of their own so
that those need not import the consumer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from celeriac.brokers.base import Delivery


class StopReason(Enum):
    SHUTDOWN = "shutdown"  # asked to stop (signal)
    RECYCLE = "recycle"  # max tasks or max memory reached: replace this process
    BROKER_LOST = "broker_lost"  # the watchdog gave up on the broker


@dataclass(slots=True)
class Held:
    delivery: Delivery
    confirmed_at: float  # monotonic time the lease was last known to be ours
    started: bool = False
    finished: bool = False  # its verdict waits for the flush
    # Its verified envelope when signing is on (a security.signing.Opened): the frame
    # the executor decodes, and the nonce the flush marks done.
    signed: Any = None


@dataclass
class ConsumerStats:
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    processed: int = 0
    lost_leases: int = 0
    deferred: int = 0  # over a rate limit: handed back until a token is due
    batched: int = 0  # quick tasks run in batches of more than one per thread hop
    total: Counter[str] = field(default_factory=Counter)  # finished, by task name
