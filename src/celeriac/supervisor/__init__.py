"""The supervisor process: starts, watches, recycles and stops worker processes."""
