"""celeriac's benchmarks: ``python -m bench.run`` (see bench/README.md and docs/benchmarks.md).

Not part of the test suite: speed claims live here, measured on real worker processes.
"""
