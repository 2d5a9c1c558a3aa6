"""Task priorities as users write them, and the levels brokers keep.

Celery and RabbitMQ take priorities from 0 to 255, higher first, and Celery's docs
recommend queues with ``x-max-priority: 10``; projects write ``priority=10``. celeriac's
brokers keep ten levels, 0 to 9, higher first, on every broker; a value above the
highest level (``task_queue_max_priority``, at most 9) is treated as that level, as
RabbitMQ treats a priority above a queue's maximum.

Celery on Redis ran 0 as the *most* urgent (it emulates priorities with one list per
step); a project moving from there converts with ``9 - old``, and the Redis
transport options it used for that (``priority_steps``, ``queue_order_strategy``) are
refused with that advice.
"""

from __future__ import annotations

from typing import Any

MAX_LEVEL = 9  # the highest priority a broker keeps
MAX_ACCEPTED = 255  # the highest a user may write (RabbitMQ's and Celery's range)


def priority_level(value: Any, highest: int | None = None) -> int:
    """The level of a priority a user wrote: 0-255 accepted, above ``highest`` (the
    setting ``task_queue_max_priority``, 9 when None) treated as ``highest``.

    Raises ValueError for anything else (a bool, a float, a negative number).
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ACCEPTED:
        raise ValueError(f"priority must be a whole number from 0 to {MAX_ACCEPTED} "
                         f"(higher first), not {value!r}")
    return min(value, MAX_LEVEL if highest is None else min(highest, MAX_LEVEL))
