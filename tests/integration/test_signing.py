"""Signed and encrypted messages on the embedded SQLite broker (``signing_cases``): every
refused kind dead-lettered with its reason and run by nothing, key rotation, retries
signed anew, an encrypted task unreadable in the broker's file and its result in the
backend's; the refusals logged and counted on ``/metrics``."""

from __future__ import annotations

import metrics_cases
from signing_cases import check_signing, worker_settings
from worker_harness import Deployment, wait_until


def test_signed_worker_refuses_forgeries_and_runs_signed_and_encrypted_tasks(
        deployment: Deployment) -> None:
    worker, port = metrics_cases.start(deployment, **worker_settings())
    worker.wait_ready(2)
    check_signing(deployment)
    # And each refusal was logged at ERROR, naming its reason
    for reason in ("unsigned:", "bad_signature:", "replay:"):
        assert f"refused, not run: {reason}" in worker.log()
    # And counted, by reason, on the node's /metrics (summed over its two processes)
    expected = {"unsigned": 1.0, "bad_signature": 4.0, "replay": 2.0}

    def counted() -> bool:
        return {reason: metrics_cases.value(port, "celeriac_messages_refused_total",
                                            reason=reason) for reason in expected} == expected

    wait_until(counted, 10, f"celeriac_messages_refused_total at {expected}")
    metrics_cases.stop(worker)  # (a warm stop with signing on exits cleanly)
