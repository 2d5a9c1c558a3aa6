"""What an operator does in the dashboard, in headless Chromium, against a real worker.

The flows share one worker and one page (conftest.py) and run in this file's order;
the first one counts on the cluster being fresh. Every wait is a Playwright ``expect``
with its timeout: the pages update through the live stream (SSE and fragment
refreshes), so a value that never arrives fails the test instead of hanging it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from browser_cluster import PROCESSES, Cluster
from playwright.sync_api import Browser, Page, expect

from celeriac import chain, group, signature
from celeriac.result import AsyncResult

N = 5  # tasks the overview must count


def test_overview_counts_what_was_sent(page: Page, cluster: Cluster,
                                       shoot: Callable[[str], None]) -> None:
    # Given N tasks sent and done
    results = [cluster.app.send_task("web.add", [i, i]) for i in range(N)]
    assert [r.get(timeout=20) for r in results] == [2 * i for i in range(N)]

    # When the operator opens the overview
    page.goto("/")

    # Then it shows N succeeded, none failed, the worker online, and the chart agrees
    expect(page.locator('[data-stat="SUCCESS"]')).to_have_text(str(N))
    expect(page.locator('[data-stat="FAILURE"]')).to_have_text("0")
    expect(page.locator('[data-stat="workers-online"]')).to_have_text("1")
    chart = page.locator("svg.throughput")
    expect(chart).to_have_attribute("data-succeeded", str(N))
    expect(chart).to_have_attribute("data-failed", "0")
    titles = chart.locator("rect.bar-succeeded title").all_text_contents()
    bars = [re.search(r"(\d+) succeeded", title) for title in titles]
    assert sum(int(bar[1]) for bar in bars if bar) == N  # the bars draw what it says
    expect(page.locator("tr[data-queue='celeriac']")).to_be_visible()


def test_failed_task_is_retried_from_its_page(page: Page, cluster: Cluster,
                                              shoot: Callable[[str], None]) -> None:
    # Given a task that fails the first time
    result = cluster.app.send_task("web.fail_once", ["retry-me"])

    # When it has failed, a search for failures lists it, with its traceback on its page
    page.goto("/tasks")
    page.get_by_label("task name").fill("web.fail_once")
    page.get_by_label("state").select_option("FAILURE")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"/tasks\?name=web.fail_once&state=FAILURE$"))
    row = page.locator(f"tr[data-task='{result.id}']")
    expect(row).to_be_visible()
    expect(row.locator(".badge")).to_have_text("FAILURE")
    page.get_by_role("link", name="Runtime").click()  # sortable headers, twice: reversed
    expect(page).to_have_url(re.compile(r"sort=runtime&order=desc"))
    page.get_by_role("link", name="Runtime ▼").click()
    expect(page).to_have_url(re.compile(r"sort=runtime&order=asc"))
    expect(row).to_be_visible()
    row.get_by_role("link", name="web.fail_once").click()
    expect(page).to_have_url(re.compile(f"/tasks/{result.id}$"))
    expect(page.locator("pre.traceback")).to_contain_text("ValueError: first run of retry-me")
    shoot("task")

    # And the operator clicks Retry
    page.get_by_role("button", name="Retry").click()

    # Then the page says it was sent, and the task succeeds (same id, so the same page)
    expect(page.locator("#flash")).to_contain_text("Retry sent")
    expect(page.locator("h1 .badge")).to_have_text("SUCCESS")
    expect(page.locator("[data-field=result]")).to_have_text("retry-me ok")
    assert AsyncResult(result.id, app=cluster.app).get(timeout=10) == "retry-me ok"


def test_dead_letter_is_requeued_and_runs(page: Page, cluster: Cluster,
                                          shoot: Callable[[str], None]) -> None:
    # Given a task rejected into the dead letters
    result = cluster.app.send_task("web.refuse_once", ["requeue-me"])
    page.goto("/dead-letters")
    row = page.locator(f"tr[data-dead='{result.id}']")
    expect(row).to_be_visible()
    expect(row).to_contain_text("refused the first time")
    shoot("dead-letters")

    # When the operator requeues it
    row.get_by_role("button", name="Requeue").click()

    # Then it leaves the dead letters and runs to success
    expect(page.locator("#flash")).to_contain_text("Requeued")
    expect(row).to_have_count(0)
    assert AsyncResult(result.id, app=cluster.app).get(timeout=20) == "requeue-me ok"
    page.goto(f"/tasks/{result.id}")
    expect(page.locator("h1 .badge")).to_have_text("SUCCESS")


def test_running_task_is_terminated_from_its_page(page: Page, cluster: Cluster,
                                                  shoot: Callable[[str], None]) -> None:
    # Given a task that runs until told otherwise
    result = cluster.app.send_task("web.wait_for", ["never"])
    page.goto(f"/tasks/{result.id}")
    expect(page.locator("h1 .badge")).to_have_text("STARTED")

    # When the operator terminates it (and confirms)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Terminate").click()

    # Then it ends REVOKED, and the page no longer offers to revoke it
    expect(page.locator("#flash")).to_contain_text("Terminate sent")
    expect(page.locator("h1 .badge")).to_have_text("REVOKED")
    expect(page.get_by_role("button", name="Terminate")).to_have_count(0)
    assert AsyncResult(result.id, app=cluster.app).state == "REVOKED"

    # And the task's page sets a rate limit for its task name
    page.get_by_label("rate limit of web.wait_for").fill("100/m")
    page.get_by_role("button", name="Set rate limit").click()
    expect(page.locator("#flash")).to_contain_text("Rate limit of web.wait_for set")


def test_pool_is_grown_from_the_workers_page(page: Page, cluster: Cluster,
                                             shoot: Callable[[str], None]) -> None:
    # Given the worker with its processes
    page.goto("/workers")
    row = page.locator("tr[data-worker^='web@']")
    processes = row.locator("[data-field=processes]")
    expect(processes).to_have_text(str(PROCESSES))

    # A live refresh keeps what the operator is typing, and where
    queue = row.locator("input[name=queue]")
    queue.fill("half-typed")
    page.evaluate("""() => { window.refreshes = 0; document.addEventListener(
        "celeriac:refreshed", () => { window.refreshes += 1; }); }""")
    assert cluster.app.send_task("web.add", [1, 1]).get(timeout=10) == 2
    page.wait_for_function("() => window.refreshes > 0")
    expect(queue).to_have_value("half-typed")
    expect(queue).to_be_focused()

    # When the operator grows its pool by one
    row.locator("input[name=n]").fill("1")
    row.get_by_role("button", name="Grow").click()

    # Then the page says so, and the processes count goes up
    expect(page.locator("#flash")).to_contain_text("resized")
    expect(processes).to_have_text(str(PROCESSES + 1))
    expect(row.locator("[data-field=slots]")).to_have_text(str(PROCESSES + 1))
    queue.fill("")  # (the picture without the test's half-typed name)
    shoot("workers")


def test_hidden_arguments_never_reach_a_page(page: Page, cluster: Cluster) -> None:
    # Given a task that hides its arguments, run with a token
    token = "s3cr3t-7f1c"
    result = cluster.app.send_task("web.secret", [token])
    assert result.get(timeout=20) == f"used {token}"

    # Then neither the tasks list nor its own page shows the token, nor its result
    page.goto("/tasks?name=web.secret")
    expect(page.locator(f"tr[data-task='{result.id}']")).to_contain_text("(hidden)")
    assert token not in page.content()
    page.goto(f"/tasks/{result.id}")
    expect(page.locator("h1 .badge")).to_have_text("SUCCESS")
    expect(page.get_by_text("Arguments and result hidden")).to_be_visible()
    assert token not in page.content()


def test_forms_work_without_javascript(browser: Browser, cluster: Cluster) -> None:
    # Given a browser with scripts off, on a task's page (one the later tests do not
    # send: the rate limit set here stays on the worker)
    done = cluster.app.send_task("web.secret", ["no-script"])
    assert done.get(timeout=20) == "used no-script"
    context = browser.new_context(base_url=cluster.url, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(f"/tasks/{done.id}")
        expect(page.locator("h1 .badge")).to_have_text("SUCCESS")

        # When the operator sets a rate limit, the form itself posts (csrf_token field)
        page.get_by_label("rate limit of web.secret").fill("50/m")
        page.get_by_role("button", name="Set rate limit").click()

        # Then the API accepted it and answers with its JSON
        expect(page.locator("body")).to_contain_text('"rate":"50/m"')
    finally:
        context.close()


def test_workflow_graph_and_the_other_pages(page: Page, cluster: Cluster,
                                            shoot: Callable[[str], None]) -> None:
    # Given a workflow: a task, a group of two on its result, a chord body summing them
    app = cluster.app
    flow = chain(signature("web.add", (1, 1), app=app),
                 group(signature("web.add", (10,), app=app),
                       signature("web.add", (20,), app=app)),
                 signature("web.total", app=app)).apply_async()
    assert flow.get(timeout=20) == 34

    # When the operator opens the page of its last task
    page.goto(f"/tasks/{flow.id}")

    # Then the page draws the whole family, each task a node linking to its page
    expect(page.locator("svg.graph .node")).to_have_count(4)
    expect(page.locator("svg.graph .node.current")).to_have_count(1)
    expect(page.locator("svg.graph .node.state-success")).to_have_count(4)
    shoot("workflow")

    # The other pages, with a bit more history behind them for the pictures
    for i in range(3):
        app.send_task("web.fail_once", [f"picture-{i}"])
    done = [app.send_task("web.add", [i, 1]) for i in range(20)]
    assert [r.get(timeout=20) for r in done] == [i + 1 for i in range(20)]
    waiting = app.send_task("web.add", [20, 22], countdown=3600)
    page.goto("/scheduled")
    expect(page.locator(f"tr[data-task='{waiting.id}']")).to_be_visible()
    shoot("scheduled")
    page.goto("/tasks")
    expect(page.locator(f"tr[data-task='{done[-1].id}']")).to_be_visible()
    shoot("tasks")
    # A queue no worker consumes, so the queues have something to show, then purged
    for i in range(12):
        app.send_task("web.add", [i, 0], queue="reports")
    page.goto("/queues")
    reports = page.locator("tr[data-queue='reports']")
    expect(reports.locator("[data-field=ready]")).to_have_text("12")
    shoot("queues")
    page.goto("/")
    expect(page.locator('[data-stat="FAILURE"]')).to_have_text("3")
    expect(page.locator('[data-stat="REVOKED"]')).to_have_text("1")
    expect(page.locator("tr[data-queue='reports']")).to_be_visible()
    shoot("overview")

    # Purging asks for the queue's name, typed
    page.goto("/queues")
    reports.get_by_text("Purge…").click()
    reports.get_by_role("textbox").fill("reprots")
    reports.get_by_role("button", name="Purge 12 ready").click()
    expect(page.locator("#flash")).to_contain_text("Type reports exactly")
    reports.get_by_role("textbox").fill("reports")
    reports.get_by_role("button", name="Purge 12 ready").click()
    expect(page.locator("#flash")).to_contain_text("Queue reports purged")
    # (an empty queue nobody declared may leave the list: 0 or gone, its 12 are)
    expect(reports.locator("[data-field=ready]", has_text="12")).to_have_count(0)
