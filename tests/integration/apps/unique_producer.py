"""A producer process for the unique-jobs tests: threads sending one unique key at once.

    python unique_producer.py KEY THREADS SENDS_PER_THREAD WORK_SECONDS UNIQUE_FOR PAUSE OUT GO

Each thread sends ``ledger.sleepy("unique", WORK_SECONDS)`` with ``unique_key=KEY``
``SENDS_PER_THREAD`` times, ``PAUSE`` seconds apart (so that the sends span several
lifetimes of the key), once the file ``GO`` exists: the process writes ``OUT.ready``
when it waits for it, and the test says go when every producer is ready, so that all
threads start together. Each send is one JSON line in ``OUT``: the Unix times before
and after it, and the id of the task it returned. Prints ``sent N`` when every thread
is done. Broker and backend come from ``CELERIAC_*``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from ledger_app import register

from celeriac import App


def main(key: str, threads: int, sends: int, work: float, unique_for: float, pause: float,
         out: str, go: str) -> None:
    app = App("ledger-producer")
    tasks = register(app)
    lines: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def send() -> None:
        barrier.wait()
        mine = []
        for _ in range(sends):
            before = time.time()
            result = tasks.sleepy.apply_async(("unique", work), unique_key=key,
                                              unique_for=unique_for)
            mine.append(json.dumps({"before": before, "after": time.time(),
                                    "id": result.id}))
            time.sleep(pause)
        with lock:
            lines.extend(mine)

    with open(f"{out}.ready", "w"):  # imported and connected-to-be: the test may say go
        pass
    deadline = time.monotonic() + 30
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise SystemExit("the test never said go")
        time.sleep(0.005)
    workers = [threading.Thread(target=send) for _ in range(threads)]
    try:
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
    finally:
        app.close()
    with open(out, "w") as file:
        file.write("\n".join(lines) + "\n")
    print(f"sent {len(lines)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]),
         float(sys.argv[5]), float(sys.argv[6]), sys.argv[7], sys.argv[8])
