"""The AMQP broker's connect timeout option: its generic name, its older name, bad values."""

from __future__ import annotations

import pytest

from celeriac.brokers.amqp_topology import DEFAULT_CONNECT_TIMEOUT, AMQPOptions
from celeriac.errors import ConfigurationError


def test_connection_timeout_is_the_connect_timeout() -> None:
    assert AMQPOptions.parse({}).connect_timeout == DEFAULT_CONNECT_TIMEOUT
    assert AMQPOptions.parse({"connection_timeout": 1.5}).connect_timeout == 1.5
    assert AMQPOptions.parse({"connect_timeout": 2}).connect_timeout == 2.0


def test_the_older_name_wins_over_the_one_app_passes() -> None:
    # App passes broker_connection_timeout as connection_timeout; a transport option
    # written for this broker under its older name is the more specific choice.
    options = {"connection_timeout": 4.0, "connect_timeout": 0.5}
    assert AMQPOptions.parse(options).connect_timeout == 0.5


@pytest.mark.parametrize("value", [0, -1, "soon", None, float("inf")])
def test_a_connect_timeout_that_cannot_work_is_refused(value: object) -> None:
    with pytest.raises(ConfigurationError, match="connection_timeout must be a positive"):
        AMQPOptions.parse({"connection_timeout": value})
