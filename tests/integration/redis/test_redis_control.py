"""Inspect and control on real worker processes, on Redis (see control_cases.py).

On database 9 of the shared server, under a key prefix of each test's own (deleted after).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import control_cases
import pytest
from redis_harness import RedisDeployment, delete_prefix, ping, unavailable, with_prefix

from celeriac.worker.options import expand_nodename

SERVER = "redis://127.0.0.1:6379/9"
LEASE_SECONDS = 2.0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[RedisDeployment]:
    if not ping(SERVER):
        unavailable(f"Redis is not running at {SERVER}")
    prefix = f"test-control:{expand_nodename('%n')}:{tmp_path.name}:"
    deployment = RedisDeployment(tmp_path, with_prefix(SERVER, prefix), LEASE_SECONDS)
    try:
        yield deployment
    finally:
        deployment.close()
        delete_prefix(SERVER, prefix)


def test_two_nodes_answer_inspect_and_obey_control(world: RedisDeployment) -> None:
    control_cases.two_nodes_answer_and_obey(world)


def test_a_duplicate_node_name_is_refused_at_start(world: RedisDeployment) -> None:
    control_cases.duplicate_name_is_refused(world)


def test_cli_inspect_control_and_status_print_json(world: RedisDeployment) -> None:
    control_cases.cli_json_shapes(world)
