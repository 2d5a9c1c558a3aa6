"""Serializers: ``dumps``/``loads`` pairs, each known by a one-byte code on the wire."""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import msgpack
import orjson

from celeriac.errors import ConfigurationError


class Serializer(ABC):
    name: ClassVar[str]
    code: ClassVar[int]  # the byte that names this serializer in a frame

    @abstractmethod
    def dumps(self, value: Any) -> bytes: ...

    @abstractmethod
    def loads(self, data: bytes) -> Any: ...


class JsonSerializer(Serializer):
    name = "json"
    code = 1

    def dumps(self, value: Any) -> bytes:
        # Non-string keys are allowed so that {1: "a"} round-trips as it does with json.
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)

    def loads(self, data: bytes) -> Any:
        return orjson.loads(data)


class MsgpackSerializer(Serializer):
    name = "msgpack"
    code = 2

    def dumps(self, value: Any) -> bytes:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]

    def loads(self, data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)


class PickleSerializer(Serializer):
    """Runs arbitrary code on load: only ever used when listed in ``accept_content``."""

    name = "pickle"
    code = 3

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


SERIALIZERS: dict[str, Serializer] = {
    s.name: s for s in (JsonSerializer(), MsgpackSerializer(), PickleSerializer())
}
SERIALIZERS_BY_CODE: dict[int, Serializer] = {s.code: s for s in SERIALIZERS.values()}


def serializer_for(name: str) -> Serializer:
    try:
        return SERIALIZERS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown serializer {name!r}; choose one of {', '.join(SERIALIZERS)}"
        ) from None
