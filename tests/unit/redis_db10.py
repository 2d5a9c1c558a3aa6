"""Database 10 of the local Redis, for the unit tests of Redis-backed stores.

``isolated_prefix`` gives a key prefix of the test's own and deletes its keys afterwards;
without a server the test is skipped, except under CI (``CI`` set), where that fails.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
import redis

URL = "redis://127.0.0.1:6379/10"


@contextlib.contextmanager
def isolated_prefix(kind: str) -> Iterator[str]:
    client = redis.Redis.from_url(URL, socket_timeout=5, socket_connect_timeout=2)
    try:
        try:
            client.ping()
        except redis.ConnectionError as exc:
            if os.environ.get("CI"):
                pytest.fail(f"Redis is not running at {URL}: {exc}")
            pytest.skip(f"Redis is not running at {URL}")
        prefix = f"{kind}:{uuid.uuid4().hex[:12]}:"
        yield prefix
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
