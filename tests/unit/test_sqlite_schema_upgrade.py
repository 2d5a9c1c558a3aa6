"""A broker file made by an older celeriac (schema 1, without ready_at) is upgraded in
place when first opened: its messages are kept, new ones get an age."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from celeriac.brokers.base import Outgoing
from celeriac.brokers.sqlite import SQLiteBroker

VERSION_1 = """
CREATE TABLE celeriac_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL);
INSERT INTO celeriac_schema VALUES ('broker', 1);
CREATE TABLE messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, queue TEXT NOT NULL,
    priority INTEGER NOT NULL, body BLOB NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0, lease_until REAL, lease_id INTEGER);
CREATE INDEX messages_ready ON messages (queue, priority DESC, seq)
    WHERE lease_until IS NULL;
INSERT INTO messages (id, queue, priority, body) VALUES ('old', 'q', 0, X'00');
"""


def test_a_version_1_file_is_upgraded_and_keeps_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(VERSION_1)

    async def scenario() -> None:
        broker = SQLiteBroker(f"sqlite:///{path}")
        await broker.connect()
        # The old message is there; its ready time was never recorded
        [stats] = await broker.queue_stats(["q"])
        assert (stats.ready, stats.oldest_age) == (1, None)
        # A new one is stored with its ready time; while the old one is the oldest,
        # the age stays unknown (the new one's would understate it)
        await broker.publish([Outgoing("new", "q", b"\x01")])
        [stats] = await broker.queue_stats(["q"])
        assert (stats.ready, stats.oldest_age) == (2, None)
        # Once the old one is gone, the queue's age is known again
        [old] = await broker.fetch(["q"], 1, timeout=1)
        assert old.id == "old"
        await broker.ack([old])
        [stats] = await broker.queue_stats(["q"])
        assert stats.ready == 1
        assert stats.oldest_age is not None
        await broker.close()

    asyncio.run(scenario())
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM celeriac_schema WHERE component = 'broker'"
                            ).fetchone() == (2,)
