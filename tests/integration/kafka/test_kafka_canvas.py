"""The canvas on Kafka: chain, group, chord, nesting, and a failing chord.

The cases are test_canvas_brokers.py's own, imported unchanged, with its ``t`` fixture
(a worker in a thread of the test process); the ``app`` fixture here puts the broker on
Kafka, with a topic prefix of the test's own, and the result backend (which counts the
chords) in an SQLite file of the test's own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka_harness import delete_topics, kafka_url
from test_canvas_brokers import (
    t,
    test_a_chain_in_a_group_in_a_chord,
    test_a_chain_of_three,
    test_a_chord_of_100_calls_back_once,
    test_a_chord_with_a_failing_member_fails_promptly,
    test_a_group_of_100,
)

from celeriac import App

pytestmark = pytest.mark.timeout(60)

__all__ = [
    "t",
    "test_a_chain_in_a_group_in_a_chord",
    "test_a_chain_of_three",
    "test_a_chord_of_100_calls_back_once",
    "test_a_chord_with_a_failing_member_fails_promptly",
    "test_a_group_of_100",
]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    url = f"{kafka_url()}?prefix=cv{uuid.uuid4().hex[:12]}."
    app = App("canvas", broker=url, backend=f"sqlite:///{tmp_path / 'results.db'}")
    try:
        yield app
    finally:
        app.close()
        delete_topics(url)
