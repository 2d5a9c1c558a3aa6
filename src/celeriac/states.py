"""Task states, with Celery's names and meanings."""

from typing import Final

PENDING: Final = "PENDING"  # nothing stored: queued, or an unknown id (docs/states.md)
SENT: Final = "SENT"  # sent and queued (stored only with task_track_sent)
STARTED: Final = "STARTED"  # running (stored only with task_track_started)
RETRY: Final = "RETRY"  # failed, another attempt is scheduled
SUCCESS: Final = "SUCCESS"
FAILURE: Final = "FAILURE"
REVOKED: Final = "REVOKED"  # revoked or expired before it ran

READY_STATES: Final = frozenset({SUCCESS, FAILURE, REVOKED})
EXCEPTION_STATES: Final = frozenset({FAILURE, RETRY, REVOKED})
ALL_STATES: Final = frozenset({PENDING, SENT, STARTED, RETRY, SUCCESS, FAILURE, REVOKED})
