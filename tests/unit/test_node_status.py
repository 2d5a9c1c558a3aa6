"""The node's numbers: each process's shared-memory entry, summed for the node."""

from __future__ import annotations

import multiprocessing

import pytest

from celeriac.node.base import NodeSnapshot
from celeriac.worker.status import StatusBoard


def test_a_process_entry_reads_back_what_it_published() -> None:
    board = StatusBoard(multiprocessing.get_context("spawn"), 4)
    board.slot(2).publish(pid=42, slots=3, active=2, reserved=5, processed=17, consuming=True)
    seen = board.read([2])[0]
    assert (seen.index, seen.pid, seen.slots, seen.active, seen.reserved, seen.processed,
            seen.consuming) == (2, 42, 3, 2, 5, 17, True)
    assert seen.beat > 0
    assert not seen.busy
    board.slot(2).clear()
    assert board.read([2])[0].processed == 0
    assert not board.read([2])[0].consuming


def test_an_index_past_the_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="outside 0..3"):
        StatusBoard(None, 4).slot(4)


def test_the_node_sums_its_processes_and_keeps_what_replaced_ones_processed() -> None:
    board = StatusBoard(None, 2)
    board.slot(0).publish(pid=1, slots=1, active=1, reserved=2, processed=10, consuming=True)
    board.slot(1).publish(pid=2, slots=1, active=0, reserved=0, processed=5, consuming=False)
    node = NodeSnapshot("w@h", 99, "prefork", 0.0, tuple(board.read([0, 1])),
                        retired_processed=100)
    assert (node.slots, node.active, node.reserved, node.processed) == (2, 1, 2, 115)
    assert not node.consuming  # one process has not reached its broker yet
    assert board.read([0])[0].busy


def test_a_topics_record_limit_keeps_it_within_its_bytes() -> None:
    from celeriac.bus.base import MIN_RECORDS, RETENTION, RecordSizes

    events = RETENTION["events"]
    assert events.record_limit(100) == events.max_records  # small records: the count
    assert events.record_limit(1024 * 1024) == 64  # large ones (1 MiB): the bytes
    assert events.record_limit(10 * events.max_bytes) == MIN_RECORDS  # a little history
    sizes = RecordSizes()
    assert sizes.limit("events", [b"x" * 1024 * 1024] * 30) < 100  # it learns the size
