"""Compressors, each known by a one-byte code on the wire. zstd when ``zstandard`` is installed."""

from __future__ import annotations

import gzip
import zlib
from abc import ABC, abstractmethod
from typing import ClassVar

from celeriac.errors import ConfigurationError


class Compressor(ABC):
    name: ClassVar[str]
    code: ClassVar[int]  # the byte that names this compression in a frame

    @abstractmethod
    def compress(self, data: bytes) -> bytes: ...

    @abstractmethod
    def decompress(self, data: bytes) -> bytes: ...


class GzipCompressor(Compressor):
    name = "gzip"
    code = 1

    def compress(self, data: bytes) -> bytes:
        return gzip.compress(data, compresslevel=6, mtime=0)

    def decompress(self, data: bytes) -> bytes:
        return gzip.decompress(data)


class ZlibCompressor(Compressor):
    name = "zlib"
    code = 2

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decompress(self, data: bytes) -> bytes:
        return zlib.decompress(data)


class ZstdCompressor(Compressor):
    name = "zstd"
    code = 3

    def compress(self, data: bytes) -> bytes:
        import zstandard

        return zstandard.ZstdCompressor().compress(data)

    def decompress(self, data: bytes) -> bytes:
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data)


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
