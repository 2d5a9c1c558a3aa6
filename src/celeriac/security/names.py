"""The names of the security settings, apart so that ``config`` can import them without
importing ``cryptography`` (``policy`` does, to build what they describe)."""

# The settings ``security.policy`` reads: a change of any rebuilds ``App.security``.
SETTINGS = frozenset({
    "task_signing_keys", "task_signing_key_id", "task_signing_public_keys",
    "task_signing_private_key", "task_signing_max_age", "task_encryption_keys",
    "task_encryption_key_id", "task_encryption", "result_encryption"})
# Settings whose values are secret: never shown (Settings.table, inspect conf).
SECRET_SETTINGS = frozenset({"task_signing_keys", "task_signing_private_key",
                             "task_encryption_keys"})
