"""The canvas on SQS: chain, group, chord, nesting, and a failing chord.

The cases are test_canvas_brokers.py's own, imported unchanged, with its ``t`` fixture
(a worker in a thread of the test process); the ``app`` fixture here puts the broker on
SQS (ministack, queues of the test's own prefix) and the results, which count the
chords, on Redis (database 10, under a key prefix of the test's own): SQS keeps none.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqs_server
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

REDIS_URL = "redis://127.0.0.1:6379/10"

__all__ = [
    "t",
    "test_a_chain_in_a_group_in_a_chord",
    "test_a_chain_of_three",
    "test_a_chord_of_100_calls_back_once",
    "test_a_chord_with_a_failing_member_fails_promptly",
    "test_a_group_of_100",
]


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of the test's own on Redis database 10, its keys deleted after."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        client.close()
        if os.environ.get("CI"):
            pytest.fail(f"Redis is not running at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis is not running at {REDIS_URL}")
    prefix = f"sqs-canvas:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def app(redis_prefix: str) -> Iterator[App]:
    with sqs_server.namespace(polling_interval=0.1) as options:
        app = App("canvas", broker=sqs_server.broker_url(),
                  backend=f"{REDIS_URL}?key_prefix={redis_prefix}",
                  broker_transport_options=options)
        try:
            yield app
        finally:
            app.close()
