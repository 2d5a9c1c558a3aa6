"""Malformed envelopes on RabbitMQ: each dead-lettered with its reason, nothing wedged.

The hand-crafted bodies of ``malformed_cases`` (every envelope field wrong in turn, an
oversized body, a decompression bomb) are published raw in this test's own vhost, to
one worker process with one slot.
"""

from __future__ import annotations

import pytest
from malformed_cases import check_malformed_batch, start_worker
from rabbit_harness import RabbitDeployment


def test_every_malformed_envelope_is_dead_lettered_with_its_reason(
        monkeypatch: pytest.MonkeyPatch, deployment: RabbitDeployment) -> None:
    start_worker(deployment, monkeypatch)
    check_malformed_batch(deployment)
    # And nothing is left leased or waiting
    deployment.wait_for_queue(ready=0, in_flight=0)
