"""A million queued tasks drained with worker memory flat: ``python -m bench.flat_memory``.

Issue 3 asks that a worker's memory be bounded by its prefetch, not by the backlog. This
queues ``--tasks`` no-op tasks on Redis (celeriac's bench database) with
``App.send_many``, starts a 2-process worker, and samples the resident memory of each
worker process while the backlog drains, with the backlog left at that moment. It fails
(exit status 1) unless every task ran and the processes' memory grew by less than
``--max-growth-mib`` from the first sample taken after warm-up to the largest later one.

Too long for the test suite's time budget (about a minute and a half for a million on
this 2-core machine), so it lives here; results in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.targets import CeleriacRedis, CeleriacSession, WorkerSpec
from bench.tasks import NOOP
from bench.workloads import ROOT

SEND_CHUNK = 10_000
SAMPLE_EVERY = 0.5  # seconds
WARM_UP = 0.1  # share of the backlog drained before the baseline sample


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flat_memory",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--max-growth-mib", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    options = parser.parse_args(argv)

    target = CeleriacRedis()
    target.setup()
    with tempfile.TemporaryDirectory(prefix="celeriac-flat-") as tmp:
        session = target.open(Path(tmp), Path(tmp) / "ledger")
        assert isinstance(session, CeleriacSession)
        try:
            return measure(session, options.tasks, options.max_growth_mib, options.timeout,
                           Path(tmp))
        finally:
            session.close()
            target.teardown()


def measure(session: CeleriacSession, tasks: int, max_growth: float, timeout: float,
            workdir: Path) -> int:
    started = time.perf_counter()
    sent = 0
    while sent < tasks:
        count = min(SEND_CHUNK, tasks - sent)
        session.send_batch(NOOP, (), count)
        sent += count
    print(f"queued {tasks:,} tasks in {time.perf_counter() - started:.1f}s; "
          f"the queue holds {session.queued():,}")

    env = {**os.environ, **session.worker_env()}
    env.pop("BENCH_LEDGER_DIR", None)  # a million ledger lines would only cost disk
    command = session.worker_command(WorkerSpec("prefork", 2))
    log = (workdir / "worker.log").open("wb")
    worker = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    samples: list[tuple[float, int, list[float]]] = []  # (seconds, backlog, MiB per process)
    began = time.perf_counter()
    try:
        supervisor = psutil.Process(worker.pid)
        while True:
            backlog = session.queued()
            # The worker processes, not multiprocessing's resource tracker.
            children = [c for c in supervisor.children()
                        if "spawn_main" in " ".join(c.cmdline())]
            rss = sorted(c.memory_info().rss / 2**20 for c in children)
            samples.append((time.perf_counter() - began, backlog, rss))
            if backlog == 0 and session.settled([]):
                break
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited with {worker.returncode}")
            if time.perf_counter() - began > timeout:
                raise SystemExit(f"{backlog:,} tasks left after {timeout}s")
            time.sleep(SAMPLE_EVERY)
    finally:
        worker.terminate()
        worker.wait(60)
        log.close()
    elapsed = samples[-1][0]
    print(f"drained in {elapsed:.1f}s ({tasks / elapsed:,.0f} tasks/s with start-up)")
    baseline = next((s for s in samples if s[1] <= tasks * (1 - WARM_UP) and len(s[2]) == 2),
                    None)
    if baseline is None:
        print("no sample after warm-up: the drain was too quick to sample")
        return 1
    later = [s for s in samples if s[0] >= baseline[0] and len(s[2]) == 2]
    growth = max(max(s[2]) for s in later) - max(baseline[2])
    print(f"{'seconds':>8} {'backlog':>10}  worker processes' RSS (MiB)")
    step = max(1, len(samples) // 20)
    for seconds, backlog, rss in samples[::step] + samples[-1:]:
        print(f"{seconds:8.1f} {backlog:10,}  {'  '.join(f'{m:6.1f}' for m in rss)}")
    dead = session._loop.run_until_complete(session.app.broker.dead_letters(1))
    if dead:
        print(f"tasks were dead-lettered: {dead[0].reason}")
        return 1
    verdict = growth < max_growth
    print(f"largest RSS after warm-up minus the baseline: {growth:+.1f} MiB "
          f"(limit {max_growth} MiB): {'flat' if verdict else 'NOT FLAT'}")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
