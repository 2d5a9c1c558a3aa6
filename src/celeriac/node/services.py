"""Which node services a worker node runs, from its options and settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeriac.node.base import NodeService
from celeriac.worker.autoscale import autoscale_node

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.worker.options import WorkerOptions


def node_services(app: App, options: WorkerOptions) -> list[NodeService]:
    """The services of a node: one line per subsystem that has node-wide work."""
    services: list[NodeService] = []
    if options.autoscale is not None and options.pool == "prefork":
        services.append(autoscale_node)  # threads/async: in the process (worker.autoscale)
    if app.conf.worker_enable_remote_control:
        from celeriac.control.listener import control_service

        services.append(control_service)
    if options.beat:
        from celeriac.beat.service import beat_service

        services.append(beat_service)
    return services
