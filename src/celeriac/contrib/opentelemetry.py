"""Traces that follow a task from ``delay()`` to the worker, with OpenTelemetry.

``celeriac.contrib.opentelemetry.install()`` in the producer and in the worker (the app
module does both): the producer puts the current trace context into each message's
headers (W3C ``traceparent``), and the worker runs each task inside a span
``run <task name>`` whose parent is that context, so a web request's trace goes on
into the task. Built on the ``before_task_publish``, ``task_prerun`` and
``task_postrun`` signals; needs ``opentelemetry-api`` (``pip install
'celeriac[opentelemetry]'``) and an SDK configured by the application.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, Status, StatusCode

from celeriac import signals

TRACER = trace.get_tracer("celeriac")
_open: dict[str, Span] = {}  # task id -> its span, from task_prerun to task_postrun
_installed = False


def install() -> None:
    """Propagate trace context through task messages (idempotent)."""
    global _installed  # one set of receivers per process
    if _installed:
        return
    signals.before_task_publish.connect(_inject)
    signals.task_prerun.connect(_start)
    signals.task_postrun.connect(_end)
    _installed = True


def uninstall() -> None:
    global _installed
    signals.before_task_publish.disconnect(_inject)
    signals.task_prerun.disconnect(_start)
    signals.task_postrun.disconnect(_end)
    _installed = False


def _inject(sender: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        propagate.inject(headers)  # traceparent (and tracestate) from the current span


def _start(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    request = getattr(sender, "request", None)
    parent = propagate.extract(getattr(request, "headers", None) or {})
    name = getattr(sender, "name", str(sender))
    span = TRACER.start_span(f"run {name}", context=parent, kind=trace.SpanKind.CONSUMER,
                             attributes={"celeriac.task": name,
                                         "celeriac.task_id": task_id or ""})
    # Not attached as the current context: prerun and postrun may run on different
    # threads of a pool (-P threads), and a context token cannot cross threads.
    _open[task_id or ""] = span


def _end(sender: Any = None, task_id: str | None = None, state: str | None = None,
         retval: Any = None, **_: Any) -> None:
    span = _open.pop(task_id or "", None)
    if span is None:
        return
    span.set_attribute("celeriac.state", state or "")
    if state == "FAILURE":
        if isinstance(retval, BaseException):
            span.record_exception(retval)
        span.set_status(Status(StatusCode.ERROR, str(retval)))
    span.end()
