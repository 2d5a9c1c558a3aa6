"""celeriac: a fast, safe-by-default distributed task queue with a Celery-familiar API.

Only the public API is exported here; ``tests/unit/test_public_api.py`` pins it.
"""

from celeriac import states
from celeriac.app import App
from celeriac.canvas import Signature, chain, chord, group, signature
from celeriac.errors import (
    BackendError,
    BackendRefused,
    BrokerAuthenticationError,
    BrokerError,
    BrokerRefused,
    BrokerUnavailable,
    CeleriacError,
    ChordError,
    ConfigurationError,
    ContentDisallowed,
    DecodeError,
    MaxRetriesExceededError,
    MessageError,
    MessageTooLarge,
    QueueNotFound,
    Reject,
    Retry,
    SecurityError,
    SoftTimeLimitExceeded,
    TaskError,
    TaskNotRegistered,
    TaskRevokedError,
    TimeLimitExceeded,
    TimeoutError,
    ValidationError,
)
from celeriac.group_result import GroupResult
from celeriac.result import AsyncResult, EagerResult
from celeriac.routing import Exchange, Queue
from celeriac.shared import shared_task
from celeriac.task import Request, Task

# Celery's name for the application class, so that ``Celery("proj")`` keeps working when
# a project changes only its imports.
Celery = App

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncResult",
    "BackendError",
    "BackendRefused",
    "BrokerAuthenticationError",
    "BrokerError",
    "BrokerRefused",
    "BrokerUnavailable",
    "CeleriacError",
    "Celery",
    "ChordError",
    "ConfigurationError",
    "ContentDisallowed",
    "DecodeError",
    "EagerResult",
    "Exchange",
    "GroupResult",
    "MaxRetriesExceededError",
    "MessageError",
    "MessageTooLarge",
    "Queue",
    "QueueNotFound",
    "Reject",
    "Request",
    "Retry",
    "SecurityError",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskError",
    "TaskNotRegistered",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "ValidationError",
    "__version__",
    "chain",
    "chord",
    "group",
    "shared_task",
    "signature",
    "states",
]
