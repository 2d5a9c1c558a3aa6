"""Broker and backend URLs as they may be shown: in log lines, errors and CLI output."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit


def safe_url(url: str) -> str:
    """The URL with any password masked (``amqp://guest:***@host/``), for printing.

    A list of URLs joined by ``;`` (Celery's ``sentinel://`` form) is masked part by part.
    """
    if ";" in url.partition("?")[0]:
        return ";".join(safe_url(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        password = parts.password
        port = parts.port
    except ValueError:  # a malformed URL (a bad port, say): show no part of its netloc
        head, sep, _ = url.partition("://")
        return f"{head}{sep}***" if sep else url
    if password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def display_url(url: str) -> str:
    """``safe_url``, with a relative SQLite path made absolute: which file is in use
    depends on the directory a process starts in, so the banner must say it."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        path, sep, query = url.removeprefix(prefix).partition("?")
        if path and path != ":memory:":
            return f"{prefix}{os.path.abspath(path)}{sep}{query}"
    return safe_url(url)
