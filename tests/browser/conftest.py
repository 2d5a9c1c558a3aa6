"""One small cluster for the browser tests: a worker, the dashboard, headless Chromium.

Module-scoped, because starting them is most of the cost: a worker process (prefork,
two processes) on a SQLite broker and backend in a temporary directory, the dashboard
served in this process on a free port (``server.Background``), the producer-side App
the tests send with, and one Chromium page. The API tests cover the other brokers;
these tests are about what an operator does in the browser.

``DASHBOARD_SCREENSHOTS=docs/img`` makes the tests save the pages they pass through as
``dashboard-<page>.png`` there (docs/dashboard.md shows them). Not ``CELERIAC_...``:
the App reads every such variable as a setting and refuses unknown ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

pytest.importorskip("playwright")
from browser_cluster import Cluster, running_cluster
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 20_000  # the longest any page or value may take to show up

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("browser")) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=["--no-sandbox"], headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser: Browser, cluster: Cluster) -> Iterator[Page]:
    context = browser.new_context(base_url=cluster.url,
                                  viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    yield tab
    context.close()


@pytest.fixture(scope="module")
def shoot(page: Page) -> Callable[[str], None]:
    """``shoot(name)``: save the page as docs' ``dashboard-<name>.png`` when asked to."""
    folder = os.environ.get("DASHBOARD_SCREENSHOTS")

    def save(name: str) -> None:
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(folder) / f"dashboard-{name}.png"), full_page=True)

    return save


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed flow's report carries the worker's log: what the worker saw of it."""
    report = yield
    found = getattr(item, "funcargs", {}).get("cluster")
    if report.failed and isinstance(found, Cluster):
        report.sections.append(("worker log", found.worker.log()[-20_000:]))
    return report
