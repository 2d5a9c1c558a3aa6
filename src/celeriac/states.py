"""Task states, with Celery's names and meanings."""

from typing import Final

PENDING: Final = "PENDING"  # not known to be anywhere else: queued, or an unknown id
STARTED: Final = "STARTED"  # running (stored only with task_track_started)
RETRY: Final = "RETRY"  # failed, another attempt is scheduled
SUCCESS: Final = "SUCCESS"
FAILURE: Final = "FAILURE"
REVOKED: Final = "REVOKED"  # revoked or expired before it ran

READY_STATES: Final = frozenset({SUCCESS, FAILURE, REVOKED})
EXCEPTION_STATES: Final = frozenset({FAILURE, RETRY, REVOKED})
ALL_STATES: Final = frozenset({PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED})
