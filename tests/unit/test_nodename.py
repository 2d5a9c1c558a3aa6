"""The worker's node name (-n, with Celery's % expansion) and URLs as the banner shows them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from celeriac.urls import display_url
from celeriac.worker.options import expand_nodename


def test_nodename_expands_celerys_placeholders() -> None:
    host = socket.gethostname()
    assert expand_nodename("w1@%h") == f"w1@{host}"
    assert expand_nodename("w1@%n") == f"w1@{host.partition('.')[0]}"
    assert expand_nodename("w%i@x", index=3) == "w3@x"
    assert expand_nodename("w%I@x", index=3) == "w-3@x"
    assert expand_nodename("w%I@x") == "w@x"
    assert expand_nodename("100%%@x") == "100%@x"
    assert expand_nodename("odd%q") == "odd%q"  # unknown placeholders stay as they are


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("amqp://guest:guest@localhost:5672//", "amqp://guest:***@localhost:5672//"),
    ("sqlite:////var/lib/app.db", "sqlite:////var/lib/app.db"),
    ("memory://", "memory://"),
])
def test_display_url_masks_passwords(url: str, shown: str) -> None:
    assert display_url(url) == shown


def test_display_url_shows_which_sqlite_file_a_relative_path_means(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert display_url("sqlite:///celeriac.db") == f"sqlite:///{tmp_path / 'celeriac.db'}"
    assert display_url("sqlite:///data/x.db?timeout=5") == \
        f"sqlite:///{os.path.join(tmp_path, 'data/x.db')}?timeout=5"
