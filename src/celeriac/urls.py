"""Broker and backend URLs as they may be shown: in log lines, errors and CLI output."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def safe_url(url: str) -> str:
    """The URL with any password masked (``amqp://guest:***@host/``), for printing."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a malformed URL (a bad port, say): show no part of its netloc
        head, sep, _ = url.partition("://")
        return f"{head}{sep}***" if sep else url
    if password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
