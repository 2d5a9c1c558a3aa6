"""Bad input gets a clear error at the earliest point, and nothing is silently lost.

Refused content, corrupt bytes and unknown task names end in the dead letters with a
reason while the worker keeps working; bad settings and bad task arguments fail before
anything is sent.
"""

from __future__ import annotations

import pytest
from ledger_app import register
from worker_harness import QUEUE, Deployment, wait_until

from celeriac import App, ConfigurationError, ContentDisallowed
from celeriac.brokers import DeadLetter, Outgoing
from celeriac.serialization import Codec


def _dead_letter(deployment: Deployment, message_id: str) -> DeadLetter:
    found = wait_until(
        lambda: [d for d in deployment.probe.dead_letters() if d.id == message_id],
        20, f"message {message_id} in the dead letters")
    return found[0]


# -- pickle -------------------------------------------------------------------------------


def test_a_worker_that_does_not_accept_pickle_dead_letters_a_pickled_task(
    deployment: Deployment,
) -> None:
    # Given a worker with the default accept_content (json, msgpack)
    worker = deployment.start_worker("-c", "1").wait_ready()
    # and a producer whose app accepts pickle and sends with it
    pickler = register(deployment.make_app(accept_content=["json", "pickle"],
                                           task_serializer="pickle"))

    # When a pickled task is sent
    pickled = pickler.record.delay("pickled")

    # Then it is dead-lettered, naming pickle and accept_content, and never runs
    reason = _dead_letter(deployment, pickled.id).reason
    assert "pickle" in reason
    assert "accept_content" in reason
    # And the worker keeps working
    assert deployment.tasks.record.delay("json").get(timeout=10) == "json"
    assert deployment.ledger.tags() == ["json"]
    assert worker.running


def test_a_worker_that_accepts_pickle_runs_a_pickled_task(deployment: Deployment) -> None:
    # Given a worker whose app accepts pickle (--allow-root: the tests may run as root,
    # where Celery's rule refuses pickle without it)
    worker = deployment.start_worker("-c", "1", "--allow-root",
                                     accept_content=["json", "pickle"])
    pickler = register(deployment.make_app(accept_content=["json", "pickle"],
                                           task_serializer="pickle"))

    # When a pickled task is sent, it runs and its result arrives
    assert pickler.record.delay("pickled").get(timeout=20) == "pickled"
    # And the worker warned about pickle when it started
    assert "accept_content includes pickle" in worker.log()


def test_a_producer_that_does_not_accept_pickle_refuses_to_send_it(
    deployment: Deployment,
) -> None:
    # Given an app configured to send with pickle without accepting it
    tasks = register(deployment.make_app(task_serializer="pickle"))
    before = deployment.probe.stats()

    # When tasks are sent with pickle, by configuration or per call
    with pytest.raises(ContentDisallowed, match="accept_content"):
        tasks.record.delay("pickled")
    with pytest.raises(ContentDisallowed, match="pickle"):
        deployment.tasks.record.apply_async(("pickled",), serializer="pickle")

    # Then nothing was sent
    assert deployment.probe.stats() == before


# -- corrupt and unknown messages ---------------------------------------------------------


def test_corrupt_and_unknown_task_messages_are_dead_lettered_and_the_worker_goes_on(
    deployment: Deployment,
) -> None:
    # Given a running worker
    worker = deployment.start_worker("-c", "1").wait_ready()
    before = deployment.tasks.record.delay("before")
    assert before.get(timeout=10) == "before"

    # When garbage bytes, a well-framed non-message and a task nobody registered arrive
    garbage = b"\x00\xff this is not a celeriac message"
    not_a_message = Codec(["json"]).encode(["a", "list"])
    deployment.probe.publish([Outgoing("garbage", QUEUE, garbage),
                              Outgoing("not-a-message", QUEUE, not_a_message)])
    unknown = deployment.app.send_task("ledger.no_such_task", args=(1, 2))
    after = deployment.tasks.record.delay("after")

    # Then the worker keeps working
    assert after.get(timeout=10) == "after"
    # And each bad message is in the dead letters, untouched, with its reason
    dead = {d.id: d for d in (_dead_letter(deployment, message_id)
                              for message_id in ("garbage", "not-a-message", unknown.id))}
    assert dead["garbage"].body == garbage
    assert "undecodable" in dead["garbage"].reason
    assert "not a celeriac frame" in dead["garbage"].reason
    assert "mapping" in dead["not-a-message"].reason
    assert "unknown task" in dead[unknown.id].reason
    assert "ledger.no_such_task" in dead[unknown.id].reason
    assert deployment.ledger.tags() == ["before", "after"]
    deployment.wait_for_queue(ready=0, in_flight=0)
    assert worker.running


# -- errors before sending ----------------------------------------------------------------


def test_an_unknown_setting_is_an_error_that_suggests_the_right_name() -> None:
    with pytest.raises(ConfigurationError, match='did you mean "task_serializer"'):
        App("proj", broker="memory://", taks_serializer="json")
    app = App("proj", broker="memory://")
    try:
        with pytest.raises(ConfigurationError, match='did you mean "result_expires"'):
            app.conf.update(result_expire=60)
    finally:
        app.close()


def test_wrong_task_arguments_fail_at_send_time_and_nothing_is_sent(
    deployment: Deployment,
) -> None:
    # Given an empty queue
    before = deployment.probe.stats()
    add = deployment.tasks.add

    # When a task is called with arguments its function cannot take
    with pytest.raises(TypeError, match="missing a required argument: 'y'") as missing:
        add.delay("x")
    with pytest.raises(TypeError, match="too many positional arguments"):
        add.delay(1, 2, 3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        add.apply_async((1, 2), {"z": 3})
    with pytest.raises(TypeError, match='did you mean "countdown"'):
        add.apply_async((1, 2), countdwn=5)

    # Then the error names the task and its signature, and nothing was sent
    assert str(missing.value).startswith("ledger.add(x: ")
    assert deployment.probe.stats() == before
