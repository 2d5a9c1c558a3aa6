"""Importing the module behind a URL scheme, with a clear error when its extra is missing.

Brokers and backends are imported only when an app uses them, because their client
libraries are optional (``pip install 'celeriac[redis]'``). A missing library must be
one line that says what to install, not a traceback from deep in an import.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from celeriac.errors import ConfigurationError
from celeriac.urls import safe_url

# The top-level package each optional client library installs -> the extra that brings it.
EXTRAS: dict[str, str] = {
    "redis": "redis",
    "aiormq": "amqp",
    "pamqp": "amqp",
    "zstandard": "zstd",
    "psycopg": "postgresql",
    "psycopg_pool": "postgresql",
    "aiobotocore": "sqs",
    "botocore": "sqs",
    "aiokafka": "kafka",
}


def import_for_url(module_name: str, url: str, kind: str) -> ModuleType:
    """Import ``module_name``, the ``kind`` ("broker", "result backend") serving ``url``."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in EXTRAS:
            raise
        raise ConfigurationError(
            f"the {kind} {safe_url(url)} needs the {missing!r} library, which is not "
            f"installed: pip install 'celeriac[{EXTRAS[missing]}]'") from exc
