"""A ``validate=True`` ledger task and its pydantic models, registered only where used.

Apart from ledger_app because making pydantic models costs about 0.2 s of a process's
start, and every worker process of the integration tests imports ledger_app: a worker
registers ``ledger.typed`` only when ``LEDGER_TYPED`` is set in its environment
(``ledger_app.register``), and the producer side calls ``register_typed`` itself.
"""

from __future__ import annotations

from typing import Any

from ledger_app import write
from pydantic import BaseModel

from celeriac import App, Task


class Line(BaseModel):
    sku: str
    qty: int


class Order(BaseModel):
    ref: str
    lines: list[Line]


class Receipt(BaseModel):
    ref: str
    items: int


def typed(self: Task[..., Any], order: Order, copies: int = 1) -> Receipt:
    """The worker hands it an Order made from the message's JSON (``order.ref`` fails on
    a dict), and its Receipt comes back to the caller as one."""
    write("start", self, order.ref)
    return Receipt(ref=order.ref, items=sum(line.qty for line in order.lines) * copies)


def register_typed(target: App) -> Task[..., Receipt]:
    """Register ``ledger.typed`` (validate=True) on ``target``."""
    task: Task[..., Receipt] = target.task(bind=True, name="ledger.typed",
                                           validate=True)(typed)
    return task
