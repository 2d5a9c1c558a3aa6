"""Log set-up for worker processes: one line per event, saying which process said it.

With ``worker_hijack_root_logger`` (the default, as in Celery) the worker owns the root
logger: one stderr handler in ``worker_log_format`` at the ``-l`` level, so that the
tasks' own logs come out too. With it off, an application that configures logging
itself (Django's ``LOGGING``, a Sentry handler) keeps its configuration untouched; only
celeriac's own loggers get the ``-l`` level, and propagate to the app's handlers.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"


def configure_logging(level: str | int = "INFO", hijack_root: bool = True,
                      fmt: str = FORMAT) -> None:
    """Send celeriac's logs (and, owning the root logger, the tasks' own) to stderr."""
    if isinstance(level, str):
        level = level.upper()
    if not hijack_root:
        logging.getLogger("celeriac").setLevel(level)
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_celeriac", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    handler._celeriac = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
