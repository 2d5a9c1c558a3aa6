"""Node names are unique: a worker does not start under the name of a live node.

Two nodes with one name would answer remote control as one (their replies merged, a
``shutdown`` or ``pool_grow`` meant for one reaching both), and their events would be
indistinguishable. So before a worker starts its processes (or, solo, before it
consumes), it pings its own name with a short timeout; if a live node answers, it
refuses to start, naming the node (``celeriac worker`` exits with ``EXIT_REFUSED``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from celeriac.errors import ConfigurationError, describe

if TYPE_CHECKING:
    from celeriac.app import App

logger = logging.getLogger("celeriac.control")

NAME_CHECK_TIMEOUT = 0.5  # seconds a live node has to answer the ping


class NodeNameTaken(ConfigurationError):
    """A live node already answers to this worker's name."""


def ensure_unique_name(app: App, name: str, timeout: float = NAME_CHECK_TIMEOUT) -> None:
    """Raise ``NodeNameTaken`` if a live node answers to ``name``.

    A broker that cannot be reached now is not a reason to refuse: the worker's own
    start retries it (``worker.startup``), and the check is skipped with a warning.
    """
    if not app.conf.worker_enable_remote_control or app.broker.scheme == "memory":
        return  # nobody could answer: remote control is off, or the broker is in-process
    try:
        answers = app.control.broadcast("ping", destination=[name], reply=True,
                                        timeout=timeout, limit=1)
    except ConfigurationError:
        return  # (a missing client library, a bad URL): the worker's start says it
    except Exception as exc:
        logger.warning("could not check that no live node is named %s (the broker is not "
                       "reachable yet): %s", name, describe(exc))
        return
    if answers:
        raise NodeNameTaken(f"a live worker node is already named {name}: give this one "
                            "another name, e.g. -n other@%h")
