"""Hand-crafted malformed messages, and the check every broker's worker must pass with them.

Each case is a body published raw (``Broker.publish`` of an ``Outgoing``), as any
process holding broker credentials could, with the words its dead-letter reason must
contain. ``check_malformed_batch`` publishes them all at once to one running worker
(one slot, so a slot that died would stop everything), then a valid task, and checks
that each malformed one is dead-lettered with its own reason, none ran, and the valid
one ran within a second. The ``typed-*`` cases bypass the send-time check of a
``validate=True`` task (``ledger.typed``): the worker validates again and dead-letters
them naming the field path; a valid call of it then gets its model argument as a model
and its model result back as one. ``start_worker`` starts the one worker these need,
with ``ledger.typed`` registered.
"""

from __future__ import annotations

import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import pytest
from ledger_app import TYPED_ENV
from ledger_typed import Line, Order, Receipt, register_typed
from worker_harness import QUEUE, Deployment, WorkerProcess, wait_until

from celeriac.brokers import DeadLetter, Outgoing
from celeriac.serialization import Codec

MAX_SIZE = 20_000  # the worker's task_message_max_size in these tests
CODEC = Codec(["json", "msgpack"])  # the producer side: no size limit of its own


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    reason: str  # what its dead-letter reason must contain

    def outgoing(self, prefix: str) -> Outgoing:
        return Outgoing(f"{prefix}-{self.name}", QUEUE, self.body)


def envelope(**changes: Any) -> dict[str, Any]:
    """A valid ``ledger.record("x")`` message, with ``changes`` (None removes a field)."""
    payload: dict[str, Any] = {"v": 1, "id": str(uuid.uuid4()), "task": "ledger.record",
                               "args": ["malformed"], "kwargs": {}, "queue": QUEUE,
                               "sent_at": time.time()}
    payload.update(changes)
    return {key: value for key, value in payload.items() if value is not None}


def _frame(payload: Any, serializer: str = "json") -> bytes:
    return CODEC.encode(payload, serializer)


def _bomb() -> bytes:
    """A small zlib frame (about 10 KB) whose json payload inflates to 10 MB."""
    text = b'{"v":1,"blob":"' + b"x" * 10_000_000 + b'"}'
    return b"CQ\x01\x01\x02" + zlib.compress(text, 9)


def cases() -> list[Case]:
    missing_sent_at = envelope()
    del missing_sent_at["sent_at"]
    return [
        Case("expires-text", _frame(envelope(expires="soon")),
             "'expires' must be a finite number"),
        Case("time-limit-text", _frame(envelope(time_limit="10")),
             "'time_limit' must be a finite number of seconds > 0"),
        Case("soft-limit-negative", _frame(envelope(soft_time_limit=-1)),
             "'soft_time_limit' must be a finite number of seconds > 0"),
        Case("eta-text", _frame(envelope(eta="tomorrow")), "'eta' must be a finite number"),
        Case("priority-text", _frame(envelope(priority="high")),
             "'priority' must be an integer 0-9"),
        Case("retries-negative", _frame(envelope(retries=-1)),
             "'retries' must be an integer >= 0"),
        Case("root-id-number", _frame(envelope(root_id=5)), "'root_id' must be a string"),
        Case("ignore-result-text", _frame(envelope(ignore_result="yes")),
             "'ignore_result' must be true or false"),
        Case("serializer-unknown", _frame(envelope(result_serializer="yaml")),
             "'result_serializer' must be one of json, msgpack, pickle"),
        Case("callbacks-text", _frame(envelope(callbacks="x")),
             "'callbacks' must be a list of signatures"),
        Case("errbacks-numbers", _frame(envelope(errbacks=[1])),
             "'errbacks[0]' must be a signature"),
        Case("link-not-a-signature", _frame(envelope(callbacks=[{"task": 5}])),
             "callbacks[0] is not a signature"),
        Case("chain-step-not-a-signature", _frame(envelope(headers={"celeriac-chain": [5]})),
             "header 'celeriac-chain'[0] is not a signature"),
        Case("chord-member-garbage",
             _frame(envelope(headers={"celeriac-chord": {"no": "id"}})),
             "header 'celeriac-chord': 'id' is None"),
        Case("headers-list", _frame(envelope(headers=[])), "'headers' must be a mapping"),
        Case("kwargs-int-keys", _frame(envelope(kwargs={1: "x"}), "msgpack"),
             "the keys of 'kwargs' must be strings"),
        Case("kwargs-mismatch", _frame(envelope(kwargs={"nope": 1})),
             "arguments do not fit the task: ledger.record(tag: 'str'): "
             "got an unexpected keyword argument 'nope'"),
        Case("args-too-many", _frame(envelope(args=["a", "b"])),
             "arguments do not fit the task: ledger.record(tag: 'str'): "
             "too many positional arguments"),
        Case("args-missing", _frame(envelope(args=[])),
             "missing a required argument: 'tag'"),
        Case("args-text", _frame(envelope(args="abc")), "'args' must be a list"),
        Case("id-empty", _frame(envelope(id="")), "'id' must be a non-empty string"),
        Case("task-number", _frame(envelope(task=5)), "'task' must be a non-empty string"),
        Case("no-sent-at", _frame(missing_sent_at), "no 'sent_at' field"),
        Case("version-2", _frame(envelope(v=2)), "message protocol version 2 is not "
             "supported"),
        Case("not-a-mapping", _frame(["a", "list"]), "a message is a mapping"),
        Case("too-large", _frame(envelope(args=["x" * MAX_SIZE])),
             "message too large: message is"),
        Case("bomb", _bomb(), "zlib-compressed payload inflates past the limit of"),
        Case("empty-body", b"", "0 bytes is too short to be a celeriac frame"),
        Case("garbage", b"\xff\xfe not a frame", "not a celeriac frame"),
        Case("typed-qty-text", _frame(envelope(task="ledger.typed", args=[
            {"ref": "bad-1", "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": "many"}]}])),
            "malformed message: ledger.typed: invalid arguments: order.lines.1.qty: Input "
            "should be a valid integer"),
        Case("typed-kwarg-list", _frame(envelope(task="ledger.typed", args=[
            {"ref": "bad-2", "lines": []}], kwargs={"copies": [2]})),
            "invalid arguments: copies: Input should be a valid integer (list given)"),
        Case("typed-field-missing", _frame(envelope(task="ledger.typed", args=[
            {"lines": []}]), "msgpack"), "invalid arguments: order.ref: Field required"),
    ]


def start_worker(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> WorkerProcess:
    """The worker for ``check_malformed_batch``: one slot, MAX_SIZE, ``ledger.typed``."""
    monkeypatch.setenv(TYPED_ENV, "1")  # read by ledger_app.register in the worker
    return deployment.start_worker("-c", "1", task_message_max_size=MAX_SIZE).wait_ready()


def check_malformed_batch(deployment: Deployment, prefix: str | None = None,
                          *, timeout: float = 30.0) -> dict[str, DeadLetter]:
    """Publish every case to the running worker; check each is dead-lettered with its
    reason, none ran, and a valid task sent after them runs within a second."""
    prefix = prefix or uuid.uuid4().hex[:8]
    # Given a worker that has run a task (so it is up and consuming)
    assert deployment.tasks.record.delay("before").get(timeout=30) == "before"
    all_cases = cases()
    # When the malformed messages arrive, then a valid one
    deployment.probe.publish([case.outgoing(prefix) for case in all_cases])
    deployment.tasks.record.delay("after")
    published = time.time()
    # Then the valid one runs within a second
    ran = deployment.ledger.wait_for("after", timeout=timeout)[0]
    assert ran.t - published < 1.0, f"the valid task ran {ran.t - published:.2f}s later"
    # And each malformed one is in the dead letters with its own reason
    wanted = {case.outgoing(prefix).id: case for case in all_cases}

    def letters() -> dict[str, DeadLetter] | None:
        found = {d.id: d for d in deployment.probe.dead_letters() if d.id in wanted}
        return found if len(found) == len(wanted) else None

    found = wait_until(letters, timeout, "every malformed message in the dead letters")
    wrong = {name: (found[name].reason, case.reason) for name, case in wanted.items()
             if case.reason not in found[name].reason}
    assert not wrong, f"dead-letter reasons without the expected words: {wrong}"
    for name, case in wanted.items():
        assert found[name].body == case.body, f"{name}: the body was not kept untouched"
    # And a valid call of the validated task gets a model, and gives one back
    order = Order(ref="typed-ok", lines=[Line(sku="a", qty=2), Line(sku="b", qty=1)])
    receipt = register_typed(deployment.app).delay(order, copies=2).get(timeout=timeout)
    assert receipt == Receipt(ref="typed-ok", items=6)
    # And none of the malformed ones ran
    assert deployment.ledger.tags() == ["before", "after", "typed-ok"]
    return found
