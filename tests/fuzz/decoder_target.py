"""The fuzz target: what a worker does with a delivery's bytes before any task code runs.

A worker's first contact with a message is its body, bytes anyone holding broker
credentials can write. Before a task runs, the worker reads the Codec frame (magic,
version, serializer and compression codes, a size limit before and while inflating),
deserializes it (json or msgpack), checks the envelope (``Message.from_payload``: every
field's type and range), finds the task, checks the arguments against its signature
and, for a ``validate=True`` task, its type hints, and reads the signatures of what
follows it (links, chain steps, chord members). ``Target.check`` runs exactly that on
one body: ``App.decode_message`` must return a Message or raise celeriac's own
``MessageError`` (DecodeError, ContentDisallowed, MessageTooLarge) and nothing else;
``Executor._prepare`` (the checks without the catch-all that would hide a crash as a
dead letter) must return a verdict or a runnable call and never raise.

``bodies()`` generates the input: random bytes, random bytes behind a valid frame
header, valid frames of envelopes with any field replaced by anything (including deep
nesting and signature-shaped values), in every serializer and compression, and such
frames mutated (bytes flipped, cut, inserted, spliced). Run it with
``tests/fuzz/test_fuzz_decoder.py`` (``FUZZ_SECONDS``), or for longer with
``FUZZ_SECONDS=600 python3 -m pytest tests/fuzz -q -s`` (docs/security.md).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from celeriac import App, Task
from celeriac.brokers import Delivery
from celeriac.errors import MessageError
from celeriac.message import Message
from celeriac.serialization import Codec
from celeriac.worker.executor import Executor, Prepared, Verdict

MAX_SIZE = 4096  # the worker's task_message_max_size: small, so the limits are reached
QUEUE = "fuzz"
ENCODER = Codec(["json", "msgpack"])  # the producer side: no limit of its own


class Line(BaseModel):
    sku: str
    qty: int


def add(x: int, y: int) -> int:
    return x + y


def place(order: list[Line], note: str = "", *extra: int, **options: float) -> int:
    return len(order)


def tagged(self: Task[..., Any], tag: str, *, flag: bool = False) -> str:
    return tag


TASK_NAMES = ("fuzz.add", "fuzz.place", "fuzz.tagged", "celeriac.map", "celeriac.starmap",
              "fuzz.unknown")


class Target:
    """One app and executor as a worker has them; ``check(body)`` per input."""

    def __init__(self) -> None:
        self.app = App("fuzz", broker="memory://", backend="memory://",
                       accept_content=["json", "msgpack"], task_message_max_size=MAX_SIZE)
        self.app.task(name="fuzz.add")(add)
        self.app.task(name="fuzz.place", validate=True)(place)
        self.app.task(name="fuzz.tagged", bind=True)(tagged)

        async def refuse(fn: Any) -> Any:  # nothing runs here: _prepare never calls it
            raise AssertionError("the fuzz target must not run a task")

        self.executor = Executor(self.app, refuse, "fuzz@host")
        self.examples = 0
        self.decoded = 0  # bodies that were well-formed messages
        self.runnable = 0  # of those, calls that would have run

    def check(self, body: bytes) -> None:
        self.examples += 1
        try:
            self.app.decode_message(body)
        except MessageError:
            pass  # documented: DecodeError, ContentDisallowed, MessageTooLarge
        else:
            self.decoded += 1
        delivery = Delivery(str(uuid.uuid4()), QUEUE, body, 0, 1, None)
        # (no verified frame: signing is off here; raising is the crash looked for)
        outcome = self.executor._prepare(delivery, None)
        assert isinstance(outcome, Prepared | Verdict), outcome
        if isinstance(outcome, Prepared):
            self.runnable += 1

    def close(self) -> None:
        self.app.close()


class Quiet:
    """The worker logs an error per unknown task: silenced while fuzzing (speed, noise)."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("celeriac")
        self.level = self.logger.level
        self.logger.setLevel(logging.CRITICAL + 1)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


# -- inputs ------------------------------------------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats() | st.text(max_size=16) | st.sampled_from(TASK_NAMES))
# Any value json or msgpack can carry, nested a little (bytes: msgpack only).
values = st.recursive(
    _scalars | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(-3, 3), inner, max_size=4),
    max_leaves=16)


def _nested(depth: int, leaf: Any) -> Any:
    """A list (or dict) ``depth`` levels deep: for limits on recursion."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


deep = st.builds(_nested, st.integers(1, 200), values)  # (within what the encoders nest)


@st.composite
def signatures(draw: st.DrawFn, depth: int = 0) -> Any:
    """Signature-shaped payloads (task, args, kwargs, options, tasks/header/body)."""
    sig: dict[str, Any] = {"task": draw(st.sampled_from(TASK_NAMES) | st.text(max_size=8))}
    for key, strategy in (("args", st.lists(values, max_size=3)),
                          ("kwargs", st.dictionaries(st.text(max_size=6), values,
                                                     max_size=3)),
                          ("options", st.dictionaries(
                              st.sampled_from(["queue", "link", "countdown", "priority",
                                               "link_error", "task_id", "headers"]),
                              values, max_size=3)),
                          ("immutable", st.booleans())):
        if draw(st.booleans()):
            sig[key] = draw(strategy)
    if depth < 3 and draw(st.integers(0, 4)) == 0:
        kind = draw(st.sampled_from(["tasks", "header", "body"]))
        child = signatures(depth + 1)
        sig[kind] = draw(st.lists(child, max_size=3) if kind == "tasks" else child)
    if draw(st.integers(0, 9)) == 0:
        sig = draw(st.one_of(values, deep))  # not a signature at all
    return sig


@st.composite
def chord_members(draw: st.DrawFn, depth: int = 0) -> Any:
    member: dict[str, Any] = {
        "id": draw(st.text(max_size=8) | values), "size": draw(st.integers(-1, 5) | values),
        "index": draw(st.integers(-1, 5) | values), "body": draw(signatures()),
        "then": draw(st.lists(signatures(), max_size=2) | values)}
    if depth < 4 and draw(st.booleans()):
        member["member"] = draw(chord_members(depth + 1))
    for key in draw(st.sets(st.sampled_from(sorted(member)), max_size=2)):
        del member[key]
    return member


def _good_call(name: str) -> tuple[list[Any], dict[str, Any]]:
    if name == "fuzz.add":
        return [1, 2], {}
    if name == "fuzz.place":
        return [[{"sku": "a", "qty": 1}], "note", 3], {"speed": 1.5}
    if name in ("celeriac.map", "celeriac.starmap"):
        return ["fuzz.add", [[1, 2]]], {}
    return ["tag"], {"flag": True}


# What each envelope field may be replaced with, besides any value at all.
_FIELDS: dict[str, Any] = {
    "v": st.integers(0, 3), "id": st.text(max_size=40), "task": st.sampled_from(TASK_NAMES),
    "args": st.lists(values, max_size=4), "kwargs": st.dictionaries(
        st.sampled_from(["x", "y", "tag", "flag", "order", "note", "speed", "task", "it"]),
        values, max_size=3),
    "queue": st.text(max_size=10), "sent_at": st.floats(),
    "priority": st.integers(-2, 12), "eta": st.floats(), "expires": st.floats(),
    "retries": st.integers(-2, 5), "root_id": st.text(max_size=8),
    "parent_id": st.text(max_size=8), "group_id": st.text(max_size=8),
    "ignore_result": st.booleans(), "result_serializer": st.sampled_from(
        ["json", "msgpack", "pickle", "yaml"]),
    "callbacks": st.lists(signatures(), max_size=3), "errbacks": st.lists(signatures(),
                                                                          max_size=3),
    "headers": st.fixed_dictionaries({}, optional={
        "celeriac-chain": st.lists(signatures(), max_size=3) | values,
        "celeriac-chord": chord_members() | values,
        "celeriac-token": st.text(max_size=8) | values}),
    "time_limit": st.floats(), "soft_time_limit": st.floats(),
    "unique_key": st.text(max_size=8), "unique_for": st.floats(),
}


@st.composite
def envelopes(draw: st.DrawFn) -> Any:
    """A valid message payload for one of the tasks, with fields changed or removed."""
    name = draw(st.sampled_from(TASK_NAMES))
    args, kwargs = _good_call(name)
    # Fixed id and time: hypothesis needs the same draws to give the same bytes.
    payload = Message("4b0c7e0e-0000-4000-8000-000000000000", name, tuple(args), kwargs,
                      QUEUE, sent_at=1_765_000_000.0).to_payload()
    payload["args"] = list(args)
    for field in draw(st.lists(st.sampled_from(sorted(_FIELDS)), max_size=4, unique=True)):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            payload.pop(field, None)
        elif choice == 1:
            payload[field] = draw(deep)
        else:
            payload[field] = draw(_FIELDS[field] if choice < 8 else values)
    if draw(st.integers(0, 9)) == 0:
        payload[draw(st.text(max_size=6))] = draw(values)  # a key this version does not know
    if draw(st.integers(0, 19)) == 0:
        return draw(values | deep)  # not a mapping at all
    return payload


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """An envelope in a valid frame: json or msgpack, compressed or not."""
    payload = draw(envelopes())
    serializer = draw(st.sampled_from(["json", "msgpack"]))
    compression = draw(st.sampled_from([None, "gzip", "zlib", "zstd"]))
    for chosen in (serializer, "msgpack"):
        try:
            return ENCODER.encode(payload, chosen, compression)
        except Exception:  # not representable in this serializer (a huge int...)
            continue
    return b"CQ\x01\x02\x00"  # in neither: an empty msgpack frame instead


@st.composite
def deep_frames(draw: st.DrawFn) -> bytes:
    """An envelope one of whose fields nests deeper than any encoder writes (hand-made
    bytes): up to and past the decoders' own nesting limits and Python's recursion."""
    depth = draw(st.integers(1, 3000))
    field = draw(st.sampled_from(["args", "kwargs", "headers", "callbacks", "id", "eta"]))
    opener = draw(st.sampled_from(["list", "dict"]))
    if draw(st.booleans()):  # json
        inner = (b"[" * depth + b"]" * depth) if opener == "list" else \
            (b'{"k":' * depth + b"{}" + b"}" * depth)
        body = (b'{"v":1,"id":"i","task":"fuzz.add","args":[1,2],"kwargs":{},"queue":"q",'
                b'"sent_at":1,"' + field.encode() + b'":' + inner + b"}")
        return b"CQ\x01\x01\x00" + body
    inner = (b"\x91" * depth + b"\x90") if opener == "list" else \
        (b"\x81\xa1k" * depth + b"\x80")
    body = (b"\x88\xa1v\x01\xa2id\xa1i\xa4task\xa8fuzz.add\xa4args\x92\x01\x02"
            b"\xa6kwargs\x80\xa5queue\xa1q\xa7sent_at\x01" + bytes([0xa0 + len(field)])
            + field.encode() + inner)
    return b"CQ\x01\x02\x00" + body


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid frame with a few byte-level changes."""
    data = bytearray(draw(frames()))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "truncate", "splice"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "truncate":
            del data[at:]
        else:
            data[at:at] = data[draw(st.integers(0, len(data))):][:draw(st.integers(1, 64))]
    return bytes(data)


_headers = st.builds(lambda s, c, rest: b"CQ\x01" + bytes([s, c]) + rest,
                     st.integers(0, 4), st.integers(0, 4), st.binary(max_size=256))

# Frames twice: most inputs should get past the frame, to reach the envelope and call checks.
bodies = st.one_of(st.binary(max_size=256), _headers, frames(), frames(), mutated(),
                   deep_frames())
