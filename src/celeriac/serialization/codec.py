"""The frame around every serialized value: which serializer and compression it used.

    offset 0  2 bytes  magic b"CQ"
    offset 2  1 byte   frame version (1)
    offset 3  1 byte   serializer code (1 json, 2 msgpack, 3 pickle)
    offset 4  1 byte   compression code (0 none, 1 gzip, 2 zlib, 3 zstd)
    offset 5  ...      payload

The reader needs nothing but the bytes, so messages and results sent with different
serializers can share a queue, and a disallowed serializer is refused before any of its
bytes are interpreted.

``max_size`` (``task_message_max_size``) bounds a task message twice: the frame as sent,
and its payload once decompressed. ``encode`` checks both before anything is sent;
``decode(data, limit=...)`` checks the frame's length before reading anything and stops
inflating a compressed payload as soon as it passes the limit (a decompression bomb).
Results are not limited: a finished task's outcome must always be storable.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from celeriac.errors import ContentDisallowed, DecodeError, MessageTooLarge, describe
from celeriac.serialization.compression import COMPRESSORS_BY_CODE, compressor_for
from celeriac.serialization.serializers import SERIALIZERS_BY_CODE, serializer_for

MAGIC = b"CQ"
FRAME_VERSION = 1
_HEADER = struct.Struct("!2sBBB")


class Codec:
    """Encodes with the requested serializer; decodes only what ``accept`` allows."""

    def __init__(self, accept: Iterable[str], max_size: int | None = None) -> None:
        self.accept = frozenset(accept)
        self.max_size = max_size

    def encode(self, value: Any, serializer: str = "json", compression: str | None = None) -> bytes:
        chosen = serializer_for(serializer)
        payload = chosen.dumps(value)
        compression_code = 0
        if compression:
            if self.max_size is not None and len(payload) + _HEADER.size > self.max_size:
                raise MessageTooLarge(
                    f"message is {len(payload) + _HEADER.size:,} bytes before compression, "
                    f"over the limit of {self.max_size:,} bytes (task_message_max_size; "
                    "a worker refuses a payload that inflates past it)")
            compressor = compressor_for(compression)
            payload = compressor.compress(payload)
            compression_code = compressor.code
        data = _HEADER.pack(MAGIC, FRAME_VERSION, chosen.code, compression_code) + payload
        if self.max_size is not None and len(data) > self.max_size:
            raise MessageTooLarge(
                f"message is {len(data):,} bytes, over the limit of {self.max_size:,} bytes "
                "(task_message_max_size)"
            )
        return data

    def decode(self, data: bytes, limit: int | None = None) -> Any:
        """The value in a frame; ``limit`` bounds the frame and its inflated payload.

        Raises DecodeError (not a frame, or not readable), ContentDisallowed (a
        serializer not in ``accept``) or MessageTooLarge (past ``limit``).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"a message body is bytes, not {type(data).__name__}")
        if limit is not None and len(data) > limit:
            raise MessageTooLarge(f"message is {len(data):,} bytes, over the limit of "
                                  f"{limit:,} bytes (task_message_max_size)")
        if len(data) < _HEADER.size:
            raise DecodeError(f"{len(data)} bytes is too short to be a celeriac frame")
        magic, version, serializer_code, compression_code = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise DecodeError(f"not a celeriac frame (starts with {bytes(data[:2])!r})")
        if version != FRAME_VERSION:
            raise DecodeError(f"frame version {version} is not supported (this reads 1)")
        serializer = SERIALIZERS_BY_CODE.get(serializer_code)
        if serializer is None:
            raise DecodeError(f"unknown serializer code {serializer_code}")
        if serializer.name not in self.accept:
            raise ContentDisallowed(
                f"{serializer.name} content is refused: it is not in accept_content "
                f"({', '.join(sorted(self.accept))})"
            )
        payload = memoryview(data)[_HEADER.size:]
        try:
            if compression_code:
                compressor = COMPRESSORS_BY_CODE.get(compression_code)
                if compressor is None:
                    raise DecodeError(f"unknown compression code {compression_code}")
                inflate_limit = None if limit is None else limit - _HEADER.size
                return serializer.loads(compressor.decompress(bytes(payload), inflate_limit))
            return serializer.loads(bytes(payload))
        except (DecodeError, MessageTooLarge):
            raise
        except Exception as exc:
            raise DecodeError(f"cannot decode {serializer.name} payload: "
                              f"{describe(exc)}") from exc

