"""Reaching the broker and the result backend when a worker starts.

A worker started while its broker is down (a deploy that starts everything at once, a
server restarting) or refuses it (a password not yet created, a vhost not yet made)
waits for it inside the process: one log line per attempt naming the server and the
real cause, with a backoff capped at ``RETRY_MAX`` seconds, instead of crashing and
having its supervisor restart it with a traceback every second. A refusal is retried
too, as Celery's workers do, because it is often fixed on the server while the worker
waits (``rabbitmqctl add_user``); each attempt fails at once with the server's words
(``BrokerRefused``), never as a timeout.

``broker_connection_retry_on_startup=False`` makes the first failure final, and
``broker_connection_max_retries`` (100 by default, as in Celery; None or 0: no limit)
bounds the attempts; either way the worker then stops with one line (``GaveUp``).

A cause that no server-side change can fix (``ConfigurationError``: a missing client
library, a bad URL or option) is raised at once: the caller stops the worker with that
one line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from celeriac.app import App
from celeriac.errors import BackendRefused, BrokerRefused, ConfigurationError, describe
from celeriac.urls import safe_url

logger = logging.getLogger("celeriac.worker")

RETRY_FIRST = 1.0  # seconds before the second attempt; doubled each time
RETRY_MAX = 10.0  # so a worker is back within 10 s of its broker
STOP_CHECK = 0.2  # how often a wait between attempts checks whether to give up

# Raised at once, never retried: see the module docstring.
PERMANENT: tuple[type[BaseException], ...] = (ConfigurationError,)
REFUSED: tuple[type[BaseException], ...] = (BrokerRefused, BackendRefused)


class StartupStopped(Exception):
    """The worker was asked to stop while it was still waiting for its servers."""


class GaveUp(ConfigurationError):
    """The settings say to stop trying: ``broker_connection_retry_on_startup=False`` or
    ``broker_connection_max_retries`` attempts made."""


async def connect_patiently(app: App, stopping: Callable[[], bool]) -> None:
    """Connect ``app``'s broker, then its backend, retrying transient failures.

    Raises a ``PERMANENT`` error at once, and ``StartupStopped`` when ``stopping()``
    turns true between attempts.
    """
    conf = app.conf
    attempts = conf.broker_connection_max_retries if conf.broker_connection_retry_on_startup \
        else 1
    await _patiently(app.connect_broker, f"the broker {safe_url(conf.effective_broker_url)}",
                     stopping, attempts)
    await _patiently(app.connect_backend,
                     f"the result backend {safe_url(conf.effective_result_backend)}",
                     stopping, attempts)


async def _patiently(connect: Callable[[], Awaitable[None]], what: str,
                     stopping: Callable[[], bool], attempts: int | None) -> None:
    """Call ``connect`` until it succeeds, at most ``attempts`` times (None: no limit)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            await _unless_stopping(connect(), stopping)
        except StartupStopped:
            raise
        except PERMANENT:
            raise
        except Exception as exc:
            how = "refused by" if isinstance(exc, REFUSED) else "cannot reach"
            if attempts is not None and attempt >= attempts:
                setting = ("broker_connection_retry_on_startup is off" if attempts == 1
                           else f"gave up after broker_connection_max_retries={attempts}")
                raise GaveUp(f"{how} {what}: {describe(exc)} ({setting})") from exc
            delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (attempt - 1))
            logger.warning("%s %s (attempt %d): %s; retrying in %.0fs",
                           how, what, attempt, describe(exc), delay)
            await _sleep_unless_stopping(delay, stopping)
            continue
        if attempt > 1:
            logger.info("reached %s after %d attempts", what, attempt)
        return


async def _unless_stopping(attempt: Awaitable[None], stopping: Callable[[], bool]) -> None:
    """Await one connection attempt, abandoning it when ``stopping()`` turns true.

    An attempt against a server that does not answer lasts up to the connection
    timeout; a SIGTERM meanwhile should stop the worker now, not after it.
    """
    task = asyncio.ensure_future(attempt)
    while not task.done():
        await asyncio.wait({task}, timeout=STOP_CHECK)
        if not task.done() and stopping():
            task.cancel()
            await asyncio.wait({task})  # its own cleanup; the app is closed after
            raise StartupStopped
    task.result()


async def _sleep_unless_stopping(delay: float, stopping: Callable[[], bool]) -> None:
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        if stopping():
            raise StartupStopped
        await asyncio.sleep(min(STOP_CHECK, deadline - time.monotonic()))
    if stopping():
        raise StartupStopped
