"""A failure while handling one delivery or storing one outcome stays with that delivery.

A real consumer (ThreadedWorker, one slot) on the in-process broker and backend: a
result its serializer cannot carry fails its task, a follow-up that cannot be sent sets
its own message aside with the reason, a malformed link is refused before the task
runs; in every case the tasks around it are stored and acked as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import App, MessageError
from celeriac.brokers import DeadLetter
from celeriac.canvas_run import CHAIN_HEADER, CHORD_HEADER
from celeriac.testing import ThreadedWorker

TIMEOUT = 10.0


@pytest.fixture
def app() -> Iterator[App]:
    application = App("isolation", broker="memory://", backend="memory://")
    ran: list[Any] = []
    application.ran = ran  # type: ignore[attr-defined]

    @application.task(name="iso.echo")
    def echo(value: Any) -> Any:
        ran.append(value)
        return value

    @application.task(name="iso.opaque")
    def opaque() -> object:
        ran.append("opaque")
        return object()  # no serializer can carry it

    try:
        yield application
    finally:
        application.close()


def _dead_letters(app: App) -> dict[str, DeadLetter]:
    letters = app._run_sync(app.broker.dead_letters(100))
    return {letter.id: letter for letter in letters}


def test_a_result_that_cannot_be_encoded_fails_its_task_and_the_flush_goes_on(
        app: App) -> None:
    with ThreadedWorker(app, slots=1):
        # When a task returns a value its result serializer cannot carry
        opaque = app.send_task("iso.opaque")
        # Then it fails with an error that says so
        with pytest.raises(MessageError, match="could not be encoded with json"):
            opaque.get(timeout=TIMEOUT)
        # And the results of later tasks are stored as usual
        assert app.send_task("iso.echo", ("after",)).get(timeout=TIMEOUT) == "after"


def test_a_retry_that_cannot_be_published_sets_aside_its_own_message_only(app: App) -> None:
    @app.task(name="iso.elsewhere", bind=True)
    def elsewhere(self: Any) -> None:
        raise self.retry(queue="", countdown=0)  # a queue no broker can store

    # Given tasks queued around one whose retry cannot be published
    before = [app.send_task("iso.echo", (i,)) for i in range(5)]
    bad = app.send_task("iso.elsewhere")
    after = [app.send_task("iso.echo", (i,)) for i in range(5, 10)]
    # When one worker runs them all, flushing them in one batch
    with ThreadedWorker(app, slots=1):
        # Then every other task's result is stored
        assert [r.get(timeout=TIMEOUT) for r in before + after] == list(range(10))
        # And the bad one is dead-lettered, naming what went wrong
        letter = _wait_for_letter(app, bad.id)
    assert "could not store its outcome or send what follows it" in letter.reason
    assert "queue must be a non-empty str" in letter.reason
    assert app._run_sync(app.broker.queue_stats(["celeriac"]))[0].in_flight == 0


@pytest.mark.parametrize(("options", "says"), [
    ({"headers": {CHAIN_HEADER: [5]}}, "header 'celeriac-chain'[0] is not a signature"),
    ({"headers": {CHAIN_HEADER: "x"}}, "must be a list of signatures"),
    ({"link": {"task": 5}}, "callbacks[0] is not a signature"),
    ({"headers": {CHORD_HEADER: {"no": "id"}}}, "header 'celeriac-chord': 'id' is None"),
    ({"headers": {CHORD_HEADER: {"id": "c", "size": 2, "index": 0, "body": {"task": 5}}}},
     "header 'celeriac-chord': body is not a signature"),
    ({"headers": {CHORD_HEADER: {"id": "c", "size": 2, "index": 0, "body": {"task": "t"},
                                 "member": []}}},
     "header 'celeriac-chord.member' must be a chord member"),
])
def test_a_malformed_link_is_refused_before_the_task_runs(
        app: App, options: dict[str, Any], says: str) -> None:
    # Given a message whose follow-ups cannot be read
    message, outgoing = app.prepare("iso.echo", ("linked",), None, {}, None)
    payload = message.to_payload()
    if "link" in options:
        payload["callbacks"] = [options["link"]]
    else:
        payload["headers"] = options["headers"]
    body = app.codec.encode(payload)
    app._run_sync(app.broker.publish([outgoing.__class__(outgoing.id, outgoing.queue,
                                                         body)]))
    with ThreadedWorker(app, slots=1):
        # When a worker gets it, Then it is dead-lettered, not run
        letter = _wait_for_letter(app, outgoing.id)
        assert app.send_task("iso.echo", ("after",)).get(timeout=TIMEOUT) == "after"
    assert says in letter.reason
    assert app.ran == ["after"]  # type: ignore[attr-defined]


def _wait_for_letter(app: App, message_id: str) -> DeadLetter:
    import time

    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        letter = _dead_letters(app).get(message_id)
        if letter is not None:
            return letter
        time.sleep(0.02)
    raise AssertionError(f"{message_id} never reached the dead letters")


def test_a_task_raising_an_exception_whose_text_cannot_be_read_fails_as_usual(
        app: App) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    @app.task(name="iso.unprintable")
    def unprintable() -> None:
        raise Unprintable()

    with ThreadedWorker(app, slots=1):
        result = app.send_task("iso.unprintable")
        with pytest.raises(Exception, match="its text could not be read"):
            result.get(timeout=TIMEOUT)
        assert result.state == "FAILURE"
        assert app.send_task("iso.echo", ("after",)).get(timeout=TIMEOUT) == "after"
