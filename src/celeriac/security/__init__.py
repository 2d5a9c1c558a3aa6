"""Signed and encrypted messages (docs/security.md).

- ``keys``: the key settings, checked when set (HMAC secrets, Ed25519 PEM text or
  files, AES keys), and helpers that make new keys;
- ``signing``: the signed envelope, ``Signer`` and ``Verifier``;
- ``encryption``: the encrypted frame, ``Cipher`` (AES-256-GCM);
- ``replay``: where the nonces of messages seen are kept (the broker's or backend's
  server), so that a copy re-published within ``task_signing_max_age`` is refused;
- ``policy``: ``Security``, an app's settings made into sealing and opening;
- ``screen``: a worker's check of each fetched batch before anything is decoded.

With none of the settings set nothing here is imported on the per-message path.
"""

from celeriac.security.keys import generate_encryption_key, generate_signing_key_pair

__all__ = ["generate_encryption_key", "generate_signing_key_pair"]
