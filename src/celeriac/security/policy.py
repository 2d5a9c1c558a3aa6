"""An app's security settings made into what sends and reads messages: ``Security``.

Built once per change of the settings (``App.security``; None when no security
setting is set, so that an app without them pays one comparison per message). A
producer ``seal``s each task frame (encrypt, then sign); a worker's ``Screen``
(``security.screen``) opens what it fetches with ``verifier``; results are encrypted
and decrypted here too (``result_encryption``).

Every cross-setting rule is checked here, when the object is built, so a worker finds a
key id that names no key at start and a producer at its first send, each with a
message that says which setting to fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac.errors import ConfigurationError, DecodeError
from celeriac.security import encryption
from celeriac.security.encryption import Cipher
from celeriac.security.keys import load_private_key, load_public_key
from celeriac.security.signing import Signer, Verifier, strip

if TYPE_CHECKING:
    from celeriac.config import Settings

def enabled(conf: Settings) -> bool:
    """Whether any security setting is set (else ``App.security`` is None)."""
    return bool(conf.task_signing_keys or conf.task_signing_public_keys
                or conf.task_signing_private_key or conf.task_signing_key_id
                or conf.task_encryption_keys or conf.task_encryption
                or conf.result_encryption)


class Security:
    def __init__(self, conf: Settings) -> None:
        secrets: dict[str, bytes] = conf.task_signing_keys
        public = {key_id: load_public_key(f"task_signing_public_keys[{key_id!r}]", key)
                  for key_id, key in conf.task_signing_public_keys.items()}
        key_id = conf.task_signing_key_id
        try:
            self.verifier = Verifier(secrets, public, conf.task_signing_max_age) \
                if secrets or public else None
        except ValueError as exc:
            raise ConfigurationError(f"task_signing_public_keys: {exc}") from None
        self.signer = _signer(conf, key_id)
        self.cipher: Cipher | None = None
        if conf.task_encryption_keys:
            try:
                self.cipher = Cipher(conf.task_encryption_keys, conf.task_encryption_key_id)
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None
        self.encrypt_tasks = conf.task_encryption
        self.encrypt_results = conf.result_encryption
        for flag, on in (("task_encryption", self.encrypt_tasks),
                         ("result_encryption", self.encrypt_results)):
            if on and (self.cipher is None or self.cipher.key_id is None):
                raise ConfigurationError(
                    f"{flag} is on, but there is no key to encrypt with: set "
                    "task_encryption_keys and task_encryption_key_id")

    def seal(self, frame: bytes, queue: str, due: float | None, encrypt: bool) -> bytes:
        """A task frame as it goes to the broker: encrypted if asked, signed if keyed."""
        if encrypt:
            if self.cipher is None or self.cipher.key_id is None:
                raise ConfigurationError("this task is to be encrypted (encrypt=True), but "
                                         "there is no key to encrypt with: set "
                                         "task_encryption_keys and task_encryption_key_id")
            frame = self.cipher.encrypt(frame)
        if self.signer is not None:
            return self.signer.sign(frame, queue, due)
        if self.verifier is not None:
            raise ConfigurationError(
                "this app runs only signed messages but cannot sign the one it sends (a "
                "retry, a workflow step, a task sent from a task): give it "
                "task_signing_key_id with its key (task_signing_keys, or "
                "task_signing_private_key)")
        return frame

    def open_frame(self, frame: Any) -> Any:
        """A frame decrypted if it is encrypted (the signature already checked)."""
        if encryption.is_encrypted(frame):
            if self.cipher is None:
                raise DecodeError("the message is encrypted, and this worker has no "
                                  "task_encryption_keys")
            return self.cipher.decrypt(frame)
        return frame

    def unwrap(self, body: Any) -> Any:
        """A stored message's frame for display (inspect, queues): signature stripped
        (not checked), decrypted when the key is here."""
        return self.open_frame(strip(body))

    def encrypt_result(self, data: bytes) -> bytes:
        if self.encrypt_results and self.cipher is not None:
            return self.cipher.encrypt(data)
        return data

    def decrypt_result(self, data: Any) -> Any:
        return self.open_frame(data)


def _signer(conf: Settings, key_id: str | None) -> Signer | None:
    private = conf.task_signing_private_key
    if key_id is None:
        if private is not None:
            raise ConfigurationError("task_signing_private_key needs task_signing_key_id: "
                                     "the id the workers list its public key under")
        return None
    secret = conf.task_signing_keys.get(key_id)
    if secret is not None and private is not None:
        raise ConfigurationError(f"task_signing_key_id {key_id!r} names a secret of "
                                 "task_signing_keys, and task_signing_private_key is set "
                                 "too: sign with one or the other")
    if secret is not None:
        return Signer(key_id, secret=secret)
    if private is not None:
        return Signer(key_id, private_key=load_private_key("task_signing_private_key",
                                                           private))
    raise ConfigurationError(f"task_signing_key_id {key_id!r} names no key: it is not in "
                             "task_signing_keys, and task_signing_private_key is not set")
