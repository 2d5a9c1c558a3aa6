"""The global rate-limit check, shared by the SQLite and Redis integration tests.

A backlog of ledger ``record`` tasks limited to ``rate``/s (through ``task_annotations``
in the workers' environment) is run by several worker processes; the ledger's start
times then say how many ran in the first ``seconds`` after the first one started, and
at most how many in any one second.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker_harness import Deployment, Entry, wait_until

# The most starts any one second may see at 20/s: the rate, plus the jitter of start
# times (a process descheduled on a loaded machine starts tasks it got tokens for
# earlier in a bunch). Without the limit a backlog starts hundreds a second.
BUSIEST_AT_20 = 25

@dataclass(frozen=True)
class RateReport:
    expected: int  # rate x seconds
    counted: int  # starts in [first start, first start + seconds)
    busiest_second: int  # most starts within any one second
    pids: frozenset[int]  # the processes that ran them

    @property
    def error(self) -> float:
        """The relative error of the count: 0.02 is 2% off."""
        return abs(self.counted - self.expected) / self.expected


def run_rate_check(deployment: Deployment, rate: int = 20, seconds: float = 10.0,
                   workers: int = 2) -> RateReport:
    """Queue a backlog of rate-limited tasks, run it on ``workers`` processes, count."""
    limit = {"ledger.record": {"rate_limit": f"{rate}/s"}}
    backlog = int(rate * (seconds + 3))
    deployment.app.send_many([(deployment.tasks.record, (f"r{i}",)) for i in range(backlog)])
    started = [deployment.start_worker("-c", "1", task_annotations=limit)
               for _ in range(workers)]
    for worker in started:
        worker.wait_ready()
    first = deployment.ledger.wait_for_count(1, timeout=30)[0].t
    end = first + seconds
    entries: list[Entry] = wait_until(
        lambda: (found := deployment.ledger.entries()) and found[-1].t >= end and found,
        seconds + 20, f"a task started {seconds:g}s after the first")
    times = sorted(entry.t for entry in entries if entry.t < end)
    busiest = max(sum(1 for t in times[i:] if t < start + 1.0)
                  for i, start in enumerate(times))
    return RateReport(int(rate * seconds), len(times), busiest,
                      frozenset(entry.pid for entry in entries))
