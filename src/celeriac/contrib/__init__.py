"""Integrations with other tools, each built on celeriac's signals and imported only by
the apps that use it: ``sentry`` (errors to Sentry) and ``opentelemetry`` (traces from
the producer into the task)."""
