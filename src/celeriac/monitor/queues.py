"""One reading of the queues an app cares about, for the alert checks and live tables.

Which queues: the ones named in ``queue_alerts``, the ones the app declares
(``task_queues`` or the default queue) and, with a ``"*"`` rule or when asked, every
queue the broker knows. Brokers that cannot count dead letters per queue cheaply (Redis,
RabbitMQ keep one list for all queues) get them counted from a bounded scan of the
newest dead letters, only when a caller asks for them (a live table does, the alert
checks do not).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection, Sequence

from celeriac.brokers.base import Broker, QueueStats

# Dead letters scanned to count them per queue, for brokers that do not count them.
DEAD_LETTER_SCAN = 10_000


async def read_queues(broker: Broker, named: Collection[str], every: bool = False,
                      dead_letters: bool = False) -> list[QueueStats]:
    """Stats of the ``named`` queues (empty ones too), and with ``every`` of each queue
    the broker knows; sorted by name."""
    found: dict[str, QueueStats] = {}
    if every:
        found.update((stats.queue, stats) for stats in await broker.queue_stats(None))
    missing = [name for name in dict.fromkeys(named) if name not in found]
    if missing:
        found.update((stats.queue, stats) for stats in await broker.queue_stats(missing))
    stats = [found[name] for name in sorted(found)]
    if dead_letters and any(s.dead_letters is None for s in stats):
        stats = await _count_dead_letters(broker, stats)
    return stats


async def _count_dead_letters(broker: Broker, stats: Sequence[QueueStats]
                              ) -> list[QueueStats]:
    counts = Counter(letter.queue for letter in await broker.dead_letters(DEAD_LETTER_SCAN))
    return [s if s.dead_letters is not None
            else dataclasses.replace(s, dead_letters=counts[s.queue]) for s in stats]
