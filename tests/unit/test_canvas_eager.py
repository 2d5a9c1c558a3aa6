"""Workflows in eager mode (``task_always_eager``) and with ``apply()``: run inline.

The same workflows as on a worker, with the same results and result shapes, and nothing
published to the broker.
"""

from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from celeriac import App, ChordError, GroupResult, Request, chain, chord, group


class Boom(Exception):
    pass


def make_app(**settings: Any) -> App:
    return App("proj", broker="memory://", backend="memory://", task_always_eager=True,
               **settings)


@pytest.fixture
def app() -> Iterator[App]:
    app = make_app()
    yield app
    app.close()


def register(app: App) -> Any:
    calls: Counter[str] = Counter()
    errors: list[str | None] = []

    @app.task
    def add(x: int, y: int) -> int:
        calls["add"] += 1
        return x + y

    @app.task
    def tsum(numbers: list[int]) -> int:
        calls["tsum"] += 1
        return sum(numbers)

    @app.task
    def fail(x: Any = None) -> None:
        raise Boom("no good")

    @app.task
    def log_error(request: Request, exc: BaseException, traceback: str | None) -> None:
        errors.append(request.id)

    return SimpleNamespace(add=add, tsum=tsum, fail=fail, log_error=log_error, calls=calls,
                           errors=errors)


@pytest.fixture
def t(app: App) -> Any:
    return register(app)


def nothing_sent(app: App) -> bool:
    [stats] = app._run_sync(app.broker.queue_stats(["celeriac"]))
    return stats.ready + stats.scheduled + stats.in_flight == 0


def test_chains_groups_and_chords_run_inline(app: App, t: Any) -> None:
    result = chain(t.add.s(1, 1), t.add.s(2), t.add.s(3)).delay()
    assert result.get() == 7
    assert result.parent.get() == 4
    assert result.parent.parent.get() == 2
    grouped = group(t.add.s(i, i) for i in range(10)).delay()
    assert isinstance(grouped, GroupResult)
    assert grouped.get() == [i + i for i in range(10)]
    assert grouped.completed_count() == 10
    assert chord((t.add.s(i, i) for i in range(10)), t.tsum.s())().get() == 90
    nested = chord([t.add.s(1), chain(t.add.s(2), t.add.s(3)), group(t.add.s(4))], t.tsum.s())
    assert (t.add.s(0, 1) | nested).delay().get() == 2 + 6 + 5
    assert ~t.tsum.map([[1, 2], [3]]) == [3, 3]
    assert t.add.chunks([(1, 1), (2, 2), (3, 3)], 2).delay().get() == [[2, 4], [6]]
    assert nothing_sent(app)


def test_link_callbacks_and_errbacks_run_inline(app: App, t: Any) -> None:
    assert t.add.apply_async((2, 2), link=t.add.s(10)).get() == 4
    assert t.calls["add"] == 2
    failed = t.fail.apply_async(link_error=t.log_error.s())
    assert failed.failed()
    assert t.errors == [failed.id]


def test_a_failed_step_or_chord_member_fails_what_follows(app: App, t: Any) -> None:
    result = chain(t.add.s(1, 1), t.fail.s(), t.add.s(3)).delay()
    with pytest.raises(Boom):
        result.get()
    assert result.parent.failed()
    assert result.parent.parent.get() == 2
    failed_chord = chord([t.add.s(1, 1), t.fail.s()], t.tsum.s()).delay()
    with pytest.raises(ChordError, match="raised Boom: no good"):
        failed_chord.get()
    assert t.calls["tsum"] == 0


def test_apply_runs_a_workflow_inline_without_eager_mode() -> None:
    app = App("proj", broker="memory://", backend="memory://")
    try:
        t = register(app)
        assert (group(t.add.s(1, 1), t.add.s(2, 2)) | t.tsum.s()).apply().get() == 6
        assert t.tsum.map([[1, 2], [3]]).apply().get() == [3, 3]
        assert nothing_sent(app)
    finally:
        app.close()


def test_eager_propagation_raises_the_failing_steps_error() -> None:
    app = make_app(task_eager_propagates=True)
    try:
        t = register(app)
        with pytest.raises(Boom):
            chain(t.add.s(1, 1), t.fail.s(), t.add.s(3)).delay()
    finally:
        app.close()
