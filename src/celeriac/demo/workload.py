"""The mix of calls the demo sends: mostly quick work, with every interesting case in it."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celeriac.demo import tasks
from celeriac.task import Task


@dataclass(frozen=True, slots=True)
class Call:
    """One planned ``apply_async``: which kind, and its arguments and options."""

    kind: str
    task: Task[..., Any]
    args: tuple[Any, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Kind:
    key: str
    description: str
    share: float  # of the whole workload
    make: Callable[[random.Random, int], Call]


def _thumbnail(rng: random.Random, i: int) -> Call:
    return Call("thumbnail", tasks.make_thumbnail, (i, rng.choice((256, 512, 1024))))


def _price(rng: random.Random, i: int) -> Call:
    return Call("price", tasks.fetch_price, (i, rng.uniform(1.0, 5.0)))


def _alert(rng: random.Random, i: int) -> Call:
    del rng
    return Call("alert", tasks.send_alert, (i,))


def _reminder(rng: random.Random, i: int) -> Call:
    return Call("reminder", tasks.send_reminder, (i,),
                {"countdown": round(rng.uniform(0.5, 2.0), 2)})


def _charge(rng: random.Random, i: int) -> Call:
    return Call("charge", tasks.charge_card, (i, rng.choice((1, 1, 2))))


def _inventory(rng: random.Random, i: int) -> Call:
    del rng
    return Call("inventory", tasks.sync_inventory, (i % 7,))


def _record(rng: random.Random, i: int) -> Call:
    del rng
    return Call("record", tasks.import_record, ({"id": i, "name": f"customer {i}"},))


KINDS: tuple[Kind, ...] = (
    Kind("thumbnail", "sync def, CPU", 0.55, _thumbnail),
    Kind("price", "async def, I/O", 0.25, _price),
    Kind("alert", "priority 9", 0.08, _alert),
    Kind("reminder", "countdown 0.5-2 s", 0.05, _reminder),
    Kind("charge", "retried, succeeds", 0.05, _charge),
    Kind("inventory", "retried, fails", 0.01, _inventory),
    Kind("record", "Reject, dead letter", 0.01, _record),
)


def plan(total: int, seed: int = 2024) -> list[Call]:
    """``total`` calls in the KINDS proportions, shuffled so that the kinds interleave."""
    rng = random.Random(seed)  # the same workload every run, so runs compare
    calls = [kind.make(rng, i) for kind, count in zip(KINDS, apportion(total), strict=True)
             for i in range(count)]
    rng.shuffle(calls)
    return calls


def apportion(total: int) -> list[int]:
    """Split ``total`` by the kinds' shares, exactly (largest remainder first)."""
    exact = [kind.share * total for kind in KINDS]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(KINDS)), key=lambda k: exact[k] - counts[k], reverse=True)
    for k in by_remainder[:total - sum(counts)]:
        counts[k] += 1
    return counts
