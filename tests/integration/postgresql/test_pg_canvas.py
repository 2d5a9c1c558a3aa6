"""The canvas on PostgreSQL: chain, group, chord, nesting, and a failing chord.

The cases are test_canvas_brokers.py's own, imported unchanged, with its ``t`` fixture
(a worker in a thread of the test process); the ``app`` fixture here puts broker and
result backend (which counts the chords) on PostgreSQL, in a schema of the test's own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
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
def app(pg_url: str) -> Iterator[App]:
    app = App("canvas", broker=pg_url, backend=pg_url)
    try:
        yield app
    finally:
        app.close()
