"""Malformed envelopes on Redis: each dead-lettered with its reason, the queue never wedged.

The hand-crafted bodies of ``malformed_cases`` (every envelope field wrong in turn, an
oversized body, a decompression bomb) are published raw onto the shared server under
this test's own key prefix, to one worker process with one slot.
"""

from __future__ import annotations

import pytest
from malformed_cases import check_malformed_batch, start_worker
from redis_harness import RedisDeployment


def test_every_malformed_envelope_is_dead_lettered_with_its_reason(
        monkeypatch: pytest.MonkeyPatch, deployment: RedisDeployment) -> None:
    start_worker(deployment, monkeypatch)
    check_malformed_batch(deployment)
    # And nothing is left leased or waiting
    deployment.wait_for_queue(ready=0, in_flight=0)


def test_tasks_finished_before_a_redelivered_poison_are_not_run_again(
        deployment: RedisDeployment) -> None:
    from test_poison_neighbour import check_poison_neighbours

    check_poison_neighbours(deployment)
