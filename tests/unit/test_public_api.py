"""The public API is exactly what __init__ exports: adding or removing a name is a decision."""

import celeriac


def test_public_api_is_pinned() -> None:
    assert sorted(celeriac.__all__) == sorted([
        "App", "AsyncResult", "BackendError", "BackendRefused",
        "BrokerAuthenticationError", "BrokerError", "BrokerRefused", "BrokerUnavailable",
        "Celery",
        "CeleriacError", "ChordError", "ConfigurationError", "ContentDisallowed",
        "DecodeError", "EagerResult", "Exchange", "GroupResult", "MaxRetriesExceededError",
        "MessageError", "MessageTooLarge", "Queue", "QueueNotFound", "Reject", "Request",
        "Retry", "SecurityError", "Signature",
        "SoftTimeLimitExceeded", "Task", "TaskError", "TaskNotRegistered",
        "TaskRevokedError", "TimeLimitExceeded", "TimeoutError", "ValidationError",
        "__version__", "chain",
        "chord", "group", "shared_task", "signature", "states",
    ])


def test_every_exported_name_exists() -> None:
    for name in celeriac.__all__:
        assert hasattr(celeriac, name), name


def test_errors_share_one_root_and_signals_stay_apart() -> None:
    errors = [celeriac.ConfigurationError, celeriac.TaskError, celeriac.TimeoutError,
              celeriac.MessageTooLarge, celeriac.ContentDisallowed, celeriac.DecodeError,
              celeriac.TaskNotRegistered, celeriac.MaxRetriesExceededError,
              celeriac.ChordError, celeriac.QueueNotFound, celeriac.ValidationError]
    assert all(issubclass(error, celeriac.CeleriacError) for error in errors)
    assert issubclass(celeriac.TimeoutError, TimeoutError)  # the builtin, for except clauses
    assert not issubclass(celeriac.Retry, celeriac.CeleriacError)
    assert not issubclass(celeriac.Reject, celeriac.CeleriacError)
