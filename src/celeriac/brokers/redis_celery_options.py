"""Celery's (kombu's) Redis transport options, as a project moving over still has them.

kombu's Redis transport takes options celeriac's Redis broker does differently. Each is
answered here rather than refused as unknown: ``visibility_timeout`` is the same idea as
celeriac's lease and becomes ``lease_seconds`` (with a note: celeriac's workers extend
their leases while tasks run, so the lease need not cover the longest task, nor the ETAs
that kombu kept unacked; a long one only delays the return of a crashed worker's tasks);
``global_keyprefix`` is ``key_prefix``; the priority emulation options
(``priority_steps``, ``sep``, ``queue_order_strategy``) have no use with celeriac's ten
levels, higher first, and are dropped with a warning that says how to convert.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("celeriac.broker")

RENAMED = {"visibility_timeout": "lease_seconds", "global_keyprefix": "key_prefix"}
PRIORITY_EMULATION = ("priority_steps", "sep", "queue_order_strategy")


def translate(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options with kombu's names answered (see the module docstring)."""
    translated = dict(options)
    for old, new in RENAMED.items():
        if old not in translated:
            continue
        value = translated.pop(old)
        if new in translated:
            logger.warning("Redis transport options: %s and %s both given; %s=%r is used",
                           old, new, new, translated[new])
            continue
        translated[new] = value
        if old == "visibility_timeout":
            logger.warning(
                "Redis transport option visibility_timeout=%s is used as lease_seconds: a "
                "crashed worker's tasks come back after that long. celeriac's workers "
                "extend the leases of running tasks and keep ETA tasks out of the lease, "
                "so the default (10 s) is safe for long tasks too", value)
    dropped = [name for name in PRIORITY_EMULATION if translated.pop(name, None) is not None]
    if dropped:
        logger.warning(
            "Redis transport options %s are kombu's priority emulation and are not used: "
            "celeriac keeps ten priority levels on every broker, 9 highest. Celery on "
            "Redis ran 0 as the most urgent: send priority=9 - old to keep the order",
            ", ".join(dropped))
    return translated
