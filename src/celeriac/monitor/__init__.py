"""Watching a running cluster from outside the workers: queue readings and alerts."""
