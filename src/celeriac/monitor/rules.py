"""The ``queue_alerts`` and ``alert_webhooks`` settings: checked when set, then read as rules.

``queue_alerts`` maps a queue name (or ``"*"``, every other queue) to its thresholds::

    queue_alerts = {"celeriac": {"max_length": 1000, "max_age": 60},
                    "*": {"max_age": 300}}

- ``max_length``: messages ready in the queue (waiting to be fetched now; scheduled
  ETAs and leased messages do not count: they are not a backlog);
- ``max_age``: seconds the oldest ready message has waited (the latency users feel);
- ``recover_at``: the fraction of a threshold a value must fall to before a firing
  alert resolves (default 0.8). This is the hysteresis: an alert fires when a value is
  *above* its threshold on a check and resolves only when it is at or below
  ``recover_at * threshold``, so a queue hovering around its threshold alerts once.

A queue's own entry is merged over ``"*"`` (its keys win), so ``"*"`` can give a
default age limit while one queue adds a length limit. Unknown keys are refused with
the key named, as unknown settings are: a typo must not silently disable an alert.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from celeriac.errors import ConfigurationError

EVERY_QUEUE = "*"
RECOVER_AT = 0.8
KEYS = ("max_length", "max_age", "recover_at")
METRICS = {"length": "max_length", "age": "max_age"}  # metric name -> its threshold key


@dataclass(frozen=True, slots=True)
class QueueRule:
    """The thresholds of one queue; None: that metric is not watched."""

    max_length: int | None = None
    max_age: float | None = None
    recover_at: float = RECOVER_AT

    def threshold(self, metric: str) -> float | None:
        value: float | None = getattr(self, METRICS[metric])
        return value

    def fires(self, value: float, threshold: float) -> bool:
        return value > threshold

    def resolves(self, value: float, threshold: float) -> bool:
        return value <= threshold * self.recover_at


def check_queue_alerts(name: str, value: Any) -> dict[str, dict[str, float]]:
    """``queue_alerts`` as plain data, every key and number checked."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must map queue names (or \"*\") to thresholds, "
                                 f"not {value!r}")
    checked: dict[str, dict[str, float]] = {}
    for queue, limits in value.items():
        if not isinstance(queue, str) or not queue:
            raise ConfigurationError(f"{name}: a queue name must be a non-empty string, "
                                     f"not {queue!r}")
        if not isinstance(limits, Mapping):
            raise ConfigurationError(f"{name}[{queue!r}] must be a mapping such as "
                                     f"{{\"max_length\": 1000, \"max_age\": 60}}, "
                                     f"not {limits!r}")
        checked[queue] = {key: _limit(name, queue, key, number)
                          for key, number in limits.items()}
    return checked


def _limit(name: str, queue: str, key: Any, number: Any) -> float:
    where = f"{name}[{queue!r}]"
    if key not in KEYS:
        raise ConfigurationError(f"{where}: unknown key {key!r}; the keys are "
                                 f"{', '.join(KEYS)}")
    if isinstance(number, bool) or not isinstance(number, int | float) \
            or not math.isfinite(number) or number < 0:
        raise ConfigurationError(f"{where}[{key!r}] must be a number >= 0, not {number!r}")
    if key == "max_length" and number != int(number):
        raise ConfigurationError(f"{where}['max_length'] must be a whole number, "
                                 f"not {number!r}")
    if key == "recover_at" and not 0 <= number < 1:
        raise ConfigurationError(f"{where}['recover_at'] must be a fraction from 0 to "
                                 f"below 1 (the part of a threshold a value must fall to "
                                 f"before its alert resolves), not {number!r}")
    return int(number) if key == "max_length" else float(number)


def check_webhooks(name: str, value: Any) -> tuple[str, ...]:
    """``alert_webhooks``: http(s) URLs, each with a host."""
    urls = (value,) if isinstance(value, str) else value
    if urls is None:
        return ()
    if not isinstance(urls, Iterable):
        raise ConfigurationError(f"{name} must be a list of http(s) URLs, not {value!r}")
    checked = []
    for url in urls:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"{name}: {url!r} is not an http:// or https:// URL")
        checked.append(url)
    return tuple(checked)


def rules_for(settings: Mapping[str, Mapping[str, float]]) -> dict[str, QueueRule]:
    """Each named queue's rule (merged over ``"*"``), and ``"*"``'s own if given."""
    default = settings.get(EVERY_QUEUE, {})
    return {queue: _rule({**default, **limits}) if queue != EVERY_QUEUE else _rule(limits)
            for queue, limits in settings.items()}


def rule_of(rules: Mapping[str, QueueRule], queue: str) -> QueueRule | None:
    """The rule that applies to ``queue``: its own, else ``"*"``'s, else none."""
    return rules.get(queue) or rules.get(EVERY_QUEUE)


def _rule(limits: Mapping[str, float]) -> QueueRule:
    length = limits.get("max_length")
    return QueueRule(max_length=None if length is None else int(length),
                     max_age=limits.get("max_age"),
                     recover_at=limits.get("recover_at", RECOVER_AT))
