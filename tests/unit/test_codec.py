"""The frame around serialized values: serializers, compression, refusal, size limits."""

import pytest

from celeriac import ContentDisallowed, DecodeError, MessageTooLarge
from celeriac.message import Message
from celeriac.serialization import Codec

VALUE = {"args": [1, "two", 3.5, None, True], "kwargs": {"nested": {"a": [1, 2]}}}


@pytest.mark.parametrize("serializer", ["json", "msgpack", "pickle"])
@pytest.mark.parametrize("compression", [None, "gzip", "zlib", "zstd"])
def test_round_trip(serializer: str, compression: str | None) -> None:
    codec = Codec(accept=["json", "msgpack", "pickle"])
    assert codec.decode(codec.encode(VALUE, serializer, compression)) == VALUE


def test_compression_shrinks_repetitive_payloads() -> None:
    codec = Codec(accept=["json"])
    big = {"text": "celeriac " * 1000}
    assert len(codec.encode(big, "json", "gzip")) < len(codec.encode(big, "json")) / 10


def test_pickle_is_refused_unless_accepted() -> None:
    data = Codec(accept=["pickle"]).encode(VALUE, "pickle")
    with pytest.raises(ContentDisallowed, match="pickle content is refused.*accept_content"):
        Codec(accept=["json", "msgpack"]).decode(data)


def test_refusal_happens_before_the_payload_is_read() -> None:
    class Boom:
        def __reduce__(self) -> tuple[object, ...]:
            return (pytest.fail, ("pickle payload was executed",))

    data = Codec(accept=["pickle"]).encode(Boom(), "pickle")
    with pytest.raises(ContentDisallowed):
        Codec(accept=["json"]).decode(data)
    assert b"pickle payload was executed" in data  # the payload is there; it never ran


@pytest.mark.parametrize("garbage", [b"", b"xx", b"not a frame at all", b"CQ\x09\x01\x00{}",
                                     b"CQ\x01\x07\x00{}", b"CQ\x01\x01\x00{not json",
                                     b"CQ\x01\x01\x09{}"])
def test_garbage_is_a_decode_error(garbage: bytes) -> None:
    with pytest.raises(DecodeError):
        Codec(accept=["json"]).decode(garbage)


def test_size_limit_names_the_size_and_the_limit() -> None:
    codec = Codec(accept=["json"], max_size=100)
    with pytest.raises(MessageTooLarge, match=r"message is 2,\d+ bytes, over the limit of "
                                              r"100 bytes \(task_message_max_size\)"):
        codec.encode({"blob": "x" * 2000})


def test_message_payload_round_trip() -> None:
    message = Message(id="1", task="proj.add", args=(1, 2), kwargs={"z": 3}, queue="q",
                      priority=7, eta=123.5, retries=2, headers={"trace": "abc"})
    codec = Codec(accept=["json"])
    decoded = Message.from_payload(codec.decode(codec.encode(message.to_payload())))
    assert decoded == message


@pytest.mark.parametrize("payload", [[], {"v": 2}, {"v": 1, "id": "x"},
                                     {"v": 1, "id": 1, "task": "t", "args": [], "kwargs": {},
                                      "queue": "q"},
                                     {"v": 1, "id": "1", "task": "t", "args": "nope",
                                      "kwargs": {}, "queue": "q"}])
def test_malformed_messages_are_decode_errors(payload: object) -> None:
    with pytest.raises(DecodeError):
        Message.from_payload(payload)
