"""task_message_max_size bounds a frame and its inflated payload, on both sides.

A worker checks the frame's length before reading any of it, and stops inflating a
compressed payload as soon as it passes the limit, so a small body cannot make it
allocate without bound (a decompression bomb). A producer refuses what a worker would.
"""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest
import zstandard

from celeriac import DecodeError, MessageTooLarge
from celeriac.errors import BrokerUnavailable, describe
from celeriac.serialization import Codec
from celeriac.serialization.compression import compressor_for

LIMIT = 10_000
BIG = {"blob": "x" * 50_000_000}  # 50 MB of text, a few tens of KB compressed


@pytest.mark.parametrize("compression", ["gzip", "zlib", "zstd"])
def test_a_payload_that_inflates_past_the_limit_is_refused_without_inflating_it(
        compression: str) -> None:
    # Given a small frame whose payload inflates to 50 MB
    data = Codec(["json"]).encode(BIG, "json", compression)
    assert len(data) < LIMIT * 10
    codec = Codec(["json"], max_size=len(data) + 1_000)
    # When a worker decodes it under the limit, Then it is refused
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooLarge, match="inflates past the limit"):
            codec.decode(data, codec.max_size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # And nothing near the inflated size was ever allocated
    assert peak < 5_000_000


@pytest.mark.parametrize("compression", ["gzip", "zlib", "zstd"])
def test_a_payload_under_the_limit_inflates_as_before(compression: str) -> None:
    value = {"blob": "y" * 5_000}
    codec = Codec(["json"], max_size=LIMIT)
    assert codec.decode(codec.encode(value, "json", compression), LIMIT) == value


def test_the_size_of_a_frame_is_checked_before_it_is_read() -> None:
    # Given a frame over the limit, even one that is not a frame at all
    codec = Codec(["json"], max_size=100)
    with pytest.raises(MessageTooLarge, match=r"message is 101 bytes, over the limit of "
                                              r"100 bytes \(task_message_max_size\)"):
        codec.decode(b"\x00" * 101, 100)
    # And results (decoded without a limit) are not bound by it
    assert Codec(["json"]).decode(Codec(["json"]).encode("z" * 500)) == "z" * 500


def test_a_producer_refuses_a_payload_that_would_inflate_past_the_limit() -> None:
    codec = Codec(["json"], max_size=LIMIT)
    with pytest.raises(MessageTooLarge, match="before compression"):
        codec.encode({"blob": "x" * (2 * LIMIT)}, "json", "gzip")


def test_every_gzip_member_is_read_and_counted() -> None:
    # Two gzip members, as concatenated files are: both are read, both count
    payload = gzip.compress(b'{"a": ') + gzip.compress(b'"' + b"x" * 900 + b'"}')
    gz = compressor_for("gzip")
    assert gz.decompress(payload, 1_000).startswith(b'{"a": "xxx')
    with pytest.raises(MessageTooLarge):
        gz.decompress(payload, 500)


def test_truncated_compressed_data_is_a_decode_error() -> None:
    data = zlib.compress(b"hello world" * 100)[:20]
    framed = b"CQ\x01\x01\x02" + data
    with pytest.raises(DecodeError, match="truncated"):
        Codec(["json"]).decode(framed, LIMIT)


def test_a_zstd_frame_that_lies_about_its_size_is_still_bounded() -> None:
    data = zstandard.ZstdCompressor(write_content_size=False).compress(b"z" * 100_000)
    with pytest.raises(MessageTooLarge):
        compressor_for("zstd").decompress(data, 1_000)


def test_a_body_that_is_not_bytes_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="body is bytes, not str"):
        Codec(["json"]).decode("CQ\x01\x01\x00{}", LIMIT)  # type: ignore[arg-type]


@pytest.mark.parametrize(("exc", "text"), [
    (KeyError(), "KeyError"), (TimeoutError(), "TimeoutError"),
    (ValueError("bad value"), "ValueError: bad value"),
    (KeyError("id"), "KeyError: 'id'"),
    (BrokerUnavailable("cannot reach Redis"), "cannot reach Redis"),  # written for users
])
def test_an_exception_always_reads_as_something(exc: BaseException, text: str) -> None:
    assert describe(exc) == text


def test_an_exception_whose_text_cannot_be_read_still_reads_as_something() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    assert describe(Broken()) == "Broken (its text could not be read)"


def test_a_cause_that_adds_something_is_named_too() -> None:
    error = BrokerUnavailable("cannot reach the broker")
    error.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert describe(error) == ("cannot reach the broker (ConnectionRefusedError: "
                               "[Errno 111] Connection refused)")
