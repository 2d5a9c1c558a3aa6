"""Signed and encrypted messages on the embedded SQLite broker (``signing_cases``): every
refused kind dead-lettered with its reason and run by nothing, key rotation, retries
signed anew, an encrypted task unreadable in the broker's file and its result in the
backend's."""

from __future__ import annotations

from signing_cases import check_signing, worker_settings
from worker_harness import Deployment


def test_signed_worker_refuses_forgeries_and_runs_signed_and_encrypted_tasks(
        deployment: Deployment) -> None:
    worker = deployment.start_worker("-c", "2", **worker_settings()).wait_ready()
    check_signing(deployment)
    # And each refusal was logged at ERROR, naming its reason
    for reason in ("unsigned:", "bad_signature:", "replay:"):
        assert f"refused, not run: {reason}" in worker.log()
