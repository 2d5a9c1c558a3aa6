"""A node of one process (``-P solo``): its services run on the consumer's own loop."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from celeriac.node.base import NodeSnapshot
from celeriac.worker.status import StatusBoard, StatusSlot

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.worker.consumer import Consumer
    from celeriac.worker.options import WorkerOptions


class SoloNode:
    """``node.base.NodeHandle`` for a worker that is its own supervisor."""

    def __init__(self, app: App, options: WorkerOptions) -> None:
        self.app = app
        self.options = options
        self.name = options.hostname
        self.started_at = time.time()
        self.status: StatusSlot = StatusBoard(None, 1).slot(0)  # the consumer writes it
        self.consumer: Consumer | None = None

    def snapshot(self) -> NodeSnapshot:
        return NodeSnapshot(self.name, os.getpid(), self.options.pool, self.started_at,
                            (self.status.read(),))

    def resize(self, delta: int) -> int:
        raise ValueError("a solo worker runs one task at a time in its own process: its "
                         "pool cannot change size (use -P prefork, threads or async)")

    def shutdown(self) -> None:
        if self.consumer is not None:
            self.consumer.stop()
