"""The history's merge of task events and its query checks (``dashboard.history``).

The stores themselves: tests/contract/test_history_contract.py."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from celeriac.dashboard.history import (
    EVENTS_MAX,
    LIMIT_MAX,
    SORTS,
    TaskQuery,
    TaskRecord,
    merge,
    merge_all,
)

TASK = {"uuid": "t1", "name": "proj.add", "queue": "celery", "root_id": "r1",
        "parent_id": "p1"}


def event(kind: str, at: float, host: str = "w1@h", **fields: Any) -> dict[str, Any]:
    return {"type": kind, "timestamp": at, "hostname": host, "pid": 1, **TASK, **fields}


# A task sent, run once and retried, then run again on another worker to success.
LIFE = [
    event("task-sent", 0.5, "gen1@h", args="(1, 2)", kwargs="{}", retries=0, eta=None,
          expires=None),
    event("task-received", 1.0, args="(1, 2)", kwargs="{}", retries=0, eta=None,
          expires=None),
    event("task-started", 2.0),
    event("task-retried", 3.0, exception="IOError: down", eta="2026-01-01T00:00:09",
          countdown=6.0),
    event("task-received", 9.0, "w2@h", args="(1, 2)", kwargs="{}", retries=1,
          eta="2026-01-01T00:00:09", expires=None),
    event("task-started", 9.5, "w2@h"),
    event("task-succeeded", 10.0, "w2@h", runtime=0.5, result_size=2),
]


def fold(events: list[dict[str, Any]]) -> TaskRecord:
    record = None
    for each in events:
        record = merge(record, each)
    assert record is not None
    return record


def test_any_order_and_any_repetition_end_in_the_same_record() -> None:
    expected = fold(LIFE)
    assert expected.to_json() == {
        "id": "t1", "name": "proj.add", "state": "SUCCESS", "queue": "celery",
        "worker": "w2@h", "args": "(1, 2)", "kwargs": "{}", "retries": 1,
        "eta": "2026-01-01T00:00:09", "expires": None, "sent_at": 0.5,
        "received_at": 9.0, "started_at": 9.5, "finished_at": 10.0, "updated_at": 10.0,
        "runtime": 0.5, "exception": "IOError: down", "traceback": None, "reason": None,
        "parent_id": "p1", "root_id": "r1", "state_at": 10.0,
        "events": [[e["type"], e["timestamp"], e["hostname"]] for e in LIFE]}
    rng = random.Random(7)
    for _ in range(300):
        shuffled = LIFE + rng.sample(LIFE, 3)  # some events twice
        rng.shuffle(shuffled)
        assert fold(shuffled) == expected
    # Merged in two halves by two "dashboards", each half's record merged on.
    for cut in range(len(LIFE)):
        first = merge_all(None, "t1", LIFE[cut:])
        assert merge_all(first, "t1", LIFE[:cut + 1]) == expected


def test_the_state_follows_celerys_precedence() -> None:
    received, started, retried, received_again, _, succeeded = LIFE[1:]
    # A late task-received never takes a SUCCESS back, nor a task-sent a RECEIVED.
    assert fold([received, succeeded, received]).state == "SUCCESS"
    assert fold([received, LIFE[0]]).state == "RECEIVED"
    # A retry sets RETRY and counts; the next attempt's task-received replaces it.
    retry = fold([received, started, retried])
    assert (retry.state, retry.retries, retry.exception) == ("RETRY", 1, "IOError: down")
    assert fold([received, started, retried, received_again]).state == "RECEIVED"
    assert fold([received_again, retried]).state == "RECEIVED"  # the older event waits
    assert fold([LIFE[0]]).state == "SENT"
    # Final states: the newest; a terminated task's revoke after its start.
    failed = event("task-failed", 4.0, exception="KeyError: 'x'", traceback="Traceback...",
                   runtime=0.2)
    record = fold([received, started, failed])
    assert (record.state, record.exception, record.traceback, record.runtime,
            record.finished_at) == ("FAILURE", "KeyError: 'x'", "Traceback...", 0.2, 4.0)
    revoked = event("task-revoked", 2.5, terminated=True, expired=False)
    assert fold([started, revoked, received]).state == "REVOKED"
    rejected = event("task-rejected", 1.5, reason="no such task", dead_lettered=True,
                     requeue=False)
    record = fold([rejected, received])
    assert (record.state, record.reason) == ("REJECTED", "no such task")


def test_the_timeline_keeps_the_newest_events_once_each() -> None:
    beats = [event("task-retried", float(i), exception=f"E{i}") for i in range(80)]
    record = fold(list(reversed(beats)) + beats[:10])
    assert len(record.events) == EVENTS_MAX
    assert [at for _, at, _ in record.events] == [float(i) for i in range(30, 80)]
    assert record.exception == "E79"
    assert record.retries >= EVENTS_MAX  # only grows


def test_merge_leaves_its_input_alone_and_refuses_what_is_not_a_task_event() -> None:
    record = fold(LIFE[:2])
    before = record.to_json()
    merge(record, LIFE[2])
    assert record.to_json() == before
    with pytest.raises(ValueError, match="not a task event"):
        merge(None, {"type": "worker-heartbeat", "hostname": "w1@h", "timestamp": 1.0})
    with pytest.raises(ValueError, match="merged into task"):
        merge(TaskRecord(id="other"), LIFE[0])
    assert TaskRecord.from_json(fold(LIFE).to_json()) == fold(LIFE)


@pytest.mark.parametrize(("fields", "message"), [
    ({"sort": "args"}, "unknown sort 'args'; choose one of: " + ", ".join(SORTS)),
    ({"limit": 0}, f"limit must be an integer from 1 to {LIMIT_MAX}, not 0"),
    ({"limit": LIMIT_MAX + 1}, f"from 1 to {LIMIT_MAX}"),
    ({"offset": -1}, "offset must be an integer of 0 or more"),
    ({"state": "DONE"}, "unknown state 'DONE'; choose one of: PENDING, SENT"),
    ({"since": float("nan")}, "since must be a Unix time"),
])
def test_a_bad_query_is_refused_when_made(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TaskQuery(**fields)


def test_query_order_puts_missing_values_last_both_ways() -> None:
    records = [TaskRecord(id=i, runtime=r) for i, r in
               zip("abcd", (2.0, None, 1.0, 2.0), strict=True)]
    ids = [[r.id for r in TaskQuery(sort="runtime", descending=d).order(records)]
           for d in (True, False)]
    assert ids == [["d", "a", "c", "b"], ["c", "a", "d", "b"]]
