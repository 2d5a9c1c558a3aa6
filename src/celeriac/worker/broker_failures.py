"""How a running worker logs the failures of its broker and backend calls.

A broker or backend error says what went wrong in its text (the server, the cause, the
server's own words), so it is logged as one line; its traceback would only repeat
celeriac's call stack on every attempt of every loop (fetching, extending leases,
reading revocations and rate limits) for as long as the server refuses the worker, say
after its password was rotated. Anything else is a bug to find: logged with its
traceback.
"""

from __future__ import annotations

import logging
import sys

from celeriac.errors import BackendError, BrokerError, describe

logger = logging.getLogger("celeriac.worker")


def quiet(exc: BaseException | None) -> bool:
    """Whether ``exc`` is logged without its traceback: a broker or backend error."""
    return isinstance(exc, BrokerError | BackendError)


def log_failure(log: logging.Logger, message: str, *args: object) -> None:
    """Inside an ``except`` block: ``message`` at ERROR, with the error's one line for a
    broker or backend error, with the traceback for anything else."""
    exc = sys.exc_info()[1]
    if exc is not None and quiet(exc):
        log.error(f"{message}: %s", *args, describe(exc))
    else:
        log.exception(message, *args)


def log_fetch_failure(exc: BaseException, attempt: int, delay: float) -> None:
    """A running worker's failed fetch: one line per attempt, with the next delay."""
    if isinstance(exc, BrokerError):
        logger.error("fetch from the broker failed (attempt %d): %s; retrying in %.1fs",
                     attempt, describe(exc), delay)
    else:
        logger.error("fetch from the broker failed (attempt %d); retrying in %.1fs",
                     attempt, delay, exc_info=exc)
