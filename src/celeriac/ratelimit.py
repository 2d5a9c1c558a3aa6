"""Rate limits: global across every worker, changeable at run time, and free for others.

A limit is Celery's rate string: ``"100/s"``, ``"10/m"``, ``"1000/h"``, or a number
(per second). ``None``, ``0`` and ``"0"`` mean no limit. It applies to a task name and
is taken from the first of:

1. the run-time override (``app.control.rate_limit(name, "50/s")``), kept in the shared
   store below, where every worker reads it about once a second;
2. the task's ``rate_limit`` (``@app.task(rate_limit=...)``, or ``task_annotations``);
3. the ``task_default_rate_limit`` setting.

The limit holds for all workers together: tokens come from one bucket per task name
on a server every worker reaches (``celeriac.brokers.buckets``): the broker's (memory,
SQLite, Redis), else the result backend's (SQLite, Redis) for a broker that has no
server-side counters (RabbitMQ). When neither can (RabbitMQ with rpc:// or memory
results), each worker process limits itself and says so in its log.

A task over its limit does not wait in a worker slot: the worker hands it back to the
broker until its token is due (``celeriac.worker.ratelimit``).

Eager calls (``apply``, ``task_always_eager``) are not rate limited, as in Celery; nor is
anything when ``worker_disable_rate_limits`` is set.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.brokers.buckets import TokenBuckets
from celeriac.config import suggest

if TYPE_CHECKING:
    from celeriac.app import App

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Rate:
    """``tokens`` tasks per ``per`` seconds."""

    tokens: float
    per: float
    text: str  # the canonical rate string: "20/s"

    @property
    def interval(self) -> float:
        """Seconds between two tokens."""
        return self.per / self.tokens

    def __str__(self) -> str:
        return self.text


def parse_rate(value: Any) -> Rate | None:
    """Celery's rate limit (``"100/s"``, ``"10/m"``, ``"1000/h"``, a number per second).

    None for no limit (``None``, ``0``, ``"0"``); ValueError for anything malformed.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"a rate limit is a string such as '100/s', '10/m' or '1000/h', "
                         f"not {value!r}")
    return _parse_text(str(value).strip())


@functools.lru_cache(maxsize=512)
def _parse_text(text: str) -> Rate | None:
    count, _, unit = text.partition("/")
    unit = unit.strip() or "s"
    if unit not in UNITS:
        raise ValueError(f"rate limit {text!r}: the unit must be s, m or h, not {unit!r}"
                         f"{suggest(unit, UNITS)}")
    try:
        tokens = float(count)
    except ValueError:
        raise ValueError(f"rate limit {text!r} must start with a number of tasks, "
                         f"as in '100/s'") from None
    if not math.isfinite(tokens) or tokens < 0:
        raise ValueError(f"rate limit {text!r}: the number of tasks must be >= 0")
    if tokens == 0:
        return None
    shown = int(tokens) if tokens.is_integer() else tokens
    return Rate(tokens, UNITS[unit], f"{shown}/{unit}")


def canonical(value: Any) -> str:
    """A rate limit as the string stored for it: ``"20/s"``, or ``"0"`` for no limit."""
    rate = parse_rate(value)
    return "0" if rate is None else rate.text


def shared_buckets(app: App) -> TokenBuckets | None:
    """The token buckets every worker of ``app`` shares: the broker's, else the backend's."""
    from celeriac.backends.buckets import backend_token_buckets

    buckets = app.broker.token_buckets()
    return buckets if buckets is not None else backend_token_buckets(app.backend)
