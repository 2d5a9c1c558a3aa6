"""What message signing costs the W2 drain on Redis: ``python -m bench.signing_cost``.

W2 (20,000 no-op tasks queued, then drained by a 2-process prefork worker, timed from
the first execution until every result is stored; ``bench.workloads.drain``) runs with
and without signing (HMAC-SHA256: ``task_signing_keys`` and ``task_signing_key_id`` in
the producer's and the worker's environment), alternating which goes first, ``--runs``
times each, with the worker's CPU time from start to exit (what other load on a shared
machine disturbs least) and the Redis server's CPU over the same time (``INFO cpu``).
With signing on the worker checks every signature and claims every nonce on the Redis
server (one script call per fetched batch; on Redis nothing is marked after the acks).
Prints the medians and the cost in percent; the goal (issue 15) is at most 15%.

It uses Redis database 3 under the key prefix ``bench-signing:`` (its keys deleted
before and after each drain), so that it can run beside the main bench (8, 9) and the
metrics bench (11).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.metrics_cost import children_cpu
from bench.paired import Drain, alternate, report
from bench.run import wait_for_idle_cpus
from bench.targets import REDIS_HOST, CeleriacRedis, WorkerSpec
from bench.workloads import drain, send

SIGNING_DB = 3
PREFIX = "bench-signing:"
GOAL_PERCENT = 15.0
IDLE_PATIENCE = 5.0  # seconds to wait for idle CPUs before each drain (shared machines)
SIGNING_ENV = {"CELERIAC_TASK_SIGNING_KEYS": '{"bench-1": "' + "b" * 43 + '"}',
               "CELERIAC_TASK_SIGNING_KEY_ID": '"bench-1"'}


def delete_prefix() -> None:
    import redis

    client = redis.Redis.from_url(f"redis://{REDIS_HOST}/{SIGNING_DB}")
    try:
        keys = list(client.scan_iter(match=f"{PREFIX}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])
    finally:
        client.close()


class SigningRedis(CeleriacRedis):
    url = f"redis://{REDIS_HOST}/{SIGNING_DB}?key_prefix={PREFIX}"

    def setup(self) -> None:
        delete_prefix()

    teardown = setup

    def open(self, workdir: Path, ledger: Path) -> Any:
        from bench.targets import CeleriacSession

        delete_prefix()
        return CeleriacSession(self.url, self.url, ledger, on_close=delete_prefix)


def server_cpu() -> float:
    """CPU seconds the Redis server has used since it started (user and system)."""
    import redis

    client = redis.Redis.from_url(f"redis://{REDIS_HOST}/{SIGNING_DB}")
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def one_drain(target: SigningRedis, tasks: int, signed: bool) -> Drain:
    """(tasks/s, CPU seconds the worker used from its start to its exit, CPU seconds the
    Redis server used meanwhile: other clients of a shared server count too)."""
    with tempfile.TemporaryDirectory(prefix="celeriac-bench-") as tmp:
        workdir = Path(tmp)
        ledger = workdir / "ledger"
        ledger.mkdir()
        if signed:  # the producer (App reads CELERIAC_*) and the worker (inherits it)
            os.environ.update(SIGNING_ENV)
        try:
            session = target.open(workdir, ledger)
            try:
                sent = send(session, tasks)
                wait_for_idle_cpus(IDLE_PATIENCE)
                cpu, server = children_cpu(), server_cpu()
                drained = drain(session, sent, WorkerSpec("prefork", 2), workdir, ledger,
                                300.0, "worker-drain.log")
                cpu, server = children_cpu() - cpu, server_cpu() - server
            finally:
                session.close()
        finally:
            for name in SIGNING_ENV:
                os.environ.pop(name, None)
        return Drain(drained.rate, cpu, server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="drains of each kind (5)")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per drain (20000)")
    args = parser.parse_args()
    target = SigningRedis()
    target.setup()
    try:
        drains = alternate(args.runs, lambda signed: one_drain(target, args.tasks, signed),
                           _label)
    finally:
        target.teardown()
    report(drains, _label, args.tasks, GOAL_PERCENT)


def _label(signed: bool) -> str:
    return "signed" if signed else "unsigned"


if __name__ == "__main__":
    main()
