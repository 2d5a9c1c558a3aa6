"""``@app.task(validate=True)``: arguments and results checked against the type hints.

At send a call that does not fit raises ``celeriac.ValidationError`` (a ``TypeError``)
naming each field path, and nothing is sent; a call that fits is sent in its JSON form.
On the worker the message's arguments are validated again (the broker's data is
untrusted) and converted into the annotated types; a message that does not fit is
dead-lettered with the field path and nothing runs. A model result comes back as the
model. The worker side here is a ThreadedWorker on the in-memory broker; the same
dead-lettering with worker processes on SQLite, Redis and RabbitMQ is in
tests/integration/malformed_cases.py.
"""

from __future__ import annotations

import datetime
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from celeriac import App, CeleriacError, ConfigurationError, Task, ValidationError, chain
from celeriac.brokers import Outgoing
from celeriac.serialization import Codec
from celeriac.testing import ThreadedWorker


class Line(BaseModel):
    sku: str
    qty: int


class Order(BaseModel):
    lines: list[Line]
    day: datetime.date


class Receipt(BaseModel):
    order_lines: int
    total: int


ORDER = Order(lines=[Line(sku="a", qty=2), Line(sku="b", qty=3)],
              day=datetime.date(2026, 12, 6))


@pytest.fixture
def app() -> Iterator[App]:
    app = App("shop", broker="memory://", backend="memory://")
    yield app
    app.close()


def _sent(app: App) -> list[Any]:
    """The payloads waiting in the default queue (read without a worker)."""
    async def fetch() -> list[Any]:
        deliveries = await app.broker.fetch([app.conf.task_default_queue], 100, 0.05)
        return [app.decode_message(d.body) for d in deliveries]

    return app._run_sync(fetch())


def test_a_call_that_does_not_fit_raises_naming_each_field_and_sends_nothing(
        app: App) -> None:
    @app.task(name="shop.place", validate=True)
    def place(order: Order, note: str = "", *extra: int, **options: float) -> Receipt:
        raise AssertionError("never runs")

    # When a call has wrong types deep inside a model, in *args and in **kwargs
    with pytest.raises(ValidationError) as raised:
        place.delay({"lines": [{"sku": "a", "qty": "two"}], "day": "2026-12-06"},
                    "n", 1, "x", speed="fast")
    error = raised.value
    # Then the error is a TypeError and a celeriac error, naming the task and each path
    assert isinstance(error, TypeError)
    assert isinstance(error, CeleriacError)
    assert error.paths == ("order.lines.0.qty", "extra.1", "options.speed")
    text = str(error)
    assert text.startswith("shop.place: invalid arguments: order.lines.0.qty: Input should "
                           "be a valid integer")
    assert "(str given)" in text
    assert "\n" not in text
    # And no input value is shown (arguments may be personal data), only their types
    assert "two" not in text
    assert "fast" not in text
    assert all("input" not in detail for detail in error.errors)
    assert error.__cause__ is None
    # And the signature check still comes first, with its own words
    with pytest.raises(TypeError, match="missing a required argument: 'order'"):
        place.delay()
    # And nothing was sent, by delay, apply_async or a signature
    with pytest.raises(ValidationError, match="order.day"):
        place.apply_async(({"lines": [], "day": "someday"},))
    with pytest.raises(ValidationError, match="order.lines"):
        place.s({"lines": 5, "day": "2026-12-06"}).delay()
    assert _sent(app) == []


def test_a_call_that_fits_is_sent_in_its_json_form(app: App) -> None:
    @app.task(name="shop.place", validate=True)
    def place(order: Order, copies: int = 1) -> Receipt:
        raise AssertionError("not run here")

    # When a model is sent, and a value pydantic converts ("3" for an int)
    place.delay(ORDER, copies="3")  # type: ignore[arg-type]
    place.s(ORDER).apply_async(countdown=0)
    [first, second] = _sent(app)
    # Then the message carries plain data: the model as a dict, the date as text
    assert first.args == ({"lines": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 3}],
                           "day": "2026-12-06"},)
    assert first.kwargs == {"copies": 3}
    assert second.args == first.args


def test_the_worker_converts_arguments_into_models_and_results_come_back_as_models(
        app: App) -> None:
    seen: list[Any] = []

    @app.task(name="shop.place", validate=True)
    def place(order: Order, copies: int = 1) -> Receipt:
        seen.append((order, copies))
        return Receipt(order_lines=len(order.lines), total=sum(line.qty for line in order.lines))

    @app.task(validate=True)
    def double(receipt: Receipt) -> Receipt:
        return Receipt(order_lines=receipt.order_lines, total=receipt.total * 2)

    @app.task(validate=True)
    def label(receipt: Receipt, order: Order) -> str:
        return f"{order.lines[0].sku}:{receipt.total}"

    def retried(self: Task[..., Any], order: Order) -> int:
        if self.request.retries == 0:
            raise self.retry()  # the next attempt's message is built from models
        return len(order.lines)

    # (a bound task's `self` hint need not resolve at run time: often imported only
    # under TYPE_CHECKING)
    retried.__annotations__["self"] = "ImportedForTypeCheckersOnly"
    retried = app.task(bind=True, validate=True, max_retries=1,  # type: ignore[assignment]
                       default_retry_delay=0)(retried)

    with ThreadedWorker(app):
        receipt = place.delay(ORDER, copies=2).get(timeout=5)
        # A chain: the model result travels as JSON and becomes a model again
        chained = chain(place.s(ORDER), double.s()).delay().get(timeout=5)
        # Models bound into a later step (in a header until then) travel as JSON too
        labelled = chain(place.s(ORDER), double.s(), label.s(order=ORDER)).delay()
        assert labelled.get(timeout=5) == "a:10"
        assert retried.delay(ORDER).get(timeout=5) == 2
        # A result read by id alone knows its task from the stored outcome
        by_id = app.AsyncResult(place.delay(ORDER).id).get(timeout=5)
    assert seen[0] == (ORDER, 2)
    assert isinstance(seen[0][0].lines[0], Line)
    assert receipt == Receipt(order_lines=2, total=5)
    assert chained == Receipt(order_lines=2, total=10)
    assert isinstance(by_id, Receipt)
    # And eager mode (apply) calls the function as a worker would
    assert place.apply(({"lines": [{"sku": "c", "qty": "4"}], "day": "2026-01-01"},)
                       ).get() == Receipt(order_lines=1, total=4)


def test_the_worker_dead_letters_a_message_that_does_not_fit_and_runs_nothing(
        app: App) -> None:
    ran = threading.Event()

    @app.task(name="shop.place", validate=True)
    def place(order: Order) -> None:
        ran.set()

    @app.task(name="shop.wrong_result", validate=True)
    def wrong_result() -> Receipt:
        return {"order_lines": 1}  # type: ignore[return-value]

    # Given a message written by a producer that skipped the send-time check
    body = Codec(["json"]).encode({
        "v": 1, "id": "raw-1", "task": "shop.place", "args": [{"lines": [{"sku": 1}],
                                                               "day": "x"}],
        "kwargs": {}, "queue": "celeriac", "sent_at": time.time()})
    with ThreadedWorker(app):
        app._run_sync(app.publish([Outgoing("raw-1", "celeriac", body)]))
        # (a task that returns what its annotation refuses fails, naming the field)
        with pytest.raises(ValidationError, match=r"^shop.wrong_result: invalid result: "
                           r"result.total: Field required\n"):
            wrong_result.delay().get(timeout=5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not app._run_sync(app.broker.dead_letters()):
            time.sleep(0.01)
    # Then it is dead-lettered with each field path, and the function never ran
    [dead] = app._run_sync(app.broker.dead_letters())
    assert dead.id == "raw-1"
    assert dead.reason.startswith("malformed message: shop.place: invalid arguments: "
                                  "order.lines.0.sku: Input should be a valid string (int "
                                  "given); order.lines.0.qty: Field required; order.day:")
    assert not ran.is_set()


def test_validate_is_checked_at_declaration(app: App,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match="validate must be True or False, not 'yes'"):
        app.task(validate="yes")
    with pytest.raises(TypeError, match="unknown task option 'pydantic': celeriac's "
                       "validate=True checks the arguments"):
        app.task(pydantic=True)  # Celery's name: its results come back as dicts
    # A hint pydantic cannot check is a clear error at the first send
    @app.task(name="shop.lock", validate=True)
    def lock(held: threading.Lock) -> None:  # type: ignore[valid-type]
        pass

    with pytest.raises(ConfigurationError, match="shop.lock: validate=True cannot check"):
        lock.delay(threading.Lock())

    # A value with no JSON form is refused at send, and as a result fails the task
    @app.task(name="shop.raw", validate=True)
    def raw(data: bytes) -> Any:
        return threading.Lock()

    with pytest.raises(ValidationError, match="shop.raw: its arguments have no JSON form"):
        raw.delay(b"\xff")
    with pytest.raises(ValidationError, match="shop.raw: its result has no JSON form"):
        raw.apply((b"ok",)).get()
    # Without pydantic, validate=True fails where the task is declared
    monkeypatch.setitem(sys.modules, "pydantic", None)
    with pytest.raises(ConfigurationError, match=r"validate=True needs pydantic, which is "
                       r"not installed: pip install 'celeriac\[validation\]'"):
        app.task(validate=True)
    app.task(validate=False)  # (without it, nothing asks for pydantic)


def test_map_starmap_and_chunks_check_each_call_at_send_and_convert_on_the_worker(
        app: App) -> None:
    @app.task(name="shop.count", validate=True)
    def count(order: Order) -> Receipt:
        assert isinstance(order, Order)  # the worker converted the item into the model
        return Receipt(order_lines=len(order.lines), total=sum(x.qty for x in order.lines))

    @app.task(name="shop.times", validate=True)
    def times(qty: int, factor: int) -> int:
        assert isinstance(qty, int)
        return qty * factor

    # When one item of a map, starmap or chunks does not fit, nothing is built or sent
    with pytest.raises(ValidationError, match=r"order\.lines\.0\.qty"):
        count.map([ORDER, {"lines": [{"sku": "a", "qty": "two"}], "day": "2026-12-06"}])
    with pytest.raises(ValidationError, match="factor"):
        times.starmap([(1, 2), (3, "many")])
    with pytest.raises(ValidationError, match="factor"):
        times.chunks([(1, 2), (3, "many")], 1)
    with pytest.raises(TypeError, match="missing a required argument: 'factor'"):
        times.starmap([(1,)])
    assert _sent(app) == []
    # And calls that fit travel in their JSON form and run with converted arguments
    with ThreadedWorker(app):
        assert count.map([ORDER]).delay().get(timeout=5) == [
            {"order_lines": 2, "total": 5}]  # (the map's result: each call's JSON form)
        assert times.starmap([(1, "2"), (3, 4)]).delay().get(timeout=5) == [2, 12]
        assert times.chunks([(1, 2), ("3", 4)], 1).delay().get(timeout=5) == [[2], [12]]
