"""Every field of the envelope is checked when a message is decoded, and each error names it.

The walk below covers each field of protocol version 1 with values of the wrong type or
out of range; each must be a DecodeError naming the field, so that nothing later in a
worker meets a value it cannot handle.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from celeriac import DecodeError
from celeriac.errors import brief
from celeriac.message import Message
from celeriac.serialization import Codec

BASE: dict[str, Any] = {"v": 1, "id": "m-1", "task": "proj.add", "args": [1, 2],
                        "kwargs": {}, "queue": "celeriac", "sent_at": 1_700_000_000.5}

# (field, bad value, what the error must say about it)
BAD_FIELDS: list[tuple[str, Any, str]] = [
    ("id", "", "'id' must be a non-empty string"),
    ("id", 7, "'id' must be a non-empty string, not 7 (int)"),
    ("id", None, "'id' must be a non-empty string, not None"),
    ("task", "", "'task' must be a non-empty string"),
    ("task", ["proj.add"], "'task' must be a non-empty string"),
    ("args", "abc", "'args' must be a list, not 'abc' (str)"),
    ("args", {"x": 1}, "'args' must be a list"),
    ("args", None, "'args' must be a list"),
    ("kwargs", [], "'kwargs' must be a mapping, not [] (list)"),
    ("kwargs", {1: "x"}, "the keys of 'kwargs' must be strings, not 1 (int)"),
    ("queue", 3, "'queue' must be a string"),
    ("queue", None, "'queue' must be a string"),
    ("sent_at", "now", "'sent_at' must be a finite number"),
    ("sent_at", math.inf, "'sent_at' must be a finite number"),
    ("sent_at", True, "'sent_at' must be a finite number"),
    ("priority", 10, "'priority' must be an integer 0-9, not 10 (int)"),
    ("priority", -1, "'priority' must be an integer 0-9"),
    ("priority", "high", "'priority' must be an integer 0-9, not 'high' (str)"),
    ("priority", True, "'priority' must be an integer 0-9, not True (bool)"),
    ("priority", 5.0, "'priority' must be an integer 0-9"),
    ("eta", "tomorrow", "'eta' must be a finite number (Unix time) or null"),
    ("eta", math.nan, "'eta' must be a finite number"),
    ("expires", "soon", "'expires' must be a finite number (Unix time) or null"),
    ("expires", [1], "'expires' must be a finite number"),
    ("time_limit", "10", "'time_limit' must be a finite number of seconds > 0"),
    ("time_limit", 0, "'time_limit' must be a finite number of seconds > 0"),
    ("time_limit", -5.0, "'time_limit' must be"),
    ("time_limit", math.inf, "'time_limit' must be"),
    ("soft_time_limit", "5", "'soft_time_limit' must be a finite number of seconds > 0"),
    ("soft_time_limit", False, "'soft_time_limit' must be"),
    ("unique_key", "", "'unique_key' must be a non-empty string or null"),
    ("unique_key", 42, "'unique_key' must be a non-empty string or null"),
    ("unique_for", 0, "'unique_for' must be a finite number of seconds > 0"),
    ("unique_for", "60", "'unique_for' must be"),
    ("retries", -1, "'retries' must be an integer >= 0, not -1 (int)"),
    ("retries", "1", "'retries' must be an integer >= 0"),
    ("retries", 1.0, "'retries' must be an integer >= 0"),
    ("root_id", 5, "'root_id' must be a string or null, not 5 (int)"),
    ("parent_id", ["p"], "'parent_id' must be a string or null"),
    ("group_id", {}, "'group_id' must be a string or null"),
    ("ignore_result", "yes", "'ignore_result' must be true or false, not 'yes' (str)"),
    ("ignore_result", 1, "'ignore_result' must be true or false"),
    ("result_serializer", "yaml",
     "'result_serializer' must be one of json, msgpack, pickle, or null, not 'yaml'"),
    ("result_serializer", 1, "'result_serializer' must be one of"),
    ("callbacks", "proj.log", "'callbacks' must be a list of signatures"),
    ("callbacks", [5], "'callbacks[0]' must be a signature (a mapping), not 5 (int)"),
    ("callbacks", [{"task": "a"}, {1: "x"}], "the keys of 'callbacks[1]' must be strings"),
    ("errbacks", {"task": "a"}, "'errbacks' must be a list of signatures"),
    ("errbacks", [None], "'errbacks[0]' must be a signature"),
    ("headers", [], "'headers' must be a mapping, not [] (list)"),
    ("headers", {2: "x"}, "the keys of 'headers' must be strings, not 2 (int)"),
]


@pytest.mark.parametrize(("name", "value", "says"), BAD_FIELDS,
                         ids=[f"{name}={value!r}" for name, value, _ in BAD_FIELDS])
def test_a_field_of_the_wrong_type_or_range_is_a_decode_error_naming_it(
        name: str, value: Any, says: str) -> None:
    with pytest.raises(DecodeError) as refused:
        Message.from_payload({**BASE, name: value})
    assert says in str(refused.value)


def test_every_field_is_walked() -> None:
    # Every field of the envelope appears in the walk above (a new field needs a case)
    fields = {name for name in Message.__dataclass_fields__} | {"v"}
    assert fields - {"v"} <= {name for name, _, _ in BAD_FIELDS}


@pytest.mark.parametrize("name", ["id", "task", "args", "kwargs", "queue", "sent_at"])
def test_a_missing_required_field_is_named(name: str) -> None:
    payload = {key: value for key, value in BASE.items() if key != name}
    with pytest.raises(DecodeError, match=f"no '{name}' field"):
        Message.from_payload(payload)


@pytest.mark.parametrize(("version", "says"), [
    (None, "no 'v' field"), (2, "version 2 is not supported"),
    ("1", "version '1' is not supported"), (True, "version True is not supported"),
])
def test_the_protocol_version_must_be_1(version: Any, says: str) -> None:
    payload = {key: value for key, value in BASE.items() if key != "v"}
    if version is not None:
        payload["v"] = version
    with pytest.raises(DecodeError, match=says):
        Message.from_payload(payload)


@pytest.mark.parametrize("payload", [[], "text", None, 5])
def test_a_message_is_a_mapping(payload: Any) -> None:
    with pytest.raises(DecodeError, match="a message is a mapping"):
        Message.from_payload(payload)


def test_a_long_bad_value_is_shortened_in_the_error() -> None:
    with pytest.raises(DecodeError) as refused:
        Message.from_payload({**BASE, "expires": "x" * 10_000})
    assert len(str(refused.value)) < 200


def test_sound_values_at_the_edges_are_accepted() -> None:
    # Given every optional field at a sound value, at the edges of its range
    payload = {**BASE, "args": (), "kwargs": {"z": 1}, "priority": 9, "eta": 0,
               "expires": 1.5, "time_limit": 0.001, "soft_time_limit": 3, "retries": 0,
               "root_id": "r", "parent_id": None, "group_id": "g", "ignore_result": True,
               "result_serializer": "msgpack", "callbacks": [{"task": "a"}],
               "errbacks": ({"task": "b"},), "headers": {"x": [1]}, "unknown-later": 1}
    # When it is decoded, Then every value is kept (lists as tuples), unknown keys ignored
    message = Message.from_payload(payload)
    assert (message.priority, message.eta, message.expires) == (9, 0, 1.5)
    assert (message.time_limit, message.soft_time_limit) == (0.001, 3)
    assert message.callbacks == ({"task": "a"},)
    assert message.errbacks == ({"task": "b"},)
    assert message.result_serializer == "msgpack"
    assert message.ignore_result is True
    # And a message round-trips through its payload
    assert Message.from_payload(message.to_payload()) == message
    assert Message.from_payload({**BASE, "priority": 0}).priority == 0


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_a_field_nested_past_the_recursion_limit_is_a_decode_error(serializer: str) -> None:
    # Found by tests/fuzz: the error's repr of a list nested 1000 deep raised
    # RecursionError, not DecodeError. Hand-made bytes: no encoder nests this deep.
    depth = 1000
    if serializer == "json":
        body = b'CQ\x01\x01\x00{"v":1,"id":"m","task":"t","args":[],"queue":"q",' \
            b'"sent_at":1,"kwargs":' + b"[" * depth + b"]" * depth + b"}"
    else:
        body = b"CQ\x01\x02\x00\x87\xa1v\x01\xa2id\xa1m\xa4task\xa1t\xa4args\x90" \
            b"\xa5queue\xa1q\xa7sent_at\x01\xa6kwargs" + b"\x91" * depth + b"\x90"
    codec = Codec(["json", "msgpack"])
    with pytest.raises(DecodeError, match=r"'kwargs' must be a mapping, not \[\[\[\[...\]\]\]\] "
                       r"\(list\)$"):
        Message.from_payload(codec.decode(body))
    # And error texts show any value briefly, however deep or long
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    assert brief(deep) == "[[[[...]]]]"
    assert brief("x" * 1000, 20) == "'" + "x" * 16 + "..."
