"""Signed and encrypted messages on Redis (``signing_cases``), under this test's own key
prefix: refusals, rotation, re-signed retries, a payload unreadable in the stream, nonces
kept on the server."""

from __future__ import annotations

import redis
from redis_harness import RedisDeployment
from signing_cases import check_signing, worker_settings


def test_signed_worker_refuses_forgeries_and_runs_signed_and_encrypted_tasks(
        deployment: RedisDeployment) -> None:
    deployment.start_worker("-c", "2", **worker_settings()).wait_ready()
    check_signing(deployment)
    # And the nonces seen are on the server (every worker process and node agrees)
    broker = deployment.probe.broker
    client = redis.Redis.from_url(broker.settings.url)  # type: ignore[attr-defined]
    try:
        seen = list(client.scan_iter(match=f"{broker.prefix}seen:*"))  # type: ignore[attr-defined]
    finally:
        client.close()
    assert seen
