"""Compressors, each known by a one-byte code on the wire. zstd when ``zstandard`` is installed.

``decompress`` takes an optional ``limit``: past that many bytes of output it stops and
raises ``MessageTooLarge``, having inflated at most ``limit + 1`` bytes, so a small
compressed body cannot make a worker allocate gigabytes (a decompression bomb).
"""

from __future__ import annotations

import gzip
import zlib
from abc import ABC, abstractmethod
from typing import ClassVar

from celeriac.errors import ConfigurationError, DecodeError, MessageTooLarge


class Compressor(ABC):
    name: ClassVar[str]
    code: ClassVar[int]  # the byte that names this compression in a frame

    @abstractmethod
    def compress(self, data: bytes) -> bytes: ...

    @abstractmethod
    def decompress(self, data: bytes, limit: int | None = None) -> bytes:
        """The original bytes; MessageTooLarge as soon as they pass ``limit`` bytes."""


class GzipCompressor(Compressor):
    name = "gzip"
    code = 1

    def compress(self, data: bytes) -> bytes:
        return gzip.compress(data, compresslevel=6, mtime=0)

    def decompress(self, data: bytes, limit: int | None = None) -> bytes:
        if limit is None:
            return gzip.decompress(data)
        return _inflate(data, zlib.MAX_WBITS | 16, limit, self.name)  # 16: a gzip header


class ZlibCompressor(Compressor):
    name = "zlib"
    code = 2

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decompress(self, data: bytes, limit: int | None = None) -> bytes:
        if limit is None:
            return zlib.decompress(data)
        return _inflate(data, zlib.MAX_WBITS, limit, self.name)


class ZstdCompressor(Compressor):
    name = "zstd"
    code = 3

    def compress(self, data: bytes) -> bytes:
        import zstandard

        return zstandard.ZstdCompressor().compress(data)

    def decompress(self, data: bytes, limit: int | None = None) -> bytes:
        import zstandard

        if limit is None:
            return zstandard.ZstdDecompressor().decompress(data)
        # A frame's declared size cannot be trusted: read at most limit + 1 bytes.
        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
        with reader:
            out = reader.read(limit + 1)
        if len(out) > limit:
            raise _too_large(limit, self.name)
        return out


def _inflate(data: bytes, wbits: int, limit: int, name: str) -> bytes:
    """Inflate gzip (every member) or zlib data, never producing more than limit + 1 bytes."""
    parts: list[bytes] = []
    size = 0
    while data:
        inflater = zlib.decompressobj(wbits)
        parts.append(inflater.decompress(data, limit + 1 - size))
        size += len(parts[-1])
        if size > limit:
            raise _too_large(limit, name)
        if not inflater.eof:
            if inflater.unconsumed_tail:  # stopped at the output cap: more would follow
                raise _too_large(limit, name)
            raise DecodeError(f"{name} data is truncated")
        data = inflater.unused_data if wbits & 16 else b""  # gzip: the next member
    return b"".join(parts)


def _too_large(limit: int, name: str) -> MessageTooLarge:
    return MessageTooLarge(f"{name}-compressed payload inflates past the limit of {limit:,} "
                           "bytes (task_message_max_size)")


def _zstd_available() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


COMPRESSORS: dict[str, Compressor] = {
    c.name: c for c in (GzipCompressor(), ZlibCompressor(), ZstdCompressor())
}
COMPRESSORS_BY_CODE: dict[int, Compressor] = {c.code: c for c in COMPRESSORS.values()}


def compressor_for(name: str) -> Compressor:
    if name == "zstd" and not _zstd_available():
        raise ConfigurationError("zstd compression needs the zstandard package: "
                                 "pip install 'celeriac[zstd]'")
    try:
        return COMPRESSORS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown compression {name!r}; choose one of {', '.join(COMPRESSORS)}"
        ) from None
