"""Log set-up for worker processes: one line per event, saying which process said it."""

from __future__ import annotations

import logging
import sys

FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"


def configure_logging(level: str | int = "INFO") -> None:
    """Send celeriac's logs (and the tasks' own) to stderr at ``level``."""
    if isinstance(level, str):
        level = level.upper()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_celeriac", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler._celeriac = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
