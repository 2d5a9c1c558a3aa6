"""The app of beat's integration tests: a 1-second periodic task that writes a ledger.

Beat and worker processes load it with ``-A beat_app``; broker, backend and key prefix
or namespace come from ``CELERIAC_*`` environment variables. ``record`` appends one JSON
line per execution to the file named by ``BEAT_LEDGER``: the run's task id, entry and
due time (the ``beat_entry`` / ``beat_due`` headers beat sets), with a single ``write``
on an ``O_APPEND`` descriptor so that lines never interleave.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celeriac import App, Task

LEDGER_ENV = "BEAT_LEDGER"
TASK = "beat_app.record"
# The static schedule; the tests' own producer-side App uses the same.
BEAT_SCHEDULE: dict[str, Any] = {"tick": {"task": TASK, "schedule": 1.0}}

app = App("beat_app", beat_schedule=BEAT_SCHEDULE)


@app.task(bind=True, name=TASK)
def record(self: Task[..., Any]) -> None:
    request = self.request
    line = json.dumps({"id": request.id, "entry": request.headers.get("beat_entry"),
                       "due": request.headers.get("beat_due"), "pid": os.getpid(),
                       "t": time.time()})
    fd = os.open(os.environ[LEDGER_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)
