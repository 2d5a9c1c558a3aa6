"""Watching celeriac from outside a task: metrics, health checks, queue alerts."""
