"""Queue alerts on real brokers: a queue over its threshold alerts a local webhook within
the check interval and recovers once drained, without flapping; a webhook that is down
is retried and holds up nothing; ``monitor --once`` exit codes; oldest_age grows."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from alert_servers import KINDS, Hook, alert_app, refused_url, wait_for

from celeriac import App
from celeriac.monitor.alerts import AlertChecker
from celeriac.monitor.webhooks import WebhookSender

QUEUE = "celeriac"


def fill(app: App, count: int) -> None:
    for _ in range(count):
        app.send_task("alerts.noop")


def set_length(app: App, count: int) -> None:
    purge(app)
    fill(app, count)


def purge(app: App) -> None:
    app._run_sync(_purge(app))


async def _purge(app: App) -> None:
    broker = await app._connected_broker()
    await broker.purge([QUEUE])


def ready(app: App) -> int:
    async def read() -> int:
        broker = await app._connected_broker()
        return (await broker.queue_stats([QUEUE]))[0].ready
    return app._run_sync(read())


def fast_sender(urls: list[str]) -> WebhookSender:
    return WebhookSender(urls, attempts=4, first_delay=0.05, timeout=2)


@pytest.mark.parametrize("kind", KINDS)
def test_a_queue_over_max_length_alerts_the_webhook_and_recovers_when_drained(
        kind: str, tmp_path: Path) -> None:
    hook = Hook()
    interval = 0.2
    with alert_app(kind, tmp_path, queue_alerts={QUEUE: {"max_length": 5}}) as app:
        checker = AlertChecker(app, interval=interval, sender=fast_sender([hook.url]))
        # Connected (its client modules imported) before two threads use it at once:
        # aiormq's modules import each other in a cycle that breaks when imported by two
        # threads at the same time.
        assert ready(app) == 0
        app.send_task("alerts.noop")
        purge(app)
        stop = asyncio.Event()
        loop = app._bridge.loop
        running = asyncio.run_coroutine_threadsafe(checker.run(stop), loop)
        try:
            # Given a monitor checking every 0.2 s, When the queue goes over max_length
            fill(app, 6)
            wait_for(lambda: ready(app) == 6, 10, "6 ready messages")
            filled = time.monotonic()
            # Then the webhook gets a "firing" alert within the check interval (plus
            # the POST's own time)
            wait_for(lambda: hook.posts, 5, "a firing alert")
            assert time.monotonic() - filled < interval + 1.0
            [firing] = hook.posts
            assert firing["status"] == "firing"
            assert (firing["queue"], firing["metric"]) == (QUEUE, "length")
            assert (firing["value"], firing["threshold"]) == (6, 5)
            assert firing["app"] == "alerts"
            assert "guest@" not in firing["broker"]
            assert "guest:guest" not in firing["broker"]
            assert firing["at"].endswith("+00:00")
            assert (QUEUE, "length") in checker.firing
            # When it is drained, Then a "resolved" follows, and the state clears
            purge(app)
            wait_for(lambda: len(hook.posts) == 2, 5, "a resolved alert")
            resolved = hook.posts[1]
            assert (resolved["status"], resolved["value"]) == ("resolved", 0)
            assert checker.firing == {}
        finally:
            loop.call_soon_threadsafe(stop.set)
            running.result(10)
            app._run_sync(checker.aclose())
            hook.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_queue_hovering_at_its_threshold_does_not_flap(kind: str, tmp_path: Path) -> None:
    hook = Hook()
    settings = {"*": {"max_length": 10, "recover_at": 0.8}}  # every queue the broker knows
    with alert_app(kind, tmp_path, queue_alerts=settings) as app:
        checker = AlertChecker(app, sender=fast_sender([hook.url]))
        seen = []
        # Above 10 fires; only at or below 8 resolves; in between nothing changes
        for length in (11, 10, 11, 9, 10, 11, 8, 9, 10, 11):
            set_length(app, length)
            changes = app._run_sync(checker.check_once())
            seen.append([change.status for change in changes])
        assert seen == [["firing"], [], [], [], [], [], ["resolved"], [], [], ["firing"]]
        wait_for(lambda: len(hook.posts) == 3, 5, "three webhook posts")
        assert [post["status"] for post in hook.posts] == ["firing", "resolved", "firing"]
        app._run_sync(checker.aclose())
        hook.close()


def test_a_webhook_that_is_down_is_retried_and_holds_up_nothing(tmp_path: Path) -> None:
    flaky = Hook(fail_first=2)  # answers 503 twice, then accepts
    good = Hook()
    down = refused_url()
    with alert_app("sqlite", tmp_path, queue_alerts={QUEUE: {"max_length": 1}}) as app:
        sender = WebhookSender([down, flaky.url, good.url], attempts=3, first_delay=0.3)
        checker = AlertChecker(app, sender=sender)
        fill(app, 2)
        started = time.monotonic()
        [change] = app._run_sync(checker.check_once())
        # The check returns at once: posting happens beside it
        assert time.monotonic() - started < 0.5
        assert change.status == "firing"
        # The healthy webhook gets it at once, not after the dead one's retries
        wait_for(lambda: good.posts, 2, "the healthy webhook's post")
        assert time.monotonic() - started < 0.3 + 0.5
        # The flaky one gets it on its third attempt (two 503s retried)
        wait_for(lambda: flaky.posts, 5, "the flaky webhook's post after retries")
        assert flaky.attempts == 3
        # Meanwhile checks go on: a recovery is posted to the healthy one too
        purge(app)
        [resolved] = app._run_sync(checker.check_once())
        assert resolved.status == "resolved"
        wait_for(lambda: len(good.posts) == 2, 2, "the healthy webhook's second post")
        # The refused one is given up on after its attempts (0.3 + 0.6 s of backoff)
        assert app._run_sync(sender.flush(10))
        assert sender.dropped == 2  # both changes, to the down URL only
        assert sender.delivered == 4
        app._run_sync(checker.aclose())
    flaky.close()
    good.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_oldest_age_grows_while_a_message_waits(kind: str, tmp_path: Path) -> None:
    with alert_app(kind, tmp_path, queue_alerts={QUEUE: {"max_age": 0.3}}) as app:
        checker = AlertChecker(app, webhooks=())

        async def age() -> float | None:
            broker = await app._connected_broker()
            return (await broker.queue_stats([QUEUE]))[0].oldest_age

        assert app._run_sync(age()) is None  # empty: no age
        fill(app, 1)
        first = app._run_sync(age())
        assert first is not None
        assert 0 <= first < 1
        later = wait_for(lambda: (app._run_sync(age()) or 0) > first + 0.3, 5,
                         "the age to grow")
        assert later
        # And the age alert fires once the oldest message waited past max_age
        changes = app._run_sync(checker.check_once())
        assert [(c.status, c.metric) for c in changes] == [("firing", "age")]
        assert changes[0].value > 0.3
        purge(app)
        changes = app._run_sync(checker.check_once())
        assert [(c.status, c.metric, c.value) for c in changes] == [("resolved", "age", 0.0)]


def test_rabbitmq_cannot_tell_the_age_so_only_length_is_checked(tmp_path: Path) -> None:
    settings = {QUEUE: {"max_length": 100, "max_age": 0}}
    with alert_app("amqp", tmp_path, queue_alerts=settings) as app:
        checker = AlertChecker(app, webhooks=())
        fill(app, 1)
        wait_for(lambda: ready(app) == 1, 10, "a ready message")
        assert app._run_sync(checker.check_once()) == []  # age unknown: not fired


def test_sqlite_age_of_a_message_published_a_known_time_ago(tmp_path: Path) -> None:
    # A message made ready two minutes ago (as a file written by an earlier version
    # would hold it, the ready time set directly)
    import sqlite3

    with alert_app("sqlite", tmp_path) as app:
        fill(app, 1)
        with sqlite3.connect(tmp_path / "b.db") as conn:
            conn.execute("UPDATE messages SET ready_at = ready_at - 120")

        async def age() -> float | None:
            broker = await app._connected_broker()
            return (await broker.queue_stats([QUEUE]))[0].oldest_age

        found = app._run_sync(age())
        assert found is not None
        assert 120 <= found < 125


def run_monitor_once(tmp_path: Path, db: str, hook: str,
                     *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "alerting.py").write_text(textwrap.dedent(f"""
        from celeriac import App
        app = App("alerting", broker="sqlite:///{db}",
                  queue_alerts={{"celeriac": {{"max_length": 2}}}},
                  alert_webhooks=["{hook}"])
    """))
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CELERIAC_", "CELERY_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "celeriac", "-A", "alerting", "monitor",
                           "--once", *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)


def test_monitor_once_exits_1_while_an_alert_fires_and_0_when_clear(tmp_path: Path) -> None:
    hook = Hook()
    db = tmp_path / "b.db"
    with alert_app("sqlite", tmp_path) as app:
        fill(app, 3)
        # Over max_length: exit 1, the alert logged and posted before it exits
        done = run_monitor_once(tmp_path, str(db), hook.url)
        assert done.returncode == 1, done.stderr
        assert "ERROR" in done.stderr
        assert "queue 'celeriac' length 3 is above its max_length 2" in done.stderr
        assert hook.statuses() == [("firing", "celeriac", "length")]
        # With JSON logs, the alert's line carries its fields
        done = run_monitor_once(tmp_path, str(db), hook.url, "--log-format", "json")
        assert done.returncode == 1, done.stderr
        [line] = [json.loads(text) for text in done.stderr.splitlines() if '"ALERT' in text]
        assert (line["level"], line["alert"], line["queue"], line["metric"], line["value"],
                line["threshold"]) == ("ERROR", "firing", "celeriac", "length", 3, 2)
        wait_for(lambda: len(hook.posts) == 2, 5, "the second monitor's post")
        # Drained: exit 0 (a fresh monitor has nothing firing, so nothing is posted)
        purge(app)
        done = run_monitor_once(tmp_path, str(db), hook.url)
        assert done.returncode == 0, done.stderr
        assert len(hook.posts) == 2
    hook.close()


def test_monitor_refuses_an_app_without_queue_alerts_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "quiet.py").write_text(
        f"from celeriac import App\napp = App('q', broker='sqlite:///{tmp_path / 'b.db'}')\n")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CELERIAC_", "CELERY_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-m", "celeriac", "-A", "quiet", "monitor",
                           "--once"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("Error: queue_alerts is empty")
    assert len(done.stderr.strip().splitlines()) == 1


def test_queues_watch_shows_a_live_table_and_exits_0_on_ctrl_c(tmp_path: Path) -> None:
    import signal

    (tmp_path / "watched.py").write_text(textwrap.dedent(f"""
        from celeriac import App
        app = App("watched", broker="sqlite:///{tmp_path / 'b.db'}",
                  queue_alerts={{"celeriac": {{"max_length": 2}}}})
    """))
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CELERIAC_", "CELERY_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    env["COLUMNS"] = "120"
    with alert_app("sqlite", tmp_path) as app:
        fill(app, 3)
        out = tmp_path / "watch.out"
        with out.open("w") as sink:
            watching = subprocess.Popen(
                [sys.executable, "-m", "celeriac", "-A", "watched", "queues", "--watch",
                 "--interval", "0.2"], env=env, cwd=tmp_path, stdout=sink,
                stderr=subprocess.STDOUT)
            try:
                # Not a terminal: each refresh prints a table; wait for two of them
                wait_for(lambda: out.read_text().count("Oldest") >= 2, 20, "two refreshes")
                watching.send_signal(signal.SIGINT)
                assert watching.wait(20) == 0
            finally:
                watching.kill()
        shown = out.read_text()
        assert "FIRING" in shown
        row = next(line for line in shown.splitlines() if "│ celeriac" in line)
        assert row.split("│")[2].strip() == "3"  # ready
        assert "Traceback" not in shown



def test_monitor_posts_an_alert_within_its_interval_and_stops_on_sigterm(
        tmp_path: Path) -> None:
    import signal

    hook = Hook()
    (tmp_path / "alerting.py").write_text(textwrap.dedent(f"""
        from celeriac import App
        app = App("alerting", broker="sqlite:///{tmp_path / 'b.db'}",
                  queue_alerts={{"celeriac": {{"max_length": 2}}}},
                  alert_webhooks=["{hook.url}"])
    """))
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CELERIAC_", "CELERY_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    log = tmp_path / "monitor.log"
    with alert_app("sqlite", tmp_path) as app, log.open("w") as sink:
        monitor = subprocess.Popen([sys.executable, "-m", "celeriac", "-A", "alerting",
                                    "monitor", "--interval", "0.2"], env=env, cwd=tmp_path,
                                   stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "monitor: checking 1 queue rule" in log.read_text(), 20,
                     "the monitor to start")
            fill(app, 3)
            filled = time.monotonic()
            wait_for(lambda: hook.posts, 5, "the firing alert")
            assert time.monotonic() - filled < 0.2 + 1.0
            purge(app)
            wait_for(lambda: len(hook.posts) == 2, 5, "the resolved alert")
            assert hook.statuses() == [("firing", "celeriac", "length"),
                                       ("resolved", "celeriac", "length")]
            monitor.send_signal(signal.SIGTERM)
            assert monitor.wait(20) == 0
        finally:
            monitor.kill()
    text = log.read_text()
    assert "ALERT queue 'celeriac' length 3 is above its max_length 2" in text
    assert "RESOLVED queue 'celeriac' length 0 is back at or below 1.6" in text
    assert "monitor: stopping" in text
    hook.close()


def test_a_webhook_that_refuses_the_payload_is_not_retried(tmp_path: Path) -> None:
    refusing = Hook(fail_first=10, fail_status=400)  # the receiver says the payload is bad
    with alert_app("sqlite", tmp_path, queue_alerts={QUEUE: {"max_length": 0}}) as app:
        sender = WebhookSender([refusing.url], attempts=3, first_delay=0.05)
        checker = AlertChecker(app, sender=sender)
        fill(app, 1)
        assert [c.status for c in app._run_sync(checker.check_once())] == ["firing"]
        assert app._run_sync(sender.flush(10))
        assert (refusing.attempts, sender.dropped) == (1, 1)
        app._run_sync(checker.aclose())
    refusing.close()
