"""How many acknowledged sends a Redis Sentinel failover loses, with and without WAIT.

    python -m bench.sentinel_failover [--runs 5] [--producers 4] [--load-seconds 2]

Each run starts its own primary, replica and three sentinels on loopback ports
(tests/integration/redis/sentinel_harness.py: down-after-milliseconds 1000), and
``--producers`` threads sending one message per publish through the ``sentinel://``
broker's blocking publish, as ``delay()`` does, as fast as they can. After
``--load-seconds`` the primary is killed with SIGKILL; the producers go on (a send that
raises is not acknowledged) until the sentinels have promoted the replica. Then every
message id on the new master is read back, and each acknowledged send (its publish
returned) that is not there is lost.

Modes: ``plain`` (the default: a send returns once the master has it) and ``wait``
(``wait_for_replicas=1``: once the replica acknowledged it too). ``--lag-ms N``: the
replica replicates through a proxy whose link is frozen N ms before the kill, as a
replica that lags behind (a slow network, a busy replica) would be. Printed per run
and summed; docs/brokers.md (Sentinel) quotes the figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for folder in ("tests/integration", "tests/integration/redis"):
    sys.path.insert(0, str(ROOT / folder))

import redis  # noqa: E402
from sentinel_harness import MASTER_NAME, SentinelCluster  # noqa: E402

from celeriac.brokers import create_broker  # noqa: E402
from celeriac.brokers.base import Outgoing  # noqa: E402
from celeriac.brokers.redis import RedisBroker  # noqa: E402
from celeriac.errors import BrokerError  # noqa: E402

QUEUE = "failover"
BODY = b"x" * 200


@dataclass
class Run:
    mode: str
    acknowledged: int
    lost: int
    raised: int
    acknowledged_before_kill: int
    promoted_after: float


def one_run(mode: str, producers: int, load_seconds: float, lag_ms: int) -> Run:
    options: dict[str, Any] = {"master_name": MASTER_NAME}
    if mode == "wait":
        options["wait_for_replicas"] = 1
    with tempfile.TemporaryDirectory(prefix="sentinel-bench-") as directory:
        cluster = SentinelCluster(Path(directory), proxied=lag_ms > 0)
        try:
            broker = create_broker(cluster.url(), options)
            assert isinstance(broker, RedisBroker)
            acknowledged: dict[str, float] = {}
            raised = [0]
            stop = threading.Event()
            lock = threading.Lock()

            def produce(worker: int) -> None:
                n = 0
                while not stop.is_set():
                    message_id = f"{worker}-{n}"
                    n += 1
                    try:
                        broker.publish_blocking([Outgoing(message_id, QUEUE, BODY, 0)])
                    except BrokerError:
                        with lock:
                            raised[0] += 1
                        time.sleep(0.05)
                        continue
                    with lock:
                        acknowledged[message_id] = time.monotonic()

            threads = [threading.Thread(target=produce, args=(w,), daemon=True)
                       for w in range(producers)]
            for thread in threads:
                thread.start()
            time.sleep(load_seconds)
            if cluster.link is not None:  # the replica falls behind by lag_ms
                cluster.link.half_open()
                time.sleep(lag_ms / 1000)
            killed = cluster.kill_primary()
            promoted = cluster.wait_for_failover()
            time.sleep(0.5)  # a few sends on the new master too
            stop.set()
            for thread in threads:
                thread.join(30)
            broker.close_blocking()
            present = stored_ids(cluster.replica.url, broker)
            before = sum(1 for at in acknowledged.values() if at < killed)
            lost = sum(1 for message_id in acknowledged if message_id not in present)
            return Run(mode, len(acknowledged), lost, raised[0], before, promoted - killed)
        finally:
            cluster.stop()


def stored_ids(url: str, broker: RedisBroker) -> set[str]:
    """Every message id in the queue's streams on the server of ``url``."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    found: set[str] = set()
    try:
        for band in range(10):
            for _, fields in client.xrange(broker.stream_key(QUEUE, band)):
                found.add(fields[b"i"].decode())
    finally:
        client.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--load-seconds", type=float, default=2.0)
    parser.add_argument("--modes", default="plain,wait")
    parser.add_argument("--lag-ms", type=int, default=0,
                        help="freeze the replication link this long before the kill")
    args = parser.parse_args()
    for mode in args.modes.split(","):
        runs = []
        for number in range(1, args.runs + 1):
            run = one_run(mode, args.producers, args.load_seconds, args.lag_ms)
            runs.append(run)
            print(f"{mode:5} run {number}: {run.acknowledged:6} acknowledged "
                  f"({run.acknowledged_before_kill} before the kill), {run.lost:3} lost, "
                  f"{run.raised:4} sends raised, replica promoted "
                  f"{run.promoted_after:.1f} s after the kill", flush=True)
        print(f"{mode:5} total: {sum(r.acknowledged for r in runs)} acknowledged, "
              f"{sum(r.lost for r in runs)} lost in {len(runs)} runs (per run: "
              f"{', '.join(str(r.lost) for r in runs)})", flush=True)


if __name__ == "__main__":
    main()
