"""The Sentry and OpenTelemetry integrations, with their real libraries and in-process
transports (no network): a failed task reaches Sentry with its tags, and a trace
started around delay() goes on into the task's span."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import App
from celeriac.testing import ThreadedWorker

TIMEOUT = 10


@pytest.fixture
def app() -> Iterator[App]:
    app = App("contrib", broker="memory://", backend="memory://")
    yield app
    app.close()


def test_a_failed_task_is_captured_by_sentry_with_its_name_and_id(app: App) -> None:
    sentry_sdk = pytest.importorskip("sentry_sdk")
    from celeriac.contrib import sentry

    captured: list[dict[str, Any]] = []

    class Capture(sentry_sdk.transport.Transport):  # type: ignore[misc]
        def capture_envelope(self, envelope: Any) -> None:
            for item in envelope.items:
                if item.type == "event":
                    captured.append(item.payload.json)

    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=Capture(),
                    default_integrations=False, auto_enabling_integrations=False)
    sentry.install()
    try:
        @app.task(name="contrib.fail")
        def fail(x: int) -> None:
            raise KeyError(f"missing {x}")

        with ThreadedWorker(app), pytest.raises(KeyError):
            fail.delay(7).get(timeout=TIMEOUT)
        sentry_sdk.flush()
    finally:
        sentry.uninstall()
        sentry_sdk.init(dsn=None)

    [event] = captured
    assert event["tags"]["celeriac.task"] == "contrib.fail"
    assert event["contexts"]["celeriac"]["args"] == [7]
    assert event["exception"]["values"][-1]["type"] == "KeyError"


def test_the_producers_trace_goes_on_into_the_task(app: App) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from celeriac.contrib import opentelemetry as celeriac_otel

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    celeriac_otel.TRACER = provider.get_tracer("celeriac")
    celeriac_otel.install()
    try:
        @app.task(name="contrib.traced")
        def traced() -> str:
            return "done"

        with ThreadedWorker(app):
            with tracer.start_as_current_span("web request") as request_span:
                result = traced.delay()
            assert result.get(timeout=TIMEOUT) == "done"
    finally:
        celeriac_otel.uninstall()

    spans = {span.name: span for span in exporter.get_finished_spans()}
    task_span = spans["run contrib.traced"]
    assert task_span.context.trace_id == request_span.get_span_context().trace_id
    assert task_span.parent is not None
    assert task_span.parent.span_id == request_span.get_span_context().span_id
    assert task_span.attributes["celeriac.state"] == "SUCCESS"
    assert trace.get_current_span() is not request_span
