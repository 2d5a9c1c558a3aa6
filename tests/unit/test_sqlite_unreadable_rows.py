"""The SQLite broker reads rows no celeriac producer wrote without failing as a whole.

Rows are written straight into the file (as another program could): a fetch returns an
unreadable one as a Delivery whose ``problem`` names the field, with readable stand-ins,
and every listing (queue counts, dead letters) shows what it cannot decode escaped.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from celeriac.brokers import Outgoing
from celeriac.brokers.sqlite import SQLiteBroker


def test_an_unreadable_row_is_a_delivery_with_a_problem_and_listings_still_work(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = SQLiteBroker(f"sqlite:///{tmp_path / 'b.db'}")
        await broker.connect()
        await broker.publish([Outgoing("good", "q", b"body")])
        with sqlite3.connect(tmp_path / "b.db") as conn:
            conn.execute("INSERT INTO messages (id, queue, priority, body) "
                         "VALUES (CAST(X'FF' AS TEXT), 'q', 0, X'00')")
            conn.execute("INSERT INTO messages (id, queue, priority, body) "
                         "VALUES ('odd-queue', CAST(X'71FF' AS TEXT), 0, X'00')")
        # When the queue is fetched, Then both of its messages come out, the bad one
        # with its problem and a readable id, in the usual order
        got = await broker.fetch(["q"], 10, timeout=1)
        assert [(d.id, d.problem) for d in got] == [
            ("good", None),
            ("\\xff", "row 2 of the messages table: its message id b'\\xff' is not valid "
                      "UTF-8 text (invalid start byte at byte 0)")]
        # And the queue listing shows the queue whose name is not text, escaped
        stats = {s.queue: s.ready for s in await broker.queue_stats()}
        assert stats["q\\xff"] == 1
        # And the bad one can be dead-lettered and listed
        await broker.dead_letter([(got[1], "unreadable delivery: " + (got[1].problem or ""))])
        [letter] = await broker.dead_letters()
        assert (letter.id, letter.queue, letter.body) == ("\\xff", "q", b"\x00")
        await broker.close()

    asyncio.run(scenario())


def test_null_columns_are_problems_too(tmp_path: Path) -> None:
    # Given a file whose messages table was made without NOT NULL constraints
    path = tmp_path / "b.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE messages (seq INTEGER PRIMARY KEY, id TEXT, queue TEXT, "
                     "priority INTEGER, body BLOB, delivery_count INTEGER NOT NULL DEFAULT 0, "
                     "lease_until REAL, lease_id INTEGER, ready_at REAL)")

    async def scenario() -> None:
        broker = SQLiteBroker(f"sqlite:///{path}")
        await broker.connect()
        with sqlite3.connect(path) as conn:
            conn.execute("INSERT INTO messages (id, queue, priority, body) "
                         "VALUES (NULL, 'q', NULL, NULL)")
        await broker.publish([Outgoing("good", "q", b"body")])
        # When the queue is fetched, Then the NULL row is a delivery naming each NULL
        got = await broker.fetch(["q"], 10, timeout=1)
        problems = {d.id: d.problem for d in got}
        assert problems["good"] is None
        assert problems["row-1"] == ("row 1 of the messages table: its message id is NULL, "
                                     "not text; its body is NULL, not a blob; its priority "
                                     "None is not an integer 0-9")
        # And it can be dead-lettered (NULLs and all) and listed
        [bad] = [d for d in got if d.problem]
        await broker.dead_letter([(bad, "unreadable")])
        [letter] = await broker.dead_letters()
        assert (letter.id, letter.queue, letter.body) == ("row-1", "q", b"")
        await broker.close()

    asyncio.run(scenario())
