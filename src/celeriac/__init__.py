"""celeriac: a fast, safe-by-default distributed task queue with a Celery-familiar API.

Only the public API is exported here; ``tests/unit/test_public_api.py`` pins it.
"""

from celeriac import states
from celeriac.app import App
from celeriac.errors import (
    BackendError,
    BrokerError,
    BrokerUnavailable,
    CeleriacError,
    ConfigurationError,
    ContentDisallowed,
    DecodeError,
    MaxRetriesExceededError,
    MessageError,
    MessageTooLarge,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskError,
    TaskNotRegistered,
    TaskRevokedError,
    TimeLimitExceeded,
    TimeoutError,
)
from celeriac.result import AsyncResult, EagerResult
from celeriac.task import Request, Task

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncResult",
    "BackendError",
    "BrokerError",
    "BrokerUnavailable",
    "CeleriacError",
    "ConfigurationError",
    "ContentDisallowed",
    "DecodeError",
    "EagerResult",
    "MaxRetriesExceededError",
    "MessageError",
    "MessageTooLarge",
    "Reject",
    "Request",
    "Retry",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskError",
    "TaskNotRegistered",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "__version__",
    "states",
]
