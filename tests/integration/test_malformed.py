"""Malformed input on the embedded SQLite broker: nothing wedges a queue or a worker.

Hand-crafted bodies (every envelope field wrong in turn, oversized bodies, a
decompression bomb) and rows whose broker-level fields cannot be read (written into the
SQLite file by something other than celeriac) each end in the dead letters with a
specific reason, the delivery settled, and the next valid task runs within a second.
"""

from __future__ import annotations

import sqlite3
import time

import pytest
from malformed_cases import check_malformed_batch, envelope, start_worker
from worker_harness import QUEUE, Deployment, wait_until

from celeriac.serialization import Codec


def test_every_malformed_envelope_is_dead_lettered_with_its_reason(
        monkeypatch: pytest.MonkeyPatch, deployment: Deployment) -> None:
    start_worker(deployment, monkeypatch)
    check_malformed_batch(deployment)
    # And nothing is left leased or waiting
    deployment.wait_for_queue(ready=0, in_flight=0)


def test_rows_whose_broker_fields_cannot_be_read_are_dead_lettered(
        deployment: Deployment) -> None:
    # Given a running worker
    worker = deployment.start_worker("-c", "1").wait_ready()
    assert deployment.tasks.record.delay("before").get(timeout=30) == "before"
    body = Codec(["json"]).encode(envelope())
    # When rows no celeriac producer would write appear in the broker's file
    rows = {
        "id-not-utf8": ("CAST(X'66FF6F' AS TEXT)", "?", 0, body),
        "id-blob": ("X'626C6F62'", "?", 0, body),  # (an integer would become text)
        "priority-text": ("'priority-text'", "?", "high", body),
        "priority-out-of-range": ("'priority-out-of-range'", "?", 99, body),
        "body-text": ("'body-text'", "?", 0, "not bytes"),
    }
    path = deployment.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        for id_sql, queue_sql, priority, row_body in rows.values():
            conn.execute(f"INSERT INTO messages (id, queue, priority, body) "
                         f"VALUES ({id_sql}, {queue_sql}, ?, ?)", (QUEUE, priority, row_body))
        conn.execute("INSERT INTO messages (id, queue, priority, body, delivery_count) "
                     "VALUES ('count-real', ?, 0, ?, 1.5)", (QUEUE, body))
        conn.execute("INSERT INTO scheduled (id, queue, priority, body, due) "
                     "VALUES ('due-text', ?, 0, ?, 'later')", (QUEUE, body))
    deployment.tasks.record.delay("after")
    published = time.time()

    # Then the next valid task runs within a second
    ran = deployment.ledger.wait_for("after", timeout=10)[0]
    assert ran.t - published < 1.0
    # And each unreadable row is dead-lettered, naming the field and what is wrong with it
    expected = {
        "f\\xffo": "its message id b'f\\xffo' is not valid UTF-8 text",
        "blob": "its message id is of type blob (b'blob'), not text",
        "priority-text": "its priority 'high' is not an integer 0-9",
        "priority-out-of-range": "its priority 99 is not an integer 0-9",
        "body-text": "its body is of type text",
        "count-real": "its delivery count 2.5 is not an integer",
        "due-text": "unreadable scheduled message: its due time 'later' is not a number",
    }

    def letters() -> dict[str, str] | None:
        found = {d.id: d.reason for d in deployment.probe.dead_letters()}
        return found if set(expected) <= set(found) else None

    found = wait_until(letters, 10, "every unreadable row in the dead letters")
    for message_id, words in expected.items():
        assert words in found[message_id], (message_id, found[message_id])
    assert all(found[i].startswith("unreadable delivery: row ") for i in expected
               if i != "due-text")
    # And none of them ran, every row is settled, the worker is still consuming
    assert deployment.ledger.tags() == ["before", "after"]
    deployment.wait_for_queue(ready=0, in_flight=0)
    assert deployment.tasks.record.delay("later").get(timeout=10) == "later"
    assert worker.running
