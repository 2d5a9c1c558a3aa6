"""celeriac.tls: Celery's TLS settings read in both spellings, checked early."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from celeriac import App
from celeriac.errors import ConfigurationError
from celeriac.tls import client_context, normalize


def test_both_spellings_become_redis_pys_names() -> None:
    assert normalize({"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": "/ca.pem",
                      "certfile": "/c.pem", "keyfile": "/k.pem"}, "broker_use_ssl") == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem"}
    assert normalize({"ssl_cert_reqs": "none"}, "x") == {"ssl_cert_reqs": ssl.CERT_NONE}
    assert normalize(True, "x") == {}
    assert normalize(None, "x") is None
    assert normalize(False, "x") is None


def test_an_unknown_option_names_the_closest_one() -> None:
    with pytest.raises(ConfigurationError, match="'ssl_ca_cert'.*ssl_ca_certs"):
        normalize({"ssl_ca_cert": "/ca.pem"}, "broker_use_ssl")
    with pytest.raises(ConfigurationError, match="ssl_cert_reqs must be"):
        normalize({"ssl_cert_reqs": "sometimes"}, "broker_use_ssl")
    with pytest.raises(ConfigurationError, match="True or a mapping"):
        normalize("yes", "broker_use_ssl")


def test_the_settings_are_checked_when_the_app_is_made() -> None:
    with pytest.raises(ConfigurationError, match="unknown TLS option 'cafle'"):
        App("t", broker_use_ssl={"cafle": "/ca.pem"})
    with pytest.raises(ConfigurationError, match="redis_backend_use_ssl"):
        App("t", redis_backend_use_ssl=["not", "a", "mapping"])


def test_verification_is_on_by_default_and_off_only_when_asked() -> None:
    context = client_context({})
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    relaxed = client_context({"ssl_cert_reqs": "none"})
    assert relaxed.verify_mode == ssl.CERT_NONE
    assert not relaxed.check_hostname


def test_an_unreadable_file_is_a_configuration_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigurationError, match="ssl_ca_certs"):
        client_context({"ssl_ca_certs": str(missing)})
    with pytest.raises(ConfigurationError, match="ssl_certfile"):
        client_context({"ssl_certfile": str(missing)})
