"""The examples of Celery's canvas guide ("Canvas: Designing Work-flows"), run here.

Each test holds the guide's example code as the guide writes it, with only the import
changed (``from celery import chain`` -> ``from celeriac import chain``, gathered at the
top of this module) and Python 2's ``xrange`` written ``range``; the asserts check the
outputs the guide shows. The tasks are the guide's ``proj.tasks``. docs/canvas.md lists
which examples run here and which do not (and why).
"""

# ruff: noqa: B905  # the guide's own zip() calls, kept as the guide writes them

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import App, ChordError, GroupResult, Request, chain, chord, group, signature
from celeriac.testing import ThreadedWorker

# -- proj/tasks.py ------------------------------------------------------------------------

app = App("proj", broker="memory://", backend="memory://")
seen: dict[str, list[Any]] = {"errors": [], "failed_ids": [], "logged": [], "resets": []}


@app.task(name="tasks.add")
def add(x: int, y: int, debug: bool = False) -> int:
    return x + y


@app.task(name="proj.tasks.mul")
def mul(x: int, y: int) -> int:
    return x * y


@app.task(name="proj.tasks.xsum")
def xsum(numbers: list[int]) -> int:
    return sum(numbers)


@app.task(name="proj.tasks.tsum")
def tsum(numbers: list[int]) -> int:
    return sum(numbers)


@app.task(name="proj.tasks.reset_buffers")
def reset_buffers() -> None:
    seen["resets"].append(True)


@app.task(name="proj.tasks.other_task")
def other_task(value: int) -> int:
    return value


@app.task(name="proj.tasks.log_result")
def log_result(value: int) -> None:
    seen["logged"].append(value)


@app.task(name="proj.tasks.log_error")
def log_error(request: Request, exc: BaseException, traceback: str) -> None:
    seen["errors"].append((request.id, exc))


@app.task(name="proj.tasks.log_failed_id")
def log_failed_id(task_id: str) -> None:  # the guide's older, one-argument errback
    seen["failed_ids"].append(task_id)


@app.task(name="proj.tasks.raising_task")
def raising_task(*args: Any) -> None:
    raise ValueError("something something")


@app.task(name="proj.tasks.import_contact")
def import_contact(contact: str) -> str:
    return contact


@app.task(name="proj.tasks.notify_complete")
def notify_complete(import_id: int) -> str:
    return f"import {import_id} complete"


@app.task(name="proj.tasks.create_user")
def create_user(username: str, first: str, last: str, email: str) -> dict[str, str]:
    return {"username": username, "email": email}


@app.task(name="proj.tasks.import_contacts")
def import_contacts(user: dict[str, str]) -> str:
    return f"contacts of {user['username']}"


@app.task(name="proj.tasks.send_welcome_email")
def send_welcome_email(user: dict[str, str]) -> str:
    return f"welcome {user['email']}"


@pytest.fixture(scope="module", autouse=True)
def worker() -> Iterator[ThreadedWorker]:
    with ThreadedWorker(app, slots=8) as running:
        yield running
    app.close()


def scheduled() -> int:
    [stats] = app._run_sync(app.broker.queue_stats(["celeriac"]))
    return stats.scheduled


# -- Signatures ---------------------------------------------------------------------------


def test_signatures() -> None:
    assert repr(signature('tasks.add', args=(2, 2), countdown=10)) == "tasks.add(2, 2)"
    assert repr(add.signature((2, 2), countdown=10)) == "tasks.add(2, 2)"
    assert repr(add.s(2, 2)) == "tasks.add(2, 2)"
    assert repr(add.s(2, 2, debug=True)) == "tasks.add(2, 2, debug=True)"
    s = add.signature((2, 2), {'debug': True}, countdown=10)
    assert s.args == (2, 2)
    assert s.kwargs == {'debug': True}
    assert s.options == {'countdown': 10}
    assert add(2, 2) == 4
    assert add.s(2, 2)() == 4
    result = add.delay(2, 2)
    assert result.get(timeout=5) == 4
    add.apply_async((2, 2), countdown=1)
    add.signature((2, 2), countdown=1).apply_async()
    assert repr(add.s(2, 2).set(countdown=1)) == "tasks.add(2, 2)"


def test_partials() -> None:
    assert add.s(2, 2).delay().get(timeout=5) == 4
    assert add.s(2, 2).apply_async(countdown=1).get(timeout=5) == 4
    assert add.s(2, 2)() == 4
    partial = add.s(2)          # incomplete signature
    assert partial.delay(4).get(timeout=5) == 6            # 4 + 2
    assert partial.apply_async((4, )).get(timeout=5) == 6  # same
    s = add.s(2, 2)
    assert s.delay(debug=True).get(timeout=5) == 4                    # -> add(2, 2, debug=True)
    assert s.apply_async(kwargs={'debug': True}).get(timeout=5) == 4  # same
    s = add.signature((2, 2), countdown=10)
    assert s.apply_async(countdown=1).get(timeout=5) == 4  # countdown is now 1
    s = add.s(2)
    # (the guide prints add(2, 4, ...) here, but says new args go first, as they do)
    assert s.clone(args=(4, ), kwargs={'debug': True}).args == (4, 2)


def test_immutability_and_callbacks() -> None:
    add.apply_async((2, 2), link=reset_buffers.signature(immutable=True)).get(timeout=5)
    add.apply_async((2, 2), link=reset_buffers.si()).get(timeout=5)
    sig = add.s(2, 2)
    assert ~sig == 4
    add.apply_async((2, 2), link=other_task.s())
    sig = add.s(10)
    assert sig.delay(6).get(timeout=5) == 16  # add.apply_async(args=(result, 10))
    assert add.apply_async((2, 2), link=add.s(8)).get(timeout=5) == 4
    wait_for(lambda: len(seen["resets"]) == 2)


# -- The Primitives -----------------------------------------------------------------------


def test_simple_chain() -> None:
    # 2 + 2 + 4 + 8
    res = chain(add.s(2, 2), add.s(4), add.s(8))()
    assert res.get(timeout=5) == 16
    assert (add.s(2, 2) | add.s(4) | add.s(8))().get(timeout=5) == 16


def test_immutable_signatures() -> None:
    add.signature((2, 2), immutable=True)
    add.si(2, 2)
    res = (add.si(2, 2) | add.si(4, 4) | add.si(8, 8))()
    assert res.get(timeout=5) == 16
    assert res.parent.get(timeout=5) == 8
    assert res.parent.parent.get(timeout=5) == 4


def test_simple_group_and_simple_chord() -> None:
    res = group(add.s(i, i) for i in range(10))()
    assert res.get(timeout=1) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    res = chord((add.s(i, i) for i in range(10)), xsum.s())()
    assert res.get(timeout=5) == 90
    contacts, import_id = ["ann", "bob"], 7
    result = chord((import_contact.s(c) for c in contacts),
                   notify_complete.si(import_id)).apply_async()
    assert result.get(timeout=5) == "import 7 complete"


def test_blow_your_mind_by_combining() -> None:
    c1 = (add.s(4) | mul.s(8))
    # (16 + 4) * 8
    res = c1(16)
    assert res.get(timeout=5) == 160
    # ((4 + 16) * 2 + 4) * 8
    c2 = (add.s(4, 16) | mul.s(2) | (add.s(4) | mul.s(8)))
    res = c2()
    assert res.get(timeout=5) == 352
    c3 = (group(add.s(i, i) for i in range(10)) | xsum.s())
    res = c3()
    assert res.get(timeout=5) == 90
    new_user_workflow = (create_user.s() | group(
                         import_contacts.s(),
                         send_welcome_email.s()))
    result = new_user_workflow.delay(username='artv',
                                     first='Art',
                                     last='Vandelay',
                                     email='art@vandelay.com')
    assert result.get(timeout=5) == ["contacts of artv", "welcome art@vandelay.com"]
    res = (add.s(4, 4) | group(add.si(i, i) for i in range(10)))()
    assert isinstance(res, GroupResult)
    assert res.get(timeout=5) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert res.parent.get(timeout=5) == 8


# -- Chains -------------------------------------------------------------------------------


def test_chains() -> None:
    res = add.apply_async((2, 2), link=mul.s(16))
    assert res.get(timeout=5) == 4
    s = add.s(2, 2)
    s.link(mul.s(4))
    s.link(log_result.s())
    s.delay()
    wait_for(lambda: seen["logged"] == [4])
    failed = raising_task.apply_async((2, 2), link_error=log_failed_id.s())
    raising_task.signature((2, 2), link_error=log_failed_id.s()).delay()
    wait_for(lambda: failed.id in seen["failed_ids"] and len(seen["failed_ids"]) == 2)
    res = chain(add.s(4, 4), mul.s(8), mul.s(10))
    assert repr(res) == "tasks.add(4, 4) | proj.tasks.mul(8) | proj.tasks.mul(10)"
    res = chain(add.s(4, 4), mul.s(8), mul.s(10))()
    assert res.get(timeout=5) == 640
    assert res.parent.get(timeout=5) == 64
    assert res.parent.parent.get(timeout=5) == 8
    assert repr(res.parent.parent).startswith("<AsyncResult ")
    assert (add.s(2, 2) | mul.s(8) | mul.s(10)).apply_async().get(timeout=5) == 320


def test_error_callbacks() -> None:
    # (Celery 5: an errback taking (request, exc, traceback) is called by the worker)
    failed = raising_task.s(2, 2).on_error(log_error.s()).delay()
    with pytest.raises(ValueError, match="something something"):
        failed.get(timeout=5)
    wait_for(lambda: any(request_id == failed.id for request_id, _ in seen["errors"]))


# -- Groups -------------------------------------------------------------------------------


def test_groups() -> None:
    group(add.s(2, 2), add.s(4, 4))
    g = group(add.s(2, 2), add.s(4, 4))
    res = g()
    assert res.get(timeout=5) == [4, 8]
    assert len(group(add.s(i, i) for i in range(100))().get(timeout=5)) == 100
    job = group([
                add.s(2, 2),
                add.s(4, 4),
                add.s(8, 8),
                add.s(16, 16),
                add.s(32, 32),
    ])
    result = job.apply_async()
    assert result.get(timeout=5) == [4, 8, 16, 32, 64]
    assert result.ready()  # have all subtasks completed?
    assert result.successful()  # were all subtasks successful?
    assert not result.failed()
    assert not result.waiting()
    assert result.completed_count() == 5
    assert result.join(timeout=5) == [4, 8, 16, 32, 64]


# -- Chords -------------------------------------------------------------------------------


def test_chords() -> None:
    assert chord(add.s(i, i)
                 for i in range(100))(tsum.s()).get(timeout=10) == 9900
    callback = tsum.s()
    header = [add.s(i, i) for i in range(100)]
    result = chord(header)(callback)
    assert result.get(timeout=10) == 9900


def test_chord_error_handling() -> None:
    # (the guide's chord has no body; a chord needs one, so this one has tsum)
    c = chord([add.s(4, 4), raising_task.s(), add.s(8, 8)], tsum.s())
    result = c()
    with pytest.raises(ChordError, match=r"raised ValueError: something something"):
        result.get(timeout=5)


# -- Map & Starmap, Chunks ----------------------------------------------------------------


def test_map_and_starmap() -> None:
    assert ~xsum.map([range(10), range(100)]) == [45, 4950]
    assert ~add.starmap(zip(range(10), range(10))) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    before = scheduled()
    add.starmap(zip(range(10), range(10))).apply_async(countdown=10)
    assert scheduled() == before + 1


def test_chunks() -> None:
    add.chunks(zip(range(100), range(100)), 10)
    res = add.chunks(zip(range(100), range(100)), 10)()
    assert res.get(timeout=5) == [[0, 2, 4, 6, 8, 10, 12, 14, 16, 18],
                                  [20, 22, 24, 26, 28, 30, 32, 34, 36, 38],
                                  [40, 42, 44, 46, 48, 50, 52, 54, 56, 58],
                                  [60, 62, 64, 66, 68, 70, 72, 74, 76, 78],
                                  [80, 82, 84, 86, 88, 90, 92, 94, 96, 98],
                                  [100, 102, 104, 106, 108, 110, 112, 114, 116, 118],
                                  [120, 122, 124, 126, 128, 130, 132, 134, 136, 138],
                                  [140, 142, 144, 146, 148, 150, 152, 154, 156, 158],
                                  [160, 162, 164, 166, 168, 170, 172, 174, 176, 178],
                                  [180, 182, 184, 186, 188, 190, 192, 194, 196, 198]]
    # (the guide has the 10 inside zip() in these two; it belongs to chunks())
    assert len(add.chunks(zip(range(100), range(100)), 10).apply_async().get(timeout=5)) == 10
    group = add.chunks(zip(range(100), range(100)), 10).group()
    assert isinstance(group.skew(start=1, stop=10)(), GroupResult)
    assert [task.options["countdown"] for task in group.tasks] == list(range(1, 11))


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
