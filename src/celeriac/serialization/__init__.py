"""Turning values into bytes and back: serializers, compression, and the codec joining them."""

from celeriac.serialization.codec import Codec
from celeriac.serialization.compression import compressor_for
from celeriac.serialization.serializers import serializer_for

__all__ = ["Codec", "compressor_for", "serializer_for"]
