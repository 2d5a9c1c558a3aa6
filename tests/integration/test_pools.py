"""Sync (``def``) and async (``async def``) tasks run side by side in every pool."""

from __future__ import annotations

import pytest
from worker_harness import Deployment


@pytest.mark.parametrize(("pool_args", "processes"), [
    pytest.param(("-c", "2"), 2, id="prefork"),
    pytest.param(("-P", "threads", "-c", "4"), 1, id="threads"),
    pytest.param(("-P", "async", "-c", "20"), 1, id="async"),
])
def test_sync_and_async_tasks_run_in_the_same_worker(
    deployment: Deployment, pool_args: tuple[str, ...], processes: int,
) -> None:
    # Given a worker with this pool
    worker = deployment.start_worker(*pool_args).wait_ready(processes)
    children = {child.pid for child in worker.children()}
    assert len(children) == processes

    # When sync and async tasks are sent to it, interleaved
    sync, coroutines = [], []
    for n in range(10):
        sync.append(deployment.tasks.add.delay(n, 1))
        coroutines.append(deployment.tasks.async_add.delay(n, 2))

    # Then the results of both arrive
    assert [r.get(timeout=20) for r in sync] == [n + 1 for n in range(10)]
    assert [r.get(timeout=20) for r in coroutines] == [n + 2 for n in range(10)]
    # And both kinds ran in this worker's processes
    entries = deployment.ledger.entries()
    sync_pids = {e.pid for e in entries if e.task == "ledger.add"}
    async_pids = {e.pid for e in entries if e.task == "ledger.async_add"}
    assert sync_pids | async_pids <= children
    if processes == 1:
        assert sync_pids == async_pids  # one process ran both kinds
