"""kombu's Redis transport options in a project moving from Celery: answered, not refused."""

from __future__ import annotations

import pytest

from celeriac.brokers.redis import RedisBroker

URL = "redis://127.0.0.1:6379/0"  # nothing here connects


def test_visibility_timeout_becomes_the_lease_with_a_note(
        caplog: pytest.LogCaptureFixture) -> None:
    broker = RedisBroker(URL, {"visibility_timeout": 3600})
    assert broker.lease_seconds == 3600
    assert any("visibility_timeout=3600 is used as lease_seconds" in r.getMessage()
               for r in caplog.records)


def test_an_explicit_lease_wins_over_visibility_timeout() -> None:
    broker = RedisBroker(URL, {"visibility_timeout": 3600, "lease_seconds": 20})
    assert broker.lease_seconds == 20


def test_global_keyprefix_is_the_key_prefix() -> None:
    assert RedisBroker(URL, {"global_keyprefix": "proj:"}).prefix == "proj:"


def test_priority_emulation_options_are_dropped_with_the_conversion(
        caplog: pytest.LogCaptureFixture) -> None:
    RedisBroker(URL, {"priority_steps": list(range(10)), "sep": ":",
                      "queue_order_strategy": "priority"})
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "priority_steps, sep, queue_order_strategy" in warning
    assert "priority=9 - old" in warning
