"""Signatures as values: building, partial arguments, composing, payloads, send-time checks.

Nothing here runs a worker: these are the rules of the canvas objects themselves, and
what is (or is not) published when a workflow is sent.
"""

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from celeriac import (
    App,
    AsyncResult,
    ConfigurationError,
    DecodeError,
    GroupResult,
    Signature,
    chain,
    chord,
    group,
    signature,
)
from celeriac.canvas import chunks
from celeriac.canvas_run import CHAIN_HEADER, CHORD_HEADER, plan


@pytest.fixture
def app() -> Iterator[App]:
    app = App("proj", broker="memory://", backend="memory://")
    yield app
    app.close()


@pytest.fixture
def t(app: App) -> Any:
    @app.task
    def add(x: int, y: int, debug: bool = False) -> int:
        return x + y

    @app.task
    def tsum(numbers: list[int]) -> int:
        return sum(numbers)

    @app.task
    def reset() -> None:
        return None

    return SimpleNamespace(add=add, tsum=tsum, reset=reset)


def queued(app: App) -> int:
    [stats] = app._run_sync(app.broker.queue_stats(["celeriac"]))
    return stats.ready + stats.scheduled


def test_s_si_and_signature_hold_the_call(t: Any) -> None:
    sig = t.add.signature((2, 2), {"debug": True}, countdown=10)
    assert isinstance(sig, Signature)
    assert (sig.task, sig.args, sig.kwargs, sig.options) == \
        (t.add.name, (2, 2), {"debug": True}, {"countdown": 10})
    assert not sig.immutable
    assert t.add.s(2, 2) == signature(t.add.name, args=(2, 2))
    assert t.add.si(2, 2).immutable
    assert repr(t.add.s(2, 2, debug=True)) == f"{t.add.name}(2, 2, debug=True)"
    assert t.add.s(2, 2)() == 4  # calling a signature runs the function here


def test_partial_arguments_go_first_and_new_options_win(t: Any) -> None:
    partial = t.add.s(2).set(countdown=10)
    args, kwargs, options = partial.merged((4,), {"debug": True}, {"countdown": 1})
    assert (args, kwargs, options) == ((4, 2), {"debug": True}, {"countdown": 1})
    clone = partial.clone(args=(4,), kwargs={"debug": True})
    assert (clone.args, clone.kwargs, clone.options) == ((4, 2), {"debug": True},
                                                          {"countdown": 10})
    assert partial.args == (2,)  # the original is untouched
    assert t.add.si(2, 2).merged((8,), {"debug": True})[:2] == ((2, 2), {})


def test_fields_are_frozen_but_options_change_in_place(t: Any) -> None:
    sig = t.add.s(1, 2)
    with pytest.raises(AttributeError):
        sig.args = (3, 4)
    callback = t.tsum.s()
    assert sig.link(callback) is callback
    assert sig.on_error(t.reset.si()) is sig
    assert sig.options["link"] == [callback]
    assert [errback.task for errback in sig.options["link_error"]] == [t.reset.name]
    assert sig.set(immutable=True).immutable


def test_pipes_build_chains_and_a_group_piped_into_a_task_is_a_chord(t: Any) -> None:
    flat = t.add.s(1, 1) | t.add.s(2) | t.add.s(3)
    assert isinstance(flat, chain)
    assert [step.args for step in flat.tasks] == [(1, 1), (2,), (3,)]
    assert repr(flat) == f"{t.add.name}(1, 1) | {t.add.name}(2) | {t.add.name}(3)"

    header = group(t.add.s(i, i) for i in range(3))
    piped = header | t.tsum.s()
    assert isinstance(piped, chord)
    assert piped.tasks == header.tasks

    # A group in the middle of a chain: the rest of the chain waits for all of it
    upgraded = chain(t.add.s(1, 1), header, t.tsum.s(), t.add.s(5))
    assert len(upgraded.tasks) == 2
    inner = upgraded.tasks[1]
    assert isinstance(inner, chord)
    assert isinstance(inner.body, chain)
    assert [step.task for step in inner.body.tasks] == [t.tsum.name, t.add.name]


def test_payloads_round_trip_whole_trees(app: App, t: Any) -> None:
    eta = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    tree = chain(
        t.add.s(1, 2).set(eta=eta, expires=timedelta(minutes=5)),
        group(t.add.s(3), chain(t.add.s(4), t.add.si(5, 6))),
        t.tsum.s().on_error(t.reset.si()),
    )
    rebuilt = Signature.from_payload(json.loads(json.dumps(tree.to_payload())), app)
    assert rebuilt == tree
    assert rebuilt.tasks[0].options["eta"] == eta
    assert rebuilt.tasks[0].options["expires"] == timedelta(minutes=5)
    with pytest.raises(DecodeError, match="malformed signature"):
        Signature.from_payload({"task": "x", "args": 5}, app)
    with pytest.raises(DecodeError):
        Signature.from_payload({"args": []}, app)


def test_a_signature_by_name_needs_an_app_to_be_sent(app: App) -> None:
    orphan = signature("proj.add", args=(2, 2), countdown=10)
    assert orphan.options == {"countdown": 10}
    with pytest.raises(ConfigurationError, match="no app"):
        orphan.delay()
    assert chain(signature("proj.a", app=app), orphan).resolve_app() is app


def test_chunks_map_and_starmap_are_builtin_task_calls(t: Any) -> None:
    parts = t.add.chunks(zip(range(10), range(10), strict=True), 4)
    assert isinstance(parts, chunks)
    assert len(parts.tasks) == 3
    assert parts.tasks[2].kwargs == {"task": t.add.name, "it": [[8, 8], [9, 9]]}
    assert type(parts.group()) is group
    assert t.tsum.map([[1], [2, 3]]).kwargs == {"task": t.tsum.name, "it": [[1], [2, 3]]}
    assert t.add.starmap([(1, 2)]).task == "celeriac.starmap"


def test_freezing_gives_ids_and_a_walkable_parent_chain(t: Any) -> None:
    tree = chain(t.add.s(1, 1), t.add.s(2), chord([t.add.s(3), t.add.s(4)], t.tsum.s()))
    result = tree.freeze()
    assert isinstance(result, AsyncResult)
    assert result.task_name == t.tsum.name
    header = result.parent
    assert isinstance(header, GroupResult)
    assert len(header) == 2
    assert header.parent is not None
    assert header.parent.id == tree.tasks[1].id
    assert header.parent.parent is not None
    assert header.parent.parent.id == tree.tasks[0].id  # freeze() works in place


def test_wrong_arguments_anywhere_in_a_workflow_fail_at_send_time(app: App, t: Any) -> None:
    # The third step would get the second's result and three more: one too many
    with pytest.raises(TypeError, match="too many positional arguments"):
        chain(t.add.s(1, 1), t.add.s(2), t.add.s(3, 4, 5)).delay()
    with pytest.raises(TypeError, match="missing a required argument"):
        chord([t.add.s(1, 1), t.add.s(1)], t.tsum.s()).delay()
    with pytest.raises(TypeError, match="unknown option 'countdwn'"):
        chain(t.add.s(1, 1), t.add.s(2).set(countdwn=3)).delay()
    # Kwargs given at send time count: the first step gets them
    result = chain(t.add.s(), t.add.s(5)).apply_async(kwargs={"x": 1, "y": 2})
    assert isinstance(result, AsyncResult)
    assert queued(app) == 1  # only that first step: the bad workflows sent nothing


def test_a_chord_with_the_rpc_backend_is_refused_when_sent() -> None:
    rpc_app = App("proj", broker="memory://", backend="rpc://guest:guest@127.0.0.1:1/")
    try:
        add = rpc_app.task(name="proj.add")(lambda x, y: x + y)
        tsum = rpc_app.task(name="proj.tsum")(lambda numbers: sum(numbers))
        with pytest.raises(ConfigurationError, match="cannot run chords"):
            chord([add.s(1, 1)], tsum.s()).delay()
        with pytest.raises(ConfigurationError, match="cannot run chords"):
            (add.s(1, 1) | group(add.s(2), add.s(3)) | tsum.s()).delay()
    finally:
        rpc_app.close()


def test_the_messages_of_a_workflow_carry_what_follows(app: App, t: Any) -> None:
    # A chord of three members, the second a chain, and one more step after the chord
    tree = chain(chord([t.add.s(1, 1), chain(t.add.s(2, 2), t.add.s(3)), t.add.s(4, 4)],
                       t.tsum.s()),
                 t.add.s(10))
    result, outgoing = plan(app, tree, (), {}, {})
    messages = [app.decode_message(out.body) for out in outgoing]
    assert [message.args for message in messages] == [(1, 1), (2, 2), (4, 4)]
    places = [message.headers[CHORD_HEADER] for message in messages]
    assert [(place["size"], place["index"]) for place in places] == [(3, 0), (3, 1), (3, 2)]
    assert places[0]["body"]["task"] == t.tsum.name
    assert places[0]["then"][0]["task"] == t.add.name
    # The chain member carries its second step; its place in the chord goes along
    assert [step["args"] for step in messages[1].headers[CHAIN_HEADER]] == [[3]]
    assert {message.group_id for message in messages} == {places[0]["id"]}
    # The result is the last step's, whose parent is the chord's body
    assert isinstance(result, AsyncResult)
    assert result.parent is not None
    assert result.parent.id == places[0]["body"]["options"]["task_id"]
