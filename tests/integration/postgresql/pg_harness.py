"""The PostgreSQL server on 127.0.0.1:5432 for the integration tests: a database per
module (made by the fixture, dropped after), a schema per test inside it.

Without a server the tests are skipped, except under CI (the ``CI`` environment
variable), where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from worker_harness import Deployment

# A password, though the server trusts loopback: it shows that URLs are masked in
# what workers print and answer (control_cases checks `conf`).
SERVER = "postgresql://postgres:celeriac@127.0.0.1:5432"


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the PostgreSQL tests must run)")
    pytest.skip(reason)


@contextmanager
def database(kind: str) -> Iterator[str]:
    """A database of its own on the local server (its URL), dropped afterwards."""
    name = f"celeriac_{kind}_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=2) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL is not running at {SERVER}: {exc}")
    try:
        yield f"{SERVER}/{name}"
    finally:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def with_schema(url: str) -> str:
    """``url`` with a schema of its own (the database is dropped whole afterwards)."""
    return f"{url}?schema=t_{uuid.uuid4().hex[:12]}"


class PostgreSQLDeployment(Deployment):
    """The ledger deployment of ``worker_harness``, on a PostgreSQL broker and backend."""

    def __init__(self, root: Path, url: str, lease_seconds: float) -> None:
        super().__init__(root, url, lease_seconds=lease_seconds)
