"""postgresql:// URLs: Celery's db+ form for results, the schema option, bad input refused."""

from __future__ import annotations

import pytest

from celeriac.backends import create_backend
from celeriac.backends.postgresql import PostgreSQLBackend
from celeriac.brokers import create_broker
from celeriac.brokers.postgresql import PostgreSQLBroker
from celeriac.brokers.postgresql_connection import PgSettings
from celeriac.errors import ConfigurationError


def test_urls_become_conninfo_and_schema_without_connecting() -> None:
    broker = create_broker("postgres://u:secret@db:5433/app?schema=jobs&sslmode=require")
    backend = create_backend("db+postgresql://u@db/app")

    assert isinstance(broker, PostgreSQLBroker)
    assert isinstance(backend, PostgreSQLBackend)
    assert broker.settings.schema == "jobs"
    assert broker.settings.conninfo.startswith("postgresql://u:secret@db:5433/app?")
    assert "sslmode=require" in broker.settings.conninfo
    assert "schema" not in broker.settings.conninfo  # ours, not libpq's
    assert backend.settings.schema == "public"
    assert backend.settings.conninfo.startswith("postgresql://u@db/app")


@pytest.mark.parametrize(("url", "options", "message"), [
    ("postgresql://h/db?schema=Bad-Name", {}, "schema must be a lower-case SQL identifier"),
    ("postgresql://h/db", {"schema": "x; DROP TABLE y"}, "schema must be"),
    ("postgresql://h/db", {"pool_limit": 0}, "pool_limit must be a whole number >= 1"),
    ("postgresql://h/db", {"connection_timeout": -1}, "connection_timeout must be"),
    ("mysql://h/db", {}, "not a postgresql:// URL"),
])
def test_bad_settings_are_refused_at_once(url: str, options: dict[str, object],
                                          message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PgSettings.from_url(url, options)
