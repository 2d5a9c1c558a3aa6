"""A producer process for the integration tests: sends ``count`` ledger.record tasks.

    python producer.py PREFIX COUNT

Each task's tag is ``PREFIX-<n>``, so the test knows every tag that was sent. The
broker and backend come from ``CELERIAC_*`` environment variables, as for the worker.
Prints ``sent COUNT`` when every ``delay()`` has returned.
"""

from __future__ import annotations

import sys

from ledger_app import register

from celeriac import App


def main(prefix: str, count: int) -> None:
    app = App("ledger-producer")
    tasks = register(app)
    try:
        for n in range(count):
            tasks.record.delay(f"{prefix}-{n}")
    finally:
        app.close()
    print(f"sent {count}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
