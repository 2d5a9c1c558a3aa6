"""Which node services a worker node runs, from its options and settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeriac.node.base import NodeService

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.worker.options import WorkerOptions


def node_services(app: App, options: WorkerOptions) -> list[NodeService]:
    """The services of a node: one line per subsystem that has node-wide work."""
    del app
    services: list[NodeService] = []
    if options.beat:
        from celeriac.beat.service import beat_service

        services.append(beat_service)
    return services
