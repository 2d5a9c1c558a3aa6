"""The pages as a browser gets them, from a real dashboard on the in-memory broker.

No worker: these check what the flows in tests/browser do not reach: the content
fragment the live refresh fetches, the answers to a bad search and an unknown task, the
CSRF token in the page, and a page whose history store is down.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from celeriac import App
from celeriac.dashboard.app import Dashboard
from celeriac.dashboard.history import HistoryError
from celeriac.dashboard.pages import Pages
from celeriac.dashboard.server import Background

if TYPE_CHECKING:
    from celeriac.dashboard.service import DashboardService


@contextmanager
def served(**settings: Any) -> Iterator[httpx.Client]:
    app = App("pages", broker="memory://", backend="memory://", **settings)
    server = Background(Dashboard(app).asgi).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            yield client
    finally:
        server.close()
        app.close()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with served() as running:
        yield running


def test_a_page_is_whole_and_its_fragment_only_the_content(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    token = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page.text)
    assert token is not None  # what the script sends back as X-CSRF-Token
    assert client.get("/api/csrf").json()["token"] == token[1]
    fragment = client.get("/?fragment=1")
    assert fragment.status_code == 200
    assert "<html" not in fragment.text
    assert 'class="cards"' in fragment.text
    for path in ("/queues", "/tasks", "/scheduled", "/dead-letters"):
        assert client.get(path).status_code == 200, path


def test_a_bad_search_and_an_unknown_task_say_so(client: httpx.Client) -> None:
    bad = client.get("/tasks", params={"state": "DONE", "name": "<script>"})
    assert bad.status_code == 400
    assert "unknown state &#39;DONE&#39;" in bad.text
    assert "<script>" not in bad.text  # (autoescaped, in the form's value)
    missing = client.get("/tasks/no-such-task")
    assert missing.status_code == 404
    assert "No task <code>no-such-task</code> in the history" in missing.text


def test_a_page_whose_history_is_down_says_why() -> None:
    # (The guard alone: a dashboard whose store is down from the start waits 10 s for
    # its ingest before it serves, which this suite cannot spend.)
    async def reads_a_broken_store(request: Request) -> Response:
        raise HistoryError("cannot open SQLite database /gone/history.db")

    pages = Pages(cast("DashboardService", None))  # (the guard never reads the service)
    scope = {"type": "http", "method": "GET", "path": "/tasks", "query_string": b"",
             "headers": [], "scheme": "http", "server": ("127.0.0.1", 5555)}
    page = asyncio.run(pages.guarded(reads_a_broken_store)(Request(scope)))
    assert page.status_code == 503
    text = bytes(page.body).decode()
    assert "cannot open SQLite database /gone/history.db" in text
    assert 'href="/workers"' in text  # still a page with its navigation
