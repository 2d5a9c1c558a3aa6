"""The keys of the security settings, checked when they are set and loaded once.

Signing (``security.signing``) takes two kinds of key, which may be listed side by side
(a move from one to the other is an ordinary rotation):

- HMAC-SHA256 shared secrets, ``task_signing_keys = {"2026-12": "<secret>"}``: every
  holder can both sign and verify. The simplest setup: one secret in the producers'
  and the workers' configuration.
- Ed25519 key pairs, ``task_signing_private_key`` (the signer's, with
  ``task_signing_key_id`` naming it) and ``task_signing_public_keys = {"2026-12":
  <public key>}`` (the verifiers'): a worker that holds only public keys cannot forge a
  message, and a public key that leaks gives nothing away.

A key is given as PEM text or as the path of a PEM file. Both, because keys reach
processes both ways: a secret manager hands out text (an environment variable), a
Kubernetes secret or a vault agent mounts a file; text is recognised by its
``-----BEGIN`` line, anything else is read as a path, at once, so that a wrong path is
a configuration error at start and not a failure at the first message.

Encryption keys (``task_encryption_keys = {"2026-12": "<key>"}``) are 32 random bytes
for AES-256-GCM, written as URL-safe base64 (what ``generate_encryption_key`` prints).

Key ids travel in every signed or encrypted message, so they are short printable
ASCII (at most 64 characters): a date such as ``"2026-12"`` is a good habit, since it
says when to retire the key. Secrets are never printed: errors name the key id.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celeriac.errors import ConfigurationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

MIN_SECRET_BYTES = 32  # an HMAC secret shorter than its hash's output weakens it
ENCRYPTION_KEY_BYTES = 32  # AES-256
_KEY_ID = re.compile(r"[!-~]{1,64}")  # printable ASCII without spaces

SECRET_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
ENCRYPTION_HINT = ("python -c 'from celeriac.security import generate_encryption_key; "
                   "print(generate_encryption_key())'")


def generate_encryption_key() -> str:
    """A new random AES-256 key, as ``task_encryption_keys`` takes it."""
    return base64.urlsafe_b64encode(os.urandom(ENCRYPTION_KEY_BYTES)).decode()


def check_key_id(name: str, key_id: Any) -> str:
    if type(key_id) is not str or not _KEY_ID.fullmatch(key_id):
        raise ConfigurationError(f"{name}: a key id is 1-64 printable ASCII characters "
                                 f"without spaces, not {key_id!r:.70}")
    return key_id


def optional_key_id(name: str, value: Any) -> str | None:
    return None if value is None else check_key_id(name, value)


def _keyed(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a mapping of key id to key, not "
                                 f"{type(value).__name__}")
    return {check_key_id(name, key_id): key for key_id, key in value.items()}


def check_secrets(name: str, value: Any) -> dict[str, bytes]:
    """``task_signing_keys``: key id -> HMAC secret (text or bytes, >= 32 bytes)."""
    checked: dict[str, bytes] = {}
    for key_id, secret in _keyed(name, value).items():
        raw = secret.encode() if isinstance(secret, str) else secret
        if not isinstance(raw, bytes):
            raise ConfigurationError(f"{name}[{key_id!r}] must be a string, not "
                                     f"{type(secret).__name__}")
        if len(raw) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"{name}[{key_id!r}] is {len(raw)} bytes long; a signing secret has at "
                f"least {MIN_SECRET_BYTES} (make one with: {SECRET_HINT})")
        checked[key_id] = raw
    return checked


def check_public_keys(name: str, value: Any) -> dict[str, str]:
    """``task_signing_public_keys``: key id -> Ed25519 public key (PEM or path).

    Each is loaded now, so that a bad one fails at start; the setting keeps the text
    the user gave (``public_keys`` loads them again when signing is set up).
    """
    checked = _keyed(name, value)
    for key_id, key in checked.items():
        load_public_key(f"{name}[{key_id!r}]", key)
    return checked


def check_private_key(name: str, value: Any) -> str | None:
    """``task_signing_private_key``: an Ed25519 private key (PEM or path), or None."""
    if value is None:
        return None
    load_private_key(name, value)
    return str(value)


def check_encryption_keys(name: str, value: Any) -> dict[str, bytes]:
    """``task_encryption_keys``: key id -> 32 bytes as URL-safe base64."""
    checked: dict[str, bytes] = {}
    for key_id, key in _keyed(name, value).items():
        checked[key_id] = _aes_key(f"{name}[{key_id!r}]", key)
    return checked


def _aes_key(where: str, key: Any) -> bytes:
    if isinstance(key, bytes) and len(key) == ENCRYPTION_KEY_BYTES:
        return key
    if not isinstance(key, str | bytes):
        raise ConfigurationError(f"{where} must be a base64 string, not {type(key).__name__}")
    try:
        raw = base64.urlsafe_b64decode(key)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != ENCRYPTION_KEY_BYTES:
        raise ConfigurationError(f"{where} must be {ENCRYPTION_KEY_BYTES} random bytes in "
                                 f"URL-safe base64 (make one with: {ENCRYPTION_HINT})")
    return raw


def _pem(where: str, value: Any) -> bytes:
    """The PEM bytes a setting gives: the text itself, or the file it names."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str | Path):
        raise ConfigurationError(f"{where} must be PEM text or the path of a PEM file, "
                                 f"not {type(value).__name__}")
    text = str(value)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    try:
        return Path(text).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{where}: cannot read the key file {text!r}: "
                                 f"{exc.strerror or exc}") from None


def load_public_key(where: str, value: Any) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(_pem(where, value))
    except ValueError:
        raise ConfigurationError(f"{where} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(f"{where} is a {type(key).__name__.lstrip('_')}, not an "
                                 "Ed25519 public key")
    return key


def load_private_key(where: str, value: Any) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(_pem(where, value), password=None)
    except (ValueError, TypeError):  # (TypeError: an encrypted PEM and no password)
        raise ConfigurationError(f"{where} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{where} is a {type(key).__name__.lstrip('_')}, not an "
                                 "Ed25519 private key")
    return key


def generate_signing_key_pair() -> tuple[str, str]:
    """A new Ed25519 key pair as PEM text: (private key, public key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private_pem, public_pem
