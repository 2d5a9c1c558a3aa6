"""The settings as a ``conf`` reply shows them: JSON data, with every secret masked.

Masked: the password of any URL (``celeriac.urls.safe_url``), wherever it appears (a
setting, an option mapping, a list), and the whole value of any setting or option whose
name contains ``password``, ``secret``, ``key`` or ``token``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from celeriac.config import Settings
from celeriac.urls import safe_url

SECRET_WORDS = ("password", "secret", "key", "token")
MASK = "***"
# user:password@ after a scheme, anywhere in a text (a repr, a list of URLs in one string)
_CREDENTIALS = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def masked(name: str, value: Any) -> Any:
    """``value`` as JSON data with secrets masked (``name``: the setting or option)."""
    if secret_name(name) and value not in (None, "", {}, ()):
        return MASK
    if isinstance(value, str):
        return _mask_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(key): masked(str(key), item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [masked(name, item) for item in value]
    return _mask_text(repr(value))  # an object (a Queue, a router): its repr


def _mask_text(text: str) -> str:
    if "://" not in text:
        return text
    return _CREDENTIALS.sub(r"\1***@", safe_url(text))


def masked_settings(conf: Settings, with_defaults: bool = False) -> dict[str, Any]:
    """Celery's ``inspect().conf()``: the settings changed from their defaults (or all),
    as ``Settings.table`` shows them (a webhook URL reduced to its host, say), then with
    every secret masked as above, however deep."""
    return {name: masked(name, value)
            for name, value in conf.table(with_defaults=with_defaults).items()}
