"""Encrypted payloads: a task's frame (or a result's) sealed with AES-256-GCM.

For tasks that carry personal data through a shared broker, and results kept on a
shared server: whoever can read the server sees the envelope, never the arguments.
An encrypted frame is::

    offset 0   2 bytes  magic b"CE"
    offset 2   1 byte   version (1)
    offset 3   1 byte   key id length n
    offset 4   n bytes  key id (ASCII)
    4+n       12 bytes  nonce (random per message)
    16+n      ...       AES-256-GCM ciphertext of the frame, then its 16-byte tag

The header is the cipher's associated data, so its key id cannot be swapped. Keys are
listed by id with one to encrypt with (``task_encryption_key_id``), as signing keys
rotate: list the new key everywhere, switch the id, drop the old key once nothing
encrypted with it is left in queues or results. AES-GCM rather than Fernet: it is
authenticated too, one pass in the ``cryptography`` library's C code, and it binds the
header; Fernet would add a base64 layer (a third more bytes) and an HMAC pass.

Encryption is not signing: a worker with the key can be sent a forged encrypted
message by anyone else who has the key. Use both where producers and workers must be
told apart (docs/security.md).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from typing import Any

from celeriac.errors import DecodeError

MAGIC = b"CE"
VERSION = 1
NONCE_SIZE = 12
_FIXED = struct.Struct("!2sBB")  # magic, version, key id length


def is_encrypted(data: Any) -> bool:
    return bytes(data[:2]) == MAGIC


class Cipher:
    """Encrypts with one key and decrypts with any key it lists."""

    def __init__(self, keys: Mapping[str, bytes], key_id: str | None) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if key_id is not None and key_id not in keys:
            raise ValueError(f"task_encryption_key_id {key_id!r} is not one of "
                             f"task_encryption_keys ({', '.join(map(repr, sorted(keys)))})")
        self.key_id = key_id
        self._ciphers = {name.encode(): AESGCM(key) for name, key in keys.items()}
        self._fixed = None if key_id is None else \
            _FIXED.pack(MAGIC, VERSION, len(key_id)) + key_id.encode()

    def encrypt(self, frame: bytes) -> bytes:
        if self._fixed is None or self.key_id is None:
            raise DecodeError("cannot encrypt: task_encryption_key_id is not set")
        header = self._fixed + os.urandom(NONCE_SIZE)
        sealed = self._ciphers[self.key_id.encode()].encrypt(header[-NONCE_SIZE:],
                                                             frame, header)
        return header + sealed

    def decrypt(self, data: Any) -> bytes:
        """The frame inside; DecodeError for a key not listed or a frame that fails its
        authentication (changed, or another key of that id)."""
        from cryptography.exceptions import InvalidTag

        view = memoryview(data)
        if len(view) < _FIXED.size:
            raise DecodeError("an encrypted frame is cut short")
        _, version, id_length = _FIXED.unpack_from(view)
        if version != VERSION:
            raise DecodeError(f"encrypted frame version {version} is not supported "
                              f"(this reads {VERSION})")
        nonce_at = _FIXED.size + id_length
        body_at = nonce_at + NONCE_SIZE
        key_id = bytes(view[_FIXED.size:nonce_at])
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            shown = key_id.decode("ascii", "replace")[:64]
            raise DecodeError(f"encrypted with key id {shown!r}, which is not in "
                              f"task_encryption_keys here")
        try:
            return cipher.decrypt(bytes(view[nonce_at:body_at]), bytes(view[body_at:]),
                                  bytes(view[:body_at]))
        except InvalidTag:
            raise DecodeError("the encrypted frame does not authenticate: it was changed, "
                              "or encrypted with another key of that id") from None
